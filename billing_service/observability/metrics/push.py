"""Push delivery of events (a ``DeliveryObserver`` for the fan-out and the workers).

``billing_event_delivery_attempts_total{outcome}``: attempts by outcome, ``succeeded`` or why
one failed (``timeout``, ``connection_failed``, ``tls_failed``, ``redirect``,
``http_status``, ``address_refused``, ``event_expired``);
``billing_event_deliveries_dead_lettered_total``: deliveries that gave up after their 3 days;
``billing_event_delivery_lag_seconds`` (histogram): from the event entering the log to its
successful delivery, retries included;
``billing_event_fanout_behind_events`` (gauge): events in the log the fan-out had not queued
yet at its last pass on this replica.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from billing_service.observability.metrics.registry import MetricGroup

__all__ = ["PUSH_LAG_BUCKETS", "PushMetrics"]

#: Seconds: a delivery is usually done within a second, a retried one within 3 days.
PUSH_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0, 21600.0, 86400.0, 259200.0)


class PushMetrics(MetricGroup):
    """Push delivery attempts, dead letters, lag and the fan-out's distance to the log's head.

    Args:
        registry: Where the metrics live (a fresh registry by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.push_attempts = Counter(
            "billing_event_delivery_attempts", "Push delivery attempts by outcome", ["outcome"], registry=r
        )
        self.push_dead_letters = Counter(
            "billing_event_deliveries_dead_lettered", "Push deliveries that gave up", registry=r
        )
        self.push_lag = Histogram(
            "billing_event_delivery_lag_seconds",
            "Event entering the log to its successful push delivery",
            buckets=PUSH_LAG_BUCKETS,
            registry=r,
        )
        self.push_fanout_behind = Gauge(
            "billing_event_fanout_behind_events", "Events the push fan-out has not queued yet", registry=r
        )

    def push_attempt(self, outcome: str) -> None:
        """One attempt ended: ``succeeded`` or the failure's code."""
        self.push_attempts.labels(outcome or "unknown").inc()

    def push_dead_lettered(self) -> None:
        """A delivery gave up."""
        self.push_dead_letters.inc()

    def push_delivered(self, lag_seconds: float) -> None:
        """A delivery succeeded ``lag_seconds`` after its event entered the log."""
        self.push_lag.observe(lag_seconds)

    def push_fanout(self, behind: int) -> None:
        """The fan-out is ``behind`` events behind the log's head."""
        self.push_fanout_behind.set(behind)
