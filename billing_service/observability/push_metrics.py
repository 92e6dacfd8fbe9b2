"""Prometheus metrics of push delivery (a ``DeliveryObserver``), in the gRPC server's registry.

- ``billing_event_delivery_attempts_total{outcome}``: attempts by outcome, ``succeeded``
  or why one failed (``timeout``, ``connection_failed``, ``tls_failed``, ``redirect``,
  ``http_status``, ``address_refused``, ``event_expired``);
- ``billing_event_deliveries_dead_lettered_total``: deliveries that gave up;
- ``billing_event_delivery_lag_seconds`` (histogram): from the event entering the log to
  its successful delivery, retries included;
- ``billing_event_fanout_behind_events`` (gauge): events in the log the fan-out has not
  queued yet, as of its last pass on this replica.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["PushMetrics"]

_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0, 6 * 3600.0, 86400.0, 3 * 86400.0)


class PushMetrics:
    """Push delivery's metrics in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "billing_event_delivery_attempts", "Push delivery attempts by outcome", ["outcome"], registry=registry
        )
        self.dead = Counter("billing_event_deliveries_dead_lettered", "Push deliveries that gave up", registry=registry)
        self.lag = Histogram(
            "billing_event_delivery_lag_seconds",
            "Event entering the log to its successful push delivery",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.behind = Gauge(
            "billing_event_fanout_behind_events", "Events the push fan-out has not queued yet", registry=registry
        )

    def attempt(self, outcome: str) -> None:
        """One attempt ended."""
        self.attempts.labels(outcome or "unknown").inc()

    def dead_lettered(self) -> None:
        """A delivery gave up."""
        self.dead.inc()

    def delivered(self, lag_seconds: float) -> None:
        """A delivery succeeded."""
        self.lag.observe(lag_seconds)

    def fanout(self, behind: int) -> None:
        """The fan-out's distance to the log's head."""
        self.behind.set(behind)
