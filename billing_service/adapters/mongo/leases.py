"""Named leases in the store, so a periodic job runs on one replica at a time."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from billing_service.domain.errors import StoreUnavailable

_LEASES = "leases"


class MongoLeases:
    """Leases on the ``leases`` collection: one document per name, owned until it expires.

    Args:
        client: The store's client.
        database: Database name.
    """

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        self._coll = client[database][_LEASES]

    async def acquire(self, name: str, owner: str, *, now: datetime, ttl_seconds: float) -> bool:
        """Takes or renews the lease ``name`` for ``owner``; False while someone else holds it."""
        until = now + timedelta(seconds=ttl_seconds)
        try:
            # update_one, not findAndModify: nothing is read back, and findAndModify's cost
            # grows with the collection on some servers (see docs/PERFORMANCE.md).
            await self._coll.update_one(
                {"_id": name, "$or": [{"owner": owner}, {"until": {"$lte": now}}]},
                {"$set": {"owner": owner, "until": until}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # the upsert lost to a live holder: the filter did not match its document
        except PyMongoError as exc:
            raise StoreUnavailable(f"lease {name}: {type(exc).__name__}") from exc
        return True

    async def release(self, name: str, owner: str) -> None:
        """Gives the lease up early (only if we still hold it)."""
        try:
            await self._coll.delete_one({"_id": name, "owner": owner})
        except PyMongoError as exc:
            raise StoreUnavailable(f"lease {name}: {type(exc).__name__}") from exc

    async def load_state(self, name: str) -> dict[str, str]:
        """The state the lease's holders keep with it (e.g. the reconciler's cursors), or {}."""
        try:
            doc = await self._coll.find_one({"_id": name}, {"state": 1})
        except PyMongoError as exc:
            raise StoreUnavailable(f"lease {name}: {type(exc).__name__}") from exc
        state = (doc or {}).get("state") or {}
        return {str(k): str(v) for k, v in state.items()}

    async def save_state(self, name: str, owner: str, state: Mapping[str, str]) -> bool:
        """Saves ``state`` with the lease if ``owner`` still holds it; False otherwise."""
        try:
            result = await self._coll.update_one({"_id": name, "owner": owner}, {"$set": {"state": dict(state)}})
        except PyMongoError as exc:
            raise StoreUnavailable(f"lease {name}: {type(exc).__name__}") from exc
        return result.matched_count == 1
