"""The one table from what an event means to the use case that converges our records on it.

A stored event is translated by its processor's adapter (``parse_event``) into a
``ProcessorEvent``: what happened, in our terms, and the ids that find our records. The
use cases in ``service_layer.webhooks`` then re-fetch the object from the processor.
Types the adapter does not act on are acknowledged and marked IGNORED; events about
objects we never created end as ORPHAN.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

from billing_service.domain.common import Processor
from billing_service.domain.processor_events import EventKind, ProcessorEvent
from billing_service.service_layer import webhooks
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import InboxEvent, WebhookStatus

Json = dict[str, Any]
Handler = Callable[[Deps, RequestContext, Json], Awaitable[WebhookStatus]]
Converge = Callable[[Deps, RequestContext, Processor, ProcessorEvent], Awaitable[WebhookStatus]]


async def _payment_changed(
    deps: Deps, ctx: RequestContext, processor: Processor, event: ProcessorEvent
) -> WebhookStatus:
    return await webhooks.converge_payment(deps, ctx, processor, event.processor_id, payment_id=event.our_id)


async def _payment_refunded(
    deps: Deps, ctx: RequestContext, processor: Processor, event: ProcessorEvent
) -> WebhookStatus:
    return await webhooks.converge_payment_refunds(
        deps, ctx, processor, event.processor_id, processor_refund_ids=event.refund_ids, payment_id=event.our_id
    )


async def _refund_changed(
    deps: Deps, ctx: RequestContext, processor: Processor, event: ProcessorEvent
) -> WebhookStatus:
    return await webhooks.converge_refund(deps, ctx, processor, event.processor_id, refund_id=event.our_id)


async def _subscription_changed(
    deps: Deps, ctx: RequestContext, processor: Processor, event: ProcessorEvent
) -> WebhookStatus:
    if not event.processor_id and not event.our_id:
        return WebhookStatus.ORPHAN  # e.g. a one-off invoice: not something we create
    return await webhooks.converge_subscription(deps, ctx, processor, event.processor_id, subscription_id=event.our_id)


async def _dispute_changed(
    deps: Deps, ctx: RequestContext, processor: Processor, event: ProcessorEvent
) -> WebhookStatus:
    if event.dispute is None:
        return WebhookStatus.ORPHAN  # nothing we could mirror
    return await webhooks.converge_dispute(deps, ctx, processor, event.dispute)


#: What happened -> the use case that converges on it.
CONVERGE: Mapping[EventKind, Converge] = MappingProxyType(
    {
        EventKind.PAYMENT_CHANGED: _payment_changed,
        EventKind.PAYMENT_REFUNDED: _payment_refunded,
        EventKind.REFUND_CHANGED: _refund_changed,
        EventKind.SUBSCRIPTION_CHANGED: _subscription_changed,
        EventKind.DISPUTE_CHANGED: _dispute_changed,
    }
)

#: Handlers for particular (processor, event type) pairs, run on the stored payload instead
#: of the processor's translation. The service registers none; tests pass their own to
#: watch the workers.
HANDLERS: Mapping[tuple[Processor, str], Handler] = MappingProxyType({})


async def handle(
    deps: Deps, event: InboxEvent, handlers: Mapping[tuple[Processor, str], Handler] = HANDLERS
) -> WebhookStatus:
    """Converges our records on one stored event.

    Args:
        deps: The use cases' ports.
        event: The stored event.
        handlers: Handlers that replace the translation for their (processor, type).

    Returns:
        ORPHAN for a processor not configured here (we cannot have created anything
        there), IGNORED for a type its adapter does not act on, else the use case's status.
    """
    processor = deps.processors.get(event.processor)
    if processor is None:
        return WebhookStatus.ORPHAN
    payload = json.loads(event.payload)
    ctx = webhooks.webhook_context(event.processor, event.event_id, event.type)
    handler = handlers.get((event.processor, event.type))
    if handler is not None:
        return await handler(deps, ctx, payload)
    translated = processor.parse_event(event.type, payload)
    if translated is None:
        return WebhookStatus.IGNORED
    return await CONVERGE[translated.kind](deps, ctx, event.processor, translated)
