"""Every RPC through the generated client with the real Stripe and PayPal SDKs against local imitations."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from billing.v1 import billing_service_pb2 as bpb
from billing.v1 import common_pb2 as cpb
from billing.v1 import subscription_service_pb2 as spb
from google.protobuf import field_mask_pb2

from billing_service.domain.common import Processor
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.payments import refresh_refund
from billing_service.service_layer.subscriptions import sync_subscription
from tests.e2e.conftest import Api
from tests.helpers import rich, rid, usd
from tests.imitations.paypal_api import PayPalImitation
from tests.imitations.stripe_api import StripeImitation

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def ctx() -> RequestContext:
    return RequestContext("reconciler", "reconcile", f"test-{rid()}", "")


async def stripe_customer(api: Api, token: str = "pm_card_visa") -> tuple[str, str]:
    customer = await api.billing.CreateCustomer(bpb.CreateCustomerRequest(request_id=rid(), email="s@example.com"))
    method = await api.billing.AttachPaymentMethod(
        bpb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.customer.id, processor_token=token)
    )
    assert method.payment_method.processor == cpb.PROCESSOR_STRIPE
    return customer.customer.id, method.payment_method.id


async def test_stripe_payments_refunds_and_customers_end_to_end(
    processors_api: Api, stripe_imitation: StripeImitation
) -> None:
    api = processors_api
    customer_id, pm_id = await stripe_customer(api)
    got = await api.billing.GetCustomer(bpb.GetCustomerRequest(customer_id=customer_id))
    assert [r.processor for r in got.customer.processor_refs] == [cpb.PROCESSOR_STRIPE]
    await api.billing.UpdateCustomer(
        bpb.UpdateCustomerRequest(request_id=rid(), customer=bpb.Customer(id=customer_id, name="Ada L."),
                                  update_mask=field_mask_pb2.FieldMask(paths=["name"]))
    )  # fmt: skip
    stripe_customer_obj = stripe_imitation.objects("customer")[0]
    assert stripe_customer_obj["name"] == "Ada L."
    assert (await api.billing.ListCustomers(bpb.ListCustomersRequest())).customers[0].id == customer_id

    pm = (await api.billing.ListPaymentMethods(bpb.ListPaymentMethodsRequest(customer_id=customer_id))).payment_methods
    assert (pm[0].card.brand, pm[0].card.last4) == ("visa", "4242")

    auto = (
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                     amount=usd(5000), description="order 17")
        )
    ).payment  # fmt: skip
    assert auto.status == bpb.PAYMENT_STATUS_SUCCEEDED and auto.processor_id.startswith("pi_")
    manual = (
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                     amount=usd(3000), capture_method=bpb.CAPTURE_METHOD_MANUAL)
        )
    ).payment  # fmt: skip
    assert manual.status == bpb.PAYMENT_STATUS_REQUIRES_CAPTURE
    captured = await api.billing.CapturePayment(
        bpb.CapturePaymentRequest(request_id=rid(), payment_id=manual.id, amount=usd(2000))
    )
    assert captured.payment.amount_captured.amount_minor == 2000
    to_cancel = (
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                     amount=usd(100), capture_method=bpb.CAPTURE_METHOD_MANUAL)
        )
    ).payment  # fmt: skip
    canceled = await api.billing.CancelPayment(bpb.CancelPaymentRequest(request_id=rid(), payment_id=to_cancel.id))
    assert canceled.payment.status == bpb.PAYMENT_STATUS_CANCELED
    listed = await api.billing.ListPayments(
        bpb.ListPaymentsRequest(customer_id=customer_id, status=bpb.PAYMENT_STATUS_SUCCEEDED)
    )
    assert {p.id for p in listed.payments} == {auto.id, manual.id}

    refund = await api.billing.CreateRefund(
        bpb.CreateRefundRequest(request_id=rid(), payment_id=auto.id, amount=usd(1200),
                                reason=bpb.REFUND_REASON_DUPLICATE)
    )  # fmt: skip
    assert refund.refund.status == bpb.REFUND_STATUS_SUCCEEDED and refund.refund.processor_id.startswith("re_")
    assert (await api.billing.GetRefund(bpb.GetRefundRequest(refund_id=refund.refund.id))).refund.id == refund.refund.id

    # A refund that completes later: pending now, succeeded after the processor settles it.
    stripe_imitation.refund_mode = "pending"
    pending = (await api.billing.CreateRefund(bpb.CreateRefundRequest(request_id=rid(), payment_id=auto.id))).refund
    assert pending.status == bpb.REFUND_STATUS_PENDING
    stripe_imitation.settle_refund(pending.processor_id, "succeeded")
    await refresh_refund(api.runtime.deps, ctx(), pending.id)
    final = (await api.billing.GetPayment(bpb.GetPaymentRequest(payment_id=auto.id))).payment
    assert final.amount_refunded.amount_minor == 5000

    detached = await api.billing.DetachPaymentMethod(
        bpb.DetachPaymentMethodRequest(request_id=rid(), payment_method_id=pm_id)
    )
    assert detached.payment_method.status == bpb.PAYMENT_METHOD_STATUS_DETACHED
    # Every write carried an Idempotency-Key.
    assert all(r.headers.get("idempotency-key") for r in stripe_imitation.requests if r.method == "POST")


async def test_stripe_decline_and_3ds(processors_api: Api) -> None:
    api = processors_api
    customer_id, declined = await stripe_customer(api, "pm_card_chargeDeclined")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=declined,
                                     amount=usd(900))
        )  # fmt: skip
    info = rich(err.value)
    assert (info.code, info.reason, info.metadata["decline_code"]) == (
        grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_DECLINED", "generic_decline",
    )  # fmt: skip
    _, three_ds = await stripe_customer(api, "pm_card_authenticationRequired")
    customer2 = (await api.billing.ListCustomers(bpb.ListCustomersRequest())).customers[0].id
    needs = (
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer2, payment_method_id=three_ds,
                                     amount=usd(900))
        )
    ).payment  # fmt: skip
    assert needs.status == bpb.PAYMENT_STATUS_REQUIRES_ACTION
    assert "_secret_" in needs.next_action.client_secret


async def test_stripe_charge_then_timeout_retry_is_one_payment_and_one_charge(
    processors_api: Api, stripe_imitation: StripeImitation
) -> None:
    api = processors_api
    customer_id, pm_id = await stripe_customer(api)
    request = bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                       amount=usd(7777))  # fmt: skip
    # Stripe charges, the response never arrives, and the adapter's own retries hit 500s:
    # the RPC fails, not knowing whether money moved.
    stripe_imitation.timeout_after_effect_next("/v1/payment_intents")
    stripe_imitation.fail_next("/v1/payment_intents", 500, "api_error", times=2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreatePayment(request)
    assert rich(err.value).code == grpc.StatusCode.UNAVAILABLE
    assert rich(err.value).retry_delay_ms is not None
    payment = (await api.billing.CreatePayment(request)).payment
    assert payment.status == bpb.PAYMENT_STATUS_SUCCEEDED
    assert stripe_imitation.payment_intents_created == 1
    assert stripe_imitation.charges_created == 1
    listed = await api.billing.ListPayments(bpb.ListPaymentsRequest(customer_id=customer_id))
    assert [p.id for p in listed.payments] == [payment.id]


async def test_stripe_429_and_500_are_retried_then_unavailable(
    processors_api: Api, stripe_imitation: StripeImitation
) -> None:
    api = processors_api
    customer_id, pm_id = await stripe_customer(api)
    stripe_imitation.fail_next("/v1/payment_intents", 429, "rate_limit_error")
    ok = await api.billing.CreatePayment(
        bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(100))
    )
    assert ok.payment.status == bpb.PAYMENT_STATUS_SUCCEEDED
    stripe_imitation.fail_next("/v1/payment_intents", 500, "api_error", times=3)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(
                request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(101)
            )
        )
    info = rich(err.value)
    assert (info.code, info.reason) == (grpc.StatusCode.UNAVAILABLE, "PROCESSOR_UNAVAILABLE")


async def test_stripe_subscriptions_and_invoices_end_to_end(processors_api: Api) -> None:
    api = processors_api
    customer_id, pm_id = await stripe_customer(api)
    basic = (await api.subs.CreatePlan(spb.CreatePlanRequest(request_id=rid(), name="Basic", price=usd(1000),
                                                              interval=spb.INTERVAL_MONTH))).plan  # fmt: skip
    pro = (await api.subs.CreatePlan(spb.CreatePlanRequest(request_id=rid(), name="Pro", price=usd(2500),
                                                            interval=spb.INTERVAL_MONTH))).plan  # fmt: skip
    assert (await api.subs.GetPlan(spb.GetPlanRequest(plan_id=basic.id))).plan.name == "Basic"
    sub = (
        await api.subs.CreateSubscription(
            spb.CreateSubscriptionRequest(request_id=rid(), customer_id=customer_id, plan_id=basic.id,
                                          payment_method_id=pm_id, quantity=2)
        )
    ).subscription  # fmt: skip
    assert sub.status == spb.SUBSCRIPTION_STATUS_ACTIVE and sub.processor_id.startswith("sub_")
    plan_now = (await api.subs.GetPlan(spb.GetPlanRequest(plan_id=basic.id))).plan
    assert cpb.PROCESSOR_STRIPE in [r.processor for r in plan_now.processor_refs]
    invoices = (await api.subs.ListInvoices(spb.ListInvoicesRequest(subscription_id=sub.id))).invoices
    assert [i.amount_paid.amount_minor for i in invoices] == [2000]
    assert (await api.subs.GetInvoice(spb.GetInvoiceRequest(invoice_id=invoices[0].id))).invoice.processor_id

    changed = await api.subs.UpdateSubscription(
        spb.UpdateSubscriptionRequest(request_id=rid(), subscription_id=sub.id, plan_id=pro.id,
                                      proration_behavior=spb.PRORATION_BEHAVIOR_ALWAYS_INVOICE)
    )  # fmt: skip
    assert changed.subscription.plan_id == pro.id
    paused = await api.subs.PauseSubscription(spb.PauseSubscriptionRequest(request_id=rid(), subscription_id=sub.id))
    assert paused.subscription.status == spb.SUBSCRIPTION_STATUS_PAUSED
    resumed = await api.subs.ResumeSubscription(spb.ResumeSubscriptionRequest(request_id=rid(), subscription_id=sub.id))
    assert resumed.subscription.status == spb.SUBSCRIPTION_STATUS_ACTIVE
    at_end = await api.subs.CancelSubscription(
        spb.CancelSubscriptionRequest(request_id=rid(), subscription_id=sub.id, at_period_end=True)
    )
    assert at_end.subscription.cancel_at_period_end
    now = await api.subs.CancelSubscription(spb.CancelSubscriptionRequest(request_id=rid(), subscription_id=sub.id))
    assert now.subscription.status == spb.SUBSCRIPTION_STATUS_CANCELED
    archived = await api.subs.ArchivePlan(spb.ArchivePlanRequest(request_id=rid(), plan_id=basic.id))
    assert archived.plan.status == spb.PLAN_STATUS_ARCHIVED
    listed = await api.subs.ListSubscriptions(spb.ListSubscriptionsRequest(customer_id=customer_id))
    assert [s.id for s in listed.subscriptions] == [sub.id]
    plans = await api.subs.ListPlans(spb.ListPlansRequest())
    assert [p.id for p in plans.plans] == [pro.id]

    trial = (
        await api.subs.CreateSubscription(
            spb.CreateSubscriptionRequest(request_id=rid(), customer_id=customer_id, plan_id=pro.id,
                                          payment_method_id=pm_id, trial_period_days=7)
        )
    ).subscription  # fmt: skip
    assert trial.status == spb.SUBSCRIPTION_STATUS_TRIALING


async def paypal_method(api: Api, imitation: PayPalImitation, customer_id: str, **kw: object) -> str:
    token = imitation.create_setup_token(**kw)  # type: ignore[arg-type]
    method = await api.billing.AttachPaymentMethod(
        bpb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer_id, processor=cpb.PROCESSOR_PAYPAL,
                                       processor_token=token)
    )  # fmt: skip
    assert method.payment_method.processor == cpb.PROCESSOR_PAYPAL
    return method.payment_method.id


async def test_one_customer_holds_stripe_and_paypal_methods_and_payments_route_by_method(
    processors_api: Api, stripe_imitation: StripeImitation, paypal_imitation: PayPalImitation
) -> None:
    api = processors_api
    customer_id, stripe_pm = await stripe_customer(api)
    paypal_pm = await paypal_method(api, paypal_imitation, customer_id)
    methods = await api.billing.ListPaymentMethods(bpb.ListPaymentMethodsRequest(customer_id=customer_id))
    assert {m.processor for m in methods.payment_methods} == {cpb.PROCESSOR_STRIPE, cpb.PROCESSOR_PAYPAL}
    via_stripe = (
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=stripe_pm,
                                     amount=usd(1000))
        )
    ).payment  # fmt: skip
    via_paypal = (
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=paypal_pm,
                                     amount=usd(1500))
        )
    ).payment  # fmt: skip
    assert (via_stripe.processor, via_paypal.processor) == (cpb.PROCESSOR_STRIPE, cpb.PROCESSOR_PAYPAL)
    assert via_paypal.status == bpb.PAYMENT_STATUS_SUCCEEDED
    assert stripe_imitation.payment_intents_created == 1
    assert paypal_imitation.captures_created == 1


async def test_paypal_payments_refunds_and_subscriptions_end_to_end(
    processors_api: Api, paypal_imitation: PayPalImitation
) -> None:
    api = processors_api
    customer = (
        await api.billing.CreateCustomer(
            bpb.CreateCustomerRequest(request_id=rid(), default_processor=cpb.PROCESSOR_PAYPAL)
        )
    ).customer
    pm_id = await paypal_method(api, paypal_imitation, customer.id)
    auth = (
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer.id, payment_method_id=pm_id,
                                     amount=usd(4000), capture_method=bpb.CAPTURE_METHOD_MANUAL)
        )
    ).payment  # fmt: skip
    assert auth.status == bpb.PAYMENT_STATUS_REQUIRES_CAPTURE
    captured = (
        await api.billing.CapturePayment(bpb.CapturePaymentRequest(request_id=rid(), payment_id=auth.id,
                                                                   amount=usd(2500)))
    ).payment  # fmt: skip
    assert (captured.status, captured.amount_captured.amount_minor) == (bpb.PAYMENT_STATUS_SUCCEEDED, 2500)
    refund = await api.billing.CreateRefund(
        bpb.CreateRefundRequest(request_id=rid(), payment_id=auth.id, amount=usd(1000))
    )
    assert refund.refund.status == bpb.REFUND_STATUS_SUCCEEDED
    voided = (
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer.id, payment_method_id=pm_id,
                                     amount=usd(300), capture_method=bpb.CAPTURE_METHOD_MANUAL)
        )
    ).payment  # fmt: skip
    canceled = await api.billing.CancelPayment(bpb.CancelPaymentRequest(request_id=rid(), payment_id=voided.id))
    assert canceled.payment.status == bpb.PAYMENT_STATUS_CANCELED

    plan = (await api.subs.CreatePlan(spb.CreatePlanRequest(request_id=rid(), name="Team", price=usd(900),
                                                             interval=spb.INTERVAL_MONTH))).plan  # fmt: skip
    sub = (
        await api.subs.CreateSubscription(
            spb.CreateSubscriptionRequest(request_id=rid(), customer_id=customer.id, plan_id=plan.id,
                                          payment_method_id=pm_id)
        )
    ).subscription  # fmt: skip
    assert sub.status == spb.SUBSCRIPTION_STATUS_INCOMPLETE
    assert sub.next_action.redirect_url  # the buyer approves on PayPal
    paypal_imitation.approve_subscription(sub.processor_id)
    await sync_subscription(api.runtime.deps, ctx(), sub.id)
    active = (await api.subs.GetSubscription(spb.GetSubscriptionRequest(subscription_id=sub.id))).subscription
    assert active.status == spb.SUBSCRIPTION_STATUS_ACTIVE
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.subs.CancelSubscription(
            spb.CancelSubscriptionRequest(request_id=rid(), subscription_id=sub.id, at_period_end=True)
        )
    assert rich(err.value).reason == "NOT_SUPPORTED_BY_PROCESSOR"
    paused = await api.subs.PauseSubscription(spb.PauseSubscriptionRequest(request_id=rid(), subscription_id=sub.id))
    assert paused.subscription.status == spb.SUBSCRIPTION_STATUS_PAUSED
    resumed = await api.subs.ResumeSubscription(spb.ResumeSubscriptionRequest(request_id=rid(), subscription_id=sub.id))
    assert resumed.subscription.status == spb.SUBSCRIPTION_STATUS_ACTIVE
    canceled_sub = await api.subs.CancelSubscription(
        spb.CancelSubscriptionRequest(request_id=rid(), subscription_id=sub.id)
    )
    assert canceled_sub.subscription.status == spb.SUBSCRIPTION_STATUS_CANCELED
    # Every write carried a PayPal-Request-Id.
    assert all(r.request_id for r in paypal_imitation.posts() if not r.path.startswith("/v1/oauth2"))


async def test_paypal_capture_retried_after_timeout_captures_once(
    processors_api: Api, paypal_imitation: PayPalImitation
) -> None:
    api = processors_api
    customer = (
        await api.billing.CreateCustomer(
            bpb.CreateCustomerRequest(request_id=rid(), default_processor=cpb.PROCESSOR_PAYPAL)
        )
    ).customer
    pm_id = await paypal_method(api, paypal_imitation, customer.id)
    auth = (
        await api.billing.CreatePayment(
            bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer.id, payment_method_id=pm_id,
                                     amount=usd(4000), capture_method=bpb.CAPTURE_METHOD_MANUAL)
        )
    ).payment  # fmt: skip
    request = bpb.CapturePaymentRequest(request_id=rid(), payment_id=auth.id)
    paypal_imitation.timeout_after_effect_next("/v2/payments/authorizations")
    paypal_imitation.fail_next("/v2/payments/authorizations", 503, "SERVICE_UNAVAILABLE", times=2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CapturePayment(request)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    captured = (await api.billing.CapturePayment(request)).payment
    assert captured.status == bpb.PAYMENT_STATUS_SUCCEEDED
    assert paypal_imitation.captures_created == 1


async def test_processor_not_configured_is_a_clear_precondition(processors_api: Api) -> None:
    api = processors_api
    api.runtime.deps.processors = {k: v for k, v in api.runtime.deps.processors.items() if k is not Processor.PAYPAL}
    customer = (await api.billing.CreateCustomer(bpb.CreateCustomerRequest(request_id=rid()))).customer
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.AttachPaymentMethod(
            bpb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.id, processor=cpb.PROCESSOR_PAYPAL,
                                           processor_token="x")
        )  # fmt: skip
    assert rich(err.value).reason == "PROCESSOR_NOT_CONFIGURED"
    await asyncio.sleep(0)
