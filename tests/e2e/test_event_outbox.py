"""The outbox invariant over a random mix of use cases; events of every cause; back-pressure."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2 as bpb
from billing.v1 import event_service_pb2, event_service_pb2_grpc
from billing.v1 import subscription_service_pb2 as spb
from google.protobuf.field_mask_pb2 import FieldMask

from billing_service.adapters.mongo.event_log import LOG, OUTBOX
from billing_service.adapters.mongo.store import COLLECTIONS
from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.money import Money
from billing_service.entrypoints.grpc_api import event_service
from billing_service.service_layer.reconcile import reconcile_once
from tests.e2e.conftest import Api
from tests.e2e.test_events import events_stub
from tests.helpers import rid, usd


async def all_events(api: Api) -> list[dict[str, Any]]:
    """Every event, numbered or not: outbox first, then log (a move in between lands in the log)."""
    db = api.runtime.store.database
    waiting = await db[OUTBOX].find({}).to_list()
    logged = await db[LOG].find({}).sort("_id", 1).to_list()
    return [*waiting, *logged]


async def test_every_document_version_has_its_events_over_a_random_mix_of_use_cases(api: Api) -> None:
    rng = random.Random(12)
    customers: list[tuple[str, str]] = []
    payments: list[str] = []
    subs: list[str] = []
    plan = (
        await api.subs.CreatePlan(
            spb.CreatePlanRequest(request_id=rid(), name="Pro", price=usd(900), interval=spb.INTERVAL_MONTH)
        )
    ).plan.id
    tokens = ["pm_card_visa", "pm_card_chargeDeclinedInsufficientFunds", "pm_card_authenticationRequired"]

    async def step() -> None:
        kind = rng.choice(["customer", "pay", "manual", "refund", "cancel", "update", "subscribe", "sub_change"])
        if kind == "customer" or not customers:
            customer = (await api.billing.CreateCustomer(bpb.CreateCustomerRequest(request_id=rid()))).customer
            method = (
                await api.billing.AttachPaymentMethod(
                    bpb.AttachPaymentMethodRequest(
                        request_id=rid(), customer_id=customer.id, processor_token=rng.choice(tokens)
                    )
                )
            ).payment_method
            customers.append((customer.id, method.id))
            return
        customer_id, method_id = rng.choice(customers)
        if kind in ("pay", "manual"):
            manual = bpb.CAPTURE_METHOD_MANUAL if kind == "manual" else bpb.CAPTURE_METHOD_AUTOMATIC
            paid = await api.billing.CreatePayment(
                bpb.CreatePaymentRequest(
                    request_id=rid(), customer_id=customer_id, payment_method_id=method_id,
                    amount=usd(rng.randint(100, 5000)), capture_method=manual,
                )
            )  # fmt: skip
            payments.append(paid.payment.id)
            if kind == "manual" and rng.random() < 0.5:
                await api.billing.CapturePayment(
                    bpb.CapturePaymentRequest(request_id=rid(), payment_id=paid.payment.id)
                )
        elif kind == "refund" and payments:
            await api.billing.CreateRefund(
                bpb.CreateRefundRequest(request_id=rid(), payment_id=rng.choice(payments), amount=usd(50))
            )
        elif kind == "cancel" and payments:
            await api.billing.CancelPayment(bpb.CancelPaymentRequest(request_id=rid(), payment_id=rng.choice(payments)))
        elif kind == "update":
            await api.billing.UpdateCustomer(
                bpb.UpdateCustomerRequest(
                    request_id=rid(), customer=bpb.Customer(id=customer_id, name=f"N{rng.random()}"),
                    update_mask=FieldMask(paths=["name"]),
                )
            )  # fmt: skip
        elif kind == "subscribe":
            reply = await api.subs.CreateSubscription(
                spb.CreateSubscriptionRequest(
                    request_id=rid(), customer_id=customer_id, plan_id=plan, payment_method_id=method_id
                )
            )
            subs.append(reply.subscription.id)
        elif kind == "sub_change" and subs:
            sub_id = rng.choice(subs)
            if rng.random() < 0.5:
                await api.subs.CancelSubscription(
                    spb.CancelSubscriptionRequest(request_id=rid(), subscription_id=sub_id, at_period_end=True)
                )
            else:
                await api.subs.PauseSubscription(spb.PauseSubscriptionRequest(request_id=rid(), subscription_id=sub_id))

    for _ in range(60):
        try:
            await step()
        except grpc.aio.AioRpcError as err:
            # Refusals (a decline, an illegal move) change nothing or record a final state.
            assert err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT), err
    db = api.runtime.store.database
    assert api.runtime.event_tasks is not None
    # Still the sequencer: an event it moved between the two reads would be counted twice.
    await api.runtime.event_tasks.stop()
    events = await all_events(api)
    by_resource: dict[str, set[int]] = {}
    for event in events:
        by_resource.setdefault(event["resource_id"], set()).add(event["resource_version"])
        assert event["snapshot"]["version"] == event["resource_version"]
        assert event["snapshot"]["_id"] == event["resource_id"]
    documents = 0
    for kind, name in COLLECTIONS.items():
        if kind is AuditEvent:
            continue
        for doc in await db[name].find({}, {"version": 1}).to_list():
            documents += 1
            assert by_resource.get(doc["_id"]) == set(range(1, doc["version"] + 1)), (name, doc["_id"])
    assert documents > 30
    assert api.runtime.store.unaudited_changes == 0
    assert len({e.get("event_id", e["_id"]) for e in events}) == len(events)


async def test_a_change_found_by_reconciliation_has_events(processors_api: Api) -> None:
    """A capture made in Stripe's dashboard, whose webhook never came, found by a reconciliation pass."""
    api = processors_api
    assert api.runtime.event_feed is not None
    customer = (await api.billing.CreateCustomer(bpb.CreateCustomerRequest(request_id=rid()))).customer
    method = (
        await api.billing.AttachPaymentMethod(
            bpb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.id, processor_token="pm_card_visa")
        )
    ).payment_method
    held = (
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(
                request_id=rid(), customer_id=customer.id, payment_method_id=method.id, amount=usd(2500),
                capture_method=bpb.CAPTURE_METHOD_MANUAL,
            )
        )
    ).payment  # fmt: skip
    stripe = api.runtime.processors[Processor.STRIPE]
    await stripe.capture_payment(held.processor_id, Money(2500, "USD"), idempotency_key=f"dash-{rid()}")
    # Reconciliation (the periodic pass) finds the capture; its events say so.
    await reconcile_once(api.runtime.deps, event_feed=api.runtime.event_feed, cursors={})
    events = [e for e in await all_events(api) if e["resource_id"] == held.id]
    assert [(e["type"], e["caller"]) for e in events][-1] == ("payment.succeeded", "reconciler")
    await _until_listed(api, held.id)
    listed = await events_stub(api).ListEvents(
        event_service_pb2.ListEventsRequest(filter=f'resource_id = {held.id} AND type = "payment.succeeded"')
    )
    assert listed.events[0].cause.WhichOneof("kind") == "reconciliation"
    assert listed.events[0].cause.reconciliation.run_id


async def _until_listed(api: Api, resource_id: str) -> None:
    for _ in range(200):
        if await api.runtime.store.database[LOG].count_documents({"resource_id": resource_id}) and not (
            await api.runtime.store.database[OUTBOX].count_documents({"resource_id": resource_id})
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("events never reached the log")


async def test_a_renewal_found_by_the_scheduled_pass_has_events(api: Api) -> None:
    api.clock._now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    customer = (await api.billing.CreateCustomer(bpb.CreateCustomerRequest(request_id=rid()))).customer
    method = (
        await api.billing.AttachPaymentMethod(
            bpb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.id, processor_token="pm_card_visa")
        )
    ).payment_method
    plan = (
        await api.subs.CreatePlan(
            spb.CreatePlanRequest(request_id=rid(), name="Pro", price=usd(1000), interval=spb.INTERVAL_MONTH)
        )
    ).plan.id
    sub = (
        await api.subs.CreateSubscription(
            spb.CreateSubscriptionRequest(
                request_id=rid(), customer_id=customer.id, plan_id=plan, payment_method_id=method.id
            )
        )
    ).subscription
    before = {e["_id"] for e in await all_events(api)} | {e.get("event_id") for e in await all_events(api)}
    # A month later the processor renewed it; the reconciliation pass's due sweep mirrors it.
    later = datetime(2026, 3, 5, tzinfo=UTC)
    await api.fake.advance_clock_to(later)
    api.clock._now = later
    await reconcile_once(api.runtime.deps, cursors={})
    fresh = [e for e in await all_events(api) if e.get("event_id", e["_id"]) not in before]
    renewal = [(e["resource_type"], e["type"]) for e in fresh if e["customer_id"] == customer.id]
    assert ("invoice", "invoice.created") in renewal and ("invoice", "invoice.paid") in renewal
    assert ("subscription", "subscription.updated") in renewal, renewal
    assert {e["caller"] for e in fresh if e["customer_id"] == customer.id} == {"reconciler"}
    assert any(e["resource_id"] == sub.id for e in fresh)


async def test_a_slow_reader_is_back_pressured_and_memory_stays_bounded(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server converts (and so sends) events only as the reader takes them; the ring is bounded."""
    events = api.runtime.deps.events
    assert events is not None
    events.ring._events = deque(events.ring._events, maxlen=50)  # a small ring: the reader falls out of it
    converted = 0
    original = event_service.event_pb

    def counting(event: Any, log_id: str) -> Any:
        nonlocal converted
        converted += 1
        return original(event, log_id)

    monkeypatch.setattr(event_service, "event_pb", counting)
    # HTTP/2 flow control is what paces the server: this reader keeps the initial 64 KiB
    # window (no BDP probing, which would let the window grow to several MiB).
    channel = grpc.aio.insecure_channel(api.target, options=[("grpc.http2.bdp_probe", 0)])
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    call = stub.WatchEvents(event_service_pb2.WatchEventsRequest(event_types=["customer.*"]))
    stream = call.__aiter__()
    await stream.__anext__()  # the first heartbeat
    # 600 events with big snapshots (metadata) while the reader sleeps.
    for _ in range(12):
        await asyncio.gather(
            *(
                api.billing.CreateCustomer(
                    bpb.CreateCustomerRequest(
                        request_id=rid(), name="x" * 200, metadata={f"k{i}": "v" * 400 for i in range(8)}
                    )
                )
                for _ in range(50)
            )
        )
    await asyncio.sleep(1.0)
    lead_while_idle = converted
    read = 0
    leads = []
    while read < 600:
        message = await stream.__anext__()
        if message.HasField("event"):
            read += 1
            leads.append(converted - read)
            if read % 100 == 0:
                await asyncio.sleep(0.05)  # a slow reader
    call.cancel()
    await channel.close(None)
    assert len(events.ring._events) <= 50
    # The server ran ahead of the reader by at most what HTTP/2 flow control lets through,
    # a small part of the 600 (it never loaded them all into memory for this stream).
    assert lead_while_idle < 300, lead_while_idle
    assert max(leads) < 300, max(leads)
