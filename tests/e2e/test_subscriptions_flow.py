"""Plans, subscriptions and mirrored invoices end to end with the fake processor on a manual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from billing.v1 import billing_service_pb2 as bpb
from billing.v1 import subscription_service_pb2 as pb

from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.subscriptions import sync_subscription
from tests.e2e.conftest import Api
from tests.helpers import rich, rid, usd


async def setup_customer(api: Api) -> tuple[str, str]:
    customer = await api.billing.CreateCustomer(bpb.CreateCustomerRequest(request_id=rid(), email="s@example.com"))
    method = await api.billing.AttachPaymentMethod(
        bpb.AttachPaymentMethodRequest(
            request_id=rid(), customer_id=customer.customer.id, processor_token="pm_card_visa"
        )
    )
    return customer.customer.id, method.payment_method.id


async def plan(api: Api, amount: int, *, trial_days: int = 0, name: str = "Pro") -> str:
    created = await api.subs.CreatePlan(
        pb.CreatePlanRequest(request_id=rid(), name=name, price=usd(amount), interval=pb.INTERVAL_MONTH,
                             trial_period_days=trial_days)
    )  # fmt: skip
    assert created.plan.status == pb.PLAN_STATUS_ACTIVE
    return created.plan.id


async def reconcile(api: Api, subscription_id: str) -> None:
    ctx = RequestContext("reconciler", "reconcile", f"test-{rid()}", "")
    await sync_subscription(api.runtime.deps, ctx, subscription_id)


async def test_trial_then_renewals_produce_mirrored_invoices(api: Api) -> None:
    api.clock._now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    customer_id, pm_id = await setup_customer(api)
    plan_id = await plan(api, 1000, trial_days=14)
    sub = (
        await api.subs.CreateSubscription(
            pb.CreateSubscriptionRequest(request_id=rid(), customer_id=customer_id, plan_id=plan_id,
                                         payment_method_id=pm_id, quantity=2)
        )
    ).subscription  # fmt: skip
    assert sub.status == pb.SUBSCRIPTION_STATUS_TRIALING
    assert sub.trial_end.ToDatetime(tzinfo=UTC) == datetime(2026, 2, 14, 12, tzinfo=UTC)

    await api.fake.advance_clock_to(datetime(2026, 4, 20, tzinfo=UTC))
    await reconcile(api, sub.id)
    got = (await api.subs.GetSubscription(pb.GetSubscriptionRequest(subscription_id=sub.id))).subscription
    assert got.status == pb.SUBSCRIPTION_STATUS_ACTIVE
    invoices = (await api.subs.ListInvoices(pb.ListInvoicesRequest(subscription_id=sub.id))).invoices
    assert len(invoices) == 3  # Feb 14, Mar 14, Apr 14
    assert all(i.status == pb.INVOICE_STATUS_PAID and i.amount_paid.amount_minor == 2000 for i in invoices)
    one = await api.subs.GetInvoice(pb.GetInvoiceRequest(invoice_id=invoices[0].id))
    assert one.invoice.customer_id == customer_id
    # Mirroring again changes nothing (no duplicates).
    await reconcile(api, sub.id)
    assert len((await api.subs.ListInvoices(pb.ListInvoicesRequest(customer_id=customer_id))).invoices) == 3


async def test_upgrade_with_prorations_pause_resume_and_cancel(api: Api) -> None:
    customer_id, pm_id = await setup_customer(api)
    basic, pro = await plan(api, 1000, name="Basic"), await plan(api, 3000, name="Pro")
    sub = (
        await api.subs.CreateSubscription(
            pb.CreateSubscriptionRequest(request_id=rid(), customer_id=customer_id, plan_id=basic,
                                         payment_method_id=pm_id)
        )
    ).subscription  # fmt: skip
    assert sub.status == pb.SUBSCRIPTION_STATUS_ACTIVE
    first = (await api.subs.ListInvoices(pb.ListInvoicesRequest(subscription_id=sub.id))).invoices
    assert [i.amount_paid.amount_minor for i in first] == [1000]

    api.clock.advance(timedelta(days=10))
    updated = (
        await api.subs.UpdateSubscription(
            pb.UpdateSubscriptionRequest(request_id=rid(), subscription_id=sub.id, plan_id=pro, quantity=2,
                                         proration_behavior=pb.PRORATION_BEHAVIOR_ALWAYS_INVOICE)
        )
    ).subscription  # fmt: skip
    assert (updated.plan_id, updated.quantity) == (pro, 2)
    invoices = (await api.subs.ListInvoices(pb.ListInvoicesRequest(subscription_id=sub.id))).invoices
    assert len(invoices) == 2
    proration = next(i for i in invoices if any(line.proration for line in i.lines))
    assert proration.amount_due.amount_minor > 0

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.subs.ResumeSubscription(pb.ResumeSubscriptionRequest(request_id=rid(), subscription_id=sub.id))
    assert (err.value.code(), rich(err.value).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SUBSCRIPTION_NOT_PAUSED",
    )
    paused = await api.subs.PauseSubscription(pb.PauseSubscriptionRequest(request_id=rid(), subscription_id=sub.id))
    assert paused.subscription.status == pb.SUBSCRIPTION_STATUS_PAUSED
    assert paused.subscription.HasField("pause_time")
    resumed = await api.subs.ResumeSubscription(pb.ResumeSubscriptionRequest(request_id=rid(), subscription_id=sub.id))
    assert resumed.subscription.status == pb.SUBSCRIPTION_STATUS_ACTIVE

    scheduled = await api.subs.CancelSubscription(
        pb.CancelSubscriptionRequest(request_id=rid(), subscription_id=sub.id, at_period_end=True)
    )
    assert scheduled.subscription.cancel_at_period_end
    assert scheduled.subscription.status == pb.SUBSCRIPTION_STATUS_ACTIVE
    await api.fake.advance_clock_to(api.clock.now() + timedelta(days=40))
    await reconcile(api, sub.id)
    final = await api.subs.GetSubscription(pb.GetSubscriptionRequest(subscription_id=sub.id))
    assert final.subscription.status == pb.SUBSCRIPTION_STATUS_CANCELED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.subs.CancelSubscription(pb.CancelSubscriptionRequest(request_id=rid(), subscription_id=sub.id))
    assert rich(err.value).reason == "SUBSCRIPTION_CANCELED"
    listed = await api.subs.ListSubscriptions(
        pb.ListSubscriptionsRequest(customer_id=customer_id, status=pb.SUBSCRIPTION_STATUS_CANCELED)
    )
    assert [s.id for s in listed.subscriptions] == [sub.id]


async def test_archived_plan_refuses_new_subscriptions(api: Api) -> None:
    customer_id, pm_id = await setup_customer(api)
    plan_id = await plan(api, 500)
    archived = await api.subs.ArchivePlan(pb.ArchivePlanRequest(request_id=rid(), plan_id=plan_id))
    assert archived.plan.status == pb.PLAN_STATUS_ARCHIVED
    assert [p.id for p in (await api.subs.ListPlans(pb.ListPlansRequest())).plans] == []
    assert [p.id for p in (await api.subs.ListPlans(pb.ListPlansRequest(include_archived=True))).plans] == [plan_id]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.subs.CreateSubscription(
            pb.CreateSubscriptionRequest(request_id=rid(), customer_id=customer_id, plan_id=plan_id,
                                         payment_method_id=pm_id)
        )  # fmt: skip
    assert rich(err.value).reason == "PLAN_ARCHIVED"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.CreatePlanRequest(name="x", price=usd(100)), "interval"),
        (pb.CreatePlanRequest(name="x", interval=pb.INTERVAL_MONTH), "price"),
        (pb.CreatePlanRequest(name="", price=usd(100), interval=pb.INTERVAL_MONTH), "name"),
        (pb.CreatePlanRequest(name="x", price=usd(100), interval=pb.INTERVAL_MONTH, interval_count=13),
         "interval_count"),
        (pb.CreatePlanRequest(name="x", price=usd(100), interval=pb.INTERVAL_DAY, trial_period_days=-1),
         "trial_period_days"),
    ],
)  # fmt: skip
async def test_bad_plans_are_refused(api: Api, request_: pb.CreatePlanRequest, field: str) -> None:
    request_.request_id = rid()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.subs.CreatePlan(request_)
    assert rich(err.value).violations == [field]
    assert await api.runtime.store.database["plans"].count_documents({}) == 0
