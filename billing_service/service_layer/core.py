"""What every use case needs: the ports bundle, audit events, drift reports and conflict-safe writes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.errors import ConcurrencyConflict, FailedPrecondition, NotFound
from billing_service.domain.ids import new_id
from billing_service.service_layer.executions import claim_before_writes, fenced
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.pagination import decode_token, encode_token, page_size
from billing_service.service_layer.ports import BillingStore, Change, Clock, E, Page, PaymentProcessor, T
from billing_service.service_layer.push_ports import PushServices

if TYPE_CHECKING:
    from billing_service.service_layer.events import EventDeps

log = logging.getLogger(__name__)

# Write conflicts are retried this many times (re-reading the entity each time) before the
# request fails with a retryable error.
MAX_CONFLICT_RETRIES = 20


@dataclass(frozen=True)
class Drift:
    """A record found to differ from its processor.

    Attributes:
        resource: ``payment``, ``refund`` or ``subscription``.
        ours: Our stored view (e.g. ``canceled``).
        theirs: The processor's view (e.g. ``succeeded``, ``absent``).
        repaired: Whether our record was converged on the processor's (False in a
            read-only check, or while a repair waits for the processor).
    """

    resource: str
    resource_id: str
    ours: str
    theirs: str
    repaired: bool


@dataclass
class Deps:
    """The ports a use case runs against.

    Attributes:
        store: Durable state.
        processors: The configured processors by name.
        default_processor: Used when neither the request nor the customer chooses one.
        clock: Time source.
        audit_hooks: Called with every committed audit event (metrics).
        drift_hooks: Called with every drift found (metrics).
        lease_seconds: Idempotency lease term, also for records held by a cancel or the reconciler.
        events: The event log and consumers (EventService); None where nothing reads events.
        push: Push delivery of events (endpoints, deliveries); None where it is not wired.
    """

    store: BillingStore
    processors: Mapping[Processor, PaymentProcessor]
    default_processor: Processor
    clock: Clock
    audit_hooks: list[Callable[[AuditEvent], None]] = field(default_factory=list)
    drift_hooks: list[Callable[[Drift], None]] = field(default_factory=list)
    lease_seconds: float = 60.0
    events: EventDeps | None = None
    push: PushServices | None = None

    def processor(self, name: Processor) -> PaymentProcessor:
        """Returns the adapter for ``name``.

        Raises:
            FailedPrecondition: The processor is not configured in this deployment.
        """
        try:
            # Within a request that has not claimed its key yet, its writes claim it first.
            return claim_before_writes(self.processors[name])
        except KeyError:
            raise FailedPrecondition(
                f"processor {name.value} is not configured on this service",
                reason="PROCESSOR_NOT_CONFIGURED",
                metadata={"processor": name.value},
            ) from None


def audit(
    deps: Deps,
    ctx: RequestContext,
    action: str,
    resource_type: str,
    resource_id: str,
    before: str,
    after: str,
    **data: object,
) -> AuditEvent:
    """Builds the audit event for one state change (written with the change)."""
    return AuditEvent(
        id=new_id("evt"),
        caller=ctx.caller,
        request_id=ctx.request_id,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        before_status=before,
        after_status=after,
        at=deps.clock.now(),
        data={k: str(v) for k, v in data.items() if v is not None and v != ""},
    )


def report_drift(deps: Deps, drift: Drift) -> None:
    """Logs a drift and hands it to the drift hooks (which never fail the caller)."""
    log.warning(
        "drift between our record and the processor",
        extra={"resource": drift.resource, "resource_id": drift.resource_id, "ours": drift.ours,
               "theirs": drift.theirs, "repaired": drift.repaired},
    )  # fmt: skip
    for hook in deps.drift_hooks:
        try:
            hook(drift)
        except Exception:
            log.warning("drift hook failed", exc_info=True)


async def load(deps: Deps, kind: type[E], entity_id: str, *, resource: str, field_path: str) -> E:
    """Loads an entity or raises NOT_FOUND naming the request field."""
    entity = await deps.store.get(kind, entity_id) if entity_id else None
    if entity is None:
        raise NotFound(resource, entity_id, field_path=field_path)
    return entity


async def commit_with_retry(
    deps: Deps,
    attempt: Callable[[], Awaitable[tuple[Sequence[Change], Sequence[AuditEvent]] | None]],
    *,
    answer: Callable[[], object] | None = None,
) -> None:
    """Runs read-modify-write ``attempt`` until its commit wins the version check.

    ``attempt`` must re-read what it changes on every call (the first call may use what
    the request itself has just written: a stale copy loses the version check and the
    next call re-reads) and return the changes and events to write, or None when there is
    nothing to write.

    Args:
        answer: The request's answer once the attempt's changes are written (see
            :func:`commit`), read after each attempt.
    """
    for _ in range(MAX_CONFLICT_RETRIES):
        planned = await attempt()
        if planned is None:
            return
        changes, events = planned
        try:
            await commit(deps, changes, events, answer=None if answer is None else answer())
        except ConcurrencyConflict:
            continue
        return
    raise ConcurrencyConflict("the resource kept changing concurrently; retry the request")


async def commit(
    deps: Deps, changes: Sequence[Change], events: Sequence[AuditEvent], *, answer: object | None = None
) -> None:
    """Writes one set of changes with their audit events atomically.

    The commit is fenced by every idempotency lease the running task holds (its own
    request's, and any record it holds for another): it lands only while they are ours.
    A request's first commit also claims its key (see ``executions``).

    Args:
        answer: What the request answers once this commit has landed (the use case's
            result, or its final error): stored on the request's record in the same
            transaction. Pass it only on a commit after which the use case returns
            that very value with nothing else to do.
    """
    async with fenced(deps.clock.now(), answer) as fences:
        await deps.store.commit(changes, events, fences=fences)
    for hook in deps.audit_hooks:
        for event in events:
            hook(event)


async def list_page(
    deps: Deps,
    kind: type[E],
    filters: Mapping[str, Any],
    *,
    requested_size: int,
    token: str,
) -> tuple[list[E], str]:
    """Lists one page of ``kind`` with signed page tokens."""
    return await _signed_page(
        deps, filters, requested_size, token,
        lambda size, cursor: deps.store.list_page(kind, filters, limit=size, after=cursor),
    )  # fmt: skip


async def list_audit_events(
    deps: Deps, resource_id: str, *, requested_size: int, token: str
) -> tuple[list[AuditEvent], str]:
    """Lists one resource's audit trail, oldest first, with signed page tokens."""
    return await _signed_page(
        deps, {"resource_id": resource_id}, requested_size, token,
        lambda size, cursor: deps.store.list_audit_events(resource_id, limit=size, after=cursor),
    )  # fmt: skip


async def _signed_page(
    deps: Deps,
    filters: Mapping[str, Any],
    requested_size: int,
    token: str,
    fetch: Callable[[int, str | None], Awaitable[Page[T]]],
) -> tuple[list[T], str]:
    size = page_size(requested_size)
    secret = await deps.store.page_token_secret()
    cursor = decode_token(token, filters, secret)
    page = await fetch(size, cursor)
    return page.items, encode_token(page.next_cursor, filters, secret)
