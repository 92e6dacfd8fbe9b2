"""Refunds and reversals made at the processor (not through us) land on our payment once, in
the payment's own minor units, whatever the currency's scale at the processor."""

from __future__ import annotations

import uuid

import httpx
import pytest

from billing_service.domain.common import Processor
from billing_service.domain.money import Money
from billing_service.domain.payments import CaptureMethod, Payment, PaymentStatus, Refund, RefundReason, RefundStatus
from billing_service.service_layer import payments as pay
from billing_service.service_layer.ports import WebhookStatus
from tests.imitations.paypal_api import PayPalImitation
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import STRIPE_KEY, RunningSidecar, ctx, customer_with_method, stripe_event

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


async def pay_in(sidecar: RunningSidecar, processor: Processor, token: str, amount: Money) -> Payment:
    customer, method = await customer_with_method(sidecar.runtime, processor, token)
    cmd = pay.CreatePayment(customer.id, method.id, amount, CaptureMethod.AUTOMATIC)
    paid = await pay.create_payment(sidecar.runtime.deps, ctx("pay"), cmd)
    assert paid.status is PaymentStatus.SUCCEEDED
    return paid


async def refunds_of(sidecar: RunningSidecar, payment_id: str) -> list[Refund]:
    return (await sidecar.runtime.store.list_page(Refund, {"payment_id": payment_id}, limit=10, after=None)).items


async def test_stripe_dashboard_refund_in_isk_is_mirrored_in_krona_not_stripe_units(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    paid = await pay_in(sidecar, Processor.STRIPE, "pm_card_visa", Money(2500, "ISK"))
    assert stripe_api.objects("payment_intent")[-1]["amount"] == 250000
    response = httpx.post(
        f"{stripe_api.base_url}/v1/refunds",
        data={"payment_intent": paid.processor_id, "amount": "70000"},  # 700 ISK in Stripe's two decimals
        headers={"Authorization": f"Bearer {STRIPE_KEY}", "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 200, response.text
    event = stripe_event("refund.created", response.json())
    assert (await sidecar.post_stripe(event)).status_code == 200
    assert await sidecar.settled([event["id"]]) == {event["id"]: WebhookStatus.PROCESSED}

    after = await sidecar.runtime.store.get(Payment, paid.id)
    assert after is not None and after.amount_refunded == 700 and after.refundable_minor == 1800
    [mirrored] = await refunds_of(sidecar, paid.id)
    assert mirrored.amount == Money(700, "ISK") and mirrored.status is RefundStatus.SUCCEEDED


async def _paypal_capture_id(api: PayPalImitation, order_id: str) -> str:
    return str(api.orders[order_id]["purchase_units"][0]["payments"]["captures"][0]["id"])


@pytest.mark.parametrize(("amount", "refunded_value"), [(Money(2500, "USD"), "7.00"), (Money(2500, "JPY"), "700")])
async def test_paypal_dashboard_refund_is_mirrored_once(
    sidecar: RunningSidecar, paypal_api: PayPalImitation, amount: Money, refunded_value: str
) -> None:
    """The refund carries neither our refund id nor (in its own body) our payment: the adapter
    follows it to its capture and order, and the amount is parsed exactly."""
    paid = await pay_in(sidecar, Processor.PAYPAL, paypal_api.create_setup_token("card"), amount)
    refund = paypal_api.dashboard_refund(await _paypal_capture_id(paypal_api, paid.processor_id), refunded_value)
    event = paypal_api.webhook_events[-1]
    assert event["event_type"] == "PAYMENT.CAPTURE.REFUNDED" and "custom_id" not in event["resource"]
    for _ in range(3):
        assert (await sidecar.post_paypal(event)).status_code == 200
    assert await sidecar.settled([event["id"]]) == {event["id"]: WebhookStatus.PROCESSED}

    after = await sidecar.runtime.store.get(Payment, paid.id)
    assert after is not None and (after.amount_refunded, after.amount_refund_pending) == (700, 0)
    assert after.status is PaymentStatus.SUCCEEDED
    [mirrored] = await refunds_of(sidecar, paid.id)
    assert (mirrored.processor_id, mirrored.amount, mirrored.status) == (
        refund["id"],
        Money(700, amount.currency),
        RefundStatus.SUCCEEDED,
    )
    assert [e.action for e in await sidecar.audit(mirrored.id)] == ["refund.mirrored"]


async def test_paypal_reversal_takes_the_captured_money_back_on_our_record(
    sidecar: RunningSidecar, paypal_api: PayPalImitation
) -> None:
    """PAYMENT.CAPTURE.REVERSED (a chargeback): PayPal shows the reversal as a refund of the
    capture. Our payment stays SUCCEEDED (it was charged) and records the money as refunded."""
    paid = await pay_in(sidecar, Processor.PAYPAL, paypal_api.create_setup_token("card"), Money(2500, "USD"))
    reversal = paypal_api.reverse_capture(await _paypal_capture_id(paypal_api, paid.processor_id), "25.00")
    event = paypal_api.webhook_events[-1]
    assert event["event_type"] == "PAYMENT.CAPTURE.REVERSED"
    for _ in range(2):
        assert (await sidecar.post_paypal(event)).status_code == 200
    assert await sidecar.settled([event["id"]]) == {event["id"]: WebhookStatus.PROCESSED}

    after = await sidecar.runtime.store.get(Payment, paid.id)
    assert after is not None
    assert (after.status, after.amount_captured, after.amount_refunded) == (PaymentStatus.SUCCEEDED, 2500, 2500)
    [mirrored] = await refunds_of(sidecar, paid.id)
    assert (mirrored.processor_id, mirrored.amount.amount_minor) == (reversal["id"], 2500)


async def test_our_own_paypal_refund_is_not_mirrored_twice(
    sidecar: RunningSidecar, paypal_api: PayPalImitation
) -> None:
    """A refund we made echoes our refund id in ``custom_id``: the event converges that refund."""
    paid = await pay_in(sidecar, Processor.PAYPAL, paypal_api.create_setup_token("card"), Money(2500, "USD"))
    refund = await pay.create_refund(
        sidecar.runtime.deps, ctx("re"), pay.CreateRefund(paid.id, Money(500, "USD"), RefundReason.UNSPECIFIED)
    )
    event = paypal_api.webhook_events[-1]
    assert event["resource"]["custom_id"] == refund.id
    assert (await sidecar.post_paypal(event)).status_code == 200
    assert await sidecar.settled([event["id"]]) == {event["id"]: WebhookStatus.PROCESSED}
    assert [r.id for r in await refunds_of(sidecar, paid.id)] == [refund.id]
    after = await sidecar.runtime.store.get(Payment, paid.id)
    assert after is not None and after.amount_refunded == 500
