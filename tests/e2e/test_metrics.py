"""Metrics end to end: payments through the real server, then the /metrics endpoint scraped."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from billing_service.adapters.mongo.counts import subscription_counter
from billing_service.adapters.processors.fake import FakePaymentProcessor
from billing_service.bootstrap import Runtime, bootstrap
from billing_service.config import Settings
from billing_service.domain.common import Processor
from billing_service.entrypoints.grpc_api.server import GrpcServer
from billing_service.observability.metrics import (
    BillingMetrics,
    MetricsInterceptor,
    MetricsServer,
    SubscriptionSampler,
    serve_metrics,
)
from billing_service.service_layer.clock import ManualClock
from tests.helpers import rid, usd

_SVC = "/billing.v1.BillingService/"


class Metered:
    def __init__(self, runtime: Runtime, server: GrpcServer, endpoint: MetricsServer, channel: grpc.aio.Channel):
        self.runtime = runtime
        self.server = server
        self.endpoint = endpoint
        self.channel = channel
        self.billing = billing_service_pb2_grpc.BillingServiceStub(channel)
        self.metrics = runtime.metrics

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        def fetch() -> str:
            with urllib.request.urlopen(self.endpoint.url, timeout=5) as response:
                return str(response.read().decode())

        text = await asyncio.to_thread(fetch)
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture
async def metered(mongo_uri: str) -> AsyncIterator[Metered]:
    clock = ManualClock()
    metrics = BillingMetrics()
    settings = Settings(mongodb_database=f"e2e_{uuid.uuid4().hex}", health_interval_seconds=0.2)
    runtime = await bootstrap(
        settings, clock=clock, processors={Processor.FAKE: FakePaymentProcessor(clock)}, mongodb_uri=mongo_uri,
        metrics=metrics,
    )  # fmt: skip
    server = GrpcServer(
        runtime.deps, runtime.idempotency, address="127.0.0.1:0", interceptors=[MetricsInterceptor(metrics)]
    )
    await server.start()
    endpoint = serve_metrics(metrics.registry, port=0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Metered(runtime, server, endpoint, channel)
    finally:
        await channel.close(None)
        endpoint.close()
        await server.stop(1)
        await runtime.store.database.client.drop_database(settings.mongodb_database)
        await runtime.aclose()


async def _customer(m: Metered, token: str) -> tuple[str, str]:
    customer = await m.billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), email="a@example.com"))
    method = await m.billing.AttachPaymentMethod(
        pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.customer.id, processor_token=token)
    )
    return customer.customer.id, method.payment_method.id


async def test_rpcs_processor_calls_and_payment_kpis_are_exported(metered: Metered) -> None:
    customer_id, card = await _customer(metered, "pm_card_visa")
    paid = await metered.billing.CreatePayment(
        pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=card, amount=usd(5000))
    )
    assert paid.payment.status == pb.PAYMENT_STATUS_SUCCEEDED
    await metered.billing.CreateRefund(
        pb.CreateRefundRequest(request_id=rid(), payment_id=paid.payment.id, amount=usd(1500))
    )
    declined_customer, declined_card = await _customer(metered, "pm_card_chargeDeclinedInsufficientFunds")
    with pytest.raises(grpc.aio.AioRpcError) as declined:
        await metered.billing.CreatePayment(
            pb.CreatePaymentRequest(
                request_id=rid(), customer_id=declined_customer, payment_method_id=declined_card, amount=usd(700)
            )
        )
    assert declined.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await metered.billing.GetPayment(pb.GetPaymentRequest(payment_id="pay_missing"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    await metered.billing.GetPayment(pb.GetPaymentRequest(payment_id=paid.payment.id))

    scraped = await metered.scrape()

    def value(name: str, **labels: str) -> float:
        return scraped.get((name, tuple(sorted(labels.items()))), 0.0)

    rpc = "billing_grpc_requests_total"
    assert value(rpc, method=_SVC + "CreatePayment", code="OK") == 1
    assert value(rpc, method=_SVC + "CreatePayment", code="FAILED_PRECONDITION") == 1
    assert value(rpc, method=_SVC + "GetPayment", code="OK") == 1
    assert value(rpc, method=_SVC + "GetPayment", code="NOT_FOUND") == 1
    assert value(rpc, method=_SVC + "CreateCustomer", code="OK") == 2
    assert value("billing_grpc_request_duration_seconds_count", method=_SVC + "CreatePayment") == 2

    calls = "billing_processor_calls_total"
    assert value(calls, processor="fake", operation="create_payment", outcome="ok") == 1
    assert value(calls, processor="fake", operation="create_payment", outcome="declined") == 1
    assert value(calls, processor="fake", operation="create_refund", outcome="ok") == 1
    assert value("billing_processor_call_duration_seconds_count", processor="fake", operation="create_payment") == 2

    assert value("billing_payments_total", status="succeeded") == 1
    assert value("billing_payments_total", status="failed") == 1
    assert value("billing_payment_failures_total", reason="insufficient_funds") == 1
    assert value("billing_payment_duration_seconds_count") == 2  # created -> succeeded, created -> failed
    assert value("billing_refunds_total", status="succeeded", currency="USD") == 1
    assert value("billing_refunded_amount_minor_total", currency="USD") == 1500


async def test_subscription_gauges_sample_the_store(metered: Metered) -> None:
    database = metered.runtime.store.database
    # Only the status field matters to the count; raw documents keep the test independent of the use cases.
    await database["subscriptions"].insert_many(
        [{"_id": "sub_a", "status": "active"}, {"_id": "sub_t", "status": "trialing"},
         {"_id": "sub_c", "status": "canceled"}]
    )  # fmt: skip
    await SubscriptionSampler(metered.metrics, subscription_counter(metered.runtime.store)).sample()
    registry = metered.metrics.registry
    assert registry.get_sample_value("billing_subscriptions_active") == 2
    assert registry.get_sample_value("billing_subscriptions", {"status": "canceled"}) == 1
    assert registry.get_sample_value("billing_subscriptions", {"status": "paused"}) == 0
