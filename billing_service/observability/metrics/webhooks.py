"""The webhook sidecar's metrics (:class:`WebhookMetrics`, called by the sidecar)::

webhook_metrics = WebhookMetrics(registry)
webhook_metrics.received("stripe")                   # a POST arrived
webhook_metrics.rejected("stripe", "bad_signature")  # refused before storing (cause: short slug)
webhook_metrics.duplicate("stripe")                  # already in the inbox: 2xx, not stored again
webhook_metrics.processed("stripe", "payment_intent.succeeded", lag_seconds=0.8)  # handled
webhook_metrics.failed("stripe", "charge.dispute.created")  # a handler attempt failed (will retry)
webhook_metrics.dead("stripe", "charge.dispute.created")    # gave up: moved to dead letters
webhook_metrics.set_inbox(depth=3, oldest_age_seconds=12.5)  # pending events, the oldest one's age

``billing_webhooks_received_total{processor}``,
``billing_webhooks_rejected_total{processor,cause}``,
``billing_webhooks_duplicate_total{processor}``,
``billing_webhooks_processed_total{processor,event_type}``,
``billing_webhooks_failed_total{processor,event_type}``,
``billing_webhooks_dead_total{processor,event_type}``,
``billing_webhook_lag_seconds`` (histogram: received → processed),
``billing_webhook_inbox_depth`` and ``billing_webhook_inbox_oldest_age_seconds`` (gauges).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from billing_service.observability.metrics.registry import MetricGroup

__all__ = ["WebhookMetrics"]

_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 3600.0)


class WebhookMetrics(MetricGroup):
    """The webhook sidecar's metrics (see the module docstring for the calls).

    Args:
        registry: The sidecar's registry (a fresh one by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self._received = Counter("billing_webhooks_received", "Webhook POSTs received", ["processor"], registry=r)
        self._rejected = Counter(
            "billing_webhooks_rejected", "Webhooks refused before storing, by cause", ["processor", "cause"], registry=r
        )
        self._duplicate = Counter(
            "billing_webhooks_duplicate", "Webhooks already in the inbox", ["processor"], registry=r
        )
        self._processed = Counter(
            "billing_webhooks_processed", "Inbox events handled", ["processor", "event_type"], registry=r
        )
        self._failed = Counter(
            "billing_webhooks_failed", "Inbox handler attempts that failed", ["processor", "event_type"], registry=r
        )
        self._dead = Counter(
            "billing_webhooks_dead", "Inbox events given up on (dead letters)", ["processor", "event_type"], registry=r
        )
        self._lag = Histogram(
            "billing_webhook_lag_seconds", "Webhook received to processed", buckets=_LAG_BUCKETS, registry=r
        )
        self._depth = Gauge("billing_webhook_inbox_depth", "Inbox events waiting to be processed", registry=r)
        self._oldest = Gauge(
            "billing_webhook_inbox_oldest_age_seconds", "Age of the oldest waiting inbox event", registry=r
        )

    def received(self, processor: str) -> None:
        """A webhook POST arrived (before verification)."""
        self._received.labels(processor).inc()

    def rejected(self, processor: str, cause: str) -> None:
        """A webhook was refused (``bad_signature``, ``stale_timestamp``, ``malformed``...)."""
        self._rejected.labels(processor, cause).inc()

    def duplicate(self, processor: str) -> None:
        """A verified webhook was already in the inbox."""
        self._duplicate.labels(processor).inc()

    def processed(self, processor: str, event_type: str, *, lag_seconds: float | None = None) -> None:
        """An inbox event was handled; ``lag_seconds`` is received → processed."""
        self._processed.labels(processor, event_type).inc()
        if lag_seconds is not None:
            self._lag.observe(max(lag_seconds, 0.0))

    def failed(self, processor: str, event_type: str) -> None:
        """A handler attempt failed; the event stays in the inbox for a retry."""
        self._failed.labels(processor, event_type).inc()

    def dead(self, processor: str, event_type: str) -> None:
        """An event exhausted its attempts and was dead-lettered."""
        self._dead.labels(processor, event_type).inc()

    def set_inbox(self, *, depth: int, oldest_age_seconds: float) -> None:
        """Records the inbox backlog (call it from the worker's poll loop)."""
        self._depth.set(depth)
        self._oldest.set(max(oldest_age_seconds, 0.0))
