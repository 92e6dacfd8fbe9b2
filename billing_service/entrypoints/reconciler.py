"""The reconciler as a background loop of ``serve``, and the report printers of ``billing-service reconcile``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from billing_service.domain.errors import BillingError
from billing_service.observability.metrics import BillingMetrics
from billing_service.service_layer.check import CheckReport
from billing_service.service_layer.core import Deps
from billing_service.service_layer.ports import Leases
from billing_service.service_layer.reconcile import DEFAULT_BUDGET, EventFeed, ReconcileReport, reconcile_with_lease

log = logging.getLogger(__name__)

# After a failed pass the loop retries sooner, doubling from this up to the interval.
_FIRST_BACKOFF_SECONDS = 1.0


class ReconcilerLoop:
    """Runs a bounded reconciliation pass every ``interval`` seconds on whichever replica holds the lease.

    Any failure of a pass (the store down, a bug) is logged and counted, and the loop
    backs off and goes on; only cancellation stops it.

    Args:
        deps: The use cases' ports.
        leases: Where the reconciler lease and its cursors live.
        interval: Seconds between passes (0 disables the loop).
        metrics: Where passes are counted.
        event_feed: Feeds processor events into the webhook inbox on each pass (None: none).
        budget: Records per sweep and pass.
        owner: This replica's name in the lease.
    """

    def __init__(
        self,
        deps: Deps,
        leases: Leases,
        interval: float,
        *,
        metrics: BillingMetrics,
        event_feed: EventFeed | None = None,
        budget: int | None = DEFAULT_BUDGET,
        owner: str,
    ) -> None:
        self._deps = deps
        self._leases = leases
        self._interval = interval
        self._metrics = metrics
        self._event_feed = event_feed
        self._budget = budget
        self._owner = owner
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the loop in the background (no-op when disabled)."""
        if self._interval > 0:
            self._task = asyncio.create_task(self._loop(), name="reconciler")

    async def run_pass(self) -> ReconcileReport:
        """One pass if this replica holds the lease (also what the loop runs)."""
        return await reconcile_with_lease(
            self._deps,
            self._leases,
            owner=self._owner,
            lease_seconds=self._interval * 2,
            budget=self._budget,
            event_feed=self._event_feed,
        )

    async def _loop(self) -> None:
        metrics = self._metrics
        failures = 0
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
