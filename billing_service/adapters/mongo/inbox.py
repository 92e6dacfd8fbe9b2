"""``MongoWebhookInbox``: the ``WebhookInbox`` port on the ``webhook_events`` collection.

An event's ``_id`` is derived from (processor, event id), and a unique index on
(processor, event_id) backs it up (documents stored before the ids were derived), so a
redelivered event is a no-op. ``available_at`` is when a PENDING event may next be tried,
or when a PROCESSING event's lease runs out, so a crashed worker's event is due again.

Claiming never uses ``findAndModify``: a claim reads candidate ids with an indexed
equality-and-range query on (status, available_at) and takes them with one conditional
``update_many`` by ``_id`` that re-checks "still waiting and due" per document, which is
atomic per document on MongoDB. Each claim writes a fresh owner token, so the worker then
knows exactly which candidates it won (``modified_count``, or a read by ``_id`` and token
when another replica took some), and every later write (extend, complete, fail) is fenced
by that token. Events this process has just stored are claimed by id without any query
(:meth:`claim_stored`).

Finished events (PROCESSED, IGNORED, ORPHAN) get ``purge_at`` = finish time + the
retention; a TTL index removes them on a MongoDB server and :meth:`purge_finished`
(the janitor's sweep) removes them with indexed batched deletes everywhere. DEAD events
stay until replayed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from bson import Binary
from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from billing_service.domain.common import Processor
from billing_service.domain.errors import StoreUnavailable
from billing_service.service_layer.ports import InboxEvent, InboxStats, WebhookStatus

__all__ = ["COLLECTION", "DEFAULT_RETENTION", "MongoWebhookInbox", "inbox_id"]

log = logging.getLogger(__name__)

COLLECTION = "webhook_events"
#: How long a finished event is kept by default (its id blocks a redelivery meanwhile).
DEFAULT_RETENTION = timedelta(days=35)
_PENDING, _PROCESSING = WebhookStatus.PENDING.value, WebhookStatus.PROCESSING.value
_WAITING = [_PENDING, _PROCESSING]
_FINISHED = frozenset({WebhookStatus.PROCESSED, WebhookStatus.IGNORED, WebhookStatus.ORPHAN})
_INDEXES = [
    IndexModel([("processor", ASCENDING), ("event_id", ASCENDING)], name="processor_event_id_unique", unique=True),
    # Claims and depth: equality on status, then a range on available_at. Only waiting
    # events match, so the cost follows the backlog, never the history.
    IndexModel([("status", ASCENDING), ("available_at", ASCENDING)], name="status_available_at"),
    # The oldest waiting event's age (the lag gauge), by index order on MongoDB.
    IndexModel([("status", ASCENDING), ("received_at", ASCENDING)], name="status_received_at"),
    # Finished events past their retention. Sparse: waiting and dead events are not in it.
    # MongoDB's TTL monitor deletes by it; the janitor deletes by it in batches too.
    IndexModel([("purge_at", ASCENDING)], name="purge_at_ttl", sparse=True, expireAfterSeconds=0),
]
_MAX_ERROR = 300

Doc = dict[str, Any]
Listener = Callable[[InboxEvent], None]


def inbox_id(processor: Processor, event_id: str) -> str:
    """The inbox ``_id`` of a processor's event: fixed size, and the same on every delivery."""
    digest = hashlib.sha256(f"{processor.value}\x1f{event_id}".encode()).hexdigest()[:40]
    return f"whe_{digest}"


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


def _leased(event: InboxEvent, owner: str, until: datetime) -> InboxEvent:
    """A just-stored event as one claim leaves it: processing, first attempt, ours."""
    return InboxEvent(
        id=event.id,
        processor=event.processor,
        event_id=event.event_id,
        type=event.type,
        payload=event.payload,
        status=WebhookStatus.PROCESSING,
        received_at=event.received_at,
        available_at=until,
        attempts=1,
        lease_owner=owner,
    )


class MongoWebhookInbox:
    """The webhook inbox over MongoDB.

    Args:
        client: An ``AsyncMongoClient`` created with ``tz_aware=True`` (share the store's).
        database: Database name (the store's).
        retention: How long finished events are kept before the janitor (or MongoDB's TTL
            monitor) removes them. Longer than any processor redelivers or backfill reaches
            back (Stripe: 3 days of retries, 30 days of events), so a purged event is never
            applied twice.
    """

    def __init__(
        self, client: AsyncMongoClient[Doc], database: str, *, retention: timedelta = DEFAULT_RETENTION
    ) -> None:
        db = client.get_database(
            database, write_concern=WriteConcern(w="majority"), read_concern=ReadConcern("majority")
        )
        self._coll: AsyncCollection[Doc] = db[COLLECTION]
        self._retention = retention
        self._listeners: list[Listener] = []

    @property
    def collection(self) -> AsyncCollection[Doc]:
        """The underlying collection (tests and admin tooling)."""
        return self._coll

    async def ensure_indexes(self) -> None:
        """Creates the unique (processor, event_id) index, the claim, lag and purge indexes."""
        async with _unavailable("ensure_indexes"):
            await self._coll.create_indexes(_INDEXES)

    def subscribe(self, listener: Listener) -> None:
        """Calls ``listener`` with each event this object stores, once the insert is durable."""
        self._listeners.append(listener)

    async def insert(
        self, processor: Processor, event_id: str, event_type: str, payload: bytes, *, now: datetime
    ) -> bool:
        """Stores the raw event; a duplicate delivery only bumps its delivery counter."""
        doc: Doc = {
            "_id": inbox_id(processor, event_id),
            "processor": processor.value,
            "event_id": event_id,
            "type": event_type,
            "payload": Binary(payload),
            "status": _PENDING,
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
            except DuplicateKeyError:
                bumped = await self._coll.update_one({"_id": doc["_id"]}, {"$inc": {"deliveries": 1}})
                if bumped.matched_count == 0:  # stored before ids were derived
                    await self._coll.update_one(
                        {"processor": processor.value, "event_id": event_id}, {"$inc": {"deliveries": 1}}
                    )
                return False
        if self._listeners:
            event = _event(doc)
            for listener in self._listeners:
                listener(event)
        return True

    async def claim(self, owner: str, *, now: datetime, lease_seconds: float) -> InboxEvent | None:
        """Leases the oldest due event: pending and due, or processing with a lapsed lease."""
        claimed = await self.claim_due(owner, now=now, lease_seconds=lease_seconds, limit=1)
        return claimed[0] if claimed else None

    async def claim_due(self, owner: str, *, now: datetime, lease_seconds: float, limit: int) -> list[InboxEvent]:
        """Leases up to ``limit`` due events, oldest first, to ``owner`` (a fresh token per call).

        Pending events first, then processing ones whose lease ran out; each list is read
        by equality on status and a range on available_at, so only due events are read.
        """
        async with _unavailable("claim"):
            ids: list[str] = []
            for status in _WAITING:
                if len(ids) >= limit:
                    break
                cursor = self._coll.find(
                    {"status": status, "available_at": {"$lte": now}},
                    projection={"_id": 1},
                    sort=[("available_at", ASCENDING)],
                    limit=limit - len(ids),
                )
                ids += [doc["_id"] for doc in await cursor.to_list()]
            if not ids:
                return []
            result = await self._coll.update_many(
                {"_id": {"$in": ids}, "status": {"$in": _WAITING}, "available_at": {"$lte": now}},
                self._lease(owner, now, lease_seconds),
            )
            if result.modified_count == 0:
                return []
            # Read back what we won: another replica may have taken some candidates, and the
            # attempt counts are the store's, not our snapshot's.
            docs = await self._coll.find({"_id": {"$in": ids}, "lease_owner": owner}).to_list()
        order = {i: n for n, i in enumerate(ids)}
        return sorted((_event(d) for d in docs if d["status"] == _PROCESSING), key=lambda e: order[e.id])

    async def claim_stored(
        self, owner: str, events: Sequence[InboxEvent], *, now: datetime, lease_seconds: float
    ) -> list[InboxEvent]:
        """Leases events this process has just stored (no query: their ids are known).

        Only events still exactly as stored (pending, never attempted) are taken, so the
        returned events are what the store holds, with one attempt.
        """
        if not events:
            return []
        ids = [e.id for e in events]
        async with _unavailable("claim"):
            result = await self._coll.update_many(
                {"_id": {"$in": ids}, "status": _PENDING, "attempts": 0, "available_at": {"$lte": now}},
                self._lease(owner, now, lease_seconds),
            )
            if result.modified_count == len(ids):
                won = set(ids)
            elif result.modified_count == 0:
                won = set()
            else:
                cursor = self._coll.find({"_id": {"$in": ids}, "lease_owner": owner}, projection={"_id": 1})
                won = {d["_id"] for d in await cursor.to_list()}
        until = now + timedelta(seconds=lease_seconds)
        return [_leased(e, owner, until) for e in events if e.id in won]

    @staticmethod
    def _lease(owner: str, now: datetime, lease_seconds: float) -> Doc:
        return {
            "$set": {
                "status": _PROCESSING,
                "lease_owner": owner,
                "available_at": now + timedelta(seconds=lease_seconds),
            },
            "$inc": {"attempts": 1},
        }

    async def extend(self, inbox_id: str, owner: str, *, until: datetime) -> bool:
        """Pushes the lease out while a slow handler still runs."""
        async with _unavailable("extend"):
            result = await self._coll.update_one(
                {"_id": inbox_id, "lease_owner": owner, "status": _PROCESSING}, {"$set": {"available_at": until}}
            )
        return result.matched_count == 1

    async def complete(self, inbox_id: str, owner: str, status: WebhookStatus, *, now: datetime) -> bool:
        """Records the final outcome if ``owner`` still holds the lease."""
        update: Doc = {
            "status": status.value,
            "processed_at": now,
            "processed_by": owner,
            "lease_owner": "",
            "last_error": "",
        }
        if status in _FINISHED:
            update["purge_at"] = now + self._retention
        async with _unavailable("complete"):
            result = await self._coll.update_one(
                {"_id": inbox_id, "lease_owner": owner, "status": _PROCESSING}, {"$set": update}
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
                {"_id": inbox_id, "lease_owner": owner, "status": _PROCESSING}, {"$set": update}
            )
        return status

    async def replay(self, processor: Processor | None, event_id: str, *, now: datetime) -> bool:
        """Makes one event pending again with a fresh attempt budget."""
        processors = [processor] if processor is not None else list(Processor)
        matched = 0
        async with _unavailable("replay"):
            for each in processors:
                result = await self._coll.update_one({"_id": inbox_id(each, event_id)}, self._replayed(now))
                if result.matched_count == 0:  # stored before ids were derived
                    result = await self._coll.update_one(
                        {"processor": each.value, "event_id": event_id}, self._replayed(now)
                    )
                matched += result.matched_count
        return matched > 0

    async def replay_dead(self, *, now: datetime) -> int:
        """Makes every DEAD event pending again."""
        async with _unavailable("replay_dead"):
            result = await self._coll.update_many({"status": WebhookStatus.DEAD.value}, self._replayed(now))
        return result.modified_count

    @staticmethod
    def _replayed(now: datetime) -> Doc:
        return {
            "$set": {"status": _PENDING, "available_at": now, "attempts": 0, "lease_owner": "", "replayed_at": now},
            "$unset": {"purge_at": ""},
        }

    async def get(self, processor: Processor, event_id: str) -> InboxEvent | None:
        """Loads one event by its processor's id."""
        async with _unavailable("get"):
            doc = await self._coll.find_one({"_id": inbox_id(processor, event_id)})
            if doc is None:  # stored before ids were derived, or unknown
                doc = await self._coll.find_one({"processor": processor.value, "event_id": event_id})
        return None if doc is None else _event(doc)

    async def stats(self, *, now: datetime) -> InboxStats:
        """Depth (pending + processing), dead count and the oldest waiting event's age.

        Equality on status only (an ``$in`` would not use the index on every server), so
        each count reads the waiting or dead events, never the finished history.
        """
        async with _unavailable("stats"):
            depth = 0
            oldest: datetime | None = None
            for status in _WAITING:
                depth += await self._coll.count_documents({"status": status})
                first = await self._coll.find_one(
                    {"status": status}, sort=[("received_at", ASCENDING)], projection={"received_at": 1}
                )
                if first is not None and (oldest is None or first["received_at"] < oldest):
                    oldest = first["received_at"]
            dead = await self._coll.count_documents({"status": WebhookStatus.DEAD.value})
        lag = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        return InboxStats(depth=depth, dead=dead, oldest_pending_seconds=lag)

    async def purge_finished(self, *, now: datetime, batch: int = 500, max_batches: int = 100) -> int:
        """Deletes finished events whose retention is over, ``batch`` at a time; returns how many.

        Reads a batch of ids by the ``purge_at`` index, then deletes exactly those ids
        (re-checking ``purge_at``, so an event replayed meanwhile stays). Idempotent: two
        sweeps at once only find fewer ids.
        """
        removed = 0
        async with _unavailable("purge"):
            for _ in range(max_batches):
                cursor = self._coll.find({"purge_at": {"$lte": now}}, projection={"_id": 1}, limit=batch)
                ids = [doc["_id"] for doc in await cursor.to_list()]
                if not ids:
                    break
                result = await self._coll.delete_many({"_id": {"$in": ids}, "purge_at": {"$lte": now}})
                removed += result.deleted_count
                if len(ids) < batch:
                    break
        return removed
