"""The fake processor keeps its state in the store like a processor would (issue 11, item 7).

A restart must never hand out ``cus_fake_1`` again, and everything created before it
(customers, cards, payments awaiting 3-D Secure, refunds, subscriptions, idempotency keys)
must still be there: an old customer's card can still be charged, an old key still
replays. Two processes on one store (``make run`` starts the API and the sidecar) share
one fake processor.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from billing_service.adapters.mongo.fake_state import MongoFakeState
from billing_service.adapters.processors.fake import FakePaymentProcessor
from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer
from billing_service.domain.errors import PaymentDeclined, ProcessorError
from billing_service.domain.money import Money
from billing_service.domain.payments import CaptureMethod, PaymentStatus, RefundReason, RefundStatus
from billing_service.domain.subscriptions import Interval, Plan, PlanStatus, SubscriptionStatus
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.ports import PaymentRequest, RefundRequest, SubscriptionRequest

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
async def state(mongo_client: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[MongoFakeState]:
    name = f"fake_{uuid.uuid4().hex}"
    yield MongoFakeState(mongo_client, name)
    await mongo_client.drop_database(name)


def key() -> str:
    return uuid.uuid4().hex


def customer(n: int) -> Customer:
    return Customer(
        id=f"cus_{n}", email=f"{n}@example.com", name=f"C{n}", description="", metadata={"n": str(n)},
        default_processor=Processor.FAKE, created_at=T0, updated_at=T0,
    )  # fmt: skip


def plan(refs: dict[str, str] | None = None) -> Plan:
    return Plan(
        id="plan_1", name="Pro", description="", price=Money(1500, "USD"), interval=Interval.MONTH,
        interval_count=1, trial_period_days=0, status=PlanStatus.ACTIVE, metadata={}, created_at=T0,
        updated_at=T0, processor_refs=dict(refs or {}),
    )  # fmt: skip


def usd(minor: int) -> Money:
    return Money(minor, "USD")


async def test_ids_stay_unique_and_state_survives_a_restart(state: MongoFakeState) -> None:
    clock = ManualClock(T0)
    first = FakePaymentProcessor(clock, state=state)
    old_customer = await first.create_customer(customer(1), idempotency_key="k-cus-1")
    old_card = await first.attach_payment_method(old_customer, "pm_card_visa", idempotency_key="k-pm-1")
    paid_key = key()
    paid = await first.create_payment(
        PaymentRequest("pay_1", usd(2500), CaptureMethod.AUTOMATIC, old_customer, old_card.processor_id),
        idempotency_key=paid_key,
    )
    three_ds_card = await first.attach_payment_method(old_customer, "pm_card_authenticationRequired",
                                                      idempotency_key=key())  # fmt: skip
    waiting = await first.create_payment(
        PaymentRequest("pay_2", usd(900), CaptureMethod.AUTOMATIC, old_customer, three_ds_card.processor_id),
        idempotency_key=key(),
    )
    assert waiting.status is PaymentStatus.REQUIRES_ACTION and waiting.next_action is not None
    refund = await first.create_refund(
        RefundRequest("re_1", paid.processor_id, usd(500), RefundReason.REQUESTED_BY_CUSTOMER), idempotency_key=key()
    )
    declined_key = key()
    declined_card = await first.attach_payment_method(old_customer, "pm_card_chargeDeclined", idempotency_key=key())
    with pytest.raises(PaymentDeclined):
        await first.create_payment(
            PaymentRequest("pay_3", usd(100), CaptureMethod.AUTOMATIC, old_customer, declined_card.processor_id),
            idempotency_key=declined_key,
        )
    refs = await first.create_plan(plan(), idempotency_key=key())
    sub = await first.create_subscription(
        SubscriptionRequest("sub_1", old_customer, old_card.processor_id, plan(refs), 2, None, {}),
        idempotency_key=key(),
    )
    await first.aclose()

    # "Restart": a new processor object on the same store.
    second = FakePaymentProcessor(clock, state=state)
    new_customer = await second.create_customer(customer(2), idempotency_key="k-cus-2")
    new_card = await second.attach_payment_method(new_customer, "pm_card_visa", idempotency_key="k-pm-2")
    assert new_customer != old_customer and new_card.processor_id not in (
        old_card.processor_id, three_ds_card.processor_id, declined_card.processor_id,
    )  # fmt: skip
    assert new_customer != "cus_fake_1"
    # The old customer's card is still theirs and still chargeable.
    again = await second.create_payment(
        PaymentRequest("pay_4", usd(700), CaptureMethod.AUTOMATIC, old_customer, old_card.processor_id),
        idempotency_key=key(),
    )
    assert again.status is PaymentStatus.SUCCEEDED
    with pytest.raises(ProcessorError):
        await second.create_payment(
            PaymentRequest("pay_5", usd(700), CaptureMethod.AUTOMATIC, new_customer, old_card.processor_id),
            idempotency_key=key(),
        )
    # Old objects and idempotency keys survived.
    assert (await second.get_payment(paid.processor_id)).status is PaymentStatus.SUCCEEDED
    replay = await second.create_payment(
        PaymentRequest("pay_1", usd(2500), CaptureMethod.AUTOMATIC, old_customer, old_card.processor_id),
        idempotency_key=paid_key,
    )
    assert replay == paid
    with pytest.raises(PaymentDeclined):  # a stored decline replays as the same decline
        await second.create_payment(
            PaymentRequest("pay_3", usd(100), CaptureMethod.AUTOMATIC, old_customer, declined_card.processor_id),
            idempotency_key=declined_key,
        )
    live = await second.get_payment(waiting.processor_id)
    assert live.next_action is not None and live.next_action.client_secret == waiting.next_action.client_secret
    assert (await second.complete_action(waiting.processor_id)).status is PaymentStatus.SUCCEEDED
    assert (await second.get_refund(refund.processor_id)).status is RefundStatus.SUCCEEDED
    await second.update_customer(old_customer, customer(1), idempotency_key="k-upd")
    # Subscriptions keep billing on schedule across the restart.
    clock.advance(timedelta(days=31))
    renewed = await second.get_subscription(sub.processor_id)
    assert renewed.status is SubscriptionStatus.ACTIVE
    assert renewed.current_period_start is not None and sub.current_period_start is not None
    assert renewed.current_period_start > sub.current_period_start
    assert len(await second.list_invoices(sub.processor_id)) == 2
    charged = [c for c in second.charges_created if c.succeeded]
    assert len(charged) == 5  # 2500, 2 x 1500 (subscription), 700, and the completed 3-D Secure payment


async def test_two_processes_share_one_fake(state: MongoFakeState) -> None:
    clock = ManualClock(T0)
    api, sidecar = FakePaymentProcessor(clock, state=state), FakePaymentProcessor(clock, state=state)
    ids = [await (api if n % 2 else sidecar).create_customer(customer(n), idempotency_key=key()) for n in range(6)]
    assert len(set(ids)) == 6
    card = await api.attach_payment_method(ids[0], "pm_card_visa", idempotency_key=key())
    payment = await sidecar.create_payment(
        PaymentRequest("pay_1", usd(100), CaptureMethod.AUTOMATIC, ids[0], card.processor_id), idempotency_key=key()
    )
    assert (await api.get_payment(payment.processor_id)).status is PaymentStatus.SUCCEEDED
    same_key = key()
    first = await api.create_customer(customer(9), idempotency_key=same_key)
    assert await sidecar.create_customer(customer(9), idempotency_key=same_key) == first


async def test_without_a_store_the_fake_stays_in_memory() -> None:
    fake = FakePaymentProcessor(ManualClock(T0))
    assert await fake.create_customer(customer(1), idempotency_key=key()) == "cus_fake_1"
