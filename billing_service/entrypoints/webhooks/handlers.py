"""The one table from (processor, event type) to handler.

A handler reads only ids (and, for disputes, the dispute's facts) from the event and
calls a use case in ``service_layer.webhooks``, which re-fetches the object from the
processor. Types without a handler are acknowledged and marked IGNORED; events about
objects we never created end as ORPHAN.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from billing_service.adapters.processors.paypal import mapping as paypal_mapping
from billing_service.adapters.processors.paypal import wire as paypal_wire
from billing_service.adapters.processors.stripe import mapping as stripe_mapping
from billing_service.domain.common import Processor
from billing_service.domain.disputes import FINAL_DISPUTE_STATUSES, DisputeStatus, ProcessorDisputeState
from billing_service.service_layer import webhooks as wh
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import InboxEvent, WebhookStatus

Json = dict[str, Any]
Handler = Callable[[Deps, RequestContext, Json], Awaitable[WebhookStatus]]

STRIPE, PAYPAL = Processor.STRIPE, Processor.PAYPAL


def dig(obj: Any, *path: str | int) -> Any:
    """Reads a nested field, or None when any step is missing or of the wrong shape."""
    for step in path:
        if isinstance(step, int):
            obj = obj[step] if isinstance(obj, list) and -len(obj) <= step < len(obj) else None
        else:
            obj = obj.get(step) if isinstance(obj, dict) else None
        if obj is None:
            return None
    return obj


def text(obj: Any, *path: str | int) -> str:
    """A nested string field, or "" (an expanded object yields its ``id``)."""
    value = dig(obj, *path)
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


# --------------------------------------------------------------------------- Stripe


def _stripe_object(event: Json) -> Json:
    obj = dig(event, "data", "object")
    return obj if isinstance(obj, dict) else {}


async def stripe_payment_intent(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """payment_intent.*: converge the payment on the PaymentIntent."""
    pi = _stripe_object(event)
    return await wh.converge_payment(
        deps, ctx, STRIPE, text(pi, "id"), payment_id=text(pi, "metadata", "billing_payment_id")
    )


async def stripe_charge_refunded(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """charge.refunded: converge the payment and its refunds."""
    charge = _stripe_object(event)
    refunds = dig(charge, "refunds", "data") or []
    return await wh.converge_payment_refunds(
        deps, ctx, STRIPE, text(charge, "payment_intent"),
        processor_refund_ids=tuple(text(r, "id") for r in refunds if text(r, "id")),
        payment_id=text(charge, "metadata", "billing_payment_id"),
    )  # fmt: skip


async def stripe_refund(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """refund.*: converge the refund (and the money it holds on its payment)."""
    refund = _stripe_object(event)
    return await wh.converge_refund(
        deps, ctx, STRIPE, text(refund, "id"), refund_id=text(refund, "metadata", "billing_refund_id")
    )


_STRIPE_DISPUTE_STATUS = {
    "warning_needs_response": DisputeStatus.NEEDS_RESPONSE,
    "needs_response": DisputeStatus.NEEDS_RESPONSE,
    "warning_under_review": DisputeStatus.UNDER_REVIEW,
    "under_review": DisputeStatus.UNDER_REVIEW,
    "warning_closed": DisputeStatus.WARNING_CLOSED,
    "won": DisputeStatus.WON,
    "prevented": DisputeStatus.WON,
    "lost": DisputeStatus.LOST,
}


async def stripe_dispute(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """charge.dispute.*: open or advance the dispute (Stripe has no dispute verb in our port)."""
    dispute = _stripe_object(event)
    status = _STRIPE_DISPUTE_STATUS.get(text(dispute, "status"), DisputeStatus.NEEDS_RESPONSE)
    opened = stripe_mapping.timestamp(dig(dispute, "created"))
    closed = stripe_mapping.timestamp(dig(event, "created")) if status in FINAL_DISPUTE_STATUSES else None
    state = ProcessorDisputeState(
        processor_id=text(dispute, "id"),
        status=status,
        amount=stripe_mapping.stripe_money(int(dig(dispute, "amount") or 0), text(dispute, "currency") or "usd"),
        reason=text(dispute, "reason"),
        opened_at=opened or ctx_now(deps),
        processor_payment_id=text(dispute, "payment_intent"),
        payment_id=text(dispute, "metadata", "billing_payment_id"),
        closed_at=closed,
    )
    return await wh.converge_dispute(deps, ctx, STRIPE, state)


async def stripe_subscription(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """customer.subscription.*: converge the subscription and its invoices."""
    sub = _stripe_object(event)
    return await wh.converge_subscription(
        deps, ctx, STRIPE, text(sub, "id"), subscription_id=text(sub, "metadata", "billing_subscription_id")
    )


async def stripe_invoice(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """invoice.*: converge the invoice's subscription, which mirrors its invoices."""
    invoice = _stripe_object(event)
    details = dig(invoice, "parent", "subscription_details")
    sub_id = text(details, "subscription") or text(invoice, "subscription")  # API >= 2025-03-31, older
    hint = text(details, "metadata", "billing_subscription_id") or text(
        invoice, "subscription_details", "metadata", "billing_subscription_id"
    )
    if not sub_id and not hint:
        return WebhookStatus.ORPHAN  # a one-off invoice: not something we create
    return await wh.converge_subscription(deps, ctx, STRIPE, sub_id, subscription_id=hint)


# --------------------------------------------------------------------------- PayPal


def _resource(event: Json) -> Json:
    resource = dig(event, "resource")
    return resource if isinstance(resource, dict) else {}


def _our_id(custom_id: str) -> str:
    return paypal_mapping.our_payment_id(custom_id)


async def paypal_order(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """CHECKOUT.ORDER.*: converge the payment (reading an approved order completes it)."""
    order = _resource(event)
    return await wh.converge_payment(
        deps, ctx, PAYPAL, text(order, "id"), payment_id=_our_id(text(order, "purchase_units", 0, "custom_id"))
    )


async def paypal_payment(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """PAYMENT.AUTHORIZATION.* / PAYMENT.CAPTURE.*: converge the order they belong to."""
    resource = _resource(event)
    order_id = text(resource, "supplementary_data", "related_ids", "order_id")
    return await wh.converge_payment(deps, ctx, PAYPAL, order_id, payment_id=_our_id(text(resource, "custom_id")))


async def paypal_refund(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """PAYMENT.CAPTURE.REFUNDED / REVERSED: the resource is a refund of the capture.

    REVERSED is PayPal taking captured money back (a chargeback, a reversed funding source);
    PayPal shows it as a refund of the capture, so it converges (or is mirrored onto our
    payment, like a refund made in PayPal's dashboard) exactly like one: the payment stays
    SUCCEEDED and the money counts as refunded.
    """
    refund = _resource(event)
    return await wh.converge_refund(deps, ctx, PAYPAL, text(refund, "id"), refund_id=text(refund, "custom_id"))


async def paypal_subscription(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """BILLING.SUBSCRIPTION.*: converge the subscription and its invoices."""
    sub = _resource(event)
    return await wh.converge_subscription(deps, ctx, PAYPAL, text(sub, "id"), subscription_id=text(sub, "custom_id"))


async def paypal_sale(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """PAYMENT.SALE.COMPLETED: a subscription cycle was paid; mirror its invoices."""
    sale = _resource(event)
    agreement = text(sale, "billing_agreement_id")
    if not agreement:
        return WebhookStatus.ORPHAN  # a classic-API sale we never made
    return await wh.converge_subscription(deps, ctx, PAYPAL, agreement, subscription_id=text(sale, "custom"))


_PAYPAL_OUTCOME = {
    "RESOLVED_BUYER_FAVOUR": DisputeStatus.LOST,
    "RESOLVED_WITH_PAYOUT": DisputeStatus.LOST,
    "ACCEPTED": DisputeStatus.LOST,
    "RESOLVED_SELLER_FAVOUR": DisputeStatus.WON,
    "CANCELED_BY_BUYER": DisputeStatus.WON,
    "DENIED": DisputeStatus.WON,
    "NONE": DisputeStatus.WARNING_CLOSED,
}
_PAYPAL_OPEN = {
    "OPEN": DisputeStatus.NEEDS_RESPONSE,
    "WAITING_FOR_SELLER_RESPONSE": DisputeStatus.NEEDS_RESPONSE,
    "WAITING_FOR_BUYER_RESPONSE": DisputeStatus.UNDER_REVIEW,
    "UNDER_REVIEW": DisputeStatus.UNDER_REVIEW,
}


def _paypal_dispute_status(dispute: Json) -> DisputeStatus:
    status = text(dispute, "status")
    if status in ("RESOLVED", "CLOSED"):
        outcome = _PAYPAL_OUTCOME.get(text(dispute, "dispute_outcome", "outcome_code"))
        if outcome is not None:
            return outcome
        return DisputeStatus.WARNING_CLOSED if text(dispute, "stage") == "INQUIRY" else DisputeStatus.LOST
    return _PAYPAL_OPEN.get(status, DisputeStatus.NEEDS_RESPONSE)


async def paypal_dispute(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    """CUSTOMER.DISPUTE.*: open or advance the dispute of the payment named in ``custom``."""
    dispute = _resource(event)
    status = _paypal_dispute_status(dispute)
    amount = dig(dispute, "dispute_amount")
    transaction = dig(dispute, "disputed_transactions", 0)
    if not isinstance(amount, dict):
        amount = dig(transaction, "gross_amount")
    if not isinstance(amount, dict):
        return WebhookStatus.ORPHAN  # nothing we could mirror
    opened = paypal_wire.parse_time(dig(dispute, "create_time")) or ctx_now(deps)
    closed = paypal_wire.parse_time(dig(dispute, "update_time")) if status in FINAL_DISPUTE_STATUSES else None
    state = ProcessorDisputeState(
        processor_id=text(dispute, "dispute_id"),
        status=status,
        amount=paypal_wire.money_from(amount),
        reason=text(dispute, "reason").lower(),
        opened_at=opened,
        payment_id=_our_id(text(transaction, "custom")),
        closed_at=closed,
    )
    return await wh.converge_dispute(deps, ctx, PAYPAL, state)


def ctx_now(deps: Deps) -> datetime:
    """The deps clock's now (a fallback for events without timestamps)."""
    return deps.clock.now()


# --------------------------------------------------------------------------- the table

HANDLERS: Mapping[tuple[Processor, str], Handler] = {
    (STRIPE, "payment_intent.succeeded"): stripe_payment_intent,
    (STRIPE, "payment_intent.payment_failed"): stripe_payment_intent,
    (STRIPE, "payment_intent.canceled"): stripe_payment_intent,
    (STRIPE, "payment_intent.requires_action"): stripe_payment_intent,
    (STRIPE, "payment_intent.amount_capturable_updated"): stripe_payment_intent,
    (STRIPE, "payment_intent.processing"): stripe_payment_intent,
    (STRIPE, "charge.refunded"): stripe_charge_refunded,
    (STRIPE, "refund.created"): stripe_refund,
    (STRIPE, "refund.updated"): stripe_refund,
    (STRIPE, "refund.failed"): stripe_refund,
    (STRIPE, "charge.dispute.created"): stripe_dispute,
    (STRIPE, "charge.dispute.updated"): stripe_dispute,
    (STRIPE, "charge.dispute.closed"): stripe_dispute,
    (STRIPE, "customer.subscription.created"): stripe_subscription,
    (STRIPE, "customer.subscription.updated"): stripe_subscription,
    (STRIPE, "customer.subscription.deleted"): stripe_subscription,
    (STRIPE, "customer.subscription.paused"): stripe_subscription,
    (STRIPE, "customer.subscription.resumed"): stripe_subscription,
    (STRIPE, "customer.subscription.trial_will_end"): stripe_subscription,
    (STRIPE, "invoice.paid"): stripe_invoice,
    (STRIPE, "invoice.payment_failed"): stripe_invoice,
    (STRIPE, "invoice.finalized"): stripe_invoice,
    (PAYPAL, "CHECKOUT.ORDER.APPROVED"): paypal_order,
    (PAYPAL, "CHECKOUT.ORDER.COMPLETED"): paypal_order,
    (PAYPAL, "PAYMENT.AUTHORIZATION.CREATED"): paypal_payment,
    (PAYPAL, "PAYMENT.AUTHORIZATION.VOIDED"): paypal_payment,
    (PAYPAL, "PAYMENT.CAPTURE.COMPLETED"): paypal_payment,
    (PAYPAL, "PAYMENT.CAPTURE.DENIED"): paypal_payment,
    (PAYPAL, "PAYMENT.CAPTURE.PENDING"): paypal_payment,
    (PAYPAL, "PAYMENT.CAPTURE.REFUNDED"): paypal_refund,
    (PAYPAL, "PAYMENT.CAPTURE.REVERSED"): paypal_refund,
    (PAYPAL, "BILLING.SUBSCRIPTION.CREATED"): paypal_subscription,
    (PAYPAL, "BILLING.SUBSCRIPTION.ACTIVATED"): paypal_subscription,
    (PAYPAL, "BILLING.SUBSCRIPTION.UPDATED"): paypal_subscription,
    (PAYPAL, "BILLING.SUBSCRIPTION.SUSPENDED"): paypal_subscription,
    (PAYPAL, "BILLING.SUBSCRIPTION.CANCELLED"): paypal_subscription,
    (PAYPAL, "BILLING.SUBSCRIPTION.EXPIRED"): paypal_subscription,
    (PAYPAL, "BILLING.SUBSCRIPTION.PAYMENT.FAILED"): paypal_subscription,
    (PAYPAL, "PAYMENT.SALE.COMPLETED"): paypal_sale,
    (PAYPAL, "CUSTOMER.DISPUTE.CREATED"): paypal_dispute,
    (PAYPAL, "CUSTOMER.DISPUTE.UPDATED"): paypal_dispute,
    (PAYPAL, "CUSTOMER.DISPUTE.RESOLVED"): paypal_dispute,
}


async def handle(
    deps: Deps, event: InboxEvent, handlers: Mapping[tuple[Processor, str], Handler] = HANDLERS
) -> WebhookStatus:
    """Runs the handler registered for the event's type; IGNORED when there is none."""
    handler = handlers.get((event.processor, event.type))
    if handler is None:
        return WebhookStatus.IGNORED
    if event.processor not in deps.processors:
        return WebhookStatus.ORPHAN  # we cannot have created anything at an unconfigured processor
    payload = json.loads(event.payload)
    ctx = wh.webhook_context(event.processor, event.event_id, event.type)
    return await handler(deps, ctx, payload)
