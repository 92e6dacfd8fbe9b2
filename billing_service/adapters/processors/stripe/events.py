"""Stripe's events: verifying deliveries, reading them in our terms, listing them.

A translation reads only ids (and, for disputes, the dispute's facts) from the event:
the use cases re-fetch the object itself, so a stale or reordered event cannot move our
records backwards. Event types missing from ``_READERS`` are acknowledged and ignored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Any, cast

from billing_service.adapters.processors.payload import Json, dig, section, text
from billing_service.adapters.processors.retry import RetryPolicy
from billing_service.adapters.processors.stripe import mapping
from billing_service.adapters.processors.stripe.client import StripeConnection, StripeSettings
from billing_service.adapters.processors.stripe.webhooks import StripeWebhookVerifier
from billing_service.domain.disputes import FINAL_DISPUTE_STATUSES, DisputeStatus, ProcessorDisputeState
from billing_service.domain.processor_events import BadEvent, EventKind, ProcessorEvent, VerifiedEvent

log = logging.getLogger(__name__)

_DISPUTE_STATUS = {
    "warning_needs_response": DisputeStatus.NEEDS_RESPONSE,
    "needs_response": DisputeStatus.NEEDS_RESPONSE,
    "warning_under_review": DisputeStatus.UNDER_REVIEW,
    "under_review": DisputeStatus.UNDER_REVIEW,
    "warning_closed": DisputeStatus.WARNING_CLOSED,
    "won": DisputeStatus.WON,
    "prevented": DisputeStatus.WON,
    "lost": DisputeStatus.LOST,
}


def _payment_intent(event: Json) -> ProcessorEvent:
    """payment_intent.*: the PaymentIntent (our id in its metadata)."""
    intent = section(event, "data", "object")
    return ProcessorEvent(
        EventKind.PAYMENT_CHANGED, text(intent, "id"), our_id=text(intent, "metadata", "billing_payment_id")
    )


def _charge_refunded(event: Json) -> ProcessorEvent:
    """charge.refunded: the charge's PaymentIntent and the refunds the charge lists."""
    charge = section(event, "data", "object")
    refunds = dig(charge, "refunds", "data") or []
    return ProcessorEvent(
        EventKind.PAYMENT_REFUNDED,
        text(charge, "payment_intent"),
        our_id=text(charge, "metadata", "billing_payment_id"),
        refund_ids=tuple(text(r, "id") for r in refunds if text(r, "id")),
    )


def _refund(event: Json) -> ProcessorEvent:
    """refund.*: the refund (our id in its metadata)."""
    refund = section(event, "data", "object")
    return ProcessorEvent(
        EventKind.REFUND_CHANGED, text(refund, "id"), our_id=text(refund, "metadata", "billing_refund_id")
    )


def _dispute(event: Json) -> ProcessorEvent:
    """charge.dispute.*: the dispute's facts (the port has no dispute read)."""
    dispute = section(event, "data", "object")
    status = _DISPUTE_STATUS.get(text(dispute, "status"), DisputeStatus.NEEDS_RESPONSE)
    state = ProcessorDisputeState(
        processor_id=text(dispute, "id"),
        status=status,
        amount=mapping.stripe_money(int(dig(dispute, "amount") or 0), text(dispute, "currency") or "usd"),
        reason=text(dispute, "reason"),
        opened_at=mapping.timestamp(dig(dispute, "created")),
        processor_payment_id=text(dispute, "payment_intent"),
        payment_id=text(dispute, "metadata", "billing_payment_id"),
        closed_at=mapping.timestamp(dig(event, "created")) if status in FINAL_DISPUTE_STATUSES else None,
    )
    return ProcessorEvent(EventKind.DISPUTE_CHANGED, state.processor_id, dispute=state)


def _subscription(event: Json) -> ProcessorEvent:
    """customer.subscription.*: the subscription (our id in its metadata)."""
    sub = section(event, "data", "object")
    return ProcessorEvent(
        EventKind.SUBSCRIPTION_CHANGED, text(sub, "id"), our_id=text(sub, "metadata", "billing_subscription_id")
    )


def _invoice(event: Json) -> ProcessorEvent:
    """invoice.*: the invoice's subscription, which mirrors its invoices.

    A one-off invoice names no subscription: nothing we create, so no id finds a record.
    """
    invoice = section(event, "data", "object")
    details = dig(invoice, "parent", "subscription_details")
    sub_id = text(details, "subscription") or text(invoice, "subscription")  # API >= 2025-03-31, older
    hint = text(details, "metadata", "billing_subscription_id") or text(
        invoice, "subscription_details", "metadata", "billing_subscription_id"
    )
    return ProcessorEvent(EventKind.SUBSCRIPTION_CHANGED, sub_id, our_id=hint)


_READERS: Mapping[str, Callable[[Json], ProcessorEvent]] = {
    "payment_intent.succeeded": _payment_intent,
    "payment_intent.payment_failed": _payment_intent,
    "payment_intent.canceled": _payment_intent,
    "payment_intent.requires_action": _payment_intent,
    "payment_intent.amount_capturable_updated": _payment_intent,
    "payment_intent.processing": _payment_intent,
    "charge.refunded": _charge_refunded,
    "refund.created": _refund,
    "refund.updated": _refund,
    "refund.failed": _refund,
    "charge.dispute.created": _dispute,
    "charge.dispute.updated": _dispute,
    "charge.dispute.closed": _dispute,
    "customer.subscription.created": _subscription,
    "customer.subscription.updated": _subscription,
    "customer.subscription.deleted": _subscription,
    "customer.subscription.paused": _subscription,
    "customer.subscription.resumed": _subscription,
    "customer.subscription.trial_will_end": _subscription,
    "invoice.paid": _invoice,
    "invoice.payment_failed": _invoice,
    "invoice.finalized": _invoice,
}


class StripeEvents(StripeConnection):
    """The event verbs of ``StripePaymentProcessor``."""

    def __init__(self, settings: StripeSettings, *, retry_policy: RetryPolicy | None = None) -> None:
        super().__init__(settings, retry_policy=retry_policy)
        self._webhooks = StripeWebhookVerifier(
            secrets=settings.webhook_secrets, tolerance_seconds=settings.webhook_tolerance_seconds
        )

    @property
    def verifies_webhooks(self) -> bool:
        """True once a signing secret is configured."""
        return self._webhooks.verifies_webhooks

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> VerifiedEvent:
        """Checks ``Stripe-Signature`` against every configured secret, then reads the envelope."""
        return await self._webhooks.verify_webhook(headers, body)

    def parse_event(self, event_type: str, payload: Mapping[str, Any]) -> ProcessorEvent | None:
        """Translates a Stripe event; None for a type we do not act on."""
        reader = _READERS.get(event_type)
        return None if reader is None else reader(dict(payload))

    async def list_events(self, since: datetime, *, page_size: int = 100) -> AsyncIterator[VerifiedEvent]:
        """Yields Stripe Events created at or after ``since`` (newest first), exactly as Stripe sent them.

        For backfilling the webhook inbox after the sidecar was down (Stripe keeps events 30 days).
        Each event is the page's raw JSON, not the SDK's object: the SDK turns decimal strings
        (``unit_amount_decimal``...) into ``Decimal``, which neither JSON nor our handlers take,
        and the inbox must hold what a webhook delivery would have carried.
        """
        after: str | None = None
        while True:
            params: dict[str, Any] = {"created": {"gte": int(since.timestamp())}, "limit": page_size}
            if after:
                params["starting_after"] = after
            page = await self._call("events.list", partial(self._client.v1.events.list_async, cast(Any, params)))
            for event in mapping.raw_list_items(page):
                listed = _listed(event)
                if listed is not None:
                    yield listed
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id


def _listed(event: Json) -> VerifiedEvent | None:
    """An event of Stripe's list, or None (logged) when it lacks a usable id or type."""
    event_id, event_type = event.get("id"), event.get("type")
    try:
        if isinstance(event_id, str) and event_id and isinstance(event_type, str) and event_type:
            return VerifiedEvent(event_id=event_id, type=event_type, payload=event)
    except BadEvent:
        pass
    log.warning("stripe listed an event without a usable id or type; skipped")
    return None
