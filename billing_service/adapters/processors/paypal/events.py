"""PayPal's webhook events: the list PayPal keeps of the events it sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

from billing_service.adapters.processors.paypal import wire
from billing_service.adapters.processors.paypal.client import PayPalConnection


class PayPalEvents(PayPalConnection):
    """The event verbs of ``PayPalPaymentProcessor``."""

    async def iter_events(self, since: datetime, *, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
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
                    yield event
            following = wire.link(listed, "next")
            if not following or not listed.get("events"):
                return
            query = wire.link_query(following)
