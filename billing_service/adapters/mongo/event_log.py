"""``MongoEventLog``: the outbox, the numbered event log, the sequencer pass and retention.

Collections (docs/EVENTS.md, "How it works"):

- ``event_outbox``: one document per event, written by ``MongoBillingStore.commit`` in the
  transaction of the change (:func:`outbox_documents`); drained by the sequencer.
- ``event_log``: one document per event, ``_id`` = its number (1, 2, 3...), moved from
  the outbox by :meth:`MongoEventLog.sequence_pass` in one transaction per batch, so an
  event is always in exactly one of the two and numbers are dense and assigned in the
  order events become visible (no reader can find an unnumbered event behind its cursor).
- ``event_meta``: the log's id (part of every cursor) and ``low_water``, the first number
  retention has not deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from billing_service.adapters.mongo.budget import unavailable
from billing_service.adapters.mongo.codecs import CodecError, decode
from billing_service.domain.customers import Customer, PaymentMethod
from billing_service.domain.disputes import Dispute
from billing_service.domain.event_cursor import LOG_ID_ALPHABET, LOG_ID_LENGTH
from billing_service.domain.event_derivation import Derived
from billing_service.domain.payments import Payment, Refund
from billing_service.domain.subscriptions import Invoice, Plan, Subscription
from billing_service.service_layer.event_ports import EventFilter, LoggedEvent

__all__ = [
    "EVENT_INDEXES",
    "LOG",
    "META",
    "OUTBOX",
    "RESOURCE_CLASSES",
    "RESOURCE_TYPE_OF",
    "MongoEventLog",
    "outbox_documents",
]

log = logging.getLogger(__name__)

Doc = dict[str, Any]

OUTBOX: Final = "event_outbox"
LOG: Final = "event_log"
META: Final = "event_meta"
_LOG_META_ID: Final = "log"

#: The event resource type of each stored entity class, and back.
RESOURCE_TYPE_OF: Final[Mapping[type[Any], str]] = {
    Customer: "customer",
    PaymentMethod: "payment_method",
    Payment: "payment",
    Refund: "refund",
    Plan: "plan",
    Subscription: "subscription",
    Invoice: "invoice",
    Dispute: "dispute",
}
RESOURCE_CLASSES: Final[Mapping[str, type[Any]]] = {v: k for k, v in RESOURCE_TYPE_OF.items()}

EVENT_INDEXES: Final[Mapping[str, list[IndexModel]]] = {
    OUTBOX: [
        # The sequencer's batch order, and its batch closure (a resource's other events).
        IndexModel([("commit.id", ASCENDING), ("commit.index", ASCENDING)], name="commit"),
        IndexModel([("resource_id", ASCENDING), ("resource_version", ASCENDING)], name="resource_version"),
    ],
    LOG: [
        IndexModel([("event_id", ASCENDING)], name="event_id_unique", unique=True),
        IndexModel([("resource_id", ASCENDING), ("_id", ASCENDING)], name="resource_id__id"),
        IndexModel([("customer_id", ASCENDING), ("_id", ASCENDING)], name="customer_id__id"),
        IndexModel([("type", ASCENDING), ("_id", ASCENDING)], name="type__id"),
        # sequence_time is monotonic in the number, not unique: (time, number) finds the first.
        IndexModel([("sequence_time", ASCENDING), ("_id", ASCENDING)], name="sequence_time__id"),
    ],
}

# Outcomes of a pass that lost to another writer: nothing was written, the next pass rereads.
_LOST: Final = (112, 11000, 251)  # WriteConflict, DuplicateKey, NoSuchTransaction
_RETENTION_CHUNK: Final = 10_000
_BY_TIME: Final = [("sequence_time", ASCENDING), ("_id", ASCENDING)]


class _Raced(Exception):
    """Internal: the pass found the outbox changed under it; its transaction is aborted."""


def outbox_documents(derived: Derived, snapshots: Sequence[Doc], commit_id: str) -> list[Doc]:
    """The ``event_outbox`` documents of one commit.

    Args:
        derived: The commit's events (``event_derivation.derive_events``).
        snapshots: The entity documents exactly as the commit writes them, by change index.
        commit_id: A new id for the commit (orders the sequencer's batches).
    """
    return [
        {
            "_id": e.id,
            "commit": {"id": commit_id, "index": e.index},
            "type": e.type,
            "resource_type": e.resource_type,
            "resource_id": e.resource_id,
            "customer_id": e.customer_id,
            "resource_version": e.resource_version,
            "previous_status": e.previous_status,
            "create_time": e.create_time,
            "caller": e.caller,
            "request_id": e.request_id,
            "audit_event_ids": list(e.audit_event_ids),
            "snapshot": snapshots[e.change_index],
        }
        for e in derived.events
    ]


def _ms(when: datetime) -> datetime:
    """``when`` at the store's precision (milliseconds), so comparisons agree with stored values."""
    return when.astimezone(UTC).replace(microsecond=when.microsecond // 1000 * 1000)


def _order(batch: list[Doc]) -> list[Doc]:
    """The batch in commit order, each resource's events in version order within their slots."""
    by_commit = sorted(batch, key=lambda d: (d["commit"]["id"], d["commit"]["index"]))
    per_resource: dict[str, list[Doc]] = {}
    for doc in by_commit:
        per_resource.setdefault(doc["resource_id"], []).append(doc)
    for docs in per_resource.values():
        docs.sort(key=lambda d: (d["resource_version"], d["commit"]["index"]))
    taken: dict[str, int] = {}
    out: list[Doc] = []
    for doc in by_commit:
        rid = doc["resource_id"]
        index = taken.get(rid, 0)
        out.append(per_resource[rid][index])
        taken[rid] = index + 1
    return out


class MongoEventLog:
    """The event log over MongoDB (any MongoDB-wire server with transactions and change streams).

    Args:
        client: The store's client (``tz_aware=True``).
        database: Database name.
    """

    def __init__(self, client: AsyncMongoClient[Doc], database: str) -> None:
        self._client = client
        self._db: AsyncDatabase[Doc] = client.get_database(
            database, write_concern=WriteConcern(w="majority"), read_concern=ReadConcern("majority")
        )
        self._log_id: str | None = None
        self._meta_lock = asyncio.Lock()

    async def ensure_indexes(self) -> None:
        """Creates the outbox and log indexes and the log's id; safe on every start."""
        async with unavailable("ensure_indexes"):
            for name, models in EVENT_INDEXES.items():
                await self._db[name].create_indexes(models)
        await self.log_id()

    # ------------------------------------------------------------------ meta

    async def log_id(self) -> str:
        """This log's id, created once with the log (another replica may win the race)."""
        if self._log_id is not None:
            return self._log_id
        async with self._meta_lock:
            if self._log_id is None:
                self._log_id = str((await self._meta())["log_id"])
            return self._log_id

    async def _meta(self) -> Doc:
        coll = self._db[META]
        async with unavailable("event_meta"):
            doc = await coll.find_one({"_id": _LOG_META_ID})
            if doc is None:
                new = "".join(secrets.choice(LOG_ID_ALPHABET) for _ in range(LOG_ID_LENGTH))
                with contextlib.suppress(DuplicateKeyError):
                    await coll.insert_one({"_id": _LOG_META_ID, "log_id": new, "low_water": 1})
                doc = await coll.find_one({"_id": _LOG_META_ID})
        if doc is None:
            raise PyMongoError("event_meta vanished")  # pragma: no cover - never deleted
        return doc

    async def low_water(self) -> int:
        """The first number retention has not deleted."""
        return int((await self._meta()).get("low_water", 1))

    async def head(self) -> int:
        """The last number in the log (0 when empty)."""
        async with unavailable("event_log head"):
            doc = await self._db[LOG].find_one({}, {"_id": 1}, sort=[("_id", DESCENDING)])
        return 0 if doc is None else int(doc["_id"])

    # ------------------------------------------------------------------ reads

    async def read(self, after: int, limit: int, filters: EventFilter | None = None) -> list[LoggedEvent]:
        """Events numbered above ``after``, in order, at most ``limit`` (see the port)."""
        return await self._read({"$gt": after}, limit, filters)

    async def read_range(
        self, after: int, upto: int, limit: int, filters: EventFilter
    ) -> tuple[list[LoggedEvent], int]:
        """Events numbered in ``(after, upto]`` matching ``filters``, and the position examined."""
        if upto <= after:
            return [], max(after, upto)
        query: Doc = {"_id": {"$gt": after, "$lte": upto}, **_indexed(filters)}
        async with unavailable("event_log read"):
            docs = await self._db[LOG].find(query).sort("_id", ASCENDING).limit(limit).to_list()
        events = [_event(d) for d in docs]
        examined = events[-1].seq if len(docs) == limit else upto
        return [e for e in events if filters.matches(e)], examined

    async def _read(self, ids: Doc, limit: int, filters: EventFilter | None) -> list[LoggedEvent]:
        query: Doc = {"_id": ids}
        if filters is not None:
            query.update(_indexed(filters))
        async with unavailable("event_log read"):
            docs = await self._db[LOG].find(query).sort("_id", ASCENDING).limit(limit).to_list()
        events = [_event(d) for d in docs]
        return events if filters is None else [e for e in events if filters.matches(e)]

    async def position_at(self, time: datetime) -> int:
        """The position before the first event that entered the log at or after ``time``."""
        async with unavailable("event_log position_at"):
            doc = await self._db[LOG].find_one({"sequence_time": {"$gte": _ms(time)}}, {"_id": 1}, sort=_BY_TIME)
        if doc is None:
            return await self.head()
        return int(doc["_id"]) - 1

    # ------------------------------------------------------------- sequencer

    async def sequence_pass(self, max_batch: int = 500) -> int:
        """Moves up to ``max_batch`` outbox events into the log in one transaction.

        Returns how many it numbered; 0 when the outbox was empty or another sequencer's
        pass won (nothing was written; the next pass rereads).
        """
        moved = 0

        async def apply(session: AsyncClientSession) -> None:
            nonlocal moved
            moved = await self._pass(session, max_batch)

        try:
            async with (
                self._client.start_session() as session,
                await session.start_transaction(
                    read_concern=ReadConcern("snapshot"), write_concern=WriteConcern(w="majority")
                ),
            ):
                await apply(session)
        except _Raced:
            return 0
        except OperationFailure as exc:
            if exc.code in _LOST or exc.has_error_label("TransientTransactionError"):
                return 0
            raise
        except PyMongoError as exc:
            if exc.has_error_label("TransientTransactionError"):
                return 0
            raise
        return moved

    async def _pass(self, session: AsyncClientSession, max_batch: int) -> int:
        outbox, event_log = self._db[OUTBOX], self._db[LOG]
        last = await event_log.find_one({}, {"_id": 1, "sequence_time": 1}, sort=[("_id", DESCENDING)], session=session)
        batch = (
            await outbox.find({}, session=session)
            .sort([("commit.id", ASCENDING), ("commit.index", ASCENDING)])
            .limit(max_batch)
            .to_list()
        )
        if not batch:
            return 0
        ids = [d["_id"] for d in batch]
        resources = sorted({d["resource_id"] for d in batch})
        # An earlier version of a resource may sit under a later commit id (commit ids come
        # from different replicas' clocks): it is numbered now too, never after its successor.
        closure = await outbox.find(
            {"resource_id": {"$in": resources}, "_id": {"$nin": ids}}, session=session
        ).to_list()
        ordered = _order(batch + closure)
        seq = 0 if last is None else int(last["_id"])
        floor = None if last is None else last.get("sequence_time")
        now = _ms(datetime.now(UTC))
        stamp = now if floor is None or now > floor else floor
        docs: list[Doc] = []
        for doc in ordered:
            seq += 1
            entry = {k: v for k, v in doc.items() if k != "_id"}
            docs.append({"_id": seq, "event_id": doc["_id"], "sequence_time": stamp, **entry})
        await event_log.insert_many(docs, ordered=True, session=session)
        all_ids = [d["_id"] for d in ordered]
        deleted = await outbox.delete_many({"_id": {"$in": all_ids}}, session=session)
        if deleted.deleted_count != len(all_ids):
            raise _Raced()
        return len(docs)

    # ------------------------------------------------------------- retention

    async def apply_retention(self, now: datetime, keep: timedelta) -> int:
        """Raises ``low_water`` past events older than ``keep``, then deletes them in chunks.

        The newest event is kept whatever its age, so numbering never starts over.
        """
        cutoff = _ms(now - keep)
        async with unavailable("event retention"):
            first_kept = await self._db[LOG].find_one({"sequence_time": {"$gte": cutoff}}, {"_id": 1}, sort=_BY_TIME)
            head = await self.head()
            # The newest event is always kept: the sequencer numbers on from it.
            target = min(int(first_kept["_id"]), head) if first_kept is not None else max(head, 1)
            await self._meta()  # exists before $max
            # Raised before anything is deleted: a reader that misses a number re-reads it.
            await self._db[META].update_one({"_id": _LOG_META_ID}, {"$max": {"low_water": target}})
            low = int((await self._meta())["low_water"])
            deleted = 0
            while True:
                oldest = await self._db[LOG].find_one({"_id": {"$lt": low}}, {"_id": 1}, sort=[("_id", ASCENDING)])
                if oldest is None:
                    return deleted
                start = int(oldest["_id"])
                result = await self._db[LOG].delete_many(
                    {"_id": {"$gte": start, "$lt": min(low, start + _RETENTION_CHUNK)}}
                )
                deleted += result.deleted_count

    # ---------------------------------------------------------- notifications

    async def notifications(self, target: Literal["outbox", "log"]) -> AsyncIterator[None]:
        """Yields on every insert into ``target`` (a doorbell), reopening from now after errors.

        Yields once each time the change stream (re)opens too: what was inserted before
        it opened is not announced, so a reader should look then.
        """
        coll = self._db[OUTBOX if target == "outbox" else LOG]
        while True:
            try:
                async with await coll.watch([{"$match": {"operationType": "insert"}}]) as stream:
                    yield
                    async for _ in stream:
                        yield
            except PyMongoError as exc:
                log.info("event change stream reopened", extra={"target": target, "error": type(exc).__name__})
                await asyncio.sleep(0.5)
                yield


def _indexed(filters: EventFilter) -> Doc:
    """The store-side part of a filter (what an index serves); the rest is checked on read."""
    query: Doc = {}
    if filters.customer_id:
        query["customer_id"] = filters.customer_id
    if filters.resource_id:
        query["resource_id"] = filters.resource_id
    if filters.resource_type:
        query["resource_type"] = filters.resource_type
    patterns = filters.types
    if patterns and "*" not in patterns:
        exact = [p for p in patterns if not p.endswith(".*")]
        wild = [p[:-2] for p in patterns if p.endswith(".*")]
        if not wild:
            query["type"] = {"$in": exact}
        elif not exact:
            query.setdefault("resource_type", {"$in": wild})
    return query


def _event(doc: Doc) -> LoggedEvent:
    kind = RESOURCE_CLASSES.get(doc.get("resource_type", ""))
    resource: Any = None
    if kind is not None and doc.get("snapshot") is not None:
        try:
            resource = decode(kind, doc["snapshot"])
        except (CodecError, KeyError, TypeError, ValueError):
            # A snapshot this code cannot read is still an event (ids, type, cause).
            log.exception("event snapshot unreadable", extra={"seq": doc.get("_id")})
    return LoggedEvent(
        seq=int(doc["_id"]),
        id=str(doc["event_id"]),
        type=str(doc["type"]),
        resource_type=str(doc["resource_type"]),
        resource_id=str(doc["resource_id"]),
        customer_id=str(doc.get("customer_id", "")),
        resource_version=int(doc.get("resource_version", 0)),
        previous_status=str(doc.get("previous_status", "")),
        create_time=_utc(doc["create_time"]),
        sequence_time=_utc(doc["sequence_time"]),
        caller=str(doc.get("caller", "")),
        request_id=str(doc.get("request_id", "")),
        audit_event_ids=tuple(str(i) for i in doc.get("audit_event_ids", ())),
        resource=resource,
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
