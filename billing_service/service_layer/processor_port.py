"""The processor port: the verbs every processor adapter offers, and the data they exchange.

Re-exported by ``ports``, where the use cases import it from with the other ports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer, PaymentMethodType
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    CaptureMethod,
    ProcessorPaymentState,
    ProcessorRefundState,
    RefundReason,
)
from billing_service.domain.processor_events import ProcessorEvent, VerifiedEvent
from billing_service.domain.subscriptions import (
    Plan,
    ProcessorInvoiceState,
    ProcessorSubscriptionState,
    ProrationBehavior,
)


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


@dataclass(frozen=True)
class PaymentLookup:
    """Find the processor's payment that carries our payment id (its create may have been lost).

    Attributes:
        payment_id: Our id, sent as metadata / ``custom_id`` with every create.
        processor_customer_id: The customer at this processor ("" when none was created,
            in which case no payment can exist there).
        created_at: When we recorded the payment; the processor object is not older.
        quiet_since: No attempt to create the payment can reach the processor after this
            instant (its request is fenced, or past its resend window). A processor whose
            listings lag must cover this instant before it may answer ABSENT.
    """

    payment_id: str
    processor_customer_id: str
    amount: Money
    created_at: datetime
    quiet_since: datetime


@dataclass(frozen=True)
class RefundLookup:
    """Find the processor's refund that carries our refund id.

    Attributes:
        processor_payment_id: The refunded payment at the processor.
        quiet_since: As in ``PaymentLookup``.
    """

    refund_id: str
    processor_payment_id: str
    amount: Money
    created_at: datetime
    quiet_since: datetime


@dataclass(frozen=True)
class SubscriptionLookup:
    """Find the processor's subscription created for our subscription id (its create's answer was lost).

    Attributes:
        processor_customer_id: The customer at this processor ("" when none was created,
            in which case no subscription can exist there).
        created_at: When we recorded the subscription; the processor object is not older.
        quiet_since: As in ``PaymentLookup``.
    """

    subscription_id: str
    processor_customer_id: str
    created_at: datetime
    quiet_since: datetime


class LookupOutcome(StrEnum):
    """What a lookup by our id established."""

    FOUND = "found"
    ABSENT = "absent"  # the processor proves no object carries our id
    UNKNOWN = "unknown"  # not found, but the processor cannot prove absence yet (listing lag)


@dataclass(frozen=True)
class PaymentLookupResult:
    """The answer of ``find_payment``; ``retry_after`` says when UNKNOWN may become conclusive."""

    outcome: LookupOutcome
    state: ProcessorPaymentState | None = None
    retry_after: datetime | None = None


@dataclass(frozen=True)
class RefundLookupResult:
    """The answer of ``find_refund``."""

    outcome: LookupOutcome
    state: ProcessorRefundState | None = None
    retry_after: datetime | None = None


@dataclass(frozen=True)
class SubscriptionLookupResult:
    """The answer of ``find_subscription``."""

    outcome: LookupOutcome
    state: ProcessorSubscriptionState | None = None
    retry_after: datetime | None = None


class PaymentProcessor(Protocol):
    """The verbs every processor adapter offers.

    Every write takes an ``idempotency_key`` derived from the caller's request_id and sends
    it to the processor (Stripe ``Idempotency-Key``, PayPal ``PayPal-Request-Id``), so a
    retried call never moves money twice. Failures are raised as ``ProcessorError``
    (``PaymentDeclined`` for declines, ``NotSupportedByProcessor`` for missing features).

    The event verbs (``verify_webhook``, ``parse_event``, ``list_events``) are what the
    webhook sidecar, the backfill and the reconciler need, so none of them knows a vendor.
    Fetching the object an event names is ``get_payment`` / ``get_refund`` /
    ``get_subscription`` with the ids ``parse_event`` returns.
    """

    name: Processor
    #: How long the processor is known to remember an idempotency key of any write we send
    #: (Stripe 24 h, PayPal orders 6 h). A write is never re-sent after this, minus a margin.
    key_retention: timedelta

    @property
    def verifies_webhooks(self) -> bool:
        """True when webhook deliveries can be verified here (signing secrets or a webhook
        id are configured); otherwise ``verify_webhook`` refuses every delivery."""
        ...

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> VerifiedEvent:
        """Checks a delivery's signature on the raw body, then reads its envelope.

        Args:
            headers: The request's headers; names are looked up in lower case (pass a
                case-insensitive mapping such as the web framework's).
            body: The raw request body, exactly as received.

        Raises:
            SignatureError: The delivery is not provably from this processor, or its
                webhooks are not configured here.
            BadEvent: It is, but the body is not a usable event (strict UTF-8 JSON, one
                object of bounded depth, with an id, a type and the processor's envelope).
        """
        ...

    def parse_event(self, event_type: str, payload: Mapping[str, Any]) -> ProcessorEvent | None:
        """Translates a verified event into our terms (no I/O).

        Returns:
            What happened and which ids find our records; None for an event type we do
            not act on (stored and acknowledged as IGNORED).
        """
        ...

    def list_events(self, since: datetime, *, page_size: int = 100) -> AsyncIterator[VerifiedEvent]:
        """Yields the events the processor created at or after ``since``, as it sent them.

        Raises:
            NotSupportedByProcessor: The processor keeps no event list.
        """
        ...

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

    async def find_payment(self, lookup: PaymentLookup) -> PaymentLookupResult:
        """Finds the payment created for our ``payment_id`` (read-only; never creates anything)."""
        ...

    async def find_refund(self, lookup: RefundLookup) -> RefundLookupResult:
        """Finds the refund created for our ``refund_id`` (read-only; never creates anything)."""
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

    async def find_subscription(self, lookup: SubscriptionLookup) -> SubscriptionLookupResult:
        """Finds the subscription created for our ``subscription_id`` (read-only; never creates anything)."""
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


class WebhookVerifier(Protocol):
    """What the webhook sidecar needs of a processor: verifying its deliveries.

    Every ``PaymentProcessor`` is one. A processor whose webhooks are configured without
    API access (only its signing secrets) gets a verifier of its own from its adapter.
    """

    name: Processor

    @property
    def verifies_webhooks(self) -> bool:
        """True when deliveries can be verified (see ``PaymentProcessor``)."""
        ...

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> VerifiedEvent:
        """See ``PaymentProcessor.verify_webhook``."""
        ...
