"""Plans, subscriptions and invoices with explicit state machines."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from billing_service.domain.common import Processor
from billing_service.domain.errors import IllegalTransition, InvalidArgument
from billing_service.domain.money import Money
from billing_service.domain.payments import PaymentFailure


class Interval(StrEnum):
    """Billing period unit."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


# Longest period we allow per interval unit (Stripe's limit: one year).
MAX_INTERVAL_COUNT = {Interval.DAY: 365, Interval.WEEK: 52, Interval.MONTH: 12, Interval.YEAR: 1}
MAX_TRIAL_DAYS = 730


class PlanStatus(StrEnum):
    """Whether new subscriptions may use the plan."""

    ACTIVE = "active"
    ARCHIVED = "archived"


@dataclass
class Plan:
    """A price for a recurring service.

    Attributes:
        processor_refs: Per processor, the ids of what mirrors the plan there
            (``stripe`` -> price id, ``stripe_product`` -> product id, ...).
    """

    id: str
    name: str
    description: str
    price: Money
    interval: Interval
    interval_count: int
    trial_period_days: int
    status: PlanStatus
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    processor_refs: dict[str, str] = field(default_factory=dict)
    version: int = 0

    @staticmethod
    def validate_schedule(interval: Interval, interval_count: int, trial_period_days: int) -> None:
        """Checks interval count and trial length."""
        if not 1 <= interval_count <= MAX_INTERVAL_COUNT[interval]:
            raise InvalidArgument.field(
                "interval_count", f"must be between 1 and {MAX_INTERVAL_COUNT[interval]} for {interval.value}"
            )
        if not 0 <= trial_period_days <= MAX_TRIAL_DAYS:
            raise InvalidArgument.field("trial_period_days", f"must be between 0 and {MAX_TRIAL_DAYS}")

    def archive(self, now: datetime) -> tuple[str, str]:
        """Archives the plan; existing subscriptions keep it."""
        if self.status is PlanStatus.ARCHIVED:
            raise IllegalTransition(f"plan {self.id} is already archived", reason="PLAN_ARCHIVED")
        before = self.status
        self.status = PlanStatus.ARCHIVED
        self.updated_at = now
        return before.value, self.status.value

    def ensure_active(self) -> None:
        """Raises unless new subscriptions may use the plan."""
        if self.status is not PlanStatus.ACTIVE:
            raise IllegalTransition(f"plan {self.id} is archived", reason="PLAN_ARCHIVED")


class SubscriptionStatus(StrEnum):
    """Lifecycle of a subscription."""

    INCOMPLETE = "incomplete"
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    PAUSED = "paused"
    CANCELED = "canceled"


_S = SubscriptionStatus
_SUBSCRIPTION_MOVES: dict[SubscriptionStatus, frozenset[SubscriptionStatus]] = {
    _S.INCOMPLETE: frozenset({_S.TRIALING, _S.ACTIVE, _S.PAST_DUE, _S.CANCELED}),
    _S.TRIALING: frozenset({_S.ACTIVE, _S.PAST_DUE, _S.PAUSED, _S.CANCELED}),
    _S.ACTIVE: frozenset({_S.PAST_DUE, _S.PAUSED, _S.CANCELED}),
    _S.PAST_DUE: frozenset({_S.ACTIVE, _S.PAUSED, _S.CANCELED}),
    _S.PAUSED: frozenset({_S.ACTIVE, _S.TRIALING, _S.PAST_DUE, _S.CANCELED}),
    _S.CANCELED: frozenset(),
}


class ProrationBehavior(StrEnum):
    """How a plan or quantity change is charged."""

    CREATE_PRORATIONS = "create_prorations"
    NONE = "none"
    ALWAYS_INVOICE = "always_invoice"


@dataclass
class ProcessorSubscriptionState:
    """A processor's view of a subscription in our terms.

    Attributes:
        processor_plan_id: The price or plan the processor bills now (Stripe price id, PayPal
            plan id), "" when the adapter cannot tell; the service maps it back to our plan.
        quantity: The quantity the processor bills now; 0 when the adapter cannot tell.
    """

    processor_id: str
    status: SubscriptionStatus
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    approval_url: str = ""
    processor_plan_id: str = ""
    quantity: int = 0


@dataclass
class Subscription:
    """A customer's recurring purchase of a plan."""

    id: str
    customer_id: str
    plan_id: str
    payment_method_id: str
    quantity: int
    status: SubscriptionStatus
    processor: Processor
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    processor_id: str = ""
    trial_end: datetime | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    paused_at: datetime | None = None
    approval_url: str = ""
    version: int = 0

    def _refuse(self, what: str, reason: str) -> IllegalTransition:
        return IllegalTransition(
            f"subscription {self.id} is {self.status.value} and cannot be {what}",
            reason=reason,
            metadata={"subscription_id": self.id, "status": self.status.value},
        )

    def ensure_updatable(self) -> None:
        """Raises unless a plan or quantity change is allowed."""
        if self.status in (_S.CANCELED, _S.INCOMPLETE):
            raise self._refuse("changed", "SUBSCRIPTION_NOT_UPDATABLE")

    def ensure_cancelable(self, at_period_end: bool) -> None:
        """Raises unless the subscription can be canceled this way."""
        if self.status is _S.CANCELED:
            raise self._refuse("canceled", "SUBSCRIPTION_CANCELED")
        if at_period_end and self.cancel_at_period_end:
            raise self._refuse("canceled again at period end", "SUBSCRIPTION_ALREADY_CANCELING")

    def ensure_pausable(self) -> None:
        """Raises unless the subscription may be paused."""
        if self.status not in (_S.ACTIVE, _S.TRIALING, _S.PAST_DUE):
            raise self._refuse("paused", "SUBSCRIPTION_NOT_PAUSABLE")

    def ensure_resumable(self) -> None:
        """Raises unless the subscription is paused."""
        if self.status is not _S.PAUSED:
            raise self._refuse("resumed", "SUBSCRIPTION_NOT_PAUSED")

    @property
    def at_processor(self) -> bool:
        """True once the processor holds this subscription (it has a processor id)."""
        return bool(self.processor_id)

    def cancel_unstarted(self, now: datetime) -> tuple[str, str]:
        """Ends a subscription its processor does not hold: it refused to create it, or it was
        canceled before the processor answered.

        CANCELED is terminal: nothing was created at the processor, so nothing can bill, and
        no later request has an id to send there.

        Raises:
            IllegalTransition: The processor holds the subscription, or it already ended.
        """
        if self.at_processor or self.status is not _S.INCOMPLETE:
            raise self._refuse("ended without its processor", "SUBSCRIPTION_AT_PROCESSOR")
        before = self.status
        self.status, self.canceled_at, self.updated_at, self.approval_url = _S.CANCELED, now, now, ""
        return before.value, self.status.value

    def _is_older(self, state: ProcessorSubscriptionState) -> bool:
        """True when ``state`` describes an earlier billing period than the one we hold.

        Periods only move forward at a processor, so a report whose period starts earlier (or
        starts together but ends earlier) was read before ours: applying it would move the
        subscription back in time.
        """
        start, end = state.current_period_start, state.current_period_end
        if start is not None and self.current_period_start is not None and start != self.current_period_start:
            return start < self.current_period_start
        return end is not None and self.current_period_end is not None and end < self.current_period_end

    def apply_processor_state(self, state: ProcessorSubscriptionState, now: datetime, *, plan_id: str = "") -> bool:
        """Converges on the processor's view; never moves the status or the billing period backwards.

        A report of an earlier billing period than ours (two concurrent re-reads finishing in
        the wrong order) changes nothing but a missing processor id. Plan and quantity are the
        ones the processor bills, never the ones a request asked for.

        Args:
            state: The processor's view.
            now: When it is applied.
            plan_id: Our plan for ``state.processor_plan_id`` ("" when unknown: keep ours).

        Returns:
            True when anything changed.
        """
        if state.processor_id:
            self.processor_id = state.processor_id
        if state.status != self.status and state.status not in _SUBSCRIPTION_MOVES[self.status]:
            return False
        if self._is_older(state):
            return False
        before = (
            self.status,
            self.current_period_start,
            self.current_period_end,
            self.trial_end,
            self.cancel_at_period_end,
            self.canceled_at,
            self.approval_url,
            self.plan_id,
            self.quantity,
        )
        if state.status is _S.PAUSED and self.status is not _S.PAUSED:
            self.paused_at = now
        elif state.status is not _S.PAUSED:
            self.paused_at = None
        self.status = state.status
        self.current_period_start = state.current_period_start or self.current_period_start
        self.current_period_end = state.current_period_end or self.current_period_end
        self.trial_end = state.trial_end
        self.cancel_at_period_end = state.cancel_at_period_end
        self.canceled_at = state.canceled_at or self.canceled_at
        self.approval_url = state.approval_url
        self.plan_id = plan_id or self.plan_id
        self.quantity = state.quantity if state.quantity > 0 else self.quantity
        after = (
            self.status,
            self.current_period_start,
            self.current_period_end,
            self.trial_end,
            self.cancel_at_period_end,
            self.canceled_at,
            self.approval_url,
            self.plan_id,
            self.quantity,
        )
        if before != after:
            self.updated_at = now
            return True
        return False


class InvoiceStatus(StrEnum):
    """Lifecycle of an invoice."""

    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


_INVOICE_MOVES: dict[InvoiceStatus, frozenset[InvoiceStatus]] = {
    InvoiceStatus.DRAFT: frozenset({InvoiceStatus.OPEN, InvoiceStatus.PAID, InvoiceStatus.VOID}),
    InvoiceStatus.OPEN: frozenset({InvoiceStatus.PAID, InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE}),
    InvoiceStatus.UNCOLLECTIBLE: frozenset({InvoiceStatus.PAID, InvoiceStatus.VOID}),
    InvoiceStatus.PAID: frozenset(),
    InvoiceStatus.VOID: frozenset(),
}


@dataclass
class InvoiceLine:
    """One line of an invoice."""

    description: str
    amount: Money
    quantity: int
    proration: bool = False


@dataclass
class ProcessorInvoiceState:
    """A processor's invoice in our terms (mirrored, never computed by us).

    Attributes:
        attempt_count: Payment attempts the processor made for the invoice so far, the
            successful one included (Stripe's ``attempt_count``); 0 when none or unknown.
        last_failure: Why the latest failed attempt failed (decline code and message only,
            never card data), when the processor says; None otherwise.
        next_attempt_at: When the processor retries next (Stripe's ``next_payment_attempt``).
    """

    processor_id: str
    processor_subscription_id: str
    status: InvoiceStatus
    amount_due: Money
    amount_paid: Money
    period_start: datetime | None
    period_end: datetime | None
    lines: list[InvoiceLine] = field(default_factory=list)
    created_at: datetime | None = None
    attempt_count: int = 0
    last_failure: PaymentFailure | None = None
    next_attempt_at: datetime | None = None


@dataclass
class Invoice:
    """A mirrored processor invoice for one subscription period.

    Attributes:
        attempt_count: The processor's payment attempts so far (never decreases).
        last_failure: Why the latest failed attempt failed, when the processor said.
        last_failure_time: When the mirror recorded the latest failed attempt.
        next_attempt_time: When the processor retries next; None when it will not.
    """

    id: str
    subscription_id: str
    customer_id: str
    processor: Processor
    processor_id: str
    status: InvoiceStatus
    amount_due: Money
    amount_paid: Money
    period_start: datetime | None
    period_end: datetime | None
    lines: list[InvoiceLine]
    created_at: datetime
    updated_at: datetime
    attempt_count: int = 0
    last_failure: PaymentFailure | None = None
    last_failure_time: datetime | None = None
    next_attempt_time: datetime | None = None
    version: int = 0

    def apply_processor_state(self, state: ProcessorInvoiceState, now: datetime) -> bool:
        """Converges on the processor's invoice; never moves backwards.

        The status follows the invoice state machine and the attempt count only grows, so a
        stale report (read before ours, or a duplicate) changes nothing it has already seen.
        Use :meth:`failed_attempt` before this call to tell whether the report adds a failed
        payment attempt.
        """
        if state.status != self.status and state.status not in _INVOICE_MOVES[self.status]:
            return False
        failed = self.failed_attempt(state)
        before = (self.status, self.amount_due, self.amount_paid, self.lines, self.attempt_count, self.last_failure)
        before_next = self.next_attempt_time
        self.status = state.status
        self.amount_due = state.amount_due
        self.amount_paid = state.amount_paid
        self.lines = list(state.lines)
        if state.attempt_count >= self.attempt_count:  # a report older than our count keeps ours
            self.next_attempt_time = state.next_attempt_at
        if self.status in (InvoiceStatus.PAID, InvoiceStatus.VOID):
            self.next_attempt_time = None  # nothing is retried any more
        if failed:
            self.last_failure = state.last_failure
            self.last_failure_time = now
        elif state.attempt_count == self.attempt_count and self.last_failure is None and state.last_failure:
            self.last_failure = state.last_failure  # the reason came after the count (read later)
        self.attempt_count = max(self.attempt_count, state.attempt_count)
        after = (self.status, self.amount_due, self.amount_paid, self.lines, self.attempt_count, self.last_failure)
        changed = before != after or before_next != self.next_attempt_time
        if changed:
            self.updated_at = now
        return changed

    def failed_attempt(self, state: ProcessorInvoiceState) -> bool:
        """True when ``state`` reports a failed payment attempt this mirror has not recorded.

        The count rose and the invoice is still unpaid (open, or uncollectible after the
        last retry). A count that rose to a paid invoice was the successful attempt; any
        failed ones before it that we never saw are not reported after the fact.
        """
        if state.status != self.status and state.status not in _INVOICE_MOVES[self.status]:
            return False
        unpaid = state.status in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE)
        return unpaid and state.attempt_count > self.attempt_count

    @staticmethod
    def first_seen_failed(state: ProcessorInvoiceState) -> bool:
        """True when an invoice mirrored for the first time already has a failed attempt."""
        unpaid = state.status in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE)
        return unpaid and state.attempt_count > 0
