"""``validate_only``: the checks of each creating use case, without its effects.

A preview loads what the real call would load and runs the same domain checks (the
referenced resources exist, belong together and are in a usable state; the processor is
configured), then returns the resource as it would be created, with an empty id. It
writes nothing and calls no processor, and the entrypoint runs it outside idempotency, so
no request_id is used up. What only a processor can decide (a token's validity, a decline)
is not previewed.

Each preview mirrors the checks its use case makes before its first write; the e2e tests
run both on the same bad inputs and expect the same refusals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer, PaymentMethod
from billing_service.domain.errors import InvalidArgument
from billing_service.domain.payments import Payment, PaymentStatus, Refund, RefundStatus
from billing_service.domain.subscriptions import Plan, PlanStatus, Subscription, SubscriptionStatus
from billing_service.service_layer.core import Deps, load
from billing_service.service_layer.customers import AttachPaymentMethod, CreateCustomer
from billing_service.service_layer.payments import CreatePayment, CreateRefund
from billing_service.service_layer.subscriptions import CreatePlan, CreateSubscription

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
    now = deps.clock.now()
    return Customer(
        id=PREVIEW_ID,
        email=cmd.email,
        name=cmd.name,
        description=cmd.description,
        metadata=dict(cmd.metadata),
        default_processor=cmd.default_processor or deps.default_processor,
        created_at=now,
        updated_at=now,
    )


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
    customer = await load(deps, Customer, cmd.customer_id, resource="customer", field_path="customer_id")
    method = await load(
        deps, PaymentMethod, cmd.payment_method_id, resource="payment_method", field_path="payment_method_id"
    )
    if method.customer_id != customer.id:
        raise InvalidArgument.field("payment_method_id", "does not belong to this customer")
    method.ensure_usable()
    deps.processor(method.processor)
    now = deps.clock.now()
    return Payment(
        id=PREVIEW_ID,
        customer_id=customer.id,
        payment_method_id=method.id,
        processor=method.processor,
        amount=cmd.amount,
        capture_method=cmd.capture_method,
        status=PaymentStatus.PENDING,
        description=cmd.description,
        metadata=dict(cmd.metadata),
        created_at=now,
        updated_at=now,
        off_session=cmd.off_session,
    )


async def preview_refund(deps: Deps, cmd: CreateRefund) -> Refund:
    """The PENDING refund ``create_refund`` would reserve (on a copy of the payment it loads)."""
    cmd.validate()
    payment = await load(deps, Payment, cmd.payment_id, resource="payment", field_path="payment_id")
    amount = payment.reserve_refund(cmd.amount)  # the loaded copy is never written back
    deps.processor(payment.processor)
    now = deps.clock.now()
    return Refund(
        id=PREVIEW_ID,
        payment_id=payment.id,
        processor=payment.processor,
        amount=amount,
        reason=cmd.reason,
        status=RefundStatus.PENDING,
        metadata=dict(cmd.metadata),
        created_at=now,
        updated_at=now,
    )


async def preview_plan(deps: Deps, cmd: CreatePlan) -> Plan:
    """The ACTIVE plan ``create_plan`` would store."""
    cmd.validate()
    now = deps.clock.now()
    return Plan(
        id=PREVIEW_ID,
        name=cmd.name,
        description=cmd.description,
        price=cmd.price,
        interval=cmd.interval,
        interval_count=cmd.interval_count,
        trial_period_days=cmd.trial_period_days,
        status=PlanStatus.ACTIVE,
        metadata=dict(cmd.metadata),
        created_at=now,
        updated_at=now,
    )


async def preview_subscription(deps: Deps, cmd: CreateSubscription) -> Subscription:
    """The INCOMPLETE subscription ``create_subscription`` would record before the processor call."""
    cmd.validate()
    customer = await load(deps, Customer, cmd.customer_id, resource="customer", field_path="customer_id")
    plan = await load(deps, Plan, cmd.plan_id, resource="plan", field_path="plan_id")
    plan.ensure_active()
    processor = customer.default_processor
    if cmd.payment_method_id:
        method = await load(
            deps, PaymentMethod, cmd.payment_method_id, resource="payment_method", field_path="payment_method_id"
        )
        if method.customer_id != customer.id:
            raise InvalidArgument.field("payment_method_id", "does not belong to this customer")
        method.ensure_usable()
        processor = method.processor
    deps.processor(processor)
    now = deps.clock.now()
    trial_days = plan.trial_period_days if cmd.trial_period_days is None else cmd.trial_period_days
    return Subscription(
        id=PREVIEW_ID,
        customer_id=customer.id,
        plan_id=plan.id,
        payment_method_id=cmd.payment_method_id,
        quantity=cmd.quantity,
        status=SubscriptionStatus.INCOMPLETE,
        processor=processor,
        metadata=dict(cmd.metadata),
        created_at=now,
        updated_at=now,
        trial_end=now + timedelta(days=trial_days) if trial_days else None,
    )
