"""The one place that decides whether and when a processor call is retried.

Retryable: connection errors and timeouts, 409 (a concurrent request with the same
idempotency key is still in flight at the processor), 429 and 5xx. Each retry reuses the
same idempotency key, so a retry can never move money twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from billing_service.domain.errors import BillingError, ProcessorError, ProcessorUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)

BAD_RESPONSE = "PROCESSOR_BAD_RESPONSE"
# What reading an answer of an unexpected shape raises: a missing field, a wrong type, a
# number that is not one, a currency or amount the domain refuses (InvalidArgument).
_PARSE_ERRORS = (BillingError, KeyError, IndexError, TypeError, ValueError, AttributeError, ArithmeticError)


def bad_response(
    processor: str, what: str, *, ids: Mapping[str, str] | None = None, detail: str = ""
) -> ProcessorError:
    """A processor answer we cannot read: the processor's fault (never the caller's), retryable.

    Whatever the call did at the processor stands, and a retry with the same idempotency key
    gets the same effect replayed; so the error carries every id that could be read (e.g.
    ``processor_payment_id``) for the caller to keep its record findable.
    """
    meta = {"processor": processor, **{k: v for k, v in (ids or {}).items() if v}}
    return ProcessorError(
        f"{processor} answered {what} in a form we cannot read" + (f" ({detail})" if detail else ""),
        reason=BAD_RESPONSE,
        retryable=True,
        metadata=meta,
    )


def parsed(processor: str, what: str, read: Callable[..., T], *args: Any, ids: Mapping[str, str] | None = None) -> T:
    """Runs ``read(*args)`` on a processor answer; any failure to read it is ``bad_response``.

    Only pure translation belongs in ``read``: errors from processor calls (declines, refusals)
    must not pass through here, or a refusal would turn into a retryable fault.
    """
    try:
        return read(*args)
    except _PARSE_ERRORS as exc:
        if isinstance(exc, ProcessorError) and exc.reason != BAD_RESPONSE:
            raise
        known = dict(exc.metadata) if isinstance(exc, ProcessorError) else {}
        detail = exc.message if isinstance(exc, BillingError) else type(exc).__name__
        raise bad_response(processor, what, ids={**known, **(ids or {})}, detail=detail) from exc


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff.

    Attributes:
        max_attempts: Total attempts including the first.
        base_delay: Delay ceiling before the second attempt, in seconds.
        max_delay: Upper bound of any single delay.
    """

    max_attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 4.0

    def delay(self, attempt: int) -> float:
        """Full-jitter delay before attempt ``attempt + 1`` (attempt counts from 1)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * (2 ** (attempt - 1))))


def is_retryable_http_status(status: int | None) -> bool:
    """True for statuses worth retrying; ``None`` means no response (network error)."""
    return status is None or status in (409, 429) or status >= 500


async def call_with_retries(
    operation: str,
    call: Callable[[], Awaitable[T]],
    classify: Callable[[Exception], ProcessorError],
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Runs ``call``, retrying retryable failures with jittered backoff.

    Args:
        operation: Name for logs, e.g. ``stripe.payment_intents.create``.
        call: The processor call (must reuse its idempotency key on every attempt).
        classify: Turns a vendor exception into a ``ProcessorError`` (sets ``retryable``).
        policy: Backoff settings.
        sleep: Injected for tests.

    Raises:
        ProcessorError: A non-retryable failure, as classified.
        ProcessorUnavailable: Retryable failures outlasted the policy.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except ProcessorError:
            raise
        except Exception as exc:
            error = classify(exc)
            if not error.retryable:
                raise error from exc
            if attempt >= policy.max_attempts:
                raise ProcessorUnavailable(
                    f"{operation} failed after {attempt} attempts: {error.message}",
                    retry_after_seconds=max(1.0, error.retry_after_seconds),
                    metadata=error.metadata,
                ) from exc
            delay = policy.delay(attempt)
            log.warning(
                "processor call failed, retrying",
                extra={"operation": operation, "attempt": attempt, "reason": error.reason, "delay_s": round(delay, 3)},
            )
            await sleep(delay)
