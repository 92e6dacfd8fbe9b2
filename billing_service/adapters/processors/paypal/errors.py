"""PayPal's error bodies and the one table from a PayPal failure to our domain errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from billing_service.adapters.processors.paypal.wire import Json
from billing_service.domain.errors import (
    BillingError,
    CaptureExceedsAuthorized,
    FieldViolation,
    InvalidArgument,
    PaymentDeclined,
    ProcessorConfigurationError,
    ProcessorError,
    RefundExceedsCaptured,
)

# Issues that mean "the buyer's instrument said no": the caller should ask for another.
DECLINE_ISSUES = frozenset(
    {
        "INSTRUMENT_DECLINED",
        "TRANSACTION_REFUSED",
        "PAYER_CANNOT_PAY",
        "CARD_EXPIRED",
        "CARD_CLOSED",
        "PAYER_ACTION_REQUIRED",
        "REDIRECT_PAYER_FOR_ALTERNATE_FUNDING",
        "TRANSACTION_BLOCKED_BY_PAYEE",
        "PAYEE_BLOCKED_TRANSACTION",
    }
)
_REFUND_TOO_LARGE = frozenset(
    {"REFUND_AMOUNT_EXCEEDED", "CAPTURE_FULLY_REFUNDED", "REFUND_EXCEEDED_TRANSACTION_AMOUNT"}
)
_CAPTURE_TOO_LARGE = frozenset({"MAX_CAPTURE_AMOUNT_EXCEEDED", "AMOUNT_GREATER_THAN_AUTHORIZED"})


class PayPalApiError:
    """PayPal's error body ``{"name", "message", "debug_id", "details": [...]}``.

    The OAuth endpoint answers ``{"error", "error_description"}`` instead; both are read.
    """

    def __init__(self, status: int, payload: Mapping[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.name = str(payload.get("name") or payload.get("error") or "")
        self.message = str(payload.get("message") or payload.get("error_description") or "")
        self.debug_id = str(payload.get("debug_id") or "")
        self.details: list[Json] = [dict(d) for d in payload.get("details") or [] if isinstance(d, Mapping)]
        self.retry_after = retry_after

    @property
    def issue(self) -> str:
        """The first detail's issue, or the error name."""
        for detail in self.details:
            if detail.get("issue"):
                return str(detail["issue"])
        return self.name

    def metadata(self) -> dict[str, str]:
        """Facts safe to return to callers (no credentials, no card data)."""
        meta = {"processor": "paypal", "http_status": str(self.status)}
        if self.issue:
            meta["issue"] = self.issue
        if self.debug_id:
            meta["debug_id"] = self.debug_id
        return meta

    def text(self) -> str:
        """A one-line description for messages and logs."""
        detail = next((str(d.get("description")) for d in self.details if d.get("description")), "")
        parts = [p for p in (self.name, self.issue if self.issue != self.name else "", self.message, detail) if p]
        return f"PayPal {self.status}: " + "; ".join(parts) + (f" (debug_id {self.debug_id})" if self.debug_id else "")


def translate_api_error(err: PayPalApiError, *, retryable: bool) -> BillingError:
    """Maps one PayPal HTTP error to the domain error the port promises.

    Args:
        err: The parsed error body.
        retryable: The verdict of ``retry.is_retryable_http_status`` for the status.
    """
    meta = err.metadata()
    issue = err.issue
    if retryable:
        reason = "PROCESSOR_RATE_LIMITED" if err.status == 429 else "PROCESSOR_UNAVAILABLE"
        return ProcessorError(
            err.text(), reason=reason, retryable=True, retry_after_seconds=err.retry_after or 1.0, metadata=meta
        )
    if err.status in (401, 403):
        return ProcessorConfigurationError(
            f"PayPal rejected our credentials or permissions: {err.text()}", metadata=meta
        )
    if issue in DECLINE_ISSUES:
        return PaymentDeclined(
            f"PayPal declined the payment: {err.text()}", metadata=meta | {"decline_code": issue.lower()}
        )
    if issue in _REFUND_TOO_LARGE:
        return RefundExceedsCaptured(err.text(), metadata=meta)
    if issue in _CAPTURE_TOO_LARGE:
        return CaptureExceedsAuthorized(err.text(), metadata=meta)
    if err.status == 404 or err.name == "RESOURCE_NOT_FOUND":
        return ProcessorError(err.text(), reason="PROCESSOR_RESOURCE_NOT_FOUND", metadata=meta)
    if err.status == 400 or err.name == "INVALID_REQUEST":
        violations = [
            FieldViolation(str(d.get("field", "")), str(d.get("description") or d.get("issue", "")))
            for d in err.details
        ]
        return InvalidArgument(err.text(), violations=violations, metadata=meta)
    return ProcessorError(err.text(), reason=issue or "PROCESSOR_ERROR", metadata=meta)
