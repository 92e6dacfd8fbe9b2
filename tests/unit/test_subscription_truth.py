"""The subscription state machine converges on the processor without moving back in time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from billing_service.adapters.processors.fake import FakePaymentProcessor
from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer
from billing_service.domain.errors import IllegalTransition
from billing_service.domain.money import Money
from billing_service.domain.subscriptions import (
    Interval,
    Plan,
    PlanStatus,
    ProcessorSubscriptionState,
    ProrationBehavior,
    Subscription,
    SubscriptionStatus,
)
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.ports import SubscriptionChange, SubscriptionRequest

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = SubscriptionStatus


def subscription(status: SubscriptionStatus = S.ACTIVE, processor_id: str = "sub_p") -> Subscription:
    return Subscription(
        id="sub_1", customer_id="cus_1", plan_id="plan_a", payment_method_id="pm_1", quantity=1, status=status,
        processor=Processor.STRIPE, metadata={}, created_at=T0, updated_at=T0, processor_id=processor_id,
    )  # fmt: skip


def report(period: int, status: SubscriptionStatus = S.ACTIVE, **extra: object) -> ProcessorSubscriptionState:
    """The processor's view during monthly period ``period`` (0 = January)."""
    start, end = T0 + timedelta(days=31 * period), T0 + timedelta(days=31 * (period + 1))
    return ProcessorSubscriptionState(
        "sub_p",
        status,
        current_period_start=start,
        current_period_end=end,
        **extra,  # type: ignore[arg-type]
    )


def test_two_rereads_applied_in_the_wrong_order_never_move_the_period_back() -> None:
    """Before: the older read, applied last with the same status, overwrote the newer period."""
    sub = subscription()
    newer, older = report(2), report(1)
    assert sub.apply_processor_state(newer, T0)
    assert not sub.apply_processor_state(older, T0)
    assert (sub.current_period_start, sub.current_period_end) == (newer.current_period_start, newer.current_period_end)
    # Nor can an older report of another status (past_due in period 1) undo period 2.
    assert not sub.apply_processor_state(report(1, S.PAST_DUE), T0)
    assert status(sub) is S.ACTIVE
    # A report of the same period still applies (status, flags); a later period moves on.
    assert sub.apply_processor_state(report(2, S.PAST_DUE), T0) and status(sub) is S.PAST_DUE
    assert sub.apply_processor_state(report(3), T0) and status(sub) is S.ACTIVE


def status(sub: Subscription) -> SubscriptionStatus:
    return sub.status


def test_a_report_ending_the_same_period_earlier_is_older() -> None:
    sub = subscription()
    extended = report(0)
    extended.current_period_end = T0 + timedelta(days=60)  # a trial extended in the dashboard
    assert sub.apply_processor_state(extended, T0)
    assert not sub.apply_processor_state(report(0), T0)
    assert sub.current_period_end == T0 + timedelta(days=60)


def test_plan_and_quantity_follow_the_processor() -> None:
    sub = subscription()
    assert sub.apply_processor_state(report(0, processor_plan_id="price_b", quantity=4), T0, plan_id="plan_b")
    assert (sub.plan_id, sub.quantity) == ("plan_b", 4)
    # Unknown to us (a dashboard price, or an adapter that cannot tell): keep what we have.
    assert not sub.apply_processor_state(report(0, processor_plan_id="price_x", quantity=0), T0, plan_id="")
    assert (sub.plan_id, sub.quantity) == ("plan_b", 4)


def test_only_a_subscription_the_processor_does_not_hold_can_be_ended_here() -> None:
    unstarted = subscription(S.INCOMPLETE, processor_id="")
    assert unstarted.cancel_unstarted(T0) == ("incomplete", "canceled")
    assert unstarted.status is S.CANCELED and unstarted.canceled_at == T0
    with pytest.raises(IllegalTransition):
        subscription(S.INCOMPLETE).cancel_unstarted(T0)
    with pytest.raises(IllegalTransition):
        unstarted.cancel_unstarted(T0)


async def test_the_fake_reports_the_price_and_quantity_it_bills() -> None:
    fake = FakePaymentProcessor(ManualClock(T0))
    customer = Customer("cus_1", "a@example.com", "A", "", {}, Processor.FAKE, T0, T0)
    cus = await fake.create_customer(customer, idempotency_key=str(uuid.uuid4()))
    pm = (await fake.attach_payment_method(cus, "pm_card_visa", idempotency_key=str(uuid.uuid4()))).processor_id
    plans = []
    for name, price in (("basic", 1000), ("pro", 3000)):
        plan = Plan(f"plan_{name}", name, "", Money(price, "USD"), Interval.MONTH, 1, 0, PlanStatus.ACTIVE, {}, T0, T0)
        plan.processor_refs.update(await fake.create_plan(plan, idempotency_key=str(uuid.uuid4())))
        plans.append(plan)
    basic, pro = plans
    sub = await fake.create_subscription(
        SubscriptionRequest("sub_1", cus, pm, basic, 2, None), idempotency_key=str(uuid.uuid4())
    )
    assert (sub.processor_plan_id, sub.quantity) == (basic.processor_refs["fake"], 2)
    changed = await fake.update_subscription(
        sub.processor_id, SubscriptionChange(pro, 5, ProrationBehavior.NONE), idempotency_key=str(uuid.uuid4())
    )
    assert (changed.processor_plan_id, changed.quantity) == (pro.processor_refs["fake"], 5)
