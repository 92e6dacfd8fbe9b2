"""Test tokens, in-memory records and calendar arithmetic of the fake processor.

Pure data and pure functions: ``_fake_billing.FakeLedger`` applies the money rules to
these records and ``fake.FakePaymentProcessor`` exposes them through the port's verbs.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from billing_service.domain.customers import PaymentMethodType
from billing_service.domain.errors import ProcessorError
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    CaptureMethod,
    NextAction,
    PaymentFailure,
    PaymentStatus,
    ProcessorPaymentState,
    ProcessorRefundState,
    RefundStatus,
)
from billing_service.domain.subscriptions import (
    Interval,
    InvoiceLine,
    InvoiceStatus,
    ProcessorInvoiceState,
    ProcessorSubscriptionState,
    SubscriptionStatus,
)

SECOND = timedelta(seconds=1)


def processor_error(reason: str, message: str, **metadata: str) -> ProcessorError:
    """A final (non-retryable) refusal by the processor."""
    return ProcessorError(message, reason=reason, retryable=False, metadata=metadata)


def missing(kind: str, processor_id: str) -> ProcessorError:
    """The named object does not exist at the processor."""
    return processor_error(
        "RESOURCE_MISSING_AT_PROCESSOR", f"no such {kind}: {processor_id!r}", processor_id=processor_id
    )


def conflict(message: str, processor_id: str) -> ProcessorError:
    """The object's state at the processor does not allow the move."""
    return processor_error("PROCESSOR_STATE_CONFLICT", message, processor_id=processor_id)


def invalid(message: str) -> ProcessorError:
    """The processor refused a malformed request."""
    return processor_error("INVALID_REQUEST_AT_PROCESSOR", message)


# ---------------------------------------------------------------------------
# Test tokens (Stripe's names, so tests read the same against either processor)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenProfile:
    """How an instrument created from a test token behaves.

    Attributes:
        decline_code: Non-empty: every charge is declined with this decline code.
        requires_action: Charges need buyer authentication (3-D Secure) first.
        refund_outcome: None: refunds succeed at once. Otherwise refunds start PENDING and
            ``settle_refunds()`` moves them to this status.
    """

    type: PaymentMethodType
    brand: str = ""
    last4: str = ""
    exp_month: int = 0
    exp_year: int = 0
    decline_code: str = ""
    requires_action: bool = False
    refund_outcome: RefundStatus | None = None


def _card(
    brand: str,
    last4: str,
    *,
    decline_code: str = "",
    requires_action: bool = False,
    refund_outcome: RefundStatus | None = None,
) -> TokenProfile:
    return TokenProfile(PaymentMethodType.CARD, brand, last4, 12, 2034, decline_code, requires_action, refund_outcome)


TEST_TOKENS: dict[str, TokenProfile] = {
    "pm_card_visa": _card("visa", "4242"),
    "pm_card_mastercard": _card("mastercard", "4444"),
    "pm_card_amex": _card("amex", "8431"),
    "pm_card_chargeDeclined": _card("visa", "0002", decline_code="generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": _card("visa", "9995", decline_code="insufficient_funds"),
    "pm_card_authenticationRequired": _card("visa", "3184", requires_action=True),
    "pm_card_refundFail": _card("visa", "5126", refund_outcome=RefundStatus.FAILED),
    "pm_card_refundPending": _card("visa", "7726", refund_outcome=RefundStatus.SUCCEEDED),
    "pm_paypal": TokenProfile(PaymentMethodType.PAYPAL),
}

# ---------------------------------------------------------------------------
# Calendar and proration arithmetic
# ---------------------------------------------------------------------------


def _add_months(start: datetime, months: int) -> datetime:
    years, month0 = divmod(start.month - 1 + months, 12)
    year, month = start.year + years, month0 + 1
    # Clamp the day so Jan 31 + 1 month is the last day of February, as Stripe does.
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def add_interval(start: datetime, interval: Interval, count: int) -> datetime:
    """Returns ``start`` plus ``count`` calendar intervals (month ends clamped)."""
    if interval is Interval.DAY:
        return start + timedelta(days=count)
    if interval is Interval.WEEK:
        return start + timedelta(weeks=count)
    if interval is Interval.MONTH:
        return _add_months(start, count)
    return _add_months(start, 12 * count)


def period_bounds(anchor: datetime, interval: Interval, count: int, cycle: int) -> tuple[datetime, datetime]:
    """Returns the ``cycle``-th period (from 0) of a schedule that started at ``anchor``.

    Periods are computed from the anchor rather than chained from the previous end, so a
    subscription anchored on Jan 31 renews Feb 28, then Mar 31 (not Mar 28).
    """
    return add_interval(anchor, interval, count * cycle), add_interval(anchor, interval, count * (cycle + 1))


def prorate(amount_minor: int, remaining_seconds: int, total_seconds: int) -> int:
    """The share of ``amount_minor`` for the remaining time, floored, in integer minor units."""
    if total_seconds <= 0:
        return 0
    return amount_minor * remaining_seconds // total_seconds


# ---------------------------------------------------------------------------
# Records (the fake's own rows; the ``state()`` methods translate to port types)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeCharge:
    """One attempt to move money from an instrument (an effect tests can count).

    Attributes:
        succeeded: False for a declined attempt.
        idempotency_key: The key of the write that caused the charge (or the invoice id).
    """

    processor_payment_id: str
    processor_payment_method_id: str
    amount: Money
    succeeded: bool
    idempotency_key: str


@dataclass
class CustomerRecord:
    """A customer at the fake processor."""

    id: str
    email: str
    name: str
    description: str
    metadata: dict[str, str]


@dataclass
class PaymentMethodRecord:
    """An instrument attached (or once attached) to a customer."""

    id: str
    customer_id: str
    profile: TokenProfile
    attached: bool = True


@dataclass
class PaymentRecord:
    """A payment intent."""

    id: str
    customer_id: str
    payment_method_id: str
    amount: Money
    capture_method: CaptureMethod
    profile: TokenProfile
    status: PaymentStatus = PaymentStatus.PENDING
    amount_capturable: int = 0
    amount_captured: int = 0
    amount_refunded: int = 0
    amount_refund_pending: int = 0
    next_action: NextAction | None = None
    failure: PaymentFailure | None = None
    our_id: str = ""  # the billing payment id sent with the create (Stripe keeps it in metadata)

    @property
    def refundable(self) -> int:
        """Captured minor units not yet refunded nor held by a pending refund."""
        return self.amount_captured - self.amount_refunded - self.amount_refund_pending

    def state(self) -> ProcessorPaymentState:
        """The port's view of this payment."""
        return ProcessorPaymentState(
            processor_id=self.id,
            status=self.status,
            amount_capturable=self.amount_capturable,
            amount_captured=self.amount_captured,
            next_action=self.next_action,
            failure=self.failure,
        )


@dataclass
class RefundRecord:
    """A refund; ``settles_to`` is where a PENDING refund goes on ``settle_refunds()``."""

    id: str
    payment_id: str
    amount: Money
    status: RefundStatus
    settles_to: RefundStatus | None = None
    failure_reason: str = ""
    our_id: str = ""  # the billing refund id sent with the create; "" for a dashboard refund

    def state(self) -> ProcessorRefundState:
        """The port's view of this refund (our id echoed back, as Stripe's metadata does)."""
        return ProcessorRefundState(
            processor_id=self.id,
            status=self.status,
            failure_reason=self.failure_reason,
            processor_payment_id=self.payment_id,
            amount_minor=self.amount.amount_minor,
            refund_id=self.our_id,
        )


@dataclass
class PriceRecord:
    """A recurring price (and the product it belongs to)."""

    id: str
    product_id: str
    name: str
    amount: Money
    interval: Interval
    interval_count: int
    active: bool = True


@dataclass
class SubscriptionRecord:
    """A subscription and its billing schedule.

    Attributes:
        anchor: Start of period 0 (the creation time, or the trial end).
        cycle: Index of the current period from ``anchor``; -1 while in the trial.
        pending_lines: Proration and credit lines waiting for the next invoice.
    """

    id: str
    customer_id: str
    payment_method_id: str
    price: PriceRecord
    quantity: int
    status: SubscriptionStatus
    anchor: datetime
    cycle: int
    period_start: datetime
    period_end: datetime
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    pending_lines: list[InvoiceLine] = field(default_factory=list)
    our_id: str = ""  # the billing subscription id sent with the create (Stripe keeps it in metadata)

    def roll(self) -> None:
        """Moves the schedule to the next period."""
        self.cycle += 1
        self.period_start, self.period_end = period_bounds(
            self.anchor, self.price.interval, self.price.interval_count, self.cycle
        )

    def state(self) -> ProcessorSubscriptionState:
        """The port's view of this subscription."""
        return ProcessorSubscriptionState(
            processor_id=self.id,
            status=self.status,
            current_period_start=self.period_start,
            current_period_end=self.period_end,
            trial_end=self.trial_end,
            cancel_at_period_end=self.cancel_at_period_end,
            canceled_at=self.canceled_at,
            processor_plan_id=self.price.id,
            quantity=self.quantity,
        )


@dataclass
class InvoiceRecord:
    """An invoice; ``seq`` orders invoices created at the same clock time."""

    id: str
    seq: int
    subscription_id: str
    status: InvoiceStatus
    amount_due: Money
    amount_paid: Money
    period_start: datetime
    period_end: datetime
    lines: list[InvoiceLine]
    created_at: datetime
    payment_id: str = ""
    attempt_count: int = 0
    last_failure: PaymentFailure | None = None

    def state(self) -> ProcessorInvoiceState:
        """The port's view of this invoice."""
        return ProcessorInvoiceState(
            processor_id=self.id,
            processor_subscription_id=self.subscription_id,
            status=self.status,
            amount_due=self.amount_due,
            amount_paid=self.amount_paid,
            period_start=self.period_start,
            period_end=self.period_end,
            lines=list(self.lines),
            created_at=self.created_at,
            attempt_count=self.attempt_count,
            last_failure=self.last_failure,
        )
