"""The one place that decides whether and when a processor call is retried.

Retryable: connection errors and timeouts, 409 (a concurrent request with the same
idempotency key is still in flight at the processor), 429 and 5xx. Each retry reuses the
same idempotency key, so a retry can never move money twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from billing_service.domain.errors import ProcessorError, ProcessorUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)


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
