"""Stripe's Events API: the events Stripe created (kept 30 days)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from functools import partial
from typing import Any, cast

from billing_service.adapters.processors.stripe import mapping
from billing_service.adapters.processors.stripe.client import StripeConnection


class StripeEvents(StripeConnection):
    """The event verbs of ``StripePaymentProcessor``."""

    async def iter_events(self, since: datetime, *, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
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
                yield event
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id
