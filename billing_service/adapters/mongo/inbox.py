"""``MongoWebhookInbox``: the ``WebhookInbox`` port on the ``webhook_events`` collection.

A unique index on (processor, event_id) makes a redelivered event a no-op. Workers claim
events with one atomic ``find_one_and_update`` on (status, available_at): for a PENDING
event ``available_at`` is when it may next be tried, for a PROCESSING one it is when the
lease runs out, so a crashed worker's event is taken over by the same query. Any number of
sidecar replicas can share the collection.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from bson import Binary
from pymongo import ASCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from billing_service.domain.common import Processor
from billing_service.domain.errors import StoreUnavailable
from billing_service.domain.ids import new_id
from billing_service.service_layer.ports import InboxEvent, InboxStats, WebhookStatus

__all__ = ["COLLECTION", "MongoWebhookInbox"]

log = logging.getLogger(__name__)

COLLECTION = "webhook_events"
_WAITING = [WebhookStatus.PENDING.value, WebhookStatus.PROCESSING.value]
_INDEXES = [
    IndexModel([("processor", ASCENDING), ("event_id", ASCENDING)], name="processor_event_id_unique", unique=True),
    IndexModel([("status", ASCENDING), ("available_at", ASCENDING)], name="status_available_at"),
]
_MAX_ERROR = 300

Doc = dict[str, Any]


@asynccontextmanager
async def _unavailable(what: str) -> AsyncIterator[None]:
    try:
        yield
    except PyMongoError as exc:
        log.warning("inbox %s failed: %s", what, type(exc).__name__)
        raise StoreUnavailable(f"inbox {what} failed: {type(exc).__name__}") from exc


def _event(doc: Mapping[str, Any]) -> InboxEvent:
    return InboxEvent(
        id=doc["_id"],
        processor=Processor(doc["processor"]),
        event_id=doc["event_id"],
        type=doc["type"],
        payload=bytes(doc["payload"]),
        status=WebhookStatus(doc["status"]),
        received_at=doc["received_at"],
        available_at=doc["available_at"],
        attempts=int(doc.get("attempts", 0)),
        lease_owner=doc.get("lease_owner", ""),
        processed_at=doc.get("processed_at"),
        last_error=doc.get("last_error", ""),
    )


class MongoWebhookInbox:
    """The webhook inbox over MongoDB.

    Args:
        client: An ``AsyncMongoClient`` created with ``tz_aware=True`` (share the store's).
        database: Database name (the store's).
    """

    def __init__(self, client: AsyncMongoClient[Doc], database: str) -> None:
        db = client.get_database(
            database, write_concern=WriteConcern(w="majority"), read_concern=ReadConcern("majority")
        )
        self._coll: AsyncCollection[Doc] = db[COLLECTION]

    @property
    def collection(self) -> AsyncCollection[Doc]:
        """The underlying collection (tests and admin tooling)."""
        return self._coll

    async def ensure_indexes(self) -> None:
        """Creates the unique (processor, event_id) index and the claim index."""
        async with _unavailable("ensure_indexes"):
            await self._coll.create_indexes(_INDEXES)

    async def insert(
        self, processor: Processor, event_id: str, event_type: str, payload: bytes, *, now: datetime
    ) -> bool:
        """Stores the raw event; a duplicate delivery only bumps its delivery counter."""
        doc: Doc = {
            "_id": new_id("whe"),
            "processor": processor.value,
            "event_id": event_id,
            "type": event_type,
            "payload": Binary(payload),
            "status": WebhookStatus.PENDING.value,
            "received_at": now,
            "available_at": now,
            "attempts": 0,
            "deliveries": 1,
            "lease_owner": "",
            "last_error": "",
        }
        async with _unavailable("insert"):
            try:
                await self._coll.insert_one(doc)
                return True
            except DuplicateKeyError:
                await self._coll.update_one(
                    {"processor": processor.value, "event_id": event_id}, {"$inc": {"deliveries": 1}}
                )
                return False

    async def claim(self, owner: str, *, now: datetime, lease_seconds: float) -> InboxEvent | None:
        """Leases the oldest due event: pending and due, or processing with a lapsed lease."""
        async with _unavailable("claim"):
            doc = await self._coll.find_one_and_update(
                {"status": {"$in": _WAITING}, "available_at": {"$lte": now}},
                {
                    "$set": {
                        "status": WebhookStatus.PROCESSING.value,
                        "lease_owner": owner,
                        "available_at": now + timedelta(seconds=lease_seconds),
                    },
                    "$inc": {"attempts": 1},
                },
                sort=[("available_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
        return None if doc is None else _event(doc)

    async def extend(self, inbox_id: str, owner: str, *, until: datetime) -> bool:
        """Pushes the lease out while a slow handler still runs."""
        async with _unavailable("extend"):
            result = await self._coll.update_one(
                {"_id": inbox_id, "lease_owner": owner, "status": WebhookStatus.PROCESSING.value},
                {"$set": {"available_at": until}},
            )
        return result.matched_count == 1

    async def complete(self, inbox_id: str, owner: str, status: WebhookStatus, *, now: datetime) -> bool:
        """Records the final outcome if ``owner`` still holds the lease."""
        async with _unavailable("complete"):
            result = await self._coll.update_one(
                {"_id": inbox_id, "lease_owner": owner, "status": WebhookStatus.PROCESSING.value},
                {
                    "$set": {
                        "status": status.value,
                        "processed_at": now,
                        "processed_by": owner,
                        "lease_owner": "",
                        "last_error": "",
                    }
                },
            )
        return result.matched_count == 1

    async def fail(
        self, inbox_id: str, owner: str, *, error: str, retry_at: datetime | None, now: datetime
    ) -> WebhookStatus:
        """Schedules the retry, or parks the event as DEAD."""
        status = WebhookStatus.DEAD if retry_at is None else WebhookStatus.PENDING
        update: Doc = {
            "status": status.value,
            "lease_owner": "",
            "last_error": error[:_MAX_ERROR],
            "available_at": retry_at or now,
        }
        if retry_at is None:
            update["dead_at"] = now
        async with _unavailable("fail"):
            await self._coll.update_one(
                {"_id": inbox_id, "lease_owner": owner, "status": WebhookStatus.PROCESSING.value}, {"$set": update}
            )
        return status

    async def replay(self, processor: Processor | None, event_id: str, *, now: datetime) -> bool:
        """Makes one event pending again with a fresh attempt budget."""
        query: Doc = {"event_id": event_id}
        if processor is not None:
            query["processor"] = processor.value
        async with _unavailable("replay"):
            result = await self._coll.update_many(query, {"$set": self._replayed(now)})
        return result.matched_count > 0

    async def replay_dead(self, *, now: datetime) -> int:
        """Makes every DEAD event pending again."""
        async with _unavailable("replay_dead"):
            result = await self._coll.update_many({"status": WebhookStatus.DEAD.value}, {"$set": self._replayed(now)})
        return result.modified_count

    @staticmethod
    def _replayed(now: datetime) -> Doc:
        return {
            "status": WebhookStatus.PENDING.value,
            "available_at": now,
            "attempts": 0,
            "lease_owner": "",
            "replayed_at": now,
        }

    async def get(self, processor: Processor, event_id: str) -> InboxEvent | None:
        """Loads one event by its processor's id."""
        async with _unavailable("get"):
            doc = await self._coll.find_one({"processor": processor.value, "event_id": event_id})
        return None if doc is None else _event(doc)

    async def stats(self, *, now: datetime) -> InboxStats:
        """Depth (pending + processing), dead count and the oldest waiting event's age."""
        async with _unavailable("stats"):
            depth = await self._coll.count_documents({"status": {"$in": _WAITING}})
            dead = await self._coll.count_documents({"status": WebhookStatus.DEAD.value})
            oldest = await self._coll.find_one(
                {"status": {"$in": _WAITING}}, sort=[("received_at", ASCENDING)], projection={"received_at": 1}
            )
        lag = max((now - oldest["received_at"]).total_seconds(), 0.0) if oldest else 0.0
        return InboxStats(depth=depth, dead=dead, oldest_pending_seconds=lag)
