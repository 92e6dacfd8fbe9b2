"""PayPal's events: verifying deliveries, reading them in our terms, listing them.

A translation reads only ids (and, for disputes, the dispute's facts) from the event's
``resource``: the use cases re-fetch the object itself, so a stale or reordered event
cannot move our records backwards. Event types missing from ``_READERS`` are
acknowledged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

from billing_service.adapters.processors.payload import Json, dig, section, text
from billing_service.adapters.processors.paypal import mapping, wire
from billing_service.adapters.processors.paypal.client import PayPalConnection, PayPalSettings
from billing_service.adapters.processors.paypal.webhooks import PayPalWebhookVerifier, load_trust_roots
from billing_service.adapters.processors.retry import RetryPolicy
from billing_service.domain.disputes import FINAL_DISPUTE_STATUSES, DisputeStatus, ProcessorDisputeState
from billing_service.domain.processor_events import (
    BadEvent,
    EventKind,
    ProcessorEvent,
    SignatureError,
    VerifiedEvent,
)

log = logging.getLogger(__name__)

_DISPUTE_OUTCOME = {
    "RESOLVED_BUYER_FAVOUR": DisputeStatus.LOST,
    "RESOLVED_WITH_PAYOUT": DisputeStatus.LOST,
    "ACCEPTED": DisputeStatus.LOST,
    "RESOLVED_SELLER_FAVOUR": DisputeStatus.WON,
    "CANCELED_BY_BUYER": DisputeStatus.WON,
    "DENIED": DisputeStatus.WON,
    "NONE": DisputeStatus.WARNING_CLOSED,
}
_DISPUTE_OPEN = {
    "OPEN": DisputeStatus.NEEDS_RESPONSE,
    "WAITING_FOR_SELLER_RESPONSE": DisputeStatus.NEEDS_RESPONSE,
    "WAITING_FOR_BUYER_RESPONSE": DisputeStatus.UNDER_REVIEW,
    "UNDER_REVIEW": DisputeStatus.UNDER_REVIEW,
}


def _order(event: Json) -> ProcessorEvent:
    """CHECKOUT.ORDER.*: the order (reading an approved order completes it)."""
    order = section(event, "resource")
    our_id = mapping.our_payment_id(text(order, "purchase_units", 0, "custom_id"))
    return ProcessorEvent(EventKind.PAYMENT_CHANGED, text(order, "id"), our_id=our_id)


def _payment(event: Json) -> ProcessorEvent:
    """PAYMENT.AUTHORIZATION.* / PAYMENT.CAPTURE.*: the order they belong to."""
    resource = section(event, "resource")
    order_id = text(resource, "supplementary_data", "related_ids", "order_id")
    return ProcessorEvent(
        EventKind.PAYMENT_CHANGED, order_id, our_id=mapping.our_payment_id(text(resource, "custom_id"))
    )


def _refund(event: Json) -> ProcessorEvent:
    """PAYMENT.CAPTURE.REFUNDED / REVERSED: the resource is a refund of the capture.

    REVERSED is PayPal taking captured money back (a chargeback, a reversed funding source);
    PayPal shows it as a refund of the capture, so it converges (or is mirrored onto our
    payment, like a refund made in PayPal's dashboard) exactly like one: the payment stays
    SUCCEEDED and the money counts as refunded.
    """
    refund = section(event, "resource")
    return ProcessorEvent(EventKind.REFUND_CHANGED, text(refund, "id"), our_id=text(refund, "custom_id"))


def _subscription(event: Json) -> ProcessorEvent:
    """BILLING.SUBSCRIPTION.*: the subscription (our id in its ``custom_id``)."""
    sub = section(event, "resource")
    return ProcessorEvent(EventKind.SUBSCRIPTION_CHANGED, text(sub, "id"), our_id=text(sub, "custom_id"))


def _sale(event: Json) -> ProcessorEvent:
    """PAYMENT.SALE.COMPLETED: a subscription cycle was paid; its subscription mirrors its invoices.

    A sale without a billing agreement is a classic-API sale we never made: no id finds a
    record of ours.
    """
    sale = section(event, "resource")
    agreement = text(sale, "billing_agreement_id")
    if not agreement:
        return ProcessorEvent(EventKind.SUBSCRIPTION_CHANGED)
    return ProcessorEvent(EventKind.SUBSCRIPTION_CHANGED, agreement, our_id=text(sale, "custom"))


def _dispute_status(dispute: Json) -> DisputeStatus:
    status = text(dispute, "status")
    if status in ("RESOLVED", "CLOSED"):
        outcome = _DISPUTE_OUTCOME.get(text(dispute, "dispute_outcome", "outcome_code"))
        if outcome is not None:
            return outcome
        return DisputeStatus.WARNING_CLOSED if text(dispute, "stage") == "INQUIRY" else DisputeStatus.LOST
    return _DISPUTE_OPEN.get(status, DisputeStatus.NEEDS_RESPONSE)


def _dispute(event: Json) -> ProcessorEvent:
    """CUSTOMER.DISPUTE.*: the dispute of the payment named in its transaction's ``custom``."""
    dispute = section(event, "resource")
    status = _dispute_status(dispute)
    amount = dig(dispute, "dispute_amount")
    transaction = dig(dispute, "disputed_transactions", 0)
    if not isinstance(amount, dict):
        amount = dig(transaction, "gross_amount")
    if not isinstance(amount, dict):
        return ProcessorEvent(EventKind.DISPUTE_CHANGED, text(dispute, "dispute_id"))  # nothing we could mirror
    state = ProcessorDisputeState(
        processor_id=text(dispute, "dispute_id"),
        status=status,
        amount=wire.money_from(amount),
        reason=text(dispute, "reason").lower(),
        opened_at=wire.parse_time(dig(dispute, "create_time")),
        payment_id=mapping.our_payment_id(text(transaction, "custom")),
        closed_at=wire.parse_time(dig(dispute, "update_time")) if status in FINAL_DISPUTE_STATUSES else None,
    )
    return ProcessorEvent(EventKind.DISPUTE_CHANGED, state.processor_id, dispute=state)


_READERS: Mapping[str, Callable[[Json], ProcessorEvent]] = {
    "CHECKOUT.ORDER.APPROVED": _order,
    "CHECKOUT.ORDER.COMPLETED": _order,
    "PAYMENT.AUTHORIZATION.CREATED": _payment,
    "PAYMENT.AUTHORIZATION.VOIDED": _payment,
    "PAYMENT.CAPTURE.COMPLETED": _payment,
    "PAYMENT.CAPTURE.DENIED": _payment,
    "PAYMENT.CAPTURE.PENDING": _payment,
    "PAYMENT.CAPTURE.REFUNDED": _refund,
    "PAYMENT.CAPTURE.REVERSED": _refund,
    "BILLING.SUBSCRIPTION.CREATED": _subscription,
    "BILLING.SUBSCRIPTION.ACTIVATED": _subscription,
    "BILLING.SUBSCRIPTION.UPDATED": _subscription,
    "BILLING.SUBSCRIPTION.SUSPENDED": _subscription,
    "BILLING.SUBSCRIPTION.CANCELLED": _subscription,
    "BILLING.SUBSCRIPTION.EXPIRED": _subscription,
    "BILLING.SUBSCRIPTION.PAYMENT.FAILED": _subscription,
    "PAYMENT.SALE.COMPLETED": _sale,
    "CUSTOMER.DISPUTE.CREATED": _dispute,
    "CUSTOMER.DISPUTE.UPDATED": _dispute,
    "CUSTOMER.DISPUTE.RESOLVED": _dispute,
}


class PayPalEvents(PayPalConnection):
    """The event verbs of ``PayPalPaymentProcessor``.

    Args:
        webhook_verifier: Checks transmission signatures; by default one for
            ``settings.webhook_id`` trusting ``settings.webhook_ca_file`` (or certifi's
            roots), none when no webhook id is set. Tests pass one trusting their own CA.
    """

    def __init__(
        self,
        settings: PayPalSettings,
        *,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        webhook_verifier: PayPalWebhookVerifier | None = None,
    ) -> None:
        super().__init__(settings, retry_policy=retry_policy, sleep=sleep)
        if webhook_verifier is None and settings.webhook_id:
            webhook_verifier = PayPalWebhookVerifier(
                settings.webhook_id,
                environment=settings.environment,
                trust_roots=load_trust_roots(settings.webhook_ca_file),
            )
        self._webhooks = webhook_verifier

    @property
    def verifies_webhooks(self) -> bool:
        """True once our webhook id is configured."""
        return self._webhooks is not None and self._webhooks.verifies_webhooks

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> VerifiedEvent:
        """Checks the transmission signature for our webhook id, then reads the envelope."""
        if self._webhooks is None:
            raise SignatureError("PayPal webhooks are not configured")
        return await self._webhooks.verify_webhook(headers, body)

    def parse_event(self, event_type: str, payload: Mapping[str, Any]) -> ProcessorEvent | None:
        """Translates a PayPal event; None for a type we do not act on."""
        reader = _READERS.get(event_type)
        return None if reader is None else reader(dict(payload))

    async def list_events(self, since: datetime, *, page_size: int = 100) -> AsyncIterator[VerifiedEvent]:
        """Yields the webhook events PayPal created since ``since`` (newest first), as PayPal sent them.

        ``GET /v1/notifications/webhooks-events`` bounded by ``start_time`` and an ``end_time``
        fixed at the first page, so pages do not shift while new events arrive; pages are
        followed through PayPal's ``next`` link, whose query is PayPal's to define.
        """
        query: dict[str, str] = {
            "page_size": str(max(1, min(page_size, 300))),
            "start_time": wire.iso_time(since),
            "end_time": wire.iso_time(datetime.now(UTC)),
        }
        path = "/v1/notifications/webhooks-events"
        seen: set[str] = set()
        while True:
            listed = await self._json("webhooks_events.list", partial(self._raw, "GET", path, query=dict(query)))
            for event in listed.get("events") or []:
                event_id = str(event.get("id", ""))
                if isinstance(event, dict) and event_id and event_id not in seen:
                    seen.add(event_id)
                    verified = _listed(event)
                    if verified is not None:
                        yield verified
            following = wire.link(listed, "next")
            if not following or not listed.get("events"):
                return
            query = wire.link_query(following)


def _listed(event: Json) -> VerifiedEvent | None:
    """An event of PayPal's list, or None (logged) when it lacks a usable id or type."""
    event_id, event_type = event.get("id"), event.get("event_type")
    try:
        if isinstance(event_id, str) and event_id and isinstance(event_type, str) and event_type:
            return VerifiedEvent(event_id=event_id, type=event_type, payload=event)
    except BadEvent:
        pass
    log.warning("paypal listed an event without a usable id or type; skipped")
    return None
