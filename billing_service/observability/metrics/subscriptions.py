"""Subscription gauges, sampled from the store.

``billing_subscriptions{status}`` and ``billing_subscriptions_active`` (active,
trialing, past_due): gauges refreshed by :class:`SubscriptionSampler`. (Churn, a
counter fed by audit events, is a payment KPI: see ``metrics.kpis``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Gauge

from billing_service.observability.metrics.registry import MetricGroup

__all__ = [
    "ACTIVE_SUBSCRIPTION_STATUSES",
    "SUBSCRIPTION_STATUSES",
    "SubscriptionGauges",
    "SubscriptionSampler",
]

log = logging.getLogger(__name__)

#: Statuses counted as active subscriptions (not yet churned).
ACTIVE_SUBSCRIPTION_STATUSES = ("active", "trialing", "past_due")
SUBSCRIPTION_STATUSES = ("incomplete", "trialing", "active", "past_due", "paused", "canceled")


class SubscriptionGauges(MetricGroup):
    """Stored subscriptions by status, and the active ones.

    Args:
        registry: Where the metrics live (a fresh registry by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.subscriptions = Gauge(
            "billing_subscriptions", "Subscriptions by status (sampled from the store)", ["status"], registry=r
        )
        self.subscriptions_active = Gauge(
            "billing_subscriptions_active", "Active, trialing and past-due subscriptions (sampled)", registry=r
        )


class SubscriptionSampler:
    """Refreshes the subscription gauges from the store every ``interval`` seconds.

    Args:
        metrics: Where the gauges live (``BillingMetrics`` is one).
        count: Counts stored subscriptions with one status.
        interval: Seconds between samples.
    """

    def __init__(
        self, metrics: SubscriptionGauges, count: Callable[[str], Awaitable[int]], *, interval: float = 30.0
    ) -> None:
        self._metrics = metrics
        self._count = count
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        """Counts once and sets the gauges."""
        active = 0
        for status in SUBSCRIPTION_STATUSES:
            n = await self._count(status)
            self._metrics.subscriptions.labels(status).set(n)
            if status in ACTIVE_SUBSCRIPTION_STATUSES:
                active += n
        self._metrics.subscriptions_active.set(active)

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:
                log.warning("subscription sample failed", exc_info=True)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        """Starts sampling in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="subscription-sampler")

    async def stop(self) -> None:
        """Stops sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
