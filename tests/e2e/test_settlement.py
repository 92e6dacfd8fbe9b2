"""Records whose processor answer was lost are settled by a lookup by our id, never re-sent late.

Before: a payment PENDING past the resend window made every reconciliation pass call
``resume_payment``, which raised PAYMENT_OUTCOME_UNKNOWN forever; refunds had no window
at all (a lost answer plus a retry after the processor forgot the key refunded twice),
a refund without a processor id was never reconciled, and such a refund made every
mirror of a dashboard refund on its payment fail until the event went DEAD.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import httpx
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import common_pb2 as cpb

from billing_service.domain.common import Processor
from billing_service.domain.errors import ProcessorUnavailable
from billing_service.domain.payments import Payment, PaymentStatus, Refund, RefundStatus
from billing_service.service_layer.reconcile import reconcile_once
from billing_service.service_layer.webhooks import converge_refund, webhook_context
from tests.e2e.conftest import STRIPE_KEY, Api
from tests.e2e.test_processors_e2e import paypal_method, stripe_customer
from tests.e2e.test_reliability import customer_with
from tests.helpers import rich, rid, usd
from tests.imitations.paypal_api import PayPalImitation
from tests.imitations.stripe_api import StripeImitation

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


async def create_fails(api: Api, request: pb.CreatePaymentRequest) -> pb.Payment:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreatePayment(request)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    listed = (await api.billing.ListPayments(pb.ListPaymentsRequest(customer_id=request.customer_id))).payments
    assert [p.status for p in listed] == [pb.PAYMENT_STATUS_PENDING]
    return listed[0]


async def reason_of(call: object) -> str:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return rich(err).reason
    return "OK"


# --------------------------------------------------------------------------- payments


@pytest.mark.parametrize("after_effect", [True, False], ids=["charged-then-lost", "never-sent"])
async def test_a_payment_pending_past_the_key_window_is_settled_by_a_lookup(api: Api, after_effect: bool) -> None:
    customer_id, pm_id = await customer_with(api)
    api.fake.fail_next("create_payment", ProcessorUnavailable("connection reset"), after_effect=after_effect)
    request = pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                      amount=usd(4100))  # fmt: skip
    pending = await create_fails(api, request)
    api.clock.advance(timedelta(hours=25))  # the processor has forgotten the key by now

    assert await reason_of(api.billing.CreatePayment(request)) == "PAYMENT_OUTCOME_UNKNOWN"  # never re-sent
    report = await reconcile_once(api.runtime.deps)
    assert report.errors == 0
    settled = await api.runtime.store.get(Payment, pending.id)
    assert settled is not None
    if after_effect:
        assert (settled.status, settled.amount_captured) == (PaymentStatus.SUCCEEDED, 4100)
        assert settled.processor_id == api.fake.charges_created[0].processor_payment_id
    else:
        assert settled.status is PaymentStatus.FAILED
        assert settled.failure is not None and settled.failure.code == "not_found_at_processor"
    assert len(api.fake.charges_created) == (1 if after_effect else 0)
    assert [(d.ours, d.theirs) for d in report.drift] == [("pending", "succeeded" if after_effect else "absent")]
    assert (await reconcile_once(api.runtime.deps)).drift == []  # settled once


async def test_stripe_payment_lost_after_the_charge_is_found_by_listing_the_customers_intents(
    processors_api: Api, stripe_imitation: StripeImitation
) -> None:
    api = processors_api
    customer_id, pm_id = await stripe_customer(api)
    request = pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                      amount=usd(6100))  # fmt: skip
    stripe_imitation.timeout_after_effect_next("/v1/payment_intents")
    stripe_imitation.fail_next("/v1/payment_intents", 500, "api_error", times=2)
    pending = await create_fails(api, request)
    api.clock.advance(timedelta(hours=25))
    report = await reconcile_once(api.runtime.deps)
    settled = await api.runtime.store.get(Payment, pending.id)
    assert settled is not None and settled.status is PaymentStatus.SUCCEEDED
    assert settled.processor_id == stripe_imitation.objects("payment_intent")[0]["id"]
    assert stripe_imitation.payment_intents_created == 1 and stripe_imitation.charges_created == 1
    assert report.drift and report.drift[0].theirs == "succeeded"


async def test_paypal_payment_is_never_resent_after_six_hours_and_is_settled_once_search_is_fresh(
    processors_api: Api, paypal_imitation: PayPalImitation
) -> None:
    api = processors_api
    new = pb.CreateCustomerRequest(request_id=rid(), default_processor=cpb.PROCESSOR_PAYPAL)
    customer = (await api.billing.CreateCustomer(new)).customer
    pm_id = await paypal_method(api, paypal_imitation, customer.id)
    request = pb.CreatePaymentRequest(request_id=rid(), customer_id=customer.id, payment_method_id=pm_id,
                                      amount=usd(2300))  # fmt: skip
    paypal_imitation.timeout_after_effect_next("/v2/checkout/orders")
    paypal_imitation.fail_next("/v2/checkout/orders", 503, "SERVICE_UNAVAILABLE", times=2)
    pending = await create_fails(api, request)
    assert paypal_imitation.captures_created == 1  # PayPal captured; we never heard

    api.clock.advance(timedelta(hours=7))  # PayPal keeps order request ids 6 hours
    assert await reason_of(api.billing.CreatePayment(request)) == "PAYMENT_OUTCOME_UNKNOWN"
    paypal_imitation.reporting_lag = timedelta(hours=3)  # Transaction Search has not caught up
    waiting = await reconcile_once(api.runtime.deps)
    assert waiting.waiting == {"payment": 1}
    stored = await api.runtime.store.get(Payment, pending.id)
    assert stored is not None and stored.status is PaymentStatus.PENDING
    paypal_imitation.reporting_refreshed_at = api.clock.now()
    await reconcile_once(api.runtime.deps)
    settled = await api.runtime.store.get(Payment, pending.id)
    assert settled is not None and (settled.status, settled.amount_captured) == (PaymentStatus.SUCCEEDED, 2300)
    assert paypal_imitation.captures_created == 1


# --------------------------------------------------------------------------- refunds


async def paid(api: Api, amount: int = 1000) -> pb.Payment:
    customer_id, pm_id = await customer_with(api)
    request = pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                      amount=usd(amount))  # fmt: skip
    return (await api.billing.CreatePayment(request)).payment


async def test_a_refund_whose_answer_was_lost_is_never_sent_twice(api: Api) -> None:
    payment = await paid(api)
    api.fake.fail_next("create_refund", ProcessorUnavailable("connection reset"), after_effect=True)
    request = pb.CreateRefundRequest(request_id=rid(), payment_id=payment.id, amount=usd(400))
    assert await reason_of(api.billing.CreateRefund(request)) == "PROCESSOR_UNAVAILABLE"
    # The refund webhook is lost too; the caller retries a day later, after the processor forgot the key.
    api.clock.advance(timedelta(hours=25))
    assert await reason_of(api.billing.CreateRefund(request)) == "REFUND_OUTCOME_UNKNOWN"
    assert api.fake.effects["create_refund"] == 1  # before: refunded a second time

    report = await reconcile_once(api.runtime.deps)
    refunds = (await api.billing.ListRefunds(pb.ListRefundsRequest(payment_id=payment.id))).refunds
    assert [(r.status, r.amount.amount_minor) for r in refunds] == [(pb.REFUND_STATUS_SUCCEEDED, 400)]
    stored = await api.runtime.store.get(Payment, payment.id)
    assert stored is not None and (stored.amount_refunded, stored.amount_refund_pending) == (400, 0)
    assert [(d.resource, d.ours, d.theirs) for d in report.drift] == [("refund", "pending", "succeeded")]
    assert api.fake.effects["create_refund"] == 1


@pytest.mark.parametrize("late", [False, True], ids=["resumed-within-window", "failed-past-window"])
async def test_a_refund_that_never_reached_the_processor_is_reconciled(api: Api, late: bool) -> None:
    payment = await paid(api)
    api.fake.fail_next("create_refund", ProcessorUnavailable("connection reset"))
    request = pb.CreateRefundRequest(request_id=rid(), payment_id=payment.id, amount=usd(300))
    assert await reason_of(api.billing.CreateRefund(request)) == "PROCESSOR_UNAVAILABLE"
    api.clock.advance(timedelta(hours=25) if late else timedelta(minutes=5))  # its caller never retried

    await reconcile_once(api.runtime.deps)
    refund = (await api.billing.ListRefunds(pb.ListRefundsRequest(payment_id=payment.id))).refunds[0]
    stored = await api.runtime.store.get(Payment, payment.id)
    assert stored is not None
    if late:  # not at the processor and never re-sent: FAILED, the reservation released
        assert (refund.status, refund.failure_reason) == (pb.REFUND_STATUS_FAILED, "NOT_FOUND_AT_PROCESSOR")
        assert (stored.amount_refunded, stored.amount_refund_pending) == (0, 0)
        assert api.fake.effects["create_refund"] == 0
    else:  # resumed with its own key
        assert refund.status == pb.REFUND_STATUS_SUCCEEDED
        assert (stored.amount_refunded, stored.amount_refund_pending) == (300, 0)
        assert api.fake.effects["create_refund"] == 1


def dashboard_refund(api: StripeImitation, intent_id: str, amount: int) -> str:
    response = httpx.post(
        f"{api.base_url}/v1/refunds",
        data={"payment_intent": intent_id, "amount": str(amount)},
        headers={"Authorization": f"Bearer {STRIPE_KEY}", "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize("ours_reached_stripe", [False, True], ids=["ours-absent", "ours-created"])
async def test_an_in_flight_refund_no_longer_blocks_a_dashboard_refund_and_nothing_counts_twice(
    processors_api: Api, stripe_imitation: StripeImitation, ours_reached_stripe: bool
) -> None:
    api = processors_api
    customer_id, pm_id = await stripe_customer(api)
    payment = (
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                    amount=usd(3000))
        )
    ).payment  # fmt: skip
    if ours_reached_stripe:
        stripe_imitation.timeout_after_effect_next("/v1/refunds")
        stripe_imitation.fail_next("/v1/refunds", 500, "api_error", times=2)
    else:
        stripe_imitation.fail_next("/v1/refunds", 500, "api_error", times=3)
    ours = pb.CreateRefundRequest(request_id=rid(), payment_id=payment.id, amount=usd(1000))
    assert await reason_of(api.billing.CreateRefund(ours)) == "PROCESSOR_UNAVAILABLE"
    external = dashboard_refund(stripe_imitation, payment.processor_id, 700)

    ctx = webhook_context(Processor.STRIPE, "evt_dashboard", "refund.created")
    status = await converge_refund(api.runtime.deps, ctx, Processor.STRIPE, external)  # before: ConcurrencyConflict
    assert status.value == "processed"
    stored = await api.runtime.store.get(Payment, payment.id)
    assert stored is not None
    refunds = (await api.runtime.store.list_page(Refund, {"payment_id": payment.id}, limit=10, after=None)).items
    by_processor_id = {r.processor_id: r for r in refunds}
    assert by_processor_id[external].metadata == {"source": "processor"}
    if ours_reached_stripe:  # resolved by the lookup: recorded as ours, not mirrored again
        assert (stored.amount_refunded, stored.amount_refund_pending) == (1700, 0)
        assert len(refunds) == 2 and all(r.status is RefundStatus.SUCCEEDED for r in refunds)
    else:
        assert (stored.amount_refunded, stored.amount_refund_pending) == (700, 1000)
        assert (await api.billing.CreateRefund(ours)).refund.status == pb.REFUND_STATUS_SUCCEEDED  # the retry
    final = await api.runtime.store.get(Payment, payment.id)
    assert final is not None and (final.amount_refunded, final.amount_refund_pending) == (1700, 0)
    assert len(stripe_imitation.objects("refund")) == 2
