"""SIGKILL the gRPC server in the middle of a burst of payments, restart it, retry everything."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections import Counter
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc
from pymongo import AsyncMongoClient

from tests.e2e.conftest import STRIPE_KEY
from tests.e2e.test_server_process import ServeProcess
from tests.helpers import rid, usd
from tests.imitations.stripe_api import StripeImitation

pytestmark = pytest.mark.slow

BURST = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def call_until_done(stub: billing_service_pb2_grpc.BillingServiceAsyncStub, request: Any) -> Any:
    """What a well-behaved caller does: retry transient failures with the same request_id."""
    for _ in range(3000):
        try:
            return await stub.CreatePayment(request, timeout=5)
        except grpc.aio.AioRpcError as err:
            if err.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.ABORTED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ):
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("never completed")


async def test_sigkill_mid_burst_then_retries_charge_each_payment_once(
    mongo_uri: str, stripe_imitation: StripeImitation, mongo_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    stripe_imitation.reset()
    port = free_port()
    env = {
        "BILLING_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "BILLING_PROCESSOR": "stripe",
        "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": stripe_imitation.base_url,
        "BILLING_IDEMPOTENCY_LEASE_SECONDS": "2",
    }
    server = await asyncio.to_thread(ServeProcess, mongo_uri, **env)
    database = server.env["BILLING_MONGODB_DATABASE"]
    env["BILLING_MONGODB_DATABASE"] = database
    target = server.target
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = billing_service_pb2_grpc.BillingServiceStub(channel)
            customer = (await stub.CreateCustomer(pb.CreateCustomerRequest(request_id=rid()))).customer
            method = (
                await stub.AttachPaymentMethod(
                    pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.id,
                                                  processor_token="pm_card_visa")
                )
            ).payment_method  # fmt: skip
            requests = [
                pb.CreatePaymentRequest(request_id=rid(), customer_id=customer.id, payment_method_id=method.id,
                                        amount=usd(1000 + i))
                for i in range(BURST)
            ]  # fmt: skip
            burst = [asyncio.ensure_future(stub.CreatePayment(r, timeout=10)) for r in requests]
            await asyncio.sleep(0.4)
            server.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(server.proc.wait)
            outcomes = await asyncio.gather(*burst, return_exceptions=True)
        finished_before_kill = sum(1 for o in outcomes if not isinstance(o, BaseException))
        assert finished_before_kill < BURST, "the kill came too late to interrupt anything"

        server = await asyncio.to_thread(ServeProcess, mongo_uri, **env)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = billing_service_pb2_grpc.BillingServiceStub(channel)
            # Calls whose documents the killed server's open transactions still hold wait
            # until those transactions expire (transactionLifetimeLimitSeconds, 60 s by default).
            done = await asyncio.gather(*(call_until_done(stub, r) for r in requests))
        payment_ids = [d.payment.id for d in done]
        assert len(set(payment_ids)) == BURST
        assert all(d.payment.status == pb.PAYMENT_STATUS_SUCCEEDED for d in done)
        for request, reply in zip(requests, done, strict=True):
            assert reply.payment.amount.amount_minor == request.amount.amount_minor
        # Exactly one PaymentIntent and one charge per payment at the processor.
        assert stripe_imitation.payment_intents_created == BURST
        assert stripe_imitation.charges_created == BURST
        db = mongo_client[database]
        assert await db["payments"].count_documents({}) == BURST
        # The audit trail is complete: each payment was created and succeeded, once each.
        events = await db["audit_events"].find({"resource_type": "payment"}).to_list()
        per_action = Counter((e["resource_id"], e["action"]) for e in events)
        for pid in payment_ids:
            assert per_action[(pid, "payment.created")] == 1
            assert per_action[(pid, "payment.succeeded")] == 1
    finally:
        if server.proc.poll() is None:
            await asyncio.to_thread(server.stop)
        await mongo_client.drop_database(database)
