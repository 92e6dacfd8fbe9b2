"""Customers and their payment methods (processor tokens only, never card data)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from billing_service.domain.common import Processor
from billing_service.domain.errors import IllegalTransition, InvalidArgument

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


def validate_email(email: str, field_path: str = "email") -> str:
    """Checks that ``email`` looks like an address (empty is allowed)."""
    if email and (len(email) > 320 or not _EMAIL.match(email)):
        raise InvalidArgument.field(field_path, "is not an email address")
    return email


@dataclass
class Customer:
    """Someone we take money from.

    Attributes:
        processor_refs: The customer's id at each processor, created lazily on first use.
        default_processor: Processor used when a request does not choose one.
    """

    id: str
    email: str
    name: str
    description: str
    metadata: dict[str, str]
    default_processor: Processor
    created_at: datetime
    updated_at: datetime
    processor_refs: dict[str, str] = field(default_factory=dict)
    version: int = 0


class PaymentMethodType(StrEnum):
    """Kind of instrument behind a processor token."""

    CARD = "card"
    PAYPAL = "paypal"


class PaymentMethodStatus(StrEnum):
    """Whether the method can still be charged."""

    ATTACHED = "attached"
    DETACHED = "detached"


@dataclass
class PaymentMethod:
    """A processor-held instrument. We keep only what DESIGN.md allows.

    Attributes:
        processor_id: The processor's id of the instrument (``pm_...``, a vault token id).
        brand: Card brand (``visa``) or empty for wallets.
        last4: Last four digits, display only.
        exp_month: Expiry month, 1-12, or 0 when not a card.
        exp_year: Expiry year, or 0 when not a card.
    """

    id: str
    customer_id: str
    processor: Processor
    processor_id: str
    type: PaymentMethodType
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    status: PaymentMethodStatus
    created_at: datetime
    updated_at: datetime
    version: int = 0

    def detach(self, now: datetime) -> tuple[str, str]:
        """Detaches the method; returns (before, after) status.

        Raises:
            IllegalTransition: Already detached.
        """
        if self.status is PaymentMethodStatus.DETACHED:
            raise IllegalTransition(f"payment method {self.id} is already detached", reason="PAYMENT_METHOD_DETACHED")
        before = self.status
        self.status = PaymentMethodStatus.DETACHED
        self.updated_at = now
        return before.value, self.status.value

    def ensure_usable(self) -> None:
        """Raises unless the method can be charged."""
        if self.status is not PaymentMethodStatus.ATTACHED:
            raise IllegalTransition(f"payment method {self.id} is detached", reason="PAYMENT_METHOD_DETACHED")
