"""Ports: the small interfaces the use cases need from the outside world.

Adapters implement them: ``MongoBillingStore`` (adapters/mongo), and one
``<Vendor>PaymentProcessor`` per processor (adapters/processors). No vendor type
crosses a port: adapters translate to and from the domain types below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.customers import Customer, PaymentMethod, PaymentMethodType
from billing_service.domain.disputes import Dispute
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    CaptureMethod,
    Payment,
    ProcessorPaymentState,
    ProcessorRefundState,
    Refund,
    RefundReason,
)
from billing_service.domain.subscriptions import (
    Invoice,
    Plan,
    ProcessorInvoiceState,
    ProcessorSubscriptionState,
    ProrationBehavior,
    Subscription,
)


class Clock(Protocol):
    """Source of the current time (UTC, timezone-aware)."""

    def now(self) -> datetime:
        """Returns the current time."""
        ...


# ---------------------------------------------------------------------------
# Processor port
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AttachedPaymentMethod:
    """What a processor tells us about an attached instrument (display data only)."""

    processor_id: str
    type: PaymentMethodType
    brand: str = ""
    last4: str = ""
    exp_month: int = 0
    exp_year: int = 0


@dataclass(frozen=True)
class PaymentRequest:
    """Everything a processor needs to create (and confirm) a payment.

    Attributes:
        payment_id: Our payment id, sent to the processor as metadata for reconciliation.
        processor_customer_id: The customer's id at this processor.
        processor_payment_method_id: The instrument's id at this processor.
        off_session: The buyer is not present (merchant-initiated).
        return_url: Where a redirect-based flow (3-D Secure, PayPal approval) returns.
    """

    payment_id: str
    amount: Money
    capture_method: CaptureMethod
    processor_customer_id: str
    processor_payment_method_id: str
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    off_session: bool = False
    return_url: str = ""


@dataclass(frozen=True)
class RefundRequest:
    """A refund of (part of) a captured payment."""

    refund_id: str
    processor_payment_id: str
    amount: Money
    reason: RefundReason
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubscriptionRequest:
    """A new subscription at the processor.

    Attributes:
        trial_end: End of the free trial, or None for no trial.
    """

    subscription_id: str
    processor_customer_id: str
    processor_payment_method_id: str
    plan: Plan
    quantity: int
    trial_end: datetime | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    return_url: str = ""


@dataclass(frozen=True)
class SubscriptionChange:
    """A plan and/or quantity change. ``None`` means unchanged."""

    plan: Plan | None
    quantity: int | None
    proration: ProrationBehavior


class PaymentProcessor(Protocol):
    """The verbs every processor adapter offers.

    Every write takes an ``idempotency_key`` derived from the caller's request_id and sends
    it to the processor (Stripe ``Idempotency-Key``, PayPal ``PayPal-Request-Id``), so a
    retried call never moves money twice. Failures are raised as ``ProcessorError``
    (``PaymentDeclined`` for declines, ``NotSupportedByProcessor`` for missing features).
    """

    name: Processor

    async def create_customer(self, customer: Customer, *, idempotency_key: str) -> str:
        """Creates the customer at the processor; returns the processor's customer id."""
        ...

    async def update_customer(self, processor_customer_id: str, customer: Customer, *, idempotency_key: str) -> None:
        """Copies name, email, description and metadata to the processor."""
        ...

    async def attach_payment_method(
        self, processor_customer_id: str, token: str, *, idempotency_key: str
    ) -> AttachedPaymentMethod:
        """Attaches a processor token to the customer; returns its display data."""
        ...

    async def detach_payment_method(self, processor_payment_method_id: str, *, idempotency_key: str) -> None:
        """Detaches the instrument from its customer."""
        ...

    async def create_payment(self, request: PaymentRequest, *, idempotency_key: str) -> ProcessorPaymentState:
        """Creates and confirms a payment; a decline raises ``PaymentDeclined``."""
        ...

    async def get_payment(self, processor_payment_id: str) -> ProcessorPaymentState:
        """Reads the processor's current view of a payment."""
        ...

    async def capture_payment(
        self, processor_payment_id: str, amount: Money, *, idempotency_key: str
    ) -> ProcessorPaymentState:
        """Captures (part of) an authorized payment."""
        ...

    async def cancel_payment(self, processor_payment_id: str, *, idempotency_key: str) -> ProcessorPaymentState:
        """Cancels (voids) a payment that has not been captured."""
        ...

    async def create_refund(self, request: RefundRequest, *, idempotency_key: str) -> ProcessorRefundState:
        """Refunds (part of) a captured payment."""
        ...

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefundState:
        """Reads the processor's current view of a refund."""
        ...

    async def create_plan(self, plan: Plan, *, idempotency_key: str) -> dict[str, str]:
        """Mirrors a plan at the processor; returns ids to keep in ``plan.processor_refs``."""
        ...

    async def archive_plan(self, plan: Plan, *, idempotency_key: str) -> None:
        """Stops new subscriptions to the plan at the processor."""
        ...

    async def create_subscription(
        self, request: SubscriptionRequest, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Starts a subscription."""
        ...

    async def get_subscription(self, processor_subscription_id: str) -> ProcessorSubscriptionState:
        """Reads the processor's current view of a subscription."""
        ...

    async def update_subscription(
        self, processor_subscription_id: str, change: SubscriptionChange, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Changes plan and/or quantity with the given proration behaviour."""
        ...

    async def cancel_subscription(
        self, processor_subscription_id: str, *, at_period_end: bool, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Cancels now or at the end of the current period."""
        ...

    async def pause_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Pauses collection."""
        ...

    async def resume_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Resumes a paused subscription."""
        ...

    async def list_invoices(self, processor_subscription_id: str) -> list[ProcessorInvoiceState]:
        """Returns the subscription's invoices, newest first."""
        ...

    async def aclose(self) -> None:
        """Releases HTTP clients and worker threads."""
        ...


# ---------------------------------------------------------------------------
# Store port
# ---------------------------------------------------------------------------

Entity = Customer | PaymentMethod | Payment | Refund | Plan | Subscription | Invoice | Dispute
E = TypeVar("E", Customer, PaymentMethod, Payment, Refund, Plan, Subscription, Invoice, Dispute)


@dataclass(frozen=True)
class Insert:
    """Create ``entity`` (its id must be new)."""

    entity: Entity


@dataclass(frozen=True)
class Update:
    """Replace ``entity`` if its stored version still equals ``entity.version``.

    The store bumps ``entity.version`` on success.
    """

    entity: Entity


Change = Insert | Update


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing. ``next_cursor`` is empty on the last page."""

    items: list[T]
    next_cursor: str


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


class BillingStore(Protocol):
    """Durable state: resources, append-only audit events and idempotency records."""

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
        """Lists entities newest first, ``limit`` at most, strictly after cursor ``after``."""
        ...

    async def commit(self, changes: Sequence[Change], events: Sequence[AuditEvent]) -> None:
        """Writes all changes and their audit events atomically.

        Raises:
            ConcurrencyConflict: An ``Update`` found a newer version; nothing was written.
            StoreUnavailable: The store failed; nothing was written.
        """
        ...

    async def list_audit_events(self, resource_id: str, *, limit: int, after: str | None) -> Page[AuditEvent]:
        """Lists a resource's audit events, oldest first."""
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
        """Claims a request key, or reports who has it.

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

    async def page_token_secret(self) -> bytes:
        """A random secret shared by all replicas, created once, for signing page tokens."""
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
