"""The one table that maps domain errors to gRPC status codes (AIP-193).

Every error leaves as a ``google.rpc.Status`` carrying exactly one ``ErrorInfo`` (domain
``billing.v1``), plus ``BadRequest`` field violations for bad input and ``RetryInfo`` for
failures worth retrying. ``INTERNAL`` is reserved for bugs.

The ErrorInfo ``reason`` is always the name of a ``billing.v1.ErrorReason`` value. A reason
built at run time from a processor's own error code (Stripe's ``code``, PayPal's ``issue``)
is not one: it is sent as the nearest listed reason of its class (``PROCESSOR_ERROR``,
``INVALID_ARGUMENT``...) with the processor's code under the metadata key
``processor_reason``.
"""

from __future__ import annotations

import logging

import grpc
from billing.v1 import error_reason_pb2
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from billing_service.domain.errors import (
    BillingError,
    ConcurrencyConflict,
    FailedPrecondition,
    FieldViolation,
    IdempotencyKeyReused,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProcessorConfigurationError,
    ProcessorError,
    RequestInProgress,
    StoreUnavailable,
    Unauthenticated,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "billing.v1"

#: Every reason the API may send: the names of billing.v1.ErrorReason, except UNSPECIFIED.
REASONS: frozenset[str] = frozenset(
    name for name in error_reason_pb2.ErrorReason.DESCRIPTOR.values_by_name if name != "ERROR_REASON_UNSPECIFIED"
)
_INTERNAL = error_reason_pb2.ErrorReason.Name(error_reason_pb2.INTERNAL)
_DEADLINE_EXCEEDED = error_reason_pb2.ErrorReason.Name(error_reason_pb2.DEADLINE_EXCEEDED)
_FALLBACK = error_reason_pb2.ErrorReason.Name(error_reason_pb2.FAILED_PRECONDITION)
PROCESSOR_REASON_KEY = "processor_reason"

# Most specific class first: the first isinstance match wins.
_TABLE: list[tuple[type[BillingError], grpc.StatusCode]] = [
    (IdempotencyKeyReused, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (RequestInProgress, grpc.StatusCode.ABORTED),
    (ConcurrencyConflict, grpc.StatusCode.ABORTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ProcessorConfigurationError, grpc.StatusCode.FAILED_PRECONDITION),
    (ProcessorError, grpc.StatusCode.FAILED_PRECONDITION),  # retryable ones: see status_code()
]

# Retry hints for the transient kinds, in seconds.
_RETRY_AFTER: dict[type[BillingError], float] = {
    RequestInProgress: 1.0,
    ConcurrencyConflict: 0.1,
    StoreUnavailable: 1.0,
}


def status_code(error: BillingError) -> grpc.StatusCode:
    """Returns the gRPC code for a domain error."""
    if isinstance(error, ProcessorError) and error.retryable:
        return grpc.StatusCode.UNAVAILABLE
    for cls, code in _TABLE:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def wire_reason(error: BillingError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason for ``error`` and any metadata its normalisation adds.

    A listed reason is sent as is; an unlisted one (a processor's own code) is replaced by
    the reason of the nearest class in the error's hierarchy that has a listed one.
    """
    if error.reason in REASONS:
        return error.reason, {}
    for cls in type(error).__mro__:
        reason = cls.__dict__.get("reason")
        if isinstance(reason, str) and reason in REASONS:
            return reason, {PROCESSOR_REASON_KEY: error.reason}
    return _FALLBACK, {PROCESSOR_REASON_KEY: error.reason}


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _retry_after(error: BillingError) -> float | None:
    if isinstance(error, ProcessorError) and error.retryable:
        return error.retry_after_seconds
    for cls, seconds in _RETRY_AFTER.items():
        if isinstance(error, cls):
            return seconds
    return None


# Size caps (UTF-8 bytes) on what an error echoes back. A status travels in trailers, which
# clients refuse beyond 8-16 KiB, so an error quoting a huge request value would reach the
# caller as RESOURCE_EXHAUSTED "Stream removed" instead of itself (found by fuzzing).
_MAX_MESSAGE = 400
_MAX_VALUE = 128
_MAX_VIOLATIONS = 5


def _clip(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def to_status(error: BillingError) -> grpc.Status:
    """Builds the rich status for ``error`` (echoed values are clipped to a few hundred bytes)."""
    code = status_code(error)
    reason, extra = wire_reason(error)
    metadata = {**extra, **error.metadata}
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=reason,
                domain=ERROR_DOMAIN,
                metadata={_clip(k, _MAX_VALUE): _clip(str(v), _MAX_VALUE) for k, v in metadata.items()},
            )
        )
    ]
    violations: list[FieldViolation] = []
    if isinstance(error, InvalidArgument):
        violations = error.violations
    elif isinstance(error, NotFound) and error.field_path:
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=error.resource_type, resource_name=_clip(error.resource_id, _MAX_VALUE)
                )
            )
        )
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=_clip(v.field, _MAX_VALUE), description=_clip(v.description, 2 * _MAX_VALUE)
                        )
                        for v in violations[:_MAX_VIOLATIONS]
                    ]
                )
            )
        )
    retry_after = _retry_after(error)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(retry_after * 1000))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=_clip(error.message, _MAX_MESSAGE), details=details)
    )


def internal_status(method: str) -> grpc.Status:
    """Status for an unexpected exception (a bug); details stay in our logs."""
    info = error_details_pb2.ErrorInfo(reason=_INTERNAL, domain=ERROR_DOMAIN, metadata={"method": method})
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; it has been logged", details=[_pack(info)])
    )


def deadline_status(method: str) -> grpc.Status:
    """Status for work cut off by the caller's deadline."""
    info = error_details_pb2.ErrorInfo(reason=_DEADLINE_EXCEEDED, domain=ERROR_DOMAIN, metadata={"method": method})
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.DEADLINE_EXCEEDED,
            message="the deadline expired before the request finished; retry with the same request_id",
            details=[_pack(info)],
        )
    )
