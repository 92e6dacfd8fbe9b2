"""The janitor as a background loop of ``serve``: one replica at a time (a lease) sweeps history.

What a pass removes, and how, is the adapter's business (``adapters/mongo/janitor.py``);
the composition root hands this loop a ``sweep`` bound to this replica's name and lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from billing_service.domain.errors import BillingError
from billing_service.service_layer.ports import Clock

log = logging.getLogger(__name__)


class JanitorLoop:
    """Runs ``sweep`` every ``interval`` seconds (it sweeps only while holding the janitor lease).

    Args:
        sweep: One leased pass at the given time; returns what it removed.
        clock: Time source.
        interval: Seconds between passes (0 disables the loop).
    """

    def __init__(self, sweep: Callable[[datetime], Awaitable[object]], clock: Clock, interval: float) -> None:
        self._sweep = sweep
        self._clock = clock
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the loop in the background (no-op when disabled)."""
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="janitor")

    async def run_once(self) -> object:
        """One leased pass now (tests, and the loop's body); returns the adapter's report."""
        return await self._sweep(self._clock.now())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_once()
            except BillingError as exc:  # the store is down: try again next round
                log.warning("janitor pass failed", extra={"reason": exc.reason})
            except Exception:  # a bug must not end the loop for the life of the process
                log.exception("janitor pass failed")

    async def stop(self) -> None:
        """Stops the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
