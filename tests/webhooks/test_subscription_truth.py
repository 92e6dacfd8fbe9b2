"""Our subscription equals the processor's: plan and quantity come from the processor (never
from a request it has not confirmed), dashboard changes are picked up, a refusal is final."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer, PaymentMethod
from billing_service.domain.errors import BillingError, IllegalTransition
from billing_service.domain.money import Money
from billing_service.domain.subscriptions import Interval, ProrationBehavior, Subscription, SubscriptionStatus
from billing_service.service_layer import plans
from billing_service.service_layer import subscriptions as su
from billing_service.service_layer.ports import SubscriptionRequest, WebhookStatus
from tests.imitations.paypal_api import PayPalImitation
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import STRIPE_KEY, RunningSidecar, ctx, customer_with_method

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


async def _plan(sidecar: RunningSidecar, amount: int, name: str) -> str:
    cmd = plans.CreatePlan(name, "", Money(amount, "USD"), Interval.MONTH, 1, 0)
    return (await plans.create_plan(sidecar.runtime.deps, ctx("plan"), cmd)).id


async def _stored(sidecar: RunningSidecar, subscription_id: str) -> Subscription:
    sub = await sidecar.runtime.store.get(Subscription, subscription_id)
    assert sub is not None
    return sub


async def test_paypal_plan_is_ours_only_once_the_buyer_approved_the_revision(
    sidecar: RunningSidecar, paypal_api: PayPalImitation
) -> None:
    deps = sidecar.runtime.deps
    customer, method = await customer_with_method(sidecar.runtime, Processor.PAYPAL, paypal_api.create_setup_token())
    basic, pro = await _plan(sidecar, 1000, "Basic"), await _plan(sidecar, 3000, "Pro")
    sub = await su.create_subscription(
        deps, ctx("sub"), su.CreateSubscription(customer.id, basic, method.id, quantity=1, trial_period_days=None)
    )
    assert sub.status is SubscriptionStatus.INCOMPLETE and sub.approval_url
    paypal_api.approve_subscription(sub.processor_id)
    sub = await su.sync_subscription(deps, ctx("sync"), sub.id)
    assert (sub.status, sub.plan_id, sub.quantity) == (SubscriptionStatus.ACTIVE, basic, 1)

    revised = await su.update_subscription(
        deps, ctx("upd"), su.UpdateSubscription(sub.id, pro, 2, ProrationBehavior.NONE)
    )
    assert (revised.plan_id, revised.quantity) == (basic, 1)  # PayPal still bills Basic x1
    assert revised.approval_url  # where the buyer consents
    assert ((await _stored(sidecar, sub.id)).plan_id, (await _stored(sidecar, sub.id)).quantity) == (basic, 1)

    paypal_api.approve_revision(sub.processor_id)
    event = paypal_api.webhook_events[-1]
    assert event["event_type"] == "BILLING.SUBSCRIPTION.UPDATED"
    assert (await sidecar.post_paypal(event)).status_code == 200
    assert await sidecar.settled([event["id"]]) == {event["id"]: WebhookStatus.PROCESSED}
    after = await _stored(sidecar, sub.id)
    assert (after.plan_id, after.quantity, after.status) == (pro, 2, SubscriptionStatus.ACTIVE)
    trail = [e for e in await sidecar.audit(sub.id) if e.action == "subscription.active"]
    assert trail and trail[-1].data.get("plan_id") == pro


async def _stripe_post(api: StripeImitation, path: str, form: dict[str, str]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {STRIPE_KEY}"}) as http:
        response = await http.post(path, data=form, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _last_event(api: StripeImitation, event_type: str, object_id: str) -> dict[str, Any]:
    return [e for e in api.objects("event") if e["type"] == event_type and e["data"]["object"]["id"] == object_id][-1]


async def test_a_plan_and_quantity_change_made_in_stripes_dashboard_is_picked_up(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    deps = sidecar.runtime.deps
    customer, method = await customer_with_method(sidecar.runtime, Processor.STRIPE, "pm_card_visa")
    basic, pro = await _plan(sidecar, 1000, "Basic"), await _plan(sidecar, 3000, "Pro")
    sub = await su.create_subscription(
        deps, ctx("sub"), su.CreateSubscription(customer.id, basic, method.id, quantity=1, trial_period_days=None)
    )
    pro_plan = await plans.ensure_processor_plan(
        deps, await plans.get_plan(deps, pro), Processor.STRIPE, ctx=ctx("plan")
    )
    remote = stripe_api.objects("subscription")[-1]
    assert remote["id"] == sub.processor_id
    item = remote["items"]["data"][0]["id"]
    await _stripe_post(
        stripe_api,
        f"/v1/subscriptions/{sub.processor_id}",
        {"items[0][id]": item, "items[0][price]": pro_plan.processor_refs["stripe"], "items[0][quantity]": "4",
         "proration_behavior": "none"},
    )  # fmt: skip
    event = _last_event(stripe_api, "customer.subscription.updated", sub.processor_id)
    assert (await sidecar.post_stripe(event)).status_code == 200
    assert await sidecar.settled([event["id"]]) == {event["id"]: WebhookStatus.PROCESSED}
    after = await _stored(sidecar, sub.id)
    assert (after.plan_id, after.quantity) == (pro, 4)


async def test_a_subscription_the_processor_refused_is_canceled_and_never_sent_an_empty_id(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    deps = sidecar.runtime.deps
    customer, _ = await customer_with_method(sidecar.runtime, Processor.STRIPE, "pm_card_visa")
    basic = await _plan(sidecar, 1000, "Basic")
    context = ctx("sub")
    # No payment method and no trial: Stripe refuses (the customer has no default method).
    with pytest.raises(BillingError) as info:
        await su.create_subscription(
            deps, context, su.CreateSubscription(customer.id, basic, "", quantity=1, trial_period_days=0)
        )
    assert not getattr(info.value, "retryable", False)
    refused = await _stored(sidecar, context.resource_id)
    assert (refused.status, refused.processor_id) == (SubscriptionStatus.CANCELED, "")
    assert refused.canceled_at is not None
    assert [e.action for e in await sidecar.audit(refused.id)][-1] == "subscription.refused"

    before = len(stripe_api.requests)
    with pytest.raises(IllegalTransition):
        await su.cancel_subscription(deps, ctx("cancel"), refused.id, at_period_end=False)
    assert await su.sync_subscription(deps, ctx("sync"), refused.id) == refused
    assert [r.path for r in stripe_api.requests[before:]] == []  # nothing sent, least of all DELETE /v1/subscriptions/
    # The caller's retry of the refused request gets the same final state, without a second try.
    again = await su.create_subscription(
        deps, context, su.CreateSubscription(customer.id, basic, "", quantity=1, trial_period_days=0)
    )
    assert again.status is SubscriptionStatus.CANCELED and len(stripe_api.requests) == before


async def _unknown_outcome(sidecar: RunningSidecar, stripe_api: StripeImitation) -> tuple[Subscription, Any]:
    """A CreateSubscription whose processor call failed retryably: INCOMPLETE, no processor id."""
    from billing_service.domain.errors import ProcessorUnavailable
    from billing_service.service_layer.idempotency import RequestContext

    customer, method = await customer_with_method(sidecar.runtime, Processor.STRIPE, "pm_card_visa")
    basic = await _plan(sidecar, 1000, "Basic")
    await plans.ensure_processor_plan(
        sidecar.runtime.deps, await plans.get_plan(sidecar.runtime.deps, basic), Processor.STRIPE, ctx=ctx("plan")
    )
    context = RequestContext("test-caller", su.CREATE_METHOD, str(uuid.uuid4()), f"sub_{uuid.uuid4().hex[:20]}")
    stripe_api.fail_next("/v1/subscriptions", status=503, times=2)
    with pytest.raises(ProcessorUnavailable):
        await su.create_subscription(
            sidecar.runtime.deps, context, su.CreateSubscription(customer.id, basic, method.id, 1, None)
        )
    sub = await _stored(sidecar, context.resource_id)
    assert (sub.status, sub.processor_id) == (SubscriptionStatus.INCOMPLETE, "")
    return sub, context


async def test_a_subscription_canceled_before_its_processor_answered_is_ended_there_when_it_shows_up(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    deps = sidecar.runtime.deps
    sub, context = await _unknown_outcome(sidecar, stripe_api)
    canceled = await su.cancel_subscription(deps, ctx("cancel"), sub.id, at_period_end=False)
    assert (canceled.status, canceled.processor_id) == (SubscriptionStatus.CANCELED, "")
    assert not [r for r in stripe_api.requests if r.method == "DELETE"]

    # The creation had in fact reached Stripe (its answer was lost): Stripe announces it.
    customer = await sidecar.runtime.store.get(Customer, sub.customer_id)
    plan = await plans.get_plan(deps, sub.plan_id)
    method = await sidecar.runtime.store.get(PaymentMethod, sub.payment_method_id)
    assert customer is not None and method is not None
    request = SubscriptionRequest(sub.id, customer.processor_refs["stripe"], method.processor_id, plan, 1, None)
    live = await sidecar.stripe.create_subscription(request, idempotency_key=context.processor_key("subscription"))
    event = _last_event(stripe_api, "customer.subscription.created", live.processor_id)
    assert (await sidecar.post_stripe(event)).status_code == 200
    assert await sidecar.settled([event["id"]]) == {event["id"]: WebhookStatus.PROCESSED}
    assert stripe_api.objects("subscription")[-1]["status"] == "canceled"
    after = await _stored(sidecar, sub.id)
    assert (after.status, after.processor_id) == (SubscriptionStatus.CANCELED, live.processor_id)


async def test_reconciliation_resumes_a_creation_whose_outcome_is_unknown_under_its_first_key(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    from datetime import timedelta

    deps = sidecar.runtime.deps
    sub, context = await _unknown_outcome(sidecar, stripe_api)
    assert await su.sync_subscription(deps, ctx("sync"), sub.id) == sub  # too young: its caller may retry
    await sidecar.runtime.store.database["subscriptions"].update_one(
        {"_id": sub.id}, {"$set": {"created_at": sub.created_at - timedelta(minutes=10)}}
    )
    before = len(stripe_api.objects("subscription"))
    synced = await su.sync_subscription(deps, ctx("sync"), sub.id)
    assert synced.status is SubscriptionStatus.ACTIVE and synced.processor_id
    assert len(stripe_api.objects("subscription")) == before + 1
    keys = {r.headers["idempotency-key"] for r in stripe_api.requests_to("POST", "/v1/subscriptions")}
    assert context.processor_key("subscription") in keys
