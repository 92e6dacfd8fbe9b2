"""Processor call metrics, recorded by ``InstrumentedProcessor`` (``observability.processor``).

``billing_processor_calls_total{processor,operation,outcome}`` with outcome ``ok``,
``declined``, ``not_supported``, ``error``, ``unavailable`` (retryable) or
``exception`` (a bug),
``billing_processor_call_duration_seconds{processor,operation}`` (histogram).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from billing_service.observability.metrics.registry import LATENCY_BUCKETS, MetricGroup

__all__ = ["ProcessorCallMetrics"]


class ProcessorCallMetrics(MetricGroup):
    """Calls to the payment processors: counted by outcome and timed.

    Args:
        registry: Where the metrics live (a fresh registry by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.processor_calls = Counter(
            "billing_processor_calls",
            "Processor API calls by processor, operation and outcome",
            ["processor", "operation", "outcome"],
            registry=r,
        )
        self.processor_duration = Histogram(
            "billing_processor_call_duration_seconds",
            "Processor API call latency",
            ["processor", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
