"""Prometheus metrics: RPCs, processor calls, payment KPIs and webhooks.

Each process keeps its metrics in a ``CollectorRegistry`` of its own and serves them on a
port of its own (:func:`serve_metrics`): the gRPC server on ``BILLING_METRICS_PORT``, the
webhook sidecar on ``BILLING_WEBHOOK_METRICS_PORT`` (0 = not served).

gRPC (:class:`MetricsInterceptor`, also sets the request id for the JSON logs):
    ``billing_grpc_requests_total{method,code}``,
    ``billing_grpc_request_duration_seconds{method}`` (histogram).

Processor calls (``InstrumentedProcessor`` in ``observability.processor``):
    ``billing_processor_calls_total{processor,operation,outcome}`` with outcome ``ok``,
    ``declined``, ``error``, ``unavailable`` (retryable) or ``exception`` (a bug),
    ``billing_processor_call_duration_seconds{processor,operation}`` (histogram).

Payment KPIs (:class:`KpiRecorder`, an audit hook fed every committed AuditEvent):
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
    ``billing_subscriptions_churned_total``: subscriptions that moved to canceled;
    ``billing_subscriptions{status}`` and ``billing_subscriptions_active`` (active,
    trialing, past_due): gauges refreshed by :class:`SubscriptionSampler` from the store.

Reconciliation and drift:
    ``billing_reconcile_passes_total{outcome}`` (ok, skipped: another replica holds the
    lease, failed: the pass itself broke and the loop backs off),
    ``billing_reconcile_errors_total``: records a pass could not reconcile (retried next pass),
    ``billing_drift_total{resource,outcome}`` (:class:`DriftRecorder`, a drift hook): records
    found to differ from their processor (``found``) and those converged (``repaired``), from
    reconciliation and from webhooks that contradict a final payment.

Webhooks (:class:`WebhookMetrics`, called by the webhook sidecar)::

    wm = WebhookMetrics(registry)
    wm.received("stripe")                      # a POST arrived
    wm.rejected("stripe", "bad_signature")     # refused before storing (cause: short slug)
    wm.duplicate("stripe")                     # already in the inbox: 2xx, not stored again
    wm.processed("stripe", "payment_intent.succeeded", lag_seconds=0.8)  # handled from the inbox
    wm.failed("stripe", "charge.dispute.created")   # a handler attempt failed (will retry)
    wm.dead("stripe", "charge.dispute.created")     # gave up: moved to dead letters
    wm.set_inbox(depth=3, oldest_age_seconds=12.5)  # pending events and the oldest one's age

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

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from billing_service.domain.common import AuditEvent
from billing_service.observability.logging import current_request_id
from billing_service.service_layer.core import Drift

__all__ = [
    "BillingMetrics",
    "DriftRecorder",
    "KpiRecorder",
    "MetricsInterceptor",
    "MetricsServer",
    "SubscriptionSampler",
    "WebhookMetrics",
    "serve_metrics",
]

log = logging.getLogger(__name__)

_RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TXN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)
_DAY = 86400.0
_DISPUTE_BUCKETS = (3600.0, _DAY, 3 * _DAY, 7 * _DAY, 14 * _DAY, 30 * _DAY, 60 * _DAY, 90 * _DAY)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 3600.0)

#: Payment statuses counted by ``billing_payments_total`` when a payment reaches them.
PAYMENT_OUTCOMES = frozenset({"succeeded", "failed", "canceled", "requires_capture", "requires_action"})
_PAYMENT_FINAL = frozenset({"succeeded", "failed", "canceled"})
_REFUND_FINAL = frozenset({"succeeded", "failed", "canceled"})
#: Statuses counted as active subscriptions (not yet churned).
ACTIVE_SUBSCRIPTION_STATUSES = ("active", "trialing", "past_due")
SUBSCRIPTION_STATUSES = ("incomplete", "trialing", "active", "past_due", "paused", "canceled")
# Start times kept to measure created → final and opened → closed; bounded memory.
_PENDING_LIMIT = 50_000


class BillingMetrics:
    """The gRPC server's metrics, in ``registry`` (a fresh one by default).

    Args:
        registry: Where the metrics live; one per process, served by :func:`serve_metrics`.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rpc_requests = Counter(
            "billing_grpc_requests", "gRPC calls served, by method and status code", ["method", "code"], registry=r
        )
        self.rpc_duration = Histogram(
            "billing_grpc_request_duration_seconds", "gRPC call latency", ["method"], buckets=_RPC_BUCKETS, registry=r
        )
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
            buckets=_RPC_BUCKETS,
            registry=r,
        )
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
        self.subscriptions = Gauge(
            "billing_subscriptions", "Subscriptions by status (sampled from the store)", ["status"], registry=r
        )
        self.subscriptions_active = Gauge(
            "billing_subscriptions_active", "Active, trialing and past-due subscriptions (sampled)", registry=r
        )
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


class WebhookMetrics:
    """The webhook sidecar's metrics (see the module docstring for the calls).

    Args:
        registry: The sidecar's registry (a fresh one by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
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


# ---------------------------------------------------------------------------
# payment KPIs from audit events
# ---------------------------------------------------------------------------


class KpiRecorder:
    """An audit hook (``Deps.audit_hooks``) that turns committed events into KPIs.

    It never raises: a metrics bug must not fail a request whose change is already committed.
    """

    def __init__(self, metrics: BillingMetrics) -> None:
        self._m = metrics
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

    def _record(self, e: AuditEvent) -> None:
        kind, before, after = e.resource_type, e.before_status, e.after_status
        if kind == "payment":
            if e.action == "payment.created":
                self._remember(self._created, e.resource_id, e.at)
            if before == after or after not in PAYMENT_OUTCOMES:
                return
            self._m.payments.labels(after).inc()
            if after == "failed":
                reason = e.data.get("failure_code") or e.data.get("decline_code") or "unknown"
                self._m.payment_failures.labels(reason).inc()
            if after in _PAYMENT_FINAL or after == "requires_capture":
                created = self._created.pop(e.resource_id, None)
                if created is not None:
                    self._m.payment_duration.observe(max((e.at - created).total_seconds(), 0.0))
        elif kind == "refund":
            if before == after or after not in _REFUND_FINAL:
                return
            currency = e.data.get("currency", "unknown")
            self._m.refunds.labels(after, currency).inc()
            if after == "succeeded":
                amount = e.data.get("amount_minor", "")
                if amount.isdigit():
                    self._m.refunded_amount.labels(currency).inc(int(amount))
        elif kind == "subscription":
            if after == "canceled" and before != "canceled":
                self._m.subscriptions_churned.inc()
        elif e.action.startswith("dispute."):
            self._dispute(e)

    def _dispute(self, e: AuditEvent) -> None:
        # Defensive: the Dispute entity is built by the webhook work; key off the action
        # names only and tolerate any data layout.
        if e.action == "dispute.opened" or (e.action == "dispute.created" and not e.before_status):
            self._m.disputes_opened.inc()
            self._remember(self._opened, e.resource_id, e.at)
        elif e.action in ("dispute.closed", "dispute.won", "dispute.lost"):
            opened = self._opened.pop(e.resource_id, None)
            raw = e.data.get("opened_at") or e.data.get("created_at") or ""
            if opened is None and raw:
                try:
                    opened = datetime.fromisoformat(raw)
                except ValueError:
                    opened = None
            if opened is not None:
                self._m.dispute_resolution.observe(max((e.at - opened).total_seconds(), 0.0))


class DriftRecorder:
    """A drift hook (``Deps.drift_hooks``): counts drift found and repaired."""

    def __init__(self, metrics: BillingMetrics) -> None:
        self._m = metrics

    def __call__(self, drift: Drift) -> None:
        """Counts ``drift``."""
        self._m.drift.labels(drift.resource, "found").inc()
        if drift.repaired:
            self._m.drift.labels(drift.resource, "repaired").inc()


class SubscriptionSampler:
    """Refreshes the subscription gauges from the store every ``interval`` seconds.

    Args:
        metrics: Where the gauges live.
        count: Counts stored subscriptions with one status.
        interval: Seconds between samples.
    """

    def __init__(
        self, metrics: BillingMetrics, count: Callable[[str], Awaitable[int]], *, interval: float = 30.0
    ) -> None:
        self._m = metrics
        self._count = count
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        """Counts once and sets the gauges."""
        active = 0
        for status in SUBSCRIPTION_STATUSES:
            n = await self._count(status)
            self._m.subscriptions.labels(status).set(n)
            if status in ACTIVE_SUBSCRIPTION_STATUSES:
                active += n
        self._m.subscriptions_active.set(active)

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:
                log.warning("subscription sample failed", exc_info=True)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        """Starts sampling in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="subscription-sampler")

    async def stop(self) -> None:
        """Stops sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


# ---------------------------------------------------------------------------
# gRPC server interceptor
# ---------------------------------------------------------------------------


def _code_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code: Any = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    for member in grpc.StatusCode:  # some grpc versions return the numeric code
        if member.value[0] == code:
            return member.name
    return "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts unary RPCs by method and code, times them, and sets the log request id.

    The request id is the ``x-request-id`` metadata when the caller sent one, else the
    request's ``request_id`` field (the idempotency key of writes), else a random one.
    Streaming RPCs (reflection, health Watch) pass through uncounted.
    """

    def __init__(self, metrics: BillingMetrics) -> None:
        self._m = metrics
        # Wrapped handlers by the identity of the handler they wrap (handlers of generic
        # services are static, so this stays small); bounded in case a later interceptor
        # builds handlers per call.
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wraps the unary handler of the called method."""
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        cached = self._wrapped.get(id(handler))
        if cached is not None and cached[0] is handler:
            wrapped = cached[1]
        else:
            wrapped = self._wrap(handler, handler_call_details.method)
            if len(self._wrapped) < 1024:
                self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        behavior: Any = handler.unary_unary
        duration = self._m.rpc_duration.labels(method)
        ok = self._m.rpc_requests.labels(method, "OK")
        requests = self._m.rpc_requests

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request_id = ""
            for key, value in context.invocation_metadata() or ():
                if key == "x-request-id" and isinstance(value, str):
                    request_id = value[:128]
                    break
            token = current_request_id.set(request_id or getattr(request, "request_id", "") or secrets.token_hex(8))
            start = time.perf_counter()
            try:
                response = await behavior(request, context)
            except asyncio.CancelledError:
                requests.labels(method, "CANCELLED").inc()
                raise
            except BaseException:
                code = _code_name(context)
                requests.labels(method, "UNKNOWN" if code == "OK" else code).inc()
                raise
            else:
                code = _code_name(context)
                (ok if code == "OK" else requests.labels(method, code)).inc()
                return response
            finally:
                duration.observe(time.perf_counter() - start)
                current_request_id.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


# ---------------------------------------------------------------------------
# the metrics endpoint
# ---------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP endpoint (prometheus-client's threaded server)."""

    host: str
    port: int
    _server: Any

    @property
    def url(self) -> str:
        """Where to scrape."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stops serving."""
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(registry: CollectorRegistry, *, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serves ``registry`` on ``host:port`` (port 0 picks a free one) in a daemon thread."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_address[1])
    return MetricsServer(host, bound, server)
