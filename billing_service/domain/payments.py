"""Payments and refunds with explicit state machines.

The refund invariant (refunded + pending refunds <= captured) is kept on the Payment
itself: a refund first *reserves* its amount on the payment (an optimistic-concurrency
write), so concurrent refunds cannot together exceed what was captured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from billing_service.domain.common import Processor, RequestOrigin
from billing_service.domain.errors import (
    CaptureExceedsAuthorized,
    IllegalTransition,
    InvalidArgument,
    RefundExceedsCaptured,
)
from billing_service.domain.money import Money


class CaptureMethod(StrEnum):
    """When the authorized money is taken."""

    AUTOMATIC = "automatic"
    MANUAL = "manual"


class PaymentStatus(StrEnum):
    """Lifecycle of a payment."""

    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


# Moves the state machine allows. Anything else is refused, and a processor report of an
# earlier state (a reordered webhook) is ignored rather than applied.
_PAYMENT_MOVES: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    PaymentStatus.PENDING: frozenset(
        {
            PaymentStatus.REQUIRES_ACTION,
            PaymentStatus.PROCESSING,
            PaymentStatus.REQUIRES_CAPTURE,
            PaymentStatus.SUCCEEDED,
            PaymentStatus.FAILED,
            PaymentStatus.CANCELED,
        }
    ),
    PaymentStatus.REQUIRES_ACTION: frozenset(
        {
            PaymentStatus.PROCESSING,
            PaymentStatus.REQUIRES_CAPTURE,
            PaymentStatus.SUCCEEDED,
            PaymentStatus.FAILED,
            PaymentStatus.CANCELED,
        }
    ),
    PaymentStatus.PROCESSING: frozenset(
        {PaymentStatus.REQUIRES_CAPTURE, PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED}
    ),
    # No way back to PROCESSING: a stale "processing" report must not undo an authorization.
    PaymentStatus.REQUIRES_CAPTURE: frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.CANCELED, PaymentStatus.FAILED}),
    PaymentStatus.SUCCEEDED: frozenset(),
    PaymentStatus.FAILED: frozenset(),
    PaymentStatus.CANCELED: frozenset(),
}

FINAL_PAYMENT_STATUSES = frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED})


@dataclass
class PaymentFailure:
    """Why a payment failed, as the processor said it."""

    code: str = ""
    decline_code: str = ""
    message: str = ""


@dataclass
class NextAction:
    """What the buyer must do before the payment can go on.

    Attributes:
        client_secret: Lets the buyer's browser finish the payment (Stripe.js), so it is
            handed to the caller and never stored (``stored: False``): a payment read
            back from the store has none, ``get_payment`` asks the processor for it.
        redirect_url: Where the buyer approves (PayPal); kept.
    """

    client_secret: str = field(default="", metadata={"stored": False})
    redirect_url: str = ""


@dataclass
class ProcessorPaymentState:
    """A processor's view of a payment, already translated into our terms.

    Adapters build this; the domain decides whether and how to apply it.
    """

    processor_id: str
    status: PaymentStatus
    amount_capturable: int = 0
    amount_captured: int = 0
    next_action: NextAction | None = None
    failure: PaymentFailure | None = None


@dataclass
class Payment:
    """One attempt to take money from a customer's payment method.

    Amounts are kept in minor units of ``amount.currency``. ``amount_refund_pending`` holds
    the sum of refunds that were requested but not yet settled.
    """

    id: str
    customer_id: str
    payment_method_id: str
    processor: Processor
    amount: Money
    capture_method: CaptureMethod
    status: PaymentStatus
    description: str
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    processor_id: str = ""
    amount_capturable: int = 0
    amount_captured: int = 0
    amount_refunded: int = 0
    amount_refund_pending: int = 0
    next_action: NextAction | None = None
    failure: PaymentFailure | None = None
    off_session: bool = False
    version: int = 0
    dispute_ids: list[str] = field(default_factory=list)
    origin: RequestOrigin | None = None
    # Set when the record went final without a processor id although an attempt may have
    # reached the processor (or when a cancel raced a create): reconciliation looks the
    # payment up by our id once this time has passed, then clears it.
    lookup_after: datetime | None = None

    @property
    def currency(self) -> str:
        """The payment's currency."""
        return self.amount.currency

    def money(self, minor: int) -> Money:
        """Builds a Money in this payment's currency."""
        return Money(minor, self.currency)

    @property
    def is_final(self) -> bool:
        """True once the status can no longer change."""
        return self.status in FINAL_PAYMENT_STATUSES

    def can_move_to(self, status: PaymentStatus) -> bool:
        """True if the state machine allows ``self.status -> status``."""
        return status in _PAYMENT_MOVES[self.status]

    def apply_processor_state(self, state: ProcessorPaymentState, now: datetime) -> bool:
        """Converges on the processor's view; returns True when something changed.

        A report of the current status refreshes amounts and next action; a report of a
        status the machine cannot reach from here (an older, reordered event) is ignored, so
        state never moves backwards.
        """
        if state.processor_id:
            self.processor_id = state.processor_id
        if state.status != self.status and not self.can_move_to(state.status):
            return False
        changed = (
            state.status != self.status
            or state.amount_capturable != self.amount_capturable
            or max(state.amount_captured, self.amount_captured) != self.amount_captured
        )
        self.status = state.status
        self.amount_capturable = state.amount_capturable
        # Captured money only grows; a stale report must not shrink it.
        self.amount_captured = max(self.amount_captured, state.amount_captured)
        self.next_action = state.next_action if state.status is PaymentStatus.REQUIRES_ACTION else None
        if state.failure is not None:
            self.failure = state.failure
        if changed:
            self.updated_at = now
        return changed

    def contradicted_by(self, state: ProcessorPaymentState) -> bool:
        """True when a final CANCELED/FAILED record meets a processor that moved or holds money.

        Such a report is drift: it must be repaired (see ``repair_captured``, or a void at
        the processor for an authorization), never dropped as an old, reordered event.
        """
        money_states = (
            PaymentStatus.SUCCEEDED,
            PaymentStatus.REQUIRES_CAPTURE,
            PaymentStatus.REQUIRES_ACTION,
            PaymentStatus.PROCESSING,
        )
        return self.status in (PaymentStatus.CANCELED, PaymentStatus.FAILED) and state.status in money_states

    def repair_captured(self, state: ProcessorPaymentState, now: datetime) -> PaymentStatus | None:
        """Drift repair: the processor captured money on a payment we recorded CANCELED/FAILED.

        Nothing charged may stay recorded as canceled or failed, so the record takes the
        processor's SUCCEEDED over the state machine's finality.

        Returns:
            The status before the repair, or None when ``state`` is not such a contradiction.
        """
        if not (self.contradicted_by(state) and state.status is PaymentStatus.SUCCEEDED):
            return None
        before = self.status
        if state.processor_id:
            self.processor_id = state.processor_id
        self.status = PaymentStatus.SUCCEEDED
        self.amount_captured = max(self.amount_captured, state.amount_captured)
        self.amount_capturable = 0
        self.next_action = None
        self.failure = None
        self.lookup_after = None
        self.updated_at = now
        return before

    def ensure_capturable(self, amount: Money | None) -> Money:
        """Checks a capture request; returns the amount to capture.

        Raises:
            IllegalTransition: The payment is not awaiting capture.
            CaptureExceedsAuthorized: More than the capturable amount was asked for.
        """
        if self.status is not PaymentStatus.REQUIRES_CAPTURE:
            raise IllegalTransition(
                f"payment {self.id} is {self.status.value}; only a payment in requires_capture can be captured",
                reason="PAYMENT_NOT_CAPTURABLE",
                metadata={"payment_id": self.id, "status": self.status.value},
            )
        if amount is None:
            return self.money(self.amount_capturable)
        if amount.currency != self.currency:
            raise InvalidArgument.field("amount.currency", f"must be {self.currency}, the payment's currency")
        if amount.amount_minor > self.amount_capturable:
            raise CaptureExceedsAuthorized(
                f"cannot capture {amount} from payment {self.id}: "
                f"only {self.money(self.amount_capturable)} is capturable",
                metadata={"payment_id": self.id, "amount_capturable": str(self.amount_capturable)},
            )
        return amount

    def ensure_cancelable(self) -> None:
        """Raises unless the payment may still be canceled (nothing captured yet)."""
        if self.status not in (PaymentStatus.PENDING, PaymentStatus.REQUIRES_ACTION, PaymentStatus.REQUIRES_CAPTURE):
            raise IllegalTransition(
                f"payment {self.id} is {self.status.value} and can no longer be canceled",
                reason="PAYMENT_NOT_CANCELABLE",
                metadata={"payment_id": self.id, "status": self.status.value},
            )

    @property
    def refundable_minor(self) -> int:
        """Captured money not yet refunded nor reserved by a pending refund."""
        return self.amount_captured - self.amount_refunded - self.amount_refund_pending

    def reserve_refund(self, amount: Money | None) -> Money:
        """Reserves ``amount`` (default: everything refundable) for a new refund.

        Raises:
            IllegalTransition: Nothing was captured.
            RefundExceedsCaptured: The refunds would exceed the captured amount.
        """
        if self.status is not PaymentStatus.SUCCEEDED or self.amount_captured == 0:
            raise IllegalTransition(
                f"payment {self.id} is {self.status.value}; only a captured payment can be refunded",
                reason="PAYMENT_NOT_REFUNDABLE",
                metadata={"payment_id": self.id, "status": self.status.value},
            )
        if amount is None:
            amount = self.money(self.refundable_minor)
            if amount.is_zero():
                raise RefundExceedsCaptured(
                    f"payment {self.id} is already fully refunded", metadata={"payment_id": self.id, "refundable": "0"}
                )
        if amount.currency != self.currency:
            raise InvalidArgument.field("amount.currency", f"must be {self.currency}, the payment's currency")
        if amount.amount_minor > self.refundable_minor:
            raise RefundExceedsCaptured(
                f"cannot refund {amount}: only {self.money(self.refundable_minor)} of payment {self.id} is refundable",
                metadata={"payment_id": self.id, "refundable": str(self.refundable_minor)},
            )
        self.amount_refund_pending += amount.amount_minor
        return amount

    def settle_refund(
        self, amount_minor: int, *, before: RefundStatus | None, after: RefundStatus, now: datetime
    ) -> None:
        """Moves a refund's amount between pending, refunded and released.

        ``before`` is None for a refund we learn about only now (made outside the service).
        """
        held = {RefundStatus.PENDING: "pending", RefundStatus.SUCCEEDED: "refunded"}
        src, dst = (held.get(before) if before is not None else None), held.get(after)
        if src == dst:
            return
        if src == "pending":
            self.amount_refund_pending -= amount_minor
        elif src == "refunded":
            self.amount_refunded -= amount_minor
        if dst == "pending":
            self.amount_refund_pending += amount_minor
        elif dst == "refunded":
            self.amount_refunded += amount_minor
        self.updated_at = now


class RefundReason(StrEnum):
    """Why money is returned."""

    UNSPECIFIED = ""
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    REQUESTED_BY_CUSTOMER = "requested_by_customer"


class RefundStatus(StrEnum):
    """Lifecycle of a refund."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


_REFUND_MOVES: dict[RefundStatus, frozenset[RefundStatus]] = {
    RefundStatus.PENDING: frozenset({RefundStatus.SUCCEEDED, RefundStatus.FAILED, RefundStatus.CANCELED}),
    # Processors report bank refunds that bounce after succeeding.
    RefundStatus.SUCCEEDED: frozenset({RefundStatus.FAILED}),
    RefundStatus.FAILED: frozenset(),
    RefundStatus.CANCELED: frozenset(),
}


@dataclass
class ProcessorRefundState:
    """A processor's view of a refund in our terms.

    Attributes:
        processor_payment_id: The refunded payment at the processor, when the adapter knows it
            (lets us mirror a refund made outside the service, e.g. in Stripe's dashboard).
        amount_minor: The refunded amount in the payment's minor units (0 when unknown).
        refund_id: Our refund id as the processor echoes it back (metadata), when it does.
    """

    processor_id: str
    status: RefundStatus
    failure_reason: str = ""
    processor_payment_id: str = ""
    amount_minor: int = 0
    refund_id: str = ""


@dataclass
class Refund:
    """Money returned from a captured payment."""

    id: str
    payment_id: str
    processor: Processor
    amount: Money
    reason: RefundReason
    status: RefundStatus
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    processor_id: str = ""
    failure_reason: str = ""
    version: int = 0
    origin: RequestOrigin | None = None
    # As on Payment: a refund that went FAILED without a processor id after an attempt that
    # may have reached the processor is looked up once by reconciliation.
    lookup_after: datetime | None = None

    def repair_succeeded(self, state: ProcessorRefundState, now: datetime) -> RefundStatus | None:
        """Drift repair: the processor returned money on a refund we recorded FAILED/CANCELED.

        Returns:
            The status before the repair, or None when ``state`` is not such a contradiction.
        """
        final = (RefundStatus.FAILED, RefundStatus.CANCELED)
        if self.status not in final or state.status not in (RefundStatus.SUCCEEDED, RefundStatus.PENDING):
            return None
        before = self.status
        if state.processor_id:
            self.processor_id = state.processor_id
        self.status = state.status
        self.failure_reason = ""
        self.lookup_after = None
        self.updated_at = now
        return before

    def apply_processor_state(self, state: ProcessorRefundState, now: datetime) -> RefundStatus | None:
        """Converges on the processor's view.

        Returns:
            The status before the change when the status moved, else None.
        """
        if state.processor_id:
            self.processor_id = state.processor_id
        if state.status == self.status or state.status not in _REFUND_MOVES[self.status]:
            return None
        before = self.status
        self.status = state.status
        self.failure_reason = state.failure_reason
        self.updated_at = now
        return before
