"""Every metric family a process exports: name, type, help, labels and buckets.

Dashboards and alert rules are written against these names and labels, so the catalogue is
pinned here: moving code between modules must not rename, relabel or rebucket anything.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from billing_service.observability.metrics import BillingMetrics, WebhookMetrics

_INF = float("inf")
_RPC = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, _INF)
_TXN = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0, _INF)
_DAY = 86400.0
_DISPUTE = (3600.0, _DAY, 3 * _DAY, 7 * _DAY, 14 * _DAY, 30 * _DAY, 60 * _DAY, 90 * _DAY, _INF)
_LAG = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 3600.0, _INF)
_PUSH_LAG = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0, 21600.0, 86400.0, 259200.0, _INF)

# name: (type, help, label names, histogram buckets or None)
BILLING: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    "billing_grpc_requests": ("counter", "gRPC calls served, by method and status code", ("method", "code"), None),
    "billing_grpc_request_duration_seconds": ("histogram", "gRPC call latency", ("method",), _RPC),
    "billing_processor_calls": (
        "counter",
        "Processor API calls by processor, operation and outcome",
        ("processor", "operation", "outcome"),
        None,
    ),
    "billing_processor_call_duration_seconds": (
        "histogram",
        "Processor API call latency",
        ("processor", "operation"),
        _RPC,
    ),
    "billing_payments": ("counter", "Payments reaching a status", ("status",), None),
    "billing_payment_duration_seconds": (
        "histogram",
        "Transaction time: payment created to final status",
        (),
        _TXN,
    ),
    "billing_payment_failures": ("counter", "Failed payments by decline or failure code", ("reason",), None),
    "billing_refunds": ("counter", "Refunds reaching a final status", ("status", "currency"), None),
    "billing_refunded_amount_minor": (
        "counter",
        "Refunded amount in minor units of the currency (a float counter: for dashboards only)",
        ("currency",),
        None,
    ),
    "billing_disputes_opened": ("counter", "Disputes opened", (), None),
    "billing_dispute_resolution_seconds": ("histogram", "Dispute opened to closed", (), _DISPUTE),
    "billing_subscriptions_churned": ("counter", "Subscriptions that moved to canceled", (), None),
    "billing_subscriptions": ("gauge", "Subscriptions by status (sampled from the store)", ("status",), None),
    "billing_subscriptions_active": (
        "gauge",
        "Active, trialing and past-due subscriptions (sampled)",
        (),
        None,
    ),
    "billing_reconcile_passes": (
        "counter",
        "Reconciliation passes by outcome (ok, skipped, failed)",
        ("outcome",),
        None,
    ),
    "billing_reconcile_errors": ("counter", "Records a reconciliation pass could not reconcile", (), None),
    "billing_drift": (
        "counter",
        "Records found to differ from their processor, by resource and outcome (found, repaired)",
        ("resource", "outcome"),
        None,
    ),
    "billing_event_delivery_attempts": ("counter", "Push delivery attempts by outcome", ("outcome",), None),
    "billing_event_deliveries_dead_lettered": ("counter", "Push deliveries that gave up", (), None),
    "billing_event_delivery_lag_seconds": (
        "histogram",
        "Event entering the log to its successful push delivery",
        (),
        _PUSH_LAG,
    ),
    "billing_event_fanout_behind_events": ("gauge", "Events the push fan-out has not queued yet", (), None),
}

WEBHOOKS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    "billing_webhooks_received": ("counter", "Webhook POSTs received", ("processor",), None),
    "billing_webhooks_rejected": (
        "counter",
        "Webhooks refused before storing, by cause",
        ("processor", "cause"),
        None,
    ),
    "billing_webhooks_duplicate": ("counter", "Webhooks already in the inbox", ("processor",), None),
    "billing_webhooks_processed": ("counter", "Inbox events handled", ("processor", "event_type"), None),
    "billing_webhooks_failed": (
        "counter",
        "Inbox handler attempts that failed",
        ("processor", "event_type"),
        None,
    ),
    "billing_webhooks_dead": (
        "counter",
        "Inbox events given up on (dead letters)",
        ("processor", "event_type"),
        None,
    ),
    "billing_webhook_lag_seconds": ("histogram", "Webhook received to processed", (), _LAG),
    "billing_webhook_inbox_depth": ("gauge", "Inbox events waiting to be processed", (), None),
    "billing_webhook_inbox_oldest_age_seconds": ("gauge", "Age of the oldest waiting inbox event", (), None),
}


def _catalogue(metrics: Any) -> dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...] | None]]:
    # Label names and buckets have no public getter in prometheus-client; the wrappers'
    # attributes are read here (a test-only dependency on its internals).
    found = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            bounds = getattr(value, "_upper_bounds", None)
            found[value._name] = (
                str(value._type),
                value._documentation,
                tuple(value._labelnames),
                tuple(bounds) if bounds is not None else None,
            )
    return found


def test_the_billing_runtime_exports_exactly_its_catalogue() -> None:
    metrics = BillingMetrics()
    assert _catalogue(metrics) == BILLING
    assert {family.name for family in metrics.registry.collect()} == set(BILLING)


def test_the_webhook_sidecar_exports_exactly_its_catalogue() -> None:
    metrics = WebhookMetrics()
    assert _catalogue(metrics) == WEBHOOKS
    assert {family.name for family in metrics.registry.collect()} == set(WEBHOOKS)


def test_both_share_one_registry_without_a_clash() -> None:
    billing = BillingMetrics()
    WebhookMetrics(billing.registry)  # what the sidecar does: one endpoint serves both
    assert {family.name for family in billing.registry.collect()} == set(BILLING) | set(WEBHOOKS)
