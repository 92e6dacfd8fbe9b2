"""Reconciliation and drift metrics.

``billing_reconcile_passes_total{outcome}`` (ok, skipped: another replica holds the
lease, failed: the pass itself broke and the loop backs off), counted by the reconciler;
``billing_reconcile_errors_total``: records a pass could not reconcile (retried next pass);
``billing_drift_total{resource,outcome}`` (:class:`DriftRecorder`, a drift hook): records
found to differ from their processor (``found``) and those converged (``repaired``), from
reconciliation and from webhooks that contradict a final payment.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from billing_service.observability.metrics.registry import MetricGroup
from billing_service.service_layer.core import Drift

__all__ = ["DriftRecorder", "ReconcileMetrics"]


class ReconcileMetrics(MetricGroup):
    """Reconciliation passes, the records they could not reconcile, and drift.

    Args:
        registry: Where the metrics live (a fresh registry by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.reconcile_passes = Counter(
            "billing_reconcile_passes",
            "Reconciliation passes by outcome (ok, skipped, failed)",
            ["outcome"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "billing_reconcile_errors", "Records a reconciliation pass could not reconcile", registry=r
        )
        self.drift = Counter(
            "billing_drift",
            "Records found to differ from their processor, by resource and outcome (found, repaired)",
            ["resource", "outcome"],
            registry=r,
        )


class DriftRecorder:
    """A drift hook (``Deps.drift_hooks``): counts drift found and repaired.

    Args:
        metrics: Where the drift counter lives (``BillingMetrics`` is one).
    """

    def __init__(self, metrics: ReconcileMetrics) -> None:
        self._metrics = metrics

    def __call__(self, drift: Drift) -> None:
        """Counts ``drift``."""
        self._metrics.drift.labels(drift.resource, "found").inc()
        if drift.repaired:
            self._metrics.drift.labels(drift.resource, "repaired").inc()
