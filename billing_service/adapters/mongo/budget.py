"""The one place driver failures become ``StoreUnavailable``, within the caller's time budget.

Every store module (resources, idempotency, the inbox) runs its operations inside
:func:`unavailable`, so a dead or hung store answers within the caller's deadline (see
``MongoBillingStore.deadline``) and no PyMongo type crosses a port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from contextvars import ContextVar

import pymongo
from pymongo.errors import PyMongoError

from billing_service.domain.errors import StoreUnavailable

log = logging.getLogger(__name__)

# The caller's budget: monotonic end, per-operation floor once it is spent, and whether the
# driver still sees the store.
_budget: ContextVar[tuple[float, float, Callable[[], bool]] | None] = ContextVar("store_budget", default=None)
# Cleanup after a spent budget (releasing a lease) on a store the driver still sees: the
# caller's deadline has passed anyway, and a released lease lets its retry resume at once.
_REACHABLE_CLEANUP_SECONDS = 1.0


@contextmanager
def budget(seconds: float, cleanup_seconds: float, reachable: Callable[[], bool]) -> Iterator[None]:
    """Every operation started in the block ends within ``seconds`` from now (see ``time_limit``)."""
    token = _budget.set((time.monotonic() + seconds, cleanup_seconds, reachable))
    try:
        yield
    finally:
        _budget.reset(token)


def time_limit() -> AbstractContextManager[None]:
    """The driver timeout for one operation started now: what is left of the budget.

    An operation started once the budget is spent (releasing a lease after a timeout)
    still gets the floor, or a second while the driver still sees the store.
    """
    current = _budget.get()
    if current is None:
        return nullcontext()
    end, floor, reachable = current
    left = end - time.monotonic()
    if left <= floor and reachable():
        floor = max(floor, _REACHABLE_CLEANUP_SECONDS)
    return pymongo.timeout(max(left, floor, 0.001))


@asynccontextmanager
async def unavailable(what: str) -> AsyncIterator[None]:
    """Bounds the operation by the caller's budget and turns any driver failure into ``StoreUnavailable``."""
    try:
        with time_limit():
            yield
    except PyMongoError as exc:
        log.warning("store %s failed: %s", what, exc)
        raise StoreUnavailable(f"store {what} failed: {type(exc).__name__}") from exc
