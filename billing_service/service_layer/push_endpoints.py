"""Use cases of push endpoints: register, read, change, delete, rotate secrets, list deliveries, replay.

Secrets are never stored: an endpoint keeps its secrets' ids and lifetimes, and each secret
is derived from the deployment's key (``event_signing.derive_secret``) whenever it is
needed: to answer the create or rotate request, to sign a delivery, or to answer a retry
of those requests from its idempotency record (which is stored without the secret).

Every mutating use case is safe to run twice for one request (a retry after a crash): the
endpoint's id is the request's reserved id, a rotation's new secret id is the rotating
request's reserved id (so a repeated rotation finds its secret already there), and a
replay of every event is stored under the request's reserved id. These writes are not
commits of the billing store, so each use case makes its request's claim durable
(``claim_now``) before its first write: a concurrent duplicate then loses the claim and
answers from the record instead of writing too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from billing_service.domain.common import AuditEvent
from billing_service.domain.errors import ConcurrencyConflict, FailedPrecondition, InvalidArgument, NotFound
from billing_service.domain.event_cursor import encode_cursor
from billing_service.domain.event_signing import (
    MAX_OVERLAP,
    SecretSlot,
    active_secrets,
    derive_secret,
    rotate_secrets,
    secret_hint,
)
from billing_service.domain.ids import new_id
from billing_service.domain.push import (
    DeliveryState,
    EventDelivery,
    EventEndpoint,
    validate_endpoint_fields,
    validate_endpoint_types,
    validate_url,
)
from billing_service.service_layer.core import MAX_CONFLICT_RETRIES, Deps
from billing_service.service_layer.executions import claim_now, unwritten
from billing_service.service_layer.filtering import FilterField, FilterSpec, created, parse_filter
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.pagination import decode_token, encode_token, page_size
from billing_service.service_layer.push_ports import PushServices, Replay

__all__ = [
    "DEFAULT_OVERLAP",
    "DELIVERY_FILTERS",
    "ENDPOINT_FILTERS",
    "CreateEndpoint",
    "EndpointView",
    "ReplayCommand",
    "ReplayResult",
    "RotateSecret",
    "UpdateEndpoint",
    "create_endpoint",
    "creation_secret_id",
    "delete_endpoint",
    "get_endpoint",
    "list_deliveries",
    "list_endpoints",
    "preview_endpoint",
    "replay_events",
    "rotate_secret",
    "secret_for",
    "services",
    "update_endpoint",
]

log = logging.getLogger(__name__)

RESOURCE: Final = "event_endpoint"
DEFAULT_OVERLAP: Final = timedelta(hours=24)
UPDATABLE: Final = frozenset({"url", "event_types", "description", "disabled", "metadata"})
ENDPOINT_FILTERS: Final = FilterSpec({"create_time": created("created_at")})
DELIVERY_FILTERS: Final = FilterSpec(
    {
        "state": FilterField("state", enum=DeliveryState, enum_prefix="EVENT_DELIVERY_STATE_"),
        "event_id": FilterField("event_id"),
        "create_time": created("create_time"),
    }
)


def services(deps: Deps) -> PushServices:
    """The push services of this deployment.

    Raises:
        FailedPrecondition: Push delivery is not wired in this process.
    """
    if deps.push is None:
        raise FailedPrecondition("push delivery of events is not configured on this service")
    return deps.push


def creation_secret_id(endpoint_id: str) -> str:
    """The id of the secret an endpoint is created with (derived, so a retry finds it again)."""
    return "sk_" + endpoint_id.removeprefix("ep_")


@dataclass(frozen=True)
class EndpointView:
    """An endpoint as the API shows it.

    Attributes:
        secrets: The active secrets, newest first, each with its hint (last 4 characters).
        secret: The new secret (create and rotate only; never stored).
    """

    endpoint: EventEndpoint
    secrets: list[tuple[SecretSlot, str]] = field(default_factory=list)
    secret: str = field(default="", repr=False)


async def _view(push: PushServices, endpoint: EventEndpoint, secret_id: str = "") -> EndpointView:
    key = await push.keys.key()
    active = active_secrets(endpoint.secrets, push.clock.now())
    hints = [(slot, secret_hint(derive_secret(key, endpoint.id, slot.id))) for slot in active]
    secret = derive_secret(key, endpoint.id, secret_id) if secret_id else ""
    return EndpointView(endpoint, hints, secret)


async def secret_for(deps: Deps, endpoint_id: str, secret_id: str) -> str:
    """Re-derives one secret (for a replayed create or rotate answer, stored without it)."""
    return derive_secret(await services(deps).keys.key(), endpoint_id, secret_id)


def _audit(
    push: PushServices, ctx: RequestContext, action: str, endpoint: EventEndpoint, before: str, after: str, **data: str
) -> AuditEvent:
    return AuditEvent(
        id=new_id("evt"), caller=ctx.caller, request_id=ctx.request_id, action=f"{RESOURCE}.{action}",
        resource_type=RESOURCE, resource_id=endpoint.id, before_status=before, after_status=after,
        at=push.clock.now(), data={k: v for k, v in data.items() if v},
    )  # fmt: skip


def _status(endpoint: EventEndpoint) -> str:
    return "disabled" if endpoint.disabled else "enabled"


async def _load(push: PushServices, endpoint_id: str, field_path: str = "endpoint_id") -> EventEndpoint:
    endpoint = await push.endpoints.get(endpoint_id) if endpoint_id else None
    if endpoint is None:
        raise NotFound(RESOURCE, endpoint_id, field_path=field_path)
    return endpoint


# ---------------------------------------------------------------------------
# create, read, list
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateEndpoint:
    """Register a push endpoint."""

    url: str
    event_types: tuple[str, ...]
    description: str = ""
    disabled: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)

    def validate(self, *, allow_http: bool = True) -> None:
        """Checks every field (the scheme rule again in the use case, with the deployment's setting).

        Raises:
            InvalidArgument: Naming the field.
        """
        validate_url(self.url, "url", allow_http=allow_http)
        validate_endpoint_types(list(self.event_types), "event_types")
        validate_endpoint_fields(self.description, dict(self.metadata))


def _new_endpoint(endpoint_id: str, cmd: CreateEndpoint, now: datetime) -> EventEndpoint:
    return EventEndpoint(
        id=endpoint_id, url=cmd.url, event_types=validate_endpoint_types(list(cmd.event_types), "event_types"),
        secrets=[SecretSlot(creation_secret_id(endpoint_id), now)], created_at=now, updated_at=now,
        description=cmd.description, disabled=cmd.disabled, metadata=dict(cmd.metadata),
    )  # fmt: skip


async def create_endpoint(deps: Deps, ctx: RequestContext, cmd: CreateEndpoint) -> EndpointView:
    """Creates the endpoint with its first secret, and returns that secret (derived, not stored)."""
    push = services(deps)
    cmd.validate(allow_http=push.allow_http)
    # A fresh execution's reserved id names nothing yet; a takeover reads what the first made.
    endpoint = None if unwritten(ctx.resource_id) else await push.endpoints.get(ctx.resource_id)
    if endpoint is None:
        await claim_now()
        endpoint = _new_endpoint(ctx.resource_id, cmd, push.clock.now())
        audit = _audit(push, ctx, "created", endpoint, "", _status(endpoint), url=endpoint.url)
        if not await push.endpoints.insert(endpoint, audit):
            endpoint = await _load(push, ctx.resource_id)
    return await _view(push, endpoint, creation_secret_id(endpoint.id))


async def preview_endpoint(deps: Deps, cmd: CreateEndpoint) -> EndpointView:
    """``validate_only``: every check of a real create, nothing written, no id and no secret."""
    push = services(deps)
    cmd.validate(allow_http=push.allow_http)
    now = push.clock.now()
    endpoint = _new_endpoint("", cmd, now)
    endpoint.secrets = []
    return EndpointView(endpoint)


async def get_endpoint(deps: Deps, endpoint_id: str) -> EndpointView:
    """One endpoint with its active secrets (ids and hints only)."""
    push = services(deps)
    return await _view(push, await _load(push, endpoint_id))


async def list_endpoints(
    deps: Deps, *, requested_size: int, token: str, filter_text: str
) -> tuple[list[EndpointView], str]:
    """Endpoints newest first, with signed page tokens."""
    push = services(deps)
    filters = parse_filter(filter_text, ENDPOINT_FILTERS)
    size = page_size(requested_size)
    secret = await push.page_secret()
    page = await push.endpoints.list_page(filters, limit=size, after=decode_token(token, filters, secret))
    views = [await _view(push, e) for e in page.items]
    return views, encode_token(page.next_cursor, filters, secret)


# ---------------------------------------------------------------------------
# update, delete, rotate
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateEndpoint:
    """Change the fields of an endpoint named by ``paths`` (the update mask)."""

    endpoint_id: str
    paths: frozenset[str]
    url: str = ""
    event_types: tuple[str, ...] = ()
    description: str = ""
    disabled: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)

    def validate(self, *, allow_http: bool = True) -> None:
        """Checks the mask and the fields it names.

        Raises:
            InvalidArgument: Naming the field.
        """
        if not self.endpoint_id:
            raise InvalidArgument.field("endpoint.id", "is required")
        if not self.paths:
            raise InvalidArgument.field("update_mask", "must name at least one field")
        unknown = sorted(self.paths - UPDATABLE)
        if unknown:
            raise InvalidArgument.field("update_mask", f"cannot update {unknown[0]!r}; allowed: {sorted(UPDATABLE)}")
        if "url" in self.paths:
            validate_url(self.url, "endpoint.url", allow_http=allow_http)
        if "event_types" in self.paths:
            validate_endpoint_types(list(self.event_types), "endpoint.event_types")
        validate_endpoint_fields(
            self.description if "description" in self.paths else "",
            dict(self.metadata) if "metadata" in self.paths else {},
            prefix="endpoint.",
        )


async def update_endpoint(deps: Deps, ctx: RequestContext, cmd: UpdateEndpoint) -> EndpointView:
    """Applies the update; re-enabling an endpoint makes its waiting deliveries due at once."""
    push = services(deps)
    cmd.validate(allow_http=push.allow_http)
    for _ in range(MAX_CONFLICT_RETRIES):
        endpoint = await _load(push, cmd.endpoint_id, "endpoint.id")
        was_disabled = endpoint.disabled
        before = _status(endpoint)
        changed = {
            "url": cmd.url, "event_types": validate_endpoint_types(list(cmd.event_types), "endpoint.event_types")
            if "event_types" in cmd.paths else [], "description": cmd.description, "disabled": cmd.disabled,
            "metadata": dict(cmd.metadata),
        }  # fmt: skip
        if all(getattr(endpoint, p) == changed[p] for p in cmd.paths):
            return await _view(push, endpoint)  # nothing to change (also: a retry that already applied)
        for path in cmd.paths:
            setattr(endpoint, path, changed[path])
        endpoint.updated_at = push.clock.now()
        audit = _audit(push, ctx, "updated", endpoint, before, _status(endpoint), fields=",".join(sorted(cmd.paths)))
        await claim_now()
        if await push.endpoints.replace(endpoint, audit):
            endpoint.version += 1
            if "url" in cmd.paths:
                await push.endpoints.probe_now(endpoint.id)  # a new address: no reason to wait
            if was_disabled and not endpoint.disabled:
                await push.deliveries.make_due(endpoint.id, now=push.clock.now())
            return await _view(push, endpoint)
    raise ConcurrencyConflict("the endpoint kept changing concurrently; retry the request")


async def delete_endpoint(deps: Deps, ctx: RequestContext, endpoint_id: str) -> None:
    """Deletes the endpoint with its pending and dead-lettered deliveries."""
    push = services(deps)
    endpoint = await push.endpoints.get(endpoint_id) if endpoint_id else None
    if endpoint is not None:
        audit = _audit(push, ctx, "deleted", endpoint, _status(endpoint), "deleted")
        await claim_now()
        if await push.endpoints.delete(endpoint_id, audit):
            return
    # Absent: a retry whose first execution deleted it succeeded, anything else is NOT_FOUND.
    if endpoint_id and await _did(deps, endpoint_id, ctx, f"{RESOURCE}.deleted"):
        return
    raise NotFound(RESOURCE, endpoint_id, field_path="endpoint_id")


async def _did(deps: Deps, resource_id: str, ctx: RequestContext, action: str) -> bool:
    """Whether this very request already wrote ``action`` about the resource (its audit trail)."""
    after: str | None = None
    while True:
        page = await deps.store.list_audit_events(resource_id, limit=100, after=after)
        if any(_same_request(e, ctx, action) for e in page.items):
            return True
        if not page.next_cursor:
            return False
        after = page.next_cursor


def _same_request(event: AuditEvent, ctx: RequestContext, action: str) -> bool:
    return event.action == action and event.caller == ctx.caller and event.request_id == ctx.request_id


@dataclass(frozen=True)
class RotateSecret:
    """Create a new secret; the current ones keep signing for ``overlap``."""

    endpoint_id: str
    overlap: timedelta = DEFAULT_OVERLAP

    def validate(self) -> None:
        """Checks the overlap (0 to 7 days).

        Raises:
            InvalidArgument: Naming the field.
        """
        if not timedelta(0) <= self.overlap <= MAX_OVERLAP:
            raise InvalidArgument.field("overlap", f"must be between 0 and {MAX_OVERLAP.days} days")


async def rotate_secret(deps: Deps, ctx: RequestContext, cmd: RotateSecret) -> EndpointView:
    """Adds a new newest secret (its id is the request's reserved id) and returns it."""
    push = services(deps)
    cmd.validate()
    for _ in range(MAX_CONFLICT_RETRIES):
        endpoint = await _load(push, cmd.endpoint_id)
        if any(slot.id == ctx.resource_id for slot in endpoint.secrets):
            return await _view(push, endpoint, ctx.resource_id)  # a retry: rotated already
        now = push.clock.now()
        endpoint.secrets = rotate_secrets(endpoint.secrets, ctx.resource_id, now=now, overlap=cmd.overlap)
        endpoint.updated_at = now
        audit = _audit(
            push, ctx, "secret_rotated", endpoint, _status(endpoint), _status(endpoint),
            secret_id=ctx.resource_id, overlap_seconds=str(int(cmd.overlap.total_seconds())),
        )  # fmt: skip
        await claim_now()
        if await push.endpoints.replace(endpoint, audit):
            endpoint.version += 1
            return await _view(push, endpoint, ctx.resource_id)
    raise ConcurrencyConflict("the endpoint kept changing concurrently; retry the request")


# ---------------------------------------------------------------------------
# deliveries and replays
# ---------------------------------------------------------------------------


async def list_deliveries(
    deps: Deps, endpoint_id: str, *, requested_size: int, token: str, filter_text: str
) -> tuple[list[EventDelivery], str]:
    """An endpoint's deliveries, newest first, with signed page tokens."""
    push = services(deps)
    filters = parse_filter(filter_text, DELIVERY_FILTERS)
    size = page_size(requested_size)
    await _load(push, endpoint_id)
    secret = await push.page_secret()
    scope: dict[str, Any] = {**filters, "endpoint_id": endpoint_id}
    cursor = decode_token(token, scope, secret)
    page = await push.deliveries.list_page(endpoint_id, filters, limit=size, after=cursor)
    return page.items, encode_token(page.next_cursor, scope, secret)


@dataclass(frozen=True)
class ReplayCommand:
    """Send events to an endpoint again.

    Attributes:
        all_events: Every retained event of the window matching the endpoint's types (as
            new deliveries, in the background); else its dead-lettered deliveries.
        start: Events that entered the log at or after this time (None: the oldest).
        end: ... and before this time (None: now).
    """

    endpoint_id: str
    all_events: bool = False
    start: datetime | None = None
    end: datetime | None = None

    def validate(self) -> None:
        """Checks the window.

        Raises:
            InvalidArgument: Naming the field.
        """
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise InvalidArgument.field("end_time", "must be after start_time")


@dataclass(frozen=True)
class ReplayResult:
    """What a replay queued: a count (dead letters) or a range of cursors (every event)."""

    requeued_count: int = 0
    first_cursor: str = ""
    last_cursor: str = ""


async def replay_events(deps: Deps, ctx: RequestContext, cmd: ReplayCommand) -> ReplayResult:
    """Requeues dead letters at once, or stores a replay of every event for the fan-out."""
    push = services(deps)
    cmd.validate()
    endpoint = await _load(push, cmd.endpoint_id)
    after = await push.log.position_at(cmd.start) if cmd.start is not None else await push.log.low_water() - 1
    until = await push.log.position_at(cmd.end) if cmd.end is not None else await push.log.head()
    now = push.clock.now()
    await claim_now()
    # An operator replays when the receiver is fixed: a backing-off endpoint is tried at once
    # (still one attempt at a time until one succeeds, which makes the rest due).
    await push.endpoints.probe_now(endpoint.id)
    if not cmd.all_events:
        count = await push.deliveries.requeue_dead(endpoint.id, after=after, until=until, now=now)
        log.info("dead letters replayed", extra={"endpoint_id": endpoint.id, "count": count})
        return ReplayResult(requeued_count=count)
    if until <= after:
        return ReplayResult()
    first = await push.log.read(after=after, limit=1)
    if not first or first[0].seq > until:
        return ReplayResult()
    log_id = await push.log.log_id()
    await push.deliveries.add_replay(
        Replay(id=ctx.resource_id, endpoint_id=endpoint.id, after=after, until=until, position=after, created_at=now)
    )
    return ReplayResult(first_cursor=encode_cursor(first[0].seq, log_id), last_cursor=encode_cursor(until, log_id))
