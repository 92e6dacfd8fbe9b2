"""Ports: the small interfaces the use cases need from the outside world.

Adapters implement them: ``MongoBillingStore``, ``MongoLeases`` and ``MongoWebhookInbox``
(adapters/mongo), and one ``<Vendor>PaymentProcessor`` per processor (adapters/processors;
the processor port itself is in ``processor_port``, re-exported here). No vendor type
crosses a port: adapters translate to and from the domain types below.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.customers import Customer, PaymentMethod
from billing_service.domain.disputes import Dispute
from billing_service.domain.errors import RequestInProgress
from billing_service.domain.payments import (
    Payment,
    Refund,
)
from billing_service.domain.subscriptions import (
    Invoice,
    Plan,
    Subscription,
)

# The processor port lives in its own module; every port is imported from here.
from billing_service.service_layer.processor_port import (
    AttachedPaymentMethod,
    LookupOutcome,
    PaymentLookup,
    PaymentLookupResult,
    PaymentProcessor,
    PaymentRequest,
    RefundLookup,
    RefundLookupResult,
    RefundRequest,
    SubscriptionChange,
    SubscriptionLookup,
    SubscriptionLookupResult,
    SubscriptionRequest,
    WebhookVerifier,
)

__all__ = [
    "AttachedPaymentMethod",
    "Between",
    "BillingStore",
    "Change",
    "Clock",
    "E",
    "Entity",
    "Fence",
    "HoldOutcome",
    "IdempotencyOutcome",
    "IdempotencyRecord",
    "InboxEvent",
    "InboxStats",
    "Insert",
    "Leases",
    "LookupOutcome",
    "Page",
    "PaymentLookup",
    "PaymentLookupResult",
    "PaymentProcessor",
    "PaymentRequest",
    "RefundLookup",
    "RefundLookupResult",
    "RefundRequest",
    "SubscriptionChange",
    "SubscriptionLookup",
    "SubscriptionLookupResult",
    "SubscriptionRequest",
    "T",
    "Update",
    "WebhookInbox",
    "WebhookStatus",
    "WebhookVerifier",
]


class Clock(Protocol):
    """Source of the current time (UTC, timezone-aware)."""

    def now(self) -> datetime:
        """Returns the current time."""
        ...


# ---------------------------------------------------------------------------
# Store port
# ---------------------------------------------------------------------------

Entity = Customer | PaymentMethod | Payment | Refund | Plan | Subscription | Invoice | Dispute
E = TypeVar("E", Customer, PaymentMethod, Payment, Refund, Plan, Subscription, Invoice, Dispute)
E2 = TypeVar("E2", Customer, PaymentMethod, Payment, Refund, Plan, Subscription, Invoice, Dispute)


@dataclass(frozen=True)
class Insert:
    """Create ``entity`` (its id must be new)."""

    entity: Entity


@dataclass(frozen=True)
class Update:
    """Replace ``entity`` if its stored version still equals ``entity.version``.

    The store bumps ``entity.version`` on success.

    Attributes:
        bookkeeping: The update changes only fields no RPC returns (reconciliation's
            ``lookup_after``): it needs no audit event and yields no billing event. The
            store checks the claim against the stored document and treats an update that
            changes anything else as a change.
    """

    entity: Entity
    bookkeeping: bool = False


Change = Insert | Update


T = TypeVar("T")


@dataclass(frozen=True)
class Between:
    """A filter value for ``list_page``: matches values inside an interval.

    A ``None`` bound is open. Used for creation-time windows of list filters.
    """

    lower: Any = None
    upper: Any = None
    lower_inclusive: bool = True
    upper_inclusive: bool = False


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing. ``next_cursor`` is empty on the last page."""

    items: list[T]
    next_cursor: str


@dataclass(frozen=True)
class StoredResult:
    """The final answer of a request, kept on its idempotency record for replays.

    Exactly one of ``response`` (the serialized response) and ``error`` (a serialized
    final error) is set.
    """

    response: bytes | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Fence:
    """A request a commit is made for: it lands only while ``owner`` still executes it.

    The store writes the request's idempotency record inside the commit's transaction:

    - ``claim`` set: the commit is the execution's first write and *creates* the record
      (``claim`` is the record to insert, or to put in place of an expired one). A record
      already there means another execution claimed the key first: ``ClaimConflict``.
    - otherwise the record must still name ``owner``; once another execution took the
      request over, the whole commit is refused (``RequestInProgress``).
    - ``result`` set: the same write completes the request with its final answer, so the
      outcome and the replayable answer become durable together.

    ``at`` is the commit's time.
    """

    key: str
    owner: str
    at: datetime
    claim: IdempotencyRecord | None = None
    result: StoredResult | None = None


class ClaimConflict(RequestInProgress):
    """A commit that was to create a request's idempotency record found one already there.

    Another execution of the same request claimed it first (a concurrent duplicate, or a
    crashed one whose record is still in progress). Nothing of the commit was written;
    the caller looks the record up again and replays, waits or takes over.
    """


def request_key(caller: str, method: str, request_id: str) -> str:
    """The key of (caller, method, request_id)'s idempotency record: a fixed-size sha256 hex digest."""
    raw = "\x1f".join((caller, method, request_id))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class HoldOutcome(StrEnum):
    """What ``idempotency_hold`` found on another request's record."""

    HELD = "held"  # it was in progress with no live lease: we hold it now
    BUSY = "busy"  # its executor holds a live lease
    COMPLETED = "completed"  # it finished; nothing can resume it
    ABSENT = "absent"  # no record (expired): a retry would start a new resource, not resume this one


class IdempotencyOutcome(StrEnum):
    """What ``begin`` found for a request key."""

    STARTED = "started"  # we own the key now: execute the request
    COMPLETED = "completed"  # replay the stored result
    IN_PROGRESS = "in_progress"  # someone else holds a live lease
    MISMATCH = "mismatch"  # same key, different request


@dataclass
class IdempotencyRecord:
    """The stored state of one (caller, method, request_id).

    Attributes:
        resource_id: The id allocated for the resource this request creates, kept so a
            re-execution after a crash reuses it instead of creating a twin.
        owner: Random token of the current executor; guards complete/release.
        response: Serialized response of a completed request.
        error: Stored final error of a completed request (reason, message, metadata...).
        attempts: How many executions started (above 1 after a takeover).
    """

    key: str
    caller: str
    method: str
    request_id: str
    fingerprint: str
    resource_id: str
    owner: str
    state: str
    created_at: datetime
    lease_until: datetime
    response: bytes | None = None
    error: dict[str, Any] | None = None
    attempts: int = 1
    expires_at: datetime | None = None


class BillingStore(Protocol):
    """Durable state: resources, append-only audit events and idempotency records."""

    def deadline(self, seconds: float, *, cleanup_seconds: float = 0.0) -> AbstractContextManager[None]:
        """Bounds every operation started inside the block to end ``seconds`` from now.

        An operation that would overrun fails with ``StoreUnavailable``; one started after
        the end (cleanup) still gets ``cleanup_seconds``.
        """
        ...

    def seems_reachable(self) -> bool:
        """False when the store is already known to be gone (no I/O); True says nothing more."""
        ...

    async def ping(self) -> None:
        """Raises ``StoreUnavailable`` unless the store answers."""
        ...

    async def get(self, kind: type[E], entity_id: str) -> E | None:
        """Loads one entity by id."""
        ...

    async def find_one(self, kind: type[E], filters: Mapping[str, Any]) -> E | None:
        """Loads the first entity whose fields equal ``filters`` (e.g. processor ids)."""
        ...

    async def list_page(self, kind: type[E], filters: Mapping[str, Any], *, limit: int, after: str | None) -> Page[E]:
        """Lists entities newest first, ``limit`` at most, strictly after cursor ``after``.

        A filter value is an equality, or a :class:`Between` interval.
        """
        ...

    async def get_pair(
        self, first: type[E], first_id: str, second: type[E2], second_id: str
    ) -> tuple[E | None, E2 | None]:
        """Loads two entities by id in one round trip (e.g. a customer and its payment method)."""
        ...

    async def commit(
        self, changes: Sequence[Change], events: Sequence[AuditEvent], *, fences: Sequence[Fence] = ()
    ) -> None:
        """Writes all changes, their audit events and the fences' records atomically.

        Raises:
            ConcurrencyConflict: An ``Update`` found a newer version; nothing was written.
            ClaimConflict: A fence's ``claim`` found the record already claimed; nothing
                was written.
            RequestInProgress: A fence's lease was taken over; nothing was written.
            StoreUnavailable: The store failed; nothing was written.
        """
        ...

    async def list_audit_events(self, resource_id: str, *, limit: int, after: str | None) -> Page[AuditEvent]:
        """Lists a resource's audit events, oldest first."""
        ...

    async def idempotency_get(
        self, *, caller: str, method: str, request_id: str, now: datetime
    ) -> IdempotencyRecord | None:
        """Reads a request key's record; None when there is none or it is past its TTL."""
        ...

    async def idempotency_take_over(
        self, record: IdempotencyRecord, *, owner: str, now: datetime, lease_seconds: float, ttl_seconds: float
    ) -> tuple[IdempotencyOutcome, IdempotencyRecord]:
        """Takes over ``record`` (in progress, its lease lapsed) for a new execution.

        STARTED with ``attempts`` incremented and the original ``resource_id`` kept; when
        the record changed meanwhile, what it is now (COMPLETED or IN_PROGRESS).
        """
        ...

    async def idempotency_begin(
        self,
        *,
        caller: str,
        method: str,
        request_id: str,
        fingerprint: str,
        resource_id: str,
        owner: str,
        now: datetime,
        lease_seconds: float,
        ttl_seconds: float,
    ) -> tuple[IdempotencyOutcome, IdempotencyRecord]:
        """Claims a request key at once, or reports who has it.

        A record whose lease ran out while in progress (its executor crashed) is taken
        over: the outcome is STARTED with ``attempts`` incremented and the original
        ``resource_id`` kept.
        """
        ...

    async def idempotency_complete(
        self, key: str, owner: str, *, response: bytes | None, error: dict[str, Any] | None
    ) -> None:
        """Stores the final result of a request we own."""
        ...

    async def idempotency_release(self, key: str, owner: str) -> None:
        """Drops our claim after a retryable failure so a retry can execute again."""
        ...

    async def idempotency_renew(self, key: str, owner: str, *, lease_until: datetime) -> bool:
        """Extends a lease we hold (heartbeat); False when it was taken over or finished."""
        ...

    async def idempotency_hold(
        self, *, caller: str, method: str, request_id: str, owner: str, now: datetime, lease_seconds: float
    ) -> tuple[HoldOutcome, IdempotencyRecord | None]:
        """Takes over another request's in-progress record whose lease lapsed, without executing it.

        While held, that request's retries answer IN_PROGRESS and its stale executor's
        fenced commits are refused. ``idempotency_release`` gives it back.
        """
        ...

    async def page_token_secret(self) -> bytes:
        """A random secret shared by all replicas, created once, for signing page tokens."""
        ...


# ---------------------------------------------------------------------------
# Leases
# ---------------------------------------------------------------------------


class Leases(Protocol):
    """Named leases, so a periodic job (the reconciler) runs on one replica at a time, plus
    the state (cursors) each job keeps between its passes, guarded by the lease."""

    async def acquire(self, name: str, owner: str, *, now: datetime, ttl_seconds: float) -> bool:
        """Takes or renews the lease; False while another owner holds it."""
        ...

    async def release(self, name: str, owner: str) -> None:
        """Gives the lease up."""
        ...

    async def load_state(self, name: str) -> dict[str, str]:
        """The state the last holder saved (cursors), or {}."""
        ...

    async def save_state(self, name: str, owner: str, state: Mapping[str, str]) -> bool:
        """Saves state while ``owner`` holds the lease; False once it lost it."""
        ...


# ---------------------------------------------------------------------------
# Webhook inbox port
# ---------------------------------------------------------------------------


class WebhookStatus(StrEnum):
    """Where a received processor event is in its processing."""

    PENDING = "pending"  # stored, waiting for a worker (or for its next retry)
    PROCESSING = "processing"  # claimed by a worker holding a lease
    PROCESSED = "processed"  # the handler converged our records
    IGNORED = "ignored"  # no handler for the event type; acknowledged and kept
    ORPHAN = "orphan"  # about an object this service never created
    DEAD = "dead"  # failed max attempts; kept for inspection and replay


@dataclass
class InboxEvent:
    """One processor event as stored in the inbox.

    Attributes:
        id: Inbox id of the event.
        event_id: The processor's event id (``evt_...``, ``WH-...``), unique per processor.
        payload: The raw, verified request body.
        attempts: Processing attempts started so far.
        lease_owner: The worker holding the lease while PROCESSING.
        available_at: Retry time while PENDING, lease expiry while PROCESSING.
        last_error: Short reason of the last failure (never secrets or payload data).
    """

    id: str
    processor: Processor
    event_id: str
    type: str
    payload: bytes
    status: WebhookStatus
    received_at: datetime
    available_at: datetime
    attempts: int = 0
    lease_owner: str = ""
    processed_at: datetime | None = None
    last_error: str = ""


@dataclass(frozen=True)
class InboxStats:
    """Inbox depth and lag, for readiness and metrics."""

    depth: int
    dead: int
    oldest_pending_seconds: float


class WebhookInbox(Protocol):
    """Durable, deduplicated storage of processor events, claimed by workers with leases."""

    async def insert(
        self, processor: Processor, event_id: str, event_type: str, payload: bytes, *, now: datetime
    ) -> bool:
        """Stores a verified event; returns False (changing nothing) for a duplicate delivery."""
        ...

    def subscribe(self, listener: Callable[[InboxEvent], None]) -> None:
        """Calls ``listener`` (in process, synchronously) with each event stored through this object."""
        ...

    async def claim(self, owner: str, *, now: datetime, lease_seconds: float) -> InboxEvent | None:
        """Leases the oldest event that is due (pending, or whose lease ran out) to ``owner``."""
        ...

    async def claim_due(self, owner: str, *, now: datetime, lease_seconds: float, limit: int) -> list[InboxEvent]:
        """Leases up to ``limit`` due events, oldest first, to ``owner`` (a token unique to this claim)."""
        ...

    async def claim_stored(
        self, owner: str, events: Sequence[InboxEvent], *, now: datetime, lease_seconds: float
    ) -> list[InboxEvent]:
        """Leases events this process just stored, if still untouched; returns the ones won."""
        ...

    async def extend(self, inbox_id: str, owner: str, *, until: datetime) -> bool:
        """Extends a lease ``owner`` still holds; False if it was lost."""
        ...

    async def complete(self, inbox_id: str, owner: str, status: WebhookStatus, *, now: datetime) -> bool:
        """Records the outcome of an event ``owner`` processed; False if the lease was lost."""
        ...

    async def fail(
        self, inbox_id: str, owner: str, *, error: str, retry_at: datetime | None, now: datetime
    ) -> WebhookStatus:
        """Schedules a retry at ``retry_at``, or parks the event as DEAD when it is None."""
        ...

    async def replay(self, processor: Processor | None, event_id: str, *, now: datetime) -> bool:
        """Makes one event pending again (whatever its status); False if unknown."""
        ...

    async def replay_dead(self, *, now: datetime) -> int:
        """Makes every DEAD event pending again; returns how many."""
        ...

    async def get(self, processor: Processor, event_id: str) -> InboxEvent | None:
        """Loads one event by its processor's id."""
        ...

    async def stats(self, *, now: datetime) -> InboxStats:
        """Counts waiting and dead events and the age of the oldest waiting one."""
        ...
