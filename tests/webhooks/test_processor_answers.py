"""A processor answer we cannot read is the processor's fault, and what it did stays findable."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from billing_service.domain.common import Processor
from billing_service.domain.errors import ProcessorError
from billing_service.domain.money import Money
from billing_service.domain.payments import CaptureMethod, Payment, PaymentStatus
from billing_service.entrypoints.grpc_api.errors import status_code
from billing_service.service_layer import payments as pay
from tests.imitations.paypal_api import PayPalImitation
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import RunningSidecar, ctx, customer_with_method

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _unknown_capture_currency(order: dict[str, Any]) -> dict[str, Any]:
    order["purchase_units"][0]["payments"]["captures"][0]["amount"]["currency_code"] = "XTS"
    return order


@pytest.mark.parametrize("processor", [Processor.PAYPAL, Processor.STRIPE])
async def test_an_unreadable_answer_leaves_the_payment_pending_with_its_processor_id(
    sidecar: RunningSidecar, paypal_api: PayPalImitation, stripe_api: StripeImitation, processor: Processor
) -> None:
    """Before: PayPal's answer raised the domain's InvalidArgument, CreatePayment answered
    INVALID_ARGUMENT and the payment ended FAILED with no processor id while PayPal had
    captured. Now: UNAVAILABLE/PROCESSOR_BAD_RESPONSE, the payment stays PENDING and keeps the
    order id, and the caller's retry (same request) converges with one capture."""
    if processor is Processor.PAYPAL:
        token = paypal_api.create_setup_token("card")
        paypal_api.garble_next("/v2/checkout/orders", _unknown_capture_currency)
    else:
        token = "pm_card_visa"
        stripe_api.garble_next("/v1/payment_intents", lambda pi: {k: v for k, v in pi.items() if k != "currency"})
    customer, method = await customer_with_method(sidecar.runtime, processor, token)
    moved_before = paypal_api.captures_created + stripe_api.charges_created
    cmd = pay.CreatePayment(customer.id, method.id, Money(1000, "USD"), CaptureMethod.AUTOMATIC)
    context = ctx("pay")
    with pytest.raises(ProcessorError) as info:
        await pay.create_payment(sidecar.runtime.deps, context, cmd)
    assert info.value.reason == "PROCESSOR_BAD_RESPONSE" and status_code(info.value) is grpc.StatusCode.UNAVAILABLE

    stored = await sidecar.runtime.store.get(Payment, context.resource_id)
    assert stored is not None and stored.status is PaymentStatus.PENDING
    expected_id = (
        list(paypal_api.orders)[-1] if processor is Processor.PAYPAL else stripe_api.objects("payment_intent")[-1]["id"]
    )
    assert stored.processor_id == expected_id

    paid = await pay.create_payment(sidecar.runtime.deps, context, cmd)
    assert (paid.status, paid.processor_id, paid.amount_captured) == (PaymentStatus.SUCCEEDED, expected_id, 1000)
    assert paypal_api.captures_created + stripe_api.charges_created == moved_before + 1  # one charge
