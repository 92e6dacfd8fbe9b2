"""Use cases behind processor webhooks: converge our records on the processor's truth.

An event only says *that* something changed. Each use case finds our record (by the
processor's id, or by our id echoed back in metadata / ``custom_id`` when the event beats
our own write of the processor id) and re-fetches the object from the processor through
the same refresh use cases the API uses. Duplicate and reordered events therefore end in
the state of in-order delivery, and the state machines refuse backward moves.

Every change is written with its audit event by the use case it goes through, with caller
``webhook:<processor>`` and request_id = the processor's event id.
"""

from __future__ import annotations

from billing_service.domain.common import Processor
from billing_service.domain.disputes import ProcessorDisputeState
from billing_service.domain.errors import BillingError
from billing_service.domain.payments import Payment, Refund, RefundStatus
from billing_service.domain.subscriptions import Subscription
from billing_service.service_layer import disputes, payments, subscriptions
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import RequestContext, is_final
from billing_service.service_layer.ports import WebhookStatus

PROCESSED = WebhookStatus.PROCESSED
ORPHAN = WebhookStatus.ORPHAN
_REFUND_PAGE = 100


def webhook_context(processor: Processor, event_id: str, event_type: str) -> RequestContext:
    """The request context of one webhook event (audit caller and request id)."""
    return RequestContext(
        caller=f"webhook:{processor.value}",
        method=f"webhook/{processor.value}/{event_type}",
        request_id=event_id,
        resource_id="",
    )


async def _payment(deps: Deps, processor: Processor, processor_id: str, payment_id: str) -> Payment | None:
    if processor_id:
        found = await deps.store.find_one(Payment, {"processor": processor.value, "processor_id": processor_id})
        if found is not None:
            return found
    if payment_id:
        hinted = await deps.store.get(Payment, payment_id)
        if hinted is not None and hinted.processor is processor and hinted.processor_id in ("", processor_id):
            return hinted
    return None


async def converge_payment(
    deps: Deps, ctx: RequestContext, processor: Processor, processor_payment_id: str, *, payment_id: str = ""
) -> WebhookStatus:
    """Re-reads a payment from the processor and converges our record on it.

    Args:
        processor_payment_id: The processor's payment id (PaymentIntent, PayPal order).
        payment_id: Our id when the processor echoed it back (metadata, custom_id).
    """
    payment = await _payment(deps, processor, processor_payment_id, payment_id)
    if payment is None:
        return ORPHAN
    linked = payment.processor_id or processor_payment_id
    if not linked:
        return PROCESSED  # nothing at the processor to converge on yet
    # What refresh_payment does, without reading the payment a second time: the record
    # step re-reads it inside its version-checked retry loop anyway. When the event beat
    # our own write of the processor id, this links the record now.
    state = await deps.processor(processor).get_payment(linked)
    await payments.record_payment_state(deps, ctx, payment.id, state, f"payment.{state.status.value}")
    return PROCESSED


async def converge_refund(
    deps: Deps, ctx: RequestContext, processor: Processor, processor_refund_id: str, *, refund_id: str = ""
) -> WebhookStatus:
    """Re-reads a refund from the processor and converges our refund and its payment."""
    refund = await deps.store.find_one(Refund, {"processor": processor.value, "processor_id": processor_refund_id})
    if refund is None and refund_id:
        hinted = await deps.store.get(Refund, refund_id)
        if hinted is not None and hinted.processor is processor and hinted.processor_id in ("", processor_refund_id):
            refund = hinted
    if refund is None:
        # Not one we created: maybe made in the processor's dashboard. Mirror it when it
        # refunds one of our payments, so our ledger matches the processor's.
        try:
            state = await deps.processor(processor).get_refund(processor_refund_id)
        except BillingError as exc:
            if not is_final(exc):
                raise  # the worker retries later
            return ORPHAN  # the processor cannot show it to us either: nothing to mirror
        mirrored = await payments.mirror_external_refund(deps, ctx, processor, state)
        return PROCESSED if mirrored is not None else ORPHAN
    if not refund.processor_id:
        state = await deps.processor(processor).get_refund(processor_refund_id)
        await payments.record_refund_state(deps, ctx, refund.id, state)
        return PROCESSED
    await payments.refresh_refund(deps, ctx, refund.id)
    return PROCESSED


async def converge_payment_refunds(
    deps: Deps,
    ctx: RequestContext,
    processor: Processor,
    processor_payment_id: str,
    *,
    processor_refund_ids: tuple[str, ...] = (),
    payment_id: str = "",
) -> WebhookStatus:
    """After "the payment was refunded": converges the payment and each of its open refunds."""
    payment = await _payment(deps, processor, processor_payment_id, payment_id)
    if payment is None:
        return ORPHAN
    for processor_refund_id in processor_refund_ids:
        await converge_refund(deps, ctx, processor, processor_refund_id)
    cursor: str | None = None
    while True:
        page = await deps.store.list_page(Refund, {"payment_id": payment.id}, limit=_REFUND_PAGE, after=cursor)
        for refund in page.items:
            if refund.status is RefundStatus.PENDING and refund.processor_id:
                await payments.refresh_refund(deps, ctx, refund.id)
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    await payments.refresh_payment(deps, ctx, payment.id)
    return PROCESSED


async def converge_subscription(
    deps: Deps,
    ctx: RequestContext,
    processor: Processor,
    processor_subscription_id: str,
    *,
    subscription_id: str = "",
) -> WebhookStatus:
    """Re-reads a subscription and its invoices from the processor and converges on them."""
    sub = None
    if processor_subscription_id:
        sub = await deps.store.find_one(
            Subscription, {"processor": processor.value, "processor_id": processor_subscription_id}
        )
    if sub is None and subscription_id:
        hinted = await deps.store.get(Subscription, subscription_id)
        if hinted is not None and hinted.processor is processor:
            sub = hinted if hinted.processor_id in ("", processor_subscription_id) else None
    if sub is None:
        return ORPHAN
    if not sub.processor_id and processor_subscription_id:
        state = await deps.processor(processor).get_subscription(processor_subscription_id)
        sub = await subscriptions.record_subscription_state(
            deps, ctx, sub.id, state, f"subscription.{state.status.value}"
        )
        await subscriptions.sync_invoices(deps, ctx, sub)
        return PROCESSED
    await subscriptions.sync_subscription(deps, ctx, sub.id)
    return PROCESSED


async def converge_dispute(
    deps: Deps, ctx: RequestContext, processor: Processor, state: ProcessorDisputeState
) -> WebhookStatus:
    """Opens or advances our mirror of a dispute (disputes move only forward)."""
    dispute = await disputes.record_dispute(deps, ctx, processor, state)
    return ORPHAN if dispute is None else PROCESSED
