"""Prometheus metrics, one module per job.

- ``registry``: the base of every metric group (one registry per process) and the
  ``/metrics`` endpoint (:func:`serve_metrics`);
- ``rpc``: gRPC call counts and latency, recorded by :class:`MetricsInterceptor`;
- ``processor_calls``: processor API calls, recorded by ``InstrumentedProcessor``;
- ``kpis``: payment, refund, dispute and churn KPIs from audit events (:class:`KpiRecorder`);
- ``subscriptions``: subscription gauges sampled from the store (:class:`SubscriptionSampler`);
- ``reconcile``: reconciliation passes and drift (:class:`DriftRecorder`);
- ``push``: push delivery of events (:class:`PushMetrics`, the workers' observer);
- ``webhooks``: the webhook sidecar's deliveries and inbox (:class:`WebhookMetrics`);
- ``billing``: :class:`BillingMetrics`, every group a billing runtime records.

Each module's docstring lists the metric families it defines; ``tests/unit/test_metric_catalogue.py``
pins all of them (names, labels, buckets). The names below are re-exported so callers import
from ``billing_service.observability.metrics`` without knowing the layout.
"""

from billing_service.observability.metrics.billing import BillingMetrics
from billing_service.observability.metrics.kpis import KpiRecorder, PaymentKpiMetrics
from billing_service.observability.metrics.processor_calls import ProcessorCallMetrics
from billing_service.observability.metrics.push import PushMetrics
from billing_service.observability.metrics.reconcile import DriftRecorder, ReconcileMetrics
from billing_service.observability.metrics.registry import MetricGroup, MetricsServer, serve_metrics
from billing_service.observability.metrics.rpc import MetricsInterceptor, RpcMetrics
from billing_service.observability.metrics.subscriptions import SubscriptionGauges, SubscriptionSampler
from billing_service.observability.metrics.webhooks import WebhookMetrics

__all__ = [
    "BillingMetrics",
    "DriftRecorder",
    "KpiRecorder",
    "MetricGroup",
    "MetricsInterceptor",
    "MetricsServer",
    "PaymentKpiMetrics",
    "ProcessorCallMetrics",
    "PushMetrics",
    "ReconcileMetrics",
    "RpcMetrics",
    "SubscriptionGauges",
    "SubscriptionSampler",
    "WebhookMetrics",
    "serve_metrics",
]
