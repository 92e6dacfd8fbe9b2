"""``BillingMetrics``: every metric group a billing runtime records, in one registry.

``bootstrap`` builds one per process; the gRPC server serves it on ``BILLING_METRICS_PORT``
and the webhook sidecar adds its ``WebhookMetrics`` to the same registry.
"""

from __future__ import annotations

from billing_service.observability.metrics.kpis import PaymentKpiMetrics
from billing_service.observability.metrics.processor_calls import ProcessorCallMetrics
from billing_service.observability.metrics.push import PushMetrics
from billing_service.observability.metrics.reconcile import ReconcileMetrics
from billing_service.observability.metrics.rpc import RpcMetrics
from billing_service.observability.metrics.subscriptions import SubscriptionGauges

__all__ = ["BillingMetrics"]


# The bases are listed in reverse: each group's cooperative ``__init__`` registers its own
# metrics after ``super().__init__``, so the last base registers first. This keeps the
# families on /metrics in the order they always had: RPCs, processor calls, payment KPIs,
# subscription gauges, reconciliation, push delivery.
class BillingMetrics(
    PushMetrics, ReconcileMetrics, SubscriptionGauges, PaymentKpiMetrics, ProcessorCallMetrics, RpcMetrics
):
    """A billing runtime's metrics, in ``registry`` (a fresh one by default).

    Each recorder takes the narrowest group it writes (``MetricsInterceptor`` an
    ``RpcMetrics``, ``KpiRecorder`` a ``PaymentKpiMetrics``...); this class is all of them.

    Args:
        registry: Where the metrics live; one per process, served by ``serve_metrics``.
    """
