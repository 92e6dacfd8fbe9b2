"""Disputes (chargebacks and inquiries) raised by a buyer's bank or wallet against a payment.

Processors report disputes through webhooks only; we mirror them and never move a
dispute's state backwards, so a reordered ``closed`` before ``created`` ends the same as
in-order delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from billing_service.domain.common import Processor
from billing_service.domain.money import Money


class DisputeStatus(StrEnum):
    """Lifecycle of a dispute.

    ``NEEDS_RESPONSE`` and ``UNDER_REVIEW`` are open; ``WON``, ``LOST`` and
    ``WARNING_CLOSED`` (an inquiry that closed without becoming a chargeback) are final.
    """

    NEEDS_RESPONSE = "needs_response"
    UNDER_REVIEW = "under_review"
    WON = "won"
    LOST = "lost"
    WARNING_CLOSED = "warning_closed"


FINAL_DISPUTE_STATUSES = frozenset({DisputeStatus.WON, DisputeStatus.LOST, DisputeStatus.WARNING_CLOSED})

# Open stages only move forward; a final status never changes.
_RANK = {DisputeStatus.NEEDS_RESPONSE: 0, DisputeStatus.UNDER_REVIEW: 1}


@dataclass
class ProcessorDisputeState:
    """A processor's view of a dispute in our terms.

    Attributes:
        processor_id: The processor's dispute id (``du_...``, ``PP-D-...``).
        processor_payment_id: The disputed payment's id at the processor, when known.
        payment_id: Our payment id when the processor echoes it (metadata, custom id).
        opened_at: When the processor opened the dispute; None when its report does not
            say (we then take the time we learn of it).
        closed_at: When the processor closed it (final statuses only).
    """

    processor_id: str
    status: DisputeStatus
    amount: Money
    reason: str
    opened_at: datetime | None
    processor_payment_id: str = ""
    payment_id: str = ""
    closed_at: datetime | None = None


@dataclass
class Dispute:
    """A buyer's challenge of a payment, mirrored from the processor.

    Attributes:
        reason: The processor's reason, lower snake case (``fraudulent``, ``merchandise_or_service_not_received``).
        opened_at: When the dispute was opened at the processor.
        closed_at: When it reached a final status; None while open.
    """

    id: str
    payment_id: str
    processor: Processor
    processor_id: str
    amount: Money
    reason: str
    status: DisputeStatus
    opened_at: datetime
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    version: int = 0

    @property
    def is_final(self) -> bool:
        """True once the dispute is decided."""
        return self.status in FINAL_DISPUTE_STATUSES

    @property
    def time_to_resolution(self) -> timedelta | None:
        """How long the dispute was open; None while it still is."""
        if self.closed_at is None:
            return None
        return max(self.closed_at - self.opened_at, timedelta(0))

    def can_move_to(self, status: DisputeStatus) -> bool:
        """True if ``self.status -> status`` moves forward."""
        if self.is_final:
            return False
        if status in FINAL_DISPUTE_STATUSES:
            return True
        return _RANK[status] > _RANK[self.status]

    def apply_processor_state(self, state: ProcessorDisputeState, now: datetime) -> DisputeStatus | None:
        """Converges on the processor's view; never moves backwards.

        Returns:
            The status before the change when the status moved, else None.
        """
        if state.status == self.status or not self.can_move_to(state.status):
            return None
        before = self.status
        self.status = state.status
        self.amount = state.amount if state.amount.currency == self.amount.currency else self.amount
        self.reason = state.reason or self.reason
        if self.is_final:
            self.closed_at = state.closed_at or now
        self.updated_at = now
        return before
