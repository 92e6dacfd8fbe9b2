"""Domain errors.

Every failure the service reports on purpose is a :class:`BillingError` with a
class-level ``reason`` (UPPER_SNAKE). The gRPC layer maps the class to a status
code in exactly one table (``entrypoints/grpc_api/errors.py``).

Every reason the code raises, the class-level ones here and the precise ones passed
as ``reason=``, is the name of a ``billing.v1.ErrorReason`` value
(``protos/billing/v1/error_reason.proto``); ``tests/unit/test_error_reasons.py``
checks both directions. A reason built at run time from a processor's own code is not
listed there: the gRPC layer sends it under its class's reason, with the processor's
code in the ErrorInfo metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request.

    Attributes:
        field: Path of the field in the request, e.g. ``amount.currency``.
        description: Why the value was refused.
    """

    field: str
    description: str


class BillingError(Exception):
    """Base of every error the service raises on purpose.

    Attributes:
        reason: Stable machine-readable reason, UPPER_SNAKE.
        message: Human-readable explanation (never contains secrets or card data).
        metadata: Extra string facts for the caller (ids, decline codes, ...).
    """

    # The base class is never raised itself; its status code is FAILED_PRECONDITION.
    reason: ClassVar[str] = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        if reason is not None:
            # A precise reason for this instance (e.g. PAYMENT_NOT_CAPTURABLE); the class
            # still decides the status code.
            self.reason = reason  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message})"


class InvalidArgument(BillingError):
    """The request is malformed; nothing was changed."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: list[FieldViolation] | None = None,
        metadata: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata, reason=reason)
        self.violations: list[FieldViolation] = list(violations or [])

    @classmethod
    def field(cls, field_path: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        """Builds an error for a single bad field."""
        return cls(
            f"{field_path}: {description}",
            violations=[FieldViolation(field_path, description)],
            reason=reason,
        )


class CardDataNotAllowed(InvalidArgument):
    """A request carried something that looks like card data."""

    reason = "CARD_DATA_NOT_ALLOWED"


class IdempotencyKeyReused(BillingError):
    """The request_id was already used for a different request."""

    reason = "IDEMPOTENCY_KEY_REUSED"


class RequestInProgress(BillingError):
    """A request with the same request_id is still being processed."""

    reason = "REQUEST_IN_PROGRESS"


class NotFound(BillingError):
    """A named resource does not exist."""

    reason = "NOT_FOUND"

    def __init__(self, resource_type: str, resource_id: str, *, field_path: str = "") -> None:
        super().__init__(
            f"{resource_type} {resource_id!r} not found",
            metadata={"resource_type": resource_type, "resource_id": resource_id},
        )
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.field_path = field_path


class FailedPrecondition(BillingError):
    """The resource is not in a state that allows the operation."""

    reason = "FAILED_PRECONDITION"


class IllegalTransition(FailedPrecondition):
    """A state machine refused a move (e.g. capture a cancelled payment)."""

    reason = "ILLEGAL_STATE_TRANSITION"


class RefundExceedsCaptured(FailedPrecondition):
    """The refund would take the refunded total past the captured amount."""

    reason = "REFUND_EXCEEDS_CAPTURED"


class CaptureExceedsAuthorized(FailedPrecondition):
    """A capture asked for more than the authorized amount."""

    reason = "CAPTURE_EXCEEDS_AUTHORIZED"


class PaymentDeclined(FailedPrecondition):
    """The processor declined the payment."""

    reason = "PAYMENT_DECLINED"


class NotSupportedByProcessor(FailedPrecondition):
    """The chosen processor cannot do what was asked."""

    reason = "NOT_SUPPORTED_BY_PROCESSOR"


class ProcessorMismatch(FailedPrecondition):
    """Two resources in one request belong to different processors or customers."""

    reason = "PROCESSOR_MISMATCH"


class ConcurrencyConflict(BillingError):
    """An optimistic-concurrency check failed; the caller may retry."""

    reason = "CONCURRENT_MODIFICATION"


class ProcessorError(BillingError):
    """A payment processor failed in a way that is not a decline.

    Attributes:
        retryable: True when the same call may succeed later (network, 429, 5xx).
        retry_after_seconds: A hint for the caller's backoff when retryable.
    """

    reason = "PROCESSOR_ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str = "PROCESSOR_ERROR",
        retryable: bool = False,
        retry_after_seconds: float = 1.0,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata, reason=reason)
        self.retryable = retryable
        self.retry_after_seconds = retry_after_seconds


class ProcessorUnavailable(ProcessorError):
    """The processor could not be reached or kept failing after retries."""

    def __init__(
        self, message: str, *, retry_after_seconds: float = 1.0, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(
            message,
            reason="PROCESSOR_UNAVAILABLE",
            retryable=True,
            retry_after_seconds=retry_after_seconds,
            metadata=metadata,
        )


class ProcessorConfigurationError(ProcessorError):
    """The processor rejected our credentials or permissions (a deployment bug)."""

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, reason="PROCESSOR_MISCONFIGURED", retryable=False, metadata=metadata)


class StoreUnavailable(BillingError):
    """The store could not complete an operation; nothing was half-written."""

    reason = "STORE_UNAVAILABLE"


class Unauthenticated(BillingError):
    """The caller presented no valid credentials."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(BillingError):
    """The caller may not call this method."""

    reason = "PERMISSION_DENIED"
