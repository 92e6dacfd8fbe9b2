"""The reconciler as a background loop of `serve` and as the `billing-service reconcile` command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from billing_service.adapters.mongo.leases import MongoLeases
from billing_service.bootstrap import Runtime, bootstrap
from billing_service.config import Settings
from billing_service.domain.errors import BillingError
from billing_service.service_layer.reconcile import ReconcileReport, reconcile_once, reconcile_with_lease

log = logging.getLogger(__name__)


def _leases(runtime: Runtime) -> MongoLeases:
    database = runtime.store.database
    return MongoLeases(database.client, database.name)


class ReconcilerLoop:
    """Runs a reconciliation pass every ``interval`` seconds on whichever replica holds the lease.

    Args:
        runtime: The process's store and processors.
        interval: Seconds between passes (0 disables the loop).
    """

    def __init__(self, runtime: Runtime, interval: float) -> None:
        self._runtime = runtime
        self._interval = interval
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the loop in the background (no-op when disabled)."""
        if self._interval > 0:
            self._task = asyncio.create_task(self._loop(), name="reconciler")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                report = await reconcile_with_lease(
                    self._runtime.deps, _leases(self._runtime), owner=self._owner, lease_seconds=self._interval * 2
                )
            except BillingError as exc:  # the store is down: try again next round
                log.warning("reconciliation pass failed", extra={"reason": exc.reason})
                continue
            if not report.skipped:
                log.info(
                    "reconciliation pass",
                    extra={"checked": report.checked, "repaired": report.repaired, "errors": report.errors},
                )

    async def stop(self) -> None:
        """Stops the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def reconcile_command(settings: Settings) -> ReconcileReport:
    """One pass now, regardless of the lease (an operator's explicit request)."""
    runtime = await bootstrap(settings)
    try:
        return await reconcile_once(runtime.deps)
    finally:
        await runtime.aclose()


def print_report(report: ReconcileReport) -> None:
    """Prints what a pass checked and repaired."""
    for kind in sorted(set(report.checked) | set(report.repaired)):
        print(f"{kind}: checked {report.checked.get(kind, 0)}, repaired {report.repaired.get(kind, 0)}")
    print(f"errors: {report.errors}")
