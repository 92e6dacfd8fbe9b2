"""The KPI audit hook: which committed events move which payment metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing_service.domain.common import AuditEvent
from billing_service.observability.metrics import BillingMetrics, KpiRecorder, WebhookMetrics

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def event(action: str, kind: str, resource: str, before: str, after: str, at: datetime = T0, **data: str) -> AuditEvent:
    return AuditEvent(
        id=f"evt_{action}_{resource}", caller="svc", request_id="r", action=action, resource_type=kind,
        resource_id=resource, before_status=before, after_status=after, at=at, data=data,
    )  # fmt: skip


def test_payment_outcomes_failures_and_transaction_time() -> None:
    m = BillingMetrics()
    kpi = KpiRecorder(m)
    kpi(event("payment.created", "payment", "pay_1", "", "pending"))
    kpi(event("payment.succeeded", "payment", "pay_1", "pending", "succeeded", T0 + timedelta(seconds=2)))
    kpi(event("payment.created", "payment", "pay_2", "", "pending"))
    kpi(event("payment.failed", "payment", "pay_2", "pending", "failed", failure_code="card_declined"))
    kpi(event("payment.refund_settled", "payment", "pay_1", "succeeded", "succeeded"))  # no status move
    get = m.registry.get_sample_value
    assert get("billing_payments_total", {"status": "succeeded"}) == 1
    assert get("billing_payments_total", {"status": "failed"}) == 1
    assert get("billing_payment_failures_total", {"reason": "card_declined"}) == 1
    assert get("billing_payment_duration_seconds_count") == 2
    assert get("billing_payment_duration_seconds_sum") == 2.0


def test_refunds_churn_and_disputes() -> None:
    m = BillingMetrics()
    kpi = KpiRecorder(m)
    kpi(event("refund.succeeded", "refund", "re_1", "pending", "succeeded", amount_minor="250", currency="JPY"))
    kpi(event("refund.failed", "refund", "re_2", "pending", "failed", amount_minor="100", currency="USD"))
    kpi(event("subscription.canceled", "subscription", "sub_1", "active", "canceled"))
    kpi(event("subscription.updated", "subscription", "sub_2", "active", "active"))
    kpi(event("dispute.opened", "dispute", "dp_1", "", "needs_response"))
    kpi(event("dispute.closed", "dispute", "dp_1", "needs_response", "won", T0 + timedelta(days=3)))
    kpi(event("dispute.closed", "dispute", "dp_2", "under_review", "lost", T0, opened_at="2029-12-31T00:00:00+00:00"))
    get = m.registry.get_sample_value
    assert get("billing_refunds_total", {"status": "succeeded", "currency": "JPY"}) == 1
    assert get("billing_refunded_amount_minor_total", {"currency": "JPY"}) == 250
    assert get("billing_refunded_amount_minor_total", {"currency": "USD"}) is None
    assert get("billing_refunds_total", {"status": "failed", "currency": "USD"}) == 1
    assert get("billing_subscriptions_churned_total") == 1
    assert get("billing_disputes_opened_total") == 1
    assert get("billing_dispute_resolution_seconds_count") == 2
    assert get("billing_dispute_resolution_seconds_sum") == 3 * 86400 + 86400


def test_a_malformed_event_never_raises() -> None:
    m = BillingMetrics()
    bad = event("dispute.closed", "dispute", "dp_x", "", "won", opened_at="not a date")
    bad.at = None  # type: ignore[assignment]
    KpiRecorder(m)(bad)


def test_webhook_metrics_api() -> None:
    w = WebhookMetrics()
    w.received("stripe")
    w.rejected("stripe", "bad_signature")
    w.duplicate("stripe")
    w.processed("stripe", "payment_intent.succeeded", lag_seconds=0.5)
    w.failed("stripe", "charge.dispute.created")
    w.dead("stripe", "charge.dispute.created")
    w.set_inbox(depth=3, oldest_age_seconds=12.5)
    get = w.registry.get_sample_value
    assert get("billing_webhooks_received_total", {"processor": "stripe"}) == 1
    assert get("billing_webhooks_rejected_total", {"processor": "stripe", "cause": "bad_signature"}) == 1
    assert get("billing_webhooks_duplicate_total", {"processor": "stripe"}) == 1
    assert (
        get("billing_webhooks_processed_total", {"processor": "stripe", "event_type": "payment_intent.succeeded"}) == 1
    )
    assert get("billing_webhooks_dead_total", {"processor": "stripe", "event_type": "charge.dispute.created"}) == 1
    assert get("billing_webhook_lag_seconds_count") == 1
    assert get("billing_webhook_inbox_depth") == 3
    assert get("billing_webhook_inbox_oldest_age_seconds") == 12.5
