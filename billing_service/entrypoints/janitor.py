"""The janitor as a background loop of ``serve``: one replica at a time (a lease) sweeps history."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from datetime import timedelta

from billing_service.adapters.mongo.inbox import MongoWebhookInbox
from billing_service.adapters.mongo.janitor import MongoJanitor, SweepReport
from billing_service.bootstrap import Runtime
from billing_service.domain.errors import BillingError

log = logging.getLogger(__name__)


def build_janitor(runtime: Runtime) -> MongoJanitor:
    """The janitor over the runtime's store, with the configured inbox retention."""
    database = runtime.store.database
    inbox = MongoWebhookInbox(
        database.client, database.name, retention=timedelta(days=runtime.settings.webhook_retention_days)
    )
    return MongoJanitor(database.client, database.name, inbox)


class JanitorLoop:
    """Sweeps every ``interval`` seconds on whichever replica holds the ``janitor`` lease.

    Args:
        runtime: The process's store.
        interval: Seconds between passes (0 disables the loop).
    """

    def __init__(self, runtime: Runtime, interval: float) -> None:
        self._runtime = runtime
        self._interval = interval
        self._janitor = build_janitor(runtime)
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the loop in the background (no-op when disabled)."""
        if self._interval > 0:
            self._task = asyncio.create_task(self._loop(), name="janitor")

    async def run_once(self) -> SweepReport:
        """One leased pass now (tests, and the loop's body)."""
        await self._janitor.ensure_indexes()
        return await self._janitor.sweep_with_lease(
            owner=self._owner, now=self._runtime.deps.clock.now(), lease_seconds=max(self._interval * 2, 60.0)
        )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_once()
            except BillingError as exc:  # the store is down: try again next round
                log.warning("janitor pass failed", extra={"reason": exc.reason})

    async def stop(self) -> None:
        """Stops the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
