"""Counts over the store's collections that observability samples (no business meaning)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from billing_service.adapters.mongo.store import MongoBillingStore


def subscription_counter(store: MongoBillingStore) -> Callable[[str], Awaitable[int]]:
    """Counts the store's subscriptions with one status (``SubscriptionSampler``'s ``count``)."""
    subscriptions = store.database["subscriptions"]

    async def count(status: str) -> int:
        return int(await subscriptions.count_documents({"status": status}))

    return count
