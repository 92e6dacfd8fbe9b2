"""Processing: convergence by re-fetch, exactly one change per event, reordering, disputes,
dead events and replay, backfill. Everything goes through a real sidecar over HTTP."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc as pb_grpc

from billing_service.domain.common import Processor
from billing_service.domain.disputes import Dispute, DisputeStatus
from billing_service.domain.money import Money
from billing_service.domain.payments import Payment, PaymentStatus
from billing_service.domain.subscriptions import Interval, Subscription, SubscriptionStatus
from billing_service.entrypoints.grpc_api.server import GrpcServer
from billing_service.entrypoints.webhooks.cli import backfill_into
from billing_service.service_layer import plans
from billing_service.service_layer import subscriptions as subs
from billing_service.service_layer.ports import WebhookStatus
from tests.imitations.paypal_api import PayPalImitation
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import (
    FIXTURES,
    RunningSidecar,
    SidecarFactory,
    complete_3ds,
    create_payment,
    ctx,
    customer_with_method,
    fixture,
    paypal_event,
    stripe_event,
)

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def pi_object(api: StripeImitation, intent_id: str) -> dict[str, Any]:
    return next(o for o in api.objects("payment_intent") if o["id"] == intent_id)


async def payment(sidecar: RunningSidecar, payment_id: str) -> Payment:
    found = await sidecar.runtime.store.get(Payment, payment_id)
    assert found is not None
    return found


async def test_every_fixture_is_acknowledged_and_settles(sidecar: RunningSidecar) -> None:
    """Fixtures name objects this service never created: recorded as orphans, never failing."""
    ids = []
    for path in sorted((FIXTURES / "stripe").glob("*.json")):
        event = fixture("stripe", path.stem)
        assert (await sidecar.post_stripe(event)).status_code == 200
        ids.append(event["id"])
    for path in sorted((FIXTURES / "paypal").glob("*.json")):
        event = fixture("paypal", path.stem)
        assert (await sidecar.post_paypal(event)).status_code == 200, path.stem
        ids.append(event["id"])
    unknown = stripe_event("invoice.paid")
    unknown["type"] = "issuing_card.created"
    assert (await sidecar.post_stripe(unknown)).status_code == 200
    statuses = await sidecar.settled([*ids, unknown["id"]])
    assert statuses.pop(unknown["id"]) is WebhookStatus.IGNORED
    assert set(statuses.values()) == {WebhookStatus.ORPHAN}, statuses
    assert len(ids) == 19 + 15


async def test_same_event_ten_times_one_change_one_audit_event(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    paid = await create_payment(sidecar.runtime, Processor.STRIPE, "pm_card_visa", manual=True)
    assert paid.status is PaymentStatus.REQUIRES_CAPTURE
    # Captured at Stripe by someone else (the dashboard): only the webhook tells us.
    await sidecar.stripe.capture_payment(paid.processor_id, paid.amount, idempotency_key="dashboard-capture")
    event = stripe_event("payment_intent.succeeded", pi_object(stripe_api, paid.processor_id))
    responses = await asyncio.gather(*(sidecar.post_stripe(event) for _ in range(10)))
    assert [r.status_code for r in responses] == [200] * 10
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    assert await sidecar.settled([event["id"]]) == {event["id"]: WebhookStatus.PROCESSED}
    after = await payment(sidecar, paid.id)
    assert after.status is PaymentStatus.SUCCEEDED and after.amount_captured == 2500
    changes = [e for e in await sidecar.audit(paid.id) if e.caller == "webhook:stripe"]
    assert [(e.action, e.request_id, e.before_status) for e in changes] == [
        ("payment.succeeded", event["id"], "requires_capture")
    ]
    doc = await sidecar.inbox.collection.find_one({"event_id": event["id"]})
    assert doc is not None and doc["attempts"] == 1 and doc["deliveries"] == 10


async def test_succeeded_before_requires_action_ends_succeeded(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    pending = await create_payment(sidecar.runtime, Processor.STRIPE, "pm_card_authenticationRequired")
    assert pending.status is PaymentStatus.REQUIRES_ACTION
    requires_action = stripe_event("payment_intent.requires_action", pi_object(stripe_api, pending.processor_id))
    complete_3ds(stripe_api, pending.processor_id)
    succeeded = stripe_event("payment_intent.succeeded", pi_object(stripe_api, pending.processor_id))
    await sidecar.post_stripe(succeeded)
    await sidecar.settled([succeeded["id"]])
    await sidecar.post_stripe(requires_action)  # the older event arrives last
    await sidecar.settled([requires_action["id"]])
    final = await payment(sidecar, pending.id)
    assert final.status is PaymentStatus.SUCCEEDED and final.next_action is None
    actions = [e.action for e in await sidecar.audit(pending.id) if e.caller == "webhook:stripe"]
    assert actions == ["payment.succeeded"]


async def _stripe_subscription(sidecar: RunningSidecar) -> Subscription:
    runtime = sidecar.runtime
    customer, method = await customer_with_method(runtime, Processor.STRIPE, "pm_card_visa")
    plan = await plans.create_plan(
        runtime.deps, ctx("plan"), plans.CreatePlan("Pro", "", Money(1500, "USD"), Interval.MONTH, 1, 0)
    )
    return await subs.create_subscription(
        runtime.deps, ctx("sub"), subs.CreateSubscription(customer.id, plan.id, method.id, 1, None)
    )


async def test_subscription_updated_before_created_equals_in_order(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    finals = []
    for order in (("created", "updated"), ("updated", "created")):
        sub = await _stripe_subscription(sidecar)
        assert sub.status is SubscriptionStatus.ACTIVE
        sub_obj = next(o for o in stripe_api.objects("subscription") if o["id"] == sub.processor_id)
        created = stripe_event("customer.subscription.created", sub_obj)
        # Paused at Stripe (dashboard), which Stripe reports as an update.
        await sidecar.stripe.pause_subscription(sub.processor_id, idempotency_key=f"dash-pause-{sub.id}")
        sub_obj = next(o for o in stripe_api.objects("subscription") if o["id"] == sub.processor_id)
        updated = stripe_event("customer.subscription.updated", sub_obj)
        events = {"created": created, "updated": updated}
        for name in order:
            await sidecar.post_stripe(events[name])
            await sidecar.settled([events[name]["id"]])
        stored = await sidecar.runtime.store.get(Subscription, sub.id)
        assert stored is not None
        finals.append((stored.status, stored.cancel_at_period_end))
        actions = [e.action for e in await sidecar.audit(sub.id) if e.caller == "webhook:stripe"]
        assert actions == ["subscription.paused"]
    assert finals[0] == finals[1] == (SubscriptionStatus.PAUSED, False)


async def _paypal_authorized(sidecar: RunningSidecar, paypal_api: PayPalImitation) -> Payment:
    token = paypal_api.create_setup_token("card")
    return await create_payment(sidecar.runtime, Processor.PAYPAL, token, manual=True)


async def test_paypal_refund_before_capture_equals_in_order(
    sidecar: RunningSidecar, paypal_api: PayPalImitation
) -> None:
    finals = []
    for refund_first in (False, True):
        paid = await _paypal_authorized(sidecar, paypal_api)
        assert paid.status is PaymentStatus.REQUIRES_CAPTURE
        # Captured and refunded at PayPal outside this service: only webhooks tell us.
        await sidecar.paypal.capture_payment(paid.processor_id, paid.amount, idempotency_key=f"cap-{paid.id}")
        order = paypal_api.orders[paid.processor_id]
        capture = order["purchase_units"][0]["payments"]["captures"][0]
        completed = paypal_event(
            "PAYMENT.CAPTURE.COMPLETED", id=capture["id"], custom_id=paid.id,
            supplementary_data={"related_ids": {"order_id": paid.processor_id}},
        )  # fmt: skip
        refunded = paypal_event("PAYMENT.CAPTURE.REFUNDED", id="UNKNOWN-REFUND-" + paid.id[-6:], custom_id="")
        events = [refunded, completed] if refund_first else [completed, refunded]
        for event in events:
            assert (await sidecar.post_paypal(event)).status_code == 200
        statuses = await sidecar.settled([e["id"] for e in events])
        assert statuses[completed["id"]] is WebhookStatus.PROCESSED
        assert statuses[refunded["id"]] is WebhookStatus.ORPHAN  # a refund we never made
        final = await payment(sidecar, paid.id)
        finals.append((final.status, final.amount_captured, final.amount_refunded))
    assert finals[0] == finals[1] == (PaymentStatus.SUCCEEDED, 2500, 0)


async def test_paypal_approved_order_is_completed_by_the_webhook(
    sidecar: RunningSidecar, paypal_api: PayPalImitation
) -> None:
    """CHECKOUT.ORDER.APPROVED: re-reading the order makes the adapter capture it, once."""
    from billing_service.domain.payments import CaptureMethod
    from billing_service.service_layer.ports import PaymentRequest

    customer, _ = await customer_with_method(sidecar.runtime, Processor.PAYPAL, paypal_api.create_setup_token())
    state = await sidecar.paypal.create_payment(
        PaymentRequest("pay_x", Money(900, "USD"), CaptureMethod.AUTOMATIC, "", "", return_url="https://a.example/r"),
        idempotency_key="order-1",
    )
    assert state.status is PaymentStatus.REQUIRES_ACTION
    # The record a real create_payment would hold for that order.
    record = await create_payment(sidecar.runtime, Processor.PAYPAL, paypal_api.create_setup_token("card"), amount=900)
    record.processor_id, record.status = state.processor_id, PaymentStatus.REQUIRES_ACTION
    from billing_service.service_layer.ports import Update

    await sidecar.runtime.store.commit([Update(record)], [])
    paypal_api.approve_order(state.processor_id)
    captures_before = paypal_api.captures_created
    event = paypal_event("CHECKOUT.ORDER.APPROVED", id=state.processor_id)
    event["resource"]["purchase_units"][0]["custom_id"] = record.id
    for _ in range(3):
        await sidecar.post_paypal(event)
    await sidecar.settled([event["id"]])
    assert (await payment(sidecar, record.id)).status is PaymentStatus.SUCCEEDED
    assert paypal_api.captures_created == captures_before + 1
    del customer


async def test_stripe_dispute_lifecycle_and_list_disputes_rpc(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    paid = await create_payment(sidecar.runtime, Processor.STRIPE, "pm_card_visa")
    created = stripe_event("charge.dispute.created", payment_intent=paid.processor_id, id="du_test_" + paid.id[-10:])
    closed = stripe_event("charge.dispute.closed", payment_intent=paid.processor_id, id="du_test_" + paid.id[-10:])
    closed["created"] = created["data"]["object"]["created"] + 5 * 86400
    # Closed first, then the older "created" (and "created" again): the dispute ends lost.
    # The workers handle events concurrently, so either may be applied first.
    for event in (closed, created, created):
        assert (await sidecar.post_stripe(event)).status_code == 200
    await sidecar.settled([closed["id"], created["id"]])
    stored = await payment(sidecar, paid.id)
    assert len(stored.dispute_ids) == 1
    dispute = await sidecar.runtime.store.get(Dispute, stored.dispute_ids[0])
    assert dispute is not None
    assert dispute.status is DisputeStatus.LOST and dispute.amount == Money(2500, "USD")
    assert dispute.time_to_resolution is not None and dispute.time_to_resolution.days == 5
    trail = [(e.action, e.caller, e.request_id) for e in await sidecar.audit(dispute.id)]
    # Closed applied first: the dispute is recorded lost at once, and the older "created"
    # changes nothing. Created first: opened by it, then lost by the closing event.
    assert trail in (
        [("dispute.opened", "webhook:stripe", closed["id"])],
        [("dispute.opened", "webhook:stripe", created["id"]), ("dispute.lost", "webhook:stripe", closed["id"])],
    )

    server = GrpcServer(sidecar.runtime.deps, sidecar.runtime.idempotency, address="127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.BillingServiceStub(channel)
            listed = await stub.ListDisputes(pb.ListDisputesRequest(payment_id=paid.id))
            got = await stub.GetPayment(pb.GetPaymentRequest(payment_id=paid.id))
    finally:
        await server.stop(1)
    assert [d.id for d in listed.disputes] == [dispute.id]
    assert listed.disputes[0].status == pb.DISPUTE_STATUS_LOST
    assert listed.disputes[0].time_to_resolution.seconds == 5 * 86400
    assert list(got.payment.dispute_ids) == [dispute.id]


async def test_paypal_dispute_opened_then_resolved(sidecar: RunningSidecar, paypal_api: PayPalImitation) -> None:
    paid = await create_payment(sidecar.runtime, Processor.PAYPAL, paypal_api.create_setup_token("card"))
    assert paid.status is PaymentStatus.SUCCEEDED
    opened = paypal_event("CUSTOMER.DISPUTE.CREATED", dispute_id="PP-D-" + paid.id[-8:])
    resolved = paypal_event("CUSTOMER.DISPUTE.RESOLVED", dispute_id="PP-D-" + paid.id[-8:])
    for event in (opened, resolved):
        event["resource"]["disputed_transactions"][0]["custom"] = paid.id
        assert (await sidecar.post_paypal(event)).status_code == 200
        await sidecar.settled([event["id"]])
    stored = await payment(sidecar, paid.id)
    dispute = await sidecar.runtime.store.get(Dispute, stored.dispute_ids[0])
    assert dispute is not None and dispute.status is DisputeStatus.LOST
    assert dispute.reason == "merchandise_or_service_not_received"
    actions = [e.action for e in await sidecar.audit(dispute.id)]
    assert actions == ["dispute.opened", "dispute.lost"]


async def test_failures_retry_then_park_dead_and_replay(
    make_sidecar: SidecarFactory, stripe_api: StripeImitation
) -> None:
    sidecar = await make_sidecar(max_attempts=2, retry_base=0.05)
    paid = await create_payment(sidecar.runtime, Processor.STRIPE, "pm_card_visa", manual=True)
    await sidecar.stripe.capture_payment(paid.processor_id, paid.amount, idempotency_key=f"cap-{paid.id}")
    stripe_api.fail_next(f"/v1/payment_intents/{paid.processor_id}", 500, times=4)  # 2 attempts x 2 SDK tries
    event = stripe_event("payment_intent.succeeded", pi_object(stripe_api, paid.processor_id))
    await sidecar.post_stripe(event)
    assert await sidecar.settled([event["id"]]) == {event["id"]: WebhookStatus.DEAD}
    doc = await sidecar.inbox.collection.find_one({"event_id": event["id"]})
    assert doc is not None and doc["attempts"] == 2 and doc["last_error"]
    ready = (await sidecar.http.get(f"{sidecar.url}/readyz")).json()
    assert ready["inbox_dead"] == 1
    assert (await payment(sidecar, paid.id)).status is PaymentStatus.REQUIRES_CAPTURE

    assert await sidecar.inbox.replay_dead(now=datetime.now(UTC)) == 1
    sidecar.runtime.deps.clock.now()  # workers poll; the replayed event is due now
    deadline = time.monotonic() + 10
    while (await sidecar.inbox.get(Processor.STRIPE, event["id"])).status is not WebhookStatus.PROCESSED:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await payment(sidecar, paid.id)).status is PaymentStatus.SUCCEEDED


async def test_backfill_inserts_missed_stripe_events_once(sidecar: RunningSidecar, stripe_api: StripeImitation) -> None:
    since = datetime.fromtimestamp(int(time.time()) - 1, UTC)
    paid = await create_payment(sidecar.runtime, Processor.STRIPE, "pm_card_visa")
    inserted, seen = await backfill_into(sidecar.inbox, sidecar.stripe, since, now=lambda: datetime.now(UTC))
    assert inserted == seen and seen >= 3  # customer, payment method, payment intent events
    again, seen_again = await backfill_into(sidecar.inbox, sidecar.stripe, since, now=lambda: datetime.now(UTC))
    assert again == 0 and seen_again == seen
    events = await sidecar.inbox.collection.find({"type": "payment_intent.succeeded"}).to_list()
    assert any(paid.processor_id in bytes(e["payload"]).decode() for e in events)
    await sidecar.settled([e["event_id"] for e in events])
