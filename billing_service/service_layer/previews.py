"""``validate_only``: the checks of each creating use case, without its effects.

A preview loads what the real call would load and runs the same domain checks (the
referenced resources exist, belong together and are in a usable state; the processor is
configured), then returns the resource as it would be created, with an empty id. It
writes nothing and calls no processor, and the entrypoint runs it outside idempotency, so
no request_id is used up. What only a processor can decide (a token's validity, a decline)
is not previewed.

Each preview calls the same ``new_*`` builder its use case records (loads, checks, the
resource as built), so the two cannot drift; the e2e tests run both on the same bad inputs
and expect the same refusals.
"""

from __future__ import annotations

from dataclasses import dataclass

from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer
from billing_service.domain.payments import Payment, Refund
from billing_service.domain.subscriptions import Plan, Subscription
from billing_service.service_layer.core import Deps, load
from billing_service.service_layer.customers import AttachPaymentMethod, CreateCustomer, new_customer
from billing_service.service_layer.payments import CreatePayment, CreateRefund, new_payment
from billing_service.service_layer.plans import CreatePlan, new_plan
from billing_service.service_layer.refunds import new_refund
from billing_service.service_layer.subscriptions import CreateSubscription, new_subscription

PREVIEW_ID = ""


@dataclass(frozen=True)
class PaymentMethodPreview:
    """What attaching a token would record before the processor answers.

    The type and card details come from the processor, so a preview has neither.
    """

    customer_id: str
    processor: Processor


async def preview_customer(deps: Deps, cmd: CreateCustomer) -> Customer:
    """The customer ``create_customer`` would store (it loads nothing and calls no processor)."""
    cmd.validate()
    return new_customer(deps, cmd, PREVIEW_ID)


async def preview_payment_method(deps: Deps, cmd: AttachPaymentMethod) -> PaymentMethodPreview:
    """Checks the customer and the processor ``attach_payment_method`` would use."""
    cmd.validate()
    customer = await load(deps, Customer, cmd.customer_id, resource="customer", field_path="customer_id")
    processor = cmd.processor or customer.default_processor
    deps.processor(processor)
    return PaymentMethodPreview(customer_id=customer.id, processor=processor)


async def preview_payment(deps: Deps, cmd: CreatePayment) -> Payment:
    """The PENDING payment ``create_payment`` would record before calling the processor."""
    cmd.validate()
    payment, _, _ = await new_payment(deps, cmd, PREVIEW_ID)
    return payment


async def preview_refund(deps: Deps, cmd: CreateRefund) -> Refund:
    """The PENDING refund ``create_refund`` would reserve (on a copy of the payment it loads)."""
    cmd.validate()
    payment = await load(deps, Payment, cmd.payment_id, resource="payment", field_path="payment_id")
    return new_refund(deps, cmd, payment, PREVIEW_ID)  # the loaded copy is never written back


async def preview_plan(deps: Deps, cmd: CreatePlan) -> Plan:
    """The ACTIVE plan ``create_plan`` would store."""
    cmd.validate()
    return new_plan(deps, cmd, PREVIEW_ID)


async def preview_subscription(deps: Deps, cmd: CreateSubscription) -> Subscription:
    """The INCOMPLETE subscription ``create_subscription`` would record before the processor call."""
    cmd.validate()
    sub, _ = await new_subscription(deps, cmd, PREVIEW_ID)
    return sub
