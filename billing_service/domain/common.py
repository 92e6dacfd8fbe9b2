"""Types shared by every resource: processors, metadata rules, audit events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from billing_service.domain.errors import InvalidArgument


class Processor(StrEnum):
    """Who moves the money for a resource."""

    STRIPE = "stripe"
    PAYPAL = "paypal"
    FAKE = "fake"


MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LEN = 40
MAX_METADATA_VALUE_LEN = 500


def validate_metadata(metadata: dict[str, str], *, field_path: str = "metadata") -> dict[str, str]:
    """Checks caller metadata against Stripe-compatible limits and returns a copy.

    Raises:
        InvalidArgument: Too many keys, empty or oversized keys or values.
    """
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidArgument.field(field_path, f"at most {MAX_METADATA_KEYS} keys are allowed")
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY_LEN:
            raise InvalidArgument.field(
                f"{field_path}[{key[:40]}]", f"keys must be 1 to {MAX_METADATA_KEY_LEN} characters"
            )
        if key.startswith("$") or "." in key:
            raise InvalidArgument.field(f"{field_path}[{key}]", "keys must not start with '$' or contain '.'")
        if len(value) > MAX_METADATA_VALUE_LEN:
            raise InvalidArgument.field(
                f"{field_path}[{key}]", f"values must be at most {MAX_METADATA_VALUE_LEN} characters"
            )
    return dict(metadata)


def validate_text(value: str, field_path: str, *, max_len: int, required: bool = False) -> str:
    """Checks a free-text field's presence and length."""
    if required and not value.strip():
        raise InvalidArgument.field(field_path, "is required")
    if len(value) > max_len:
        raise InvalidArgument.field(field_path, f"must be at most {max_len} characters")
    return value


@dataclass(frozen=True)
class RequestOrigin:
    """The request that created a resource.

    Kept on payments and refunds so whoever finishes or verifies the work (a cancel, the
    reconciler) can find the creating request's idempotency record and rebuild the very
    processor keys it sent.
    """

    caller: str
    method: str
    request_id: str


@dataclass
class AuditEvent:
    """An append-only record of one state change.

    Attributes:
        id: Event id.
        caller: Authenticated identity that caused the change (or ``webhook:<processor>``).
        request_id: The caller's idempotency key, or the webhook event id.
        action: What happened, e.g. ``payment.captured``.
        resource_type: ``payment``, ``refund``, ...
        resource_id: The changed resource.
        before_status: Status before the change (empty on creation).
        after_status: Status after the change.
        at: When the change was written.
        data: Extra facts (amounts as strings of minor units, processor ids).
    """

    id: str
    caller: str
    request_id: str
    action: str
    resource_type: str
    resource_id: str
    before_status: str
    after_status: str
    at: datetime
    data: dict[str, str] = field(default_factory=dict)
