"""Two gRPC servers and two webhook sidecars, as separate processes, on one store under load.

No double charges, no double webhook processing, no lost updates.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc

from billing_service.domain.payments import Payment, PaymentStatus
from billing_service.service_layer.ports import WebhookStatus
from tests.e2e.test_server_process import ServeProcess
from tests.helpers import rich, rid, usd
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import (
    RunningSidecar,
    SidecarFactory,
    process_env,
    start_process,
    stripe_event,
    stripe_headers,
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")]

PAYMENTS = 8


@pytest.fixture
async def local(make_sidecar: SidecarFactory) -> RunningSidecar:
    """An in-process runtime on the test's database for inspection only (no workers)."""
    return await make_sidecar(workers=0)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def until_ok(call: Any, request: Any) -> Any:
    """A well-behaved caller: retries REQUEST_IN_PROGRESS and transient failures with the same request."""
    for _ in range(600):
        try:
            return await call(request, timeout=10)
        except grpc.aio.AioRpcError as err:
            if err.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
                raise
            await asyncio.sleep(0.02)
    raise AssertionError("never completed")


async def test_two_servers_and_two_sidecars_share_one_store(
    local: RunningSidecar, stripe_api: StripeImitation, mongo_uri: str, http: httpx.AsyncClient
) -> None:
    database = local.runtime.settings.mongodb_database
    env = process_env(mongo_uri, database, stripe_api, BILLING_WEBHOOK_WORKERS="2")
    servers = [await asyncio.to_thread(ServeProcess, mongo_uri, **env) for _ in range(2)]
    sidecars = [start_process(env), start_process(env)]
    channels = [grpc.aio.insecure_channel(s.target) for s in servers]
    try:
        stubs = [billing_service_pb2_grpc.BillingServiceStub(c) for c in channels]
        customer = (await stubs[0].CreateCustomer(pb.CreateCustomerRequest(request_id=rid()))).customer
        method = (
            await stubs[1].AttachPaymentMethod(
                pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.id, processor_token="pm_card_visa")
            )
        ).payment_method

        # 1. Every payment request sent to both servers at once.
        creates = [
            pb.CreatePaymentRequest(request_id=rid(), customer_id=customer.id, payment_method_id=method.id,
                                    amount=usd(1000), capture_method=pb.CAPTURE_METHOD_MANUAL)
            for _ in range(PAYMENTS)
        ]  # fmt: skip
        replies = await asyncio.gather(*(until_ok(stub.CreatePayment, r) for r in creates for stub in stubs))
        payment_ids = sorted({r.payment.id for r in replies})
        assert len(payment_ids) == PAYMENTS

        # 2. Half are captured in Stripe's dashboard (their webhooks arrive three times, at both
        #    sidecars), half through both gRPC servers at the same moment.
        by_id = {p: await local.runtime.store.get(Payment, p) for p in payment_ids}
        elsewhere, here = payment_ids[: PAYMENTS // 2], payment_ids[PAYMENTS // 2 :]
        events = []
        for pid in elsewhere:
            paid = by_id[pid]
            assert paid is not None
            await local.stripe.capture_payment(paid.processor_id, paid.amount, idempotency_key=f"dash-{pid}")
            intent = next(o for o in stripe_api.objects("payment_intent") if o["id"] == paid.processor_id)
            events.append(stripe_event("payment_intent.succeeded", intent))

        async def deliver(event: dict[str, Any], sidecar_url: str) -> int:
            body = json.dumps(event).encode()
            response = await http.post(f"{sidecar_url}/webhooks/stripe", content=body, headers=stripe_headers(body))
            return response.status_code

        captures = [pb.CapturePaymentRequest(request_id=rid(), payment_id=pid) for pid in here]
        outcomes = await asyncio.gather(
            *(deliver(e, sidecars[n % 2].url) for e in events for n in range(3)),
            *(until_ok(stub.CapturePayment, c) for c in captures for stub in stubs),
        )
        assert all(o == 200 for o in outcomes[: len(events) * 3])
        await _wait_processed(local, [e["id"] for e in events])

        # 3. Concurrent refunds on every payment, spread over both servers: four refunds of 30 % asked, three fit.
        async def refund(stub: Any, pid: str) -> str:
            try:
                await until_ok(stub.CreateRefund, pb.CreateRefundRequest(request_id=rid(), payment_id=pid,
                                                                         amount=usd(300)))  # fmt: skip
                return "ok"
            except grpc.aio.AioRpcError as err:
                return rich(err).reason

        results = await asyncio.gather(*(refund(stubs[n % 2], pid) for pid in payment_ids for n in range(4)))
        assert Counter(results) == {"ok": 3 * PAYMENTS, "REFUND_EXCEEDS_CAPTURED": PAYMENTS}
    finally:
        for channel in channels:
            await channel.close(None)
        for sidecar in sidecars:
            sidecar.stop()
        for server in servers:
            await asyncio.to_thread(server.stop)

    # No double charges: one PaymentIntent per payment, one capture each, 24 refunds.
    # (The imitation is shared with other tests: count what belongs to this test's payments.)
    ours = [o for o in stripe_api.objects("payment_intent") if o["metadata"].get("billing_payment_id") in payment_ids]
    assert len(ours) == PAYMENTS
    intents = {o["id"] for o in ours}
    assert len([r for r in stripe_api.objects("refund") if r["payment_intent"] in intents]) == 3 * PAYMENTS
    # No lost updates: every payment captured in full and refunded exactly 900.
    for pid in payment_ids:
        stored = await local.runtime.store.get(Payment, pid)
        assert stored is not None
        assert (stored.status, stored.amount_captured, stored.amount_refunded, stored.amount_refund_pending) == (
            PaymentStatus.SUCCEEDED, 1000, 900, 0,
        )  # fmt: skip
    # No double webhook processing: each event processed once, its change audited once.
    docs = await local.inbox.collection.find({"event_id": {"$in": [e["id"] for e in events]}}).to_list()
    assert all(d["attempts"] == 1 and d["deliveries"] == 3 for d in docs)
    for pid, event in zip(elsewhere, events, strict=True):
        changes = [(e.action, e.request_id) for e in await local.audit(pid) if e.caller == "webhook:stripe"]
        assert changes == [("payment.succeeded", event["id"])]


async def _wait_processed(local: RunningSidecar, event_ids: list[str], timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.1)):
        docs = await local.inbox.collection.find({"event_id": {"$in": event_ids}}).to_list()
        if len(docs) == len(event_ids) and all(d["status"] == WebhookStatus.PROCESSED.value for d in docs):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(Counter(d["status"] for d in docs))
