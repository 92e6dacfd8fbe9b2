"""The reconciler as a background loop of `serve` and as the `billing-service reconcile` command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket

from billing_service.adapters.mongo.inbox import MongoWebhookInbox
from billing_service.adapters.mongo.leases import MongoLeases
from billing_service.bootstrap import Runtime, bootstrap
from billing_service.config import Settings
from billing_service.domain.errors import BillingError
from billing_service.service_layer import event_intake as intake
from billing_service.service_layer.check import CheckReport, check_all
from billing_service.service_layer.reconcile import (
    DEFAULT_BUDGET,
    EventFeed,
    ReconcileReport,
    reconcile_once,
    reconcile_with_lease,
)

log = logging.getLogger(__name__)

# After a failed pass the loop retries sooner, doubling from this up to the interval.
_FIRST_BACKOFF_SECONDS = 1.0


def _leases(runtime: Runtime) -> MongoLeases:
    database = runtime.store.database
    return MongoLeases(database.client, database.name)


def event_feed(runtime: Runtime, inbox: MongoWebhookInbox) -> EventFeed | None:
    """Feeds the events of the runtime's event sources into the webhook inbox (see ``event_intake``)."""
    return intake.event_feed(runtime.event_sources, inbox, runtime.deps.clock)


class ReconcilerLoop:
    """Runs a bounded reconciliation pass every ``interval`` seconds on whichever replica holds the lease.

    Any failure of a pass (the store down, a bug) is logged and counted, and the loop
    backs off and goes on; only cancellation stops it.

    Args:
        runtime: The process's store and processors.
        interval: Seconds between passes (0 disables the loop).
        budget: Records per sweep and pass.
    """

    def __init__(self, runtime: Runtime, interval: float, *, budget: int | None = DEFAULT_BUDGET) -> None:
        self._runtime = runtime
        self._interval = interval
        self._budget = budget
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None
        self._inbox = MongoWebhookInbox(runtime.store.database.client, runtime.store.database.name)

    def start(self) -> None:
        """Starts the loop in the background (no-op when disabled)."""
        if self._interval > 0:
            self._task = asyncio.create_task(self._loop(), name="reconciler")

    async def run_pass(self) -> ReconcileReport:
        """One pass if this replica holds the lease (also what the loop runs)."""
        return await reconcile_with_lease(
            self._runtime.deps,
            _leases(self._runtime),
            owner=self._owner,
            lease_seconds=self._interval * 2,
            budget=self._budget,
            event_feed=event_feed(self._runtime, self._inbox),
        )

    async def _loop(self) -> None:
        metrics = self._runtime.metrics
        failures = 0
        with contextlib.suppress(Exception):
            await self._inbox.ensure_indexes()  # the sidecar creates them too; retried by its start
        while True:
            delay = self._interval
            if failures:
                delay = min(self._interval, _FIRST_BACKOFF_SECONDS * 2 ** (failures - 1))
                delay *= random.uniform(0.5, 1.0)
            await asyncio.sleep(delay)
            try:
                report = await self.run_pass()
            except asyncio.CancelledError:
                raise
            except BillingError as exc:  # the store or a processor is down
                failures += 1
                metrics.reconcile_passes.labels("failed").inc()
                log.warning("reconciliation pass failed", extra={"reason": exc.reason, "failures": failures})
                continue
            except Exception:
                failures += 1
                metrics.reconcile_passes.labels("failed").inc()
                log.exception("reconciliation pass crashed", extra={"failures": failures})
                continue
            failures = 0
            if report.skipped:
                metrics.reconcile_passes.labels("skipped").inc()
                continue
            metrics.reconcile_passes.labels("ok").inc()
            metrics.reconcile_errors.inc(report.errors)
            log.info(
                "reconciliation pass",
                extra={"checked": report.checked, "repaired": report.repaired, "waiting": report.waiting,
                       "errors": report.errors, "drift": len(report.drift), "more": report.more},
            )  # fmt: skip

    async def stop(self) -> None:
        """Stops the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def reconcile_command(settings: Settings) -> ReconcileReport:
    """One full pass now, regardless of the lease (an operator's explicit request)."""
    runtime = await bootstrap(settings)
    try:
        inbox = MongoWebhookInbox(runtime.store.database.client, runtime.store.database.name)
        await inbox.ensure_indexes()
        return await reconcile_once(runtime.deps, budget=None, event_feed=event_feed(runtime, inbox))
    finally:
        await runtime.aclose()


async def check_command(settings: Settings) -> CheckReport:
    """Compares every record with its processor and changes nothing."""
    runtime = await bootstrap(settings)
    try:
        return await check_all(runtime.deps)
    finally:
        await runtime.aclose()


def print_report(report: ReconcileReport) -> None:
    """Prints what a pass checked, repaired and left for later."""
    kinds = sorted(set(report.checked) | set(report.repaired) | set(report.waiting))
    for kind in kinds:
        print(
            f"{kind}: checked {report.checked.get(kind, 0)}, repaired {report.repaired.get(kind, 0)}, "
            f"waiting {report.waiting.get(kind, 0)}"
        )
    for drift in report.drift:
        print(f"drift {drift.resource} {drift.resource_id}: ours {drift.ours}, processor {drift.theirs} (repaired)")
    print(f"events fed to the inbox: {report.events}")
    print(f"errors: {report.errors}")


def print_check(report: CheckReport) -> None:
    """Prints every record that differs from its processor."""
    for kind in sorted(report.checked):
        print(f"{kind}: checked {report.checked[kind]}")
    for drift in report.drift:
        print(f"drift {drift.resource} {drift.resource_id}: ours {drift.ours}, processor {drift.theirs}")
    for resource_id, reason in report.unknown:
        print(f"unknown {resource_id}: {reason}")
    print(f"drift: {len(report.drift)}")
    print(f"errors: {report.errors}")
