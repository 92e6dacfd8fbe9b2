"""Payment KPIs, from the audit events every committed change writes.

:class:`KpiRecorder` (an audit hook fed every committed AuditEvent) records:
    ``billing_payments_total{status}``: payments reaching succeeded, failed, canceled,
    requires_capture or requires_action; success rate = succeeded / (succeeded + failed);
    ``billing_payment_duration_seconds`` (histogram): created → final status, for payments
    created and finished in this process (the common synchronous path);
    ``billing_payment_failures_total{reason}``: failed payments by decline/failure code;
    ``billing_refunds_total{status,currency}`` and
    ``billing_refunded_amount_minor_total{currency}`` (integer minor units; a Prometheus
    counter is a float, fine for a dashboard, never for money logic);
    ``billing_disputes_opened_total``, ``billing_dispute_resolution_seconds`` (histogram,
    from ``dispute.opened`` to ``dispute.closed``);
    ``billing_subscriptions_churned_total``: subscriptions that moved to canceled.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

from billing_service.domain.common import AuditEvent
from billing_service.observability.metrics.registry import MetricGroup

__all__ = ["PAYMENT_OUTCOMES", "KpiRecorder", "PaymentKpiMetrics"]

log = logging.getLogger(__name__)

_TXN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)
_DAY = 86400.0
_DISPUTE_BUCKETS = (3600.0, _DAY, 3 * _DAY, 7 * _DAY, 14 * _DAY, 30 * _DAY, 60 * _DAY, 90 * _DAY)

#: Payment statuses counted by ``billing_payments_total`` when a payment reaches them.
PAYMENT_OUTCOMES = frozenset({"succeeded", "failed", "canceled", "requires_capture", "requires_action"})
_PAYMENT_FINAL = frozenset({"succeeded", "failed", "canceled"})
_REFUND_FINAL = frozenset({"succeeded", "failed", "canceled"})
# Start times kept to measure created → final and opened → closed; bounded memory.
_PENDING_LIMIT = 50_000


class PaymentKpiMetrics(MetricGroup):
    """Payments, refunds, disputes and churn as the business counts them.

    Args:
        registry: Where the metrics live (a fresh registry by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.payments = Counter("billing_payments", "Payments reaching a status", ["status"], registry=r)
        self.payment_duration = Histogram(
            "billing_payment_duration_seconds",
            "Transaction time: payment created to final status",
            buckets=_TXN_BUCKETS,
            registry=r,
        )
        self.payment_failures = Counter(
            "billing_payment_failures", "Failed payments by decline or failure code", ["reason"], registry=r
        )
        self.refunds = Counter("billing_refunds", "Refunds reaching a final status", ["status", "currency"], registry=r)
        self.refunded_amount = Counter(
            "billing_refunded_amount_minor",
            "Refunded amount in minor units of the currency (a float counter: for dashboards only)",
            ["currency"],
            registry=r,
        )
        self.disputes_opened = Counter("billing_disputes_opened", "Disputes opened", registry=r)
        self.dispute_resolution = Histogram(
            "billing_dispute_resolution_seconds", "Dispute opened to closed", buckets=_DISPUTE_BUCKETS, registry=r
        )
        self.subscriptions_churned = Counter(
            "billing_subscriptions_churned", "Subscriptions that moved to canceled", registry=r
        )


class KpiRecorder:
    """An audit hook (``Deps.audit_hooks``) that turns committed events into KPIs.

    It never raises: a metrics bug must not fail a request whose change is already committed.

    Args:
        metrics: Where the KPI metrics live (``BillingMetrics`` is one).
    """

    def __init__(self, metrics: PaymentKpiMetrics) -> None:
        self._metrics = metrics
        self._created: OrderedDict[str, datetime] = OrderedDict()
        self._opened: OrderedDict[str, datetime] = OrderedDict()

    def __call__(self, event: AuditEvent) -> None:
        """Records ``event``."""
        try:
            self._record(event)
        except Exception:
            log.warning("KPI hook failed", exc_info=True, extra={"action": event.action})

    @staticmethod
    def _remember(store: OrderedDict[str, datetime], key: str, at: datetime) -> None:
        store[key] = at
        if len(store) > _PENDING_LIMIT:
            store.popitem(last=False)

    def _record(self, event: AuditEvent) -> None:
        kind, before, after = event.resource_type, event.before_status, event.after_status
        metrics = self._metrics
        if kind == "payment":
            if event.action == "payment.created":
                self._remember(self._created, event.resource_id, event.at)
            if before == after or after not in PAYMENT_OUTCOMES:
                return
            metrics.payments.labels(after).inc()
            if after == "failed":
                reason = event.data.get("failure_code") or event.data.get("decline_code") or "unknown"
                metrics.payment_failures.labels(reason).inc()
            if after in _PAYMENT_FINAL or after == "requires_capture":
                created = self._created.pop(event.resource_id, None)
                if created is not None:
                    metrics.payment_duration.observe(max((event.at - created).total_seconds(), 0.0))
        elif kind == "refund":
            if before == after or after not in _REFUND_FINAL:
                return
            currency = event.data.get("currency", "unknown")
            metrics.refunds.labels(after, currency).inc()
            if after == "succeeded":
                amount = event.data.get("amount_minor", "")
                if amount.isdigit():
                    metrics.refunded_amount.labels(currency).inc(int(amount))
        elif kind == "subscription":
            if after == "canceled" and before != "canceled":
                metrics.subscriptions_churned.inc()
        elif event.action.startswith("dispute."):
            self._dispute(event)

    def _dispute(self, event: AuditEvent) -> None:
        # Defensive: the Dispute entity is built by the webhook work; key off the action
        # names only and tolerate any data layout.
        if event.action == "dispute.opened" or (event.action == "dispute.created" and not event.before_status):
            self._metrics.disputes_opened.inc()
            self._remember(self._opened, event.resource_id, event.at)
        elif event.action in ("dispute.closed", "dispute.won", "dispute.lost"):
            opened = self._opened.pop(event.resource_id, None)
            raw = event.data.get("opened_at") or event.data.get("created_at") or ""
            if opened is None and raw:
                try:
                    opened = datetime.fromisoformat(raw)
                except ValueError:
                    opened = None
            if opened is not None:
                self._metrics.dispute_resolution.observe(max((event.at - opened).total_seconds(), 0.0))
