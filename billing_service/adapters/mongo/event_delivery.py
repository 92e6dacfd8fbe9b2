"""Push delivery's collections: ``event_endpoints``, ``event_deliveries``, ``event_replays``.

- An endpoint and the audit event of its change are written in one transaction; delivery
  health (failure count, backoff) is kept with ``$set``/``$inc``/``$max`` on the side, so
  it never conflicts with, nor is overwritten by, an API change (those ``$set`` only the
  fields the API manages, checked against ``version``).
- Deliveries are claimed and finished with conditional ``update_one`` by ``_id`` (no
  ``findAndModify``, which is slow on SecantusDB); due work is one indexed ``find`` on
  (``state``, ``next_attempt_at``).
- The fan-out's position lives in ``event_meta`` under its own ``_id``.
- Secrets are never stored: endpoints keep ids and lifetimes only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from bson import Binary
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from billing_service.adapters.mongo.budget import unavailable
from billing_service.adapters.mongo.codecs import decode, encode
from billing_service.domain.common import AuditEvent
from billing_service.domain.push import DeliveryState, EventDelivery, EventEndpoint, endpoint_backoff
from billing_service.service_layer.ports import Between, Page
from billing_service.service_layer.push_ports import Replay

__all__ = [
    "DELIVERIES",
    "ENDPOINTS",
    "REPLAYS",
    "MongoEventDeliveries",
    "MongoEventEndpoints",
    "StaticSecretKeys",
    "StoredSecretKeys",
    "ensure_push_indexes",
]

log = logging.getLogger(__name__)

Doc = dict[str, Any]

ENDPOINTS: Final = "event_endpoints"
DELIVERIES: Final = "event_deliveries"
REPLAYS: Final = "event_replays"
_EVENT_META: Final = "event_meta"
_FANOUT_ID: Final = "push_fanout"
_AUDIT: Final = "audit_events"
_META: Final = "meta"
_LEASES: Final = "leases"
_KEY_ID: Final = "events_secret_key"
_DUPLICATE_KEY: Final = 11000
_REPLAY_TTL: Final = timedelta(days=30)
# The fields UpdateEventEndpoint and RotateEventEndpointSecret manage (health is not one).
_API_FIELDS: Final = ("url", "event_types", "description", "disabled", "metadata", "secrets", "updated_at")

_INDEXES: Final[Mapping[str, list[IndexModel]]] = {
    DELIVERIES: [
        # Due work: pending by next_attempt_at.
        IndexModel([("state", ASCENDING), ("next_attempt_at", ASCENDING)], name="state_next_attempt_at"),
        # An endpoint's deliveries by state and event number (recovery, replays).
        IndexModel([("endpoint_id", ASCENDING), ("state", ASCENDING), ("seq", ASCENDING)], name="endpoint_state_seq"),
        # ListEventDeliveries: newest first.
        IndexModel(
            [("endpoint_id", ASCENDING), ("create_time", DESCENDING), ("_id", DESCENDING)], name="endpoint_create_time"
        ),
        IndexModel([("expire_at", ASCENDING)], name="expire_at_ttl", expireAfterSeconds=0),
    ],
    REPLAYS: [
        IndexModel([("done", ASCENDING), ("created_at", ASCENDING)], name="done_created_at"),
        IndexModel([("expire_at", ASCENDING)], name="expire_at_ttl", expireAfterSeconds=0),
    ],
}


def _database(client: AsyncMongoClient[Doc], database: str) -> AsyncDatabase[Doc]:
    return client.get_database(database, write_concern=WriteConcern(w="majority"), read_concern=ReadConcern("majority"))


async def ensure_push_indexes(client: AsyncMongoClient[Doc], database: str) -> None:
    """Creates the indexes of push delivery's collections; safe on every start."""
    db = _database(client, database)
    async with unavailable("push ensure_indexes"):
        for name, models in _INDEXES.items():
            await db[name].create_indexes(models)


class _Refused(Exception):
    """Internal: a conditional write inside a transaction matched nothing; aborts it."""


def _between(window: Between) -> Doc:
    bounds: Doc = {}
    if window.lower is not None:
        bounds["$gte" if window.lower_inclusive else "$gt"] = window.lower
    if window.upper is not None:
        bounds["$lte" if window.upper_inclusive else "$lt"] = window.upper
    return bounds


class MongoEventEndpoints:
    """The ``EventEndpoints`` port on ``event_endpoints`` (audit events in ``audit_events``).

    Args:
        client: The store's client (``tz_aware=True``).
        database: The store's database name.
    """

    def __init__(self, client: AsyncMongoClient[Doc], database: str) -> None:
        self._client = client
        self._db = _database(client, database)
        self._coll = self._db[ENDPOINTS]

    async def _transaction(self, apply: Callable[[AsyncClientSession], Awaitable[None]]) -> bool:
        """Runs ``apply`` in a transaction (retried on transient errors); False if it refused."""
        async with self._client.start_session() as session:
            try:
                await session.with_transaction(
                    apply, read_concern=ReadConcern("snapshot"), write_concern=WriteConcern(w="majority")
                )
            except _Refused:
                return False
        return True

    async def _audit(self, session: AsyncClientSession, audit: AuditEvent) -> None:
        await self._db[_AUDIT].insert_one(encode(audit), session=session)

    async def insert(self, endpoint: EventEndpoint, audit: AuditEvent) -> bool:
        """Creates the endpoint with its audit event; False when its id exists."""
        doc = encode(endpoint)

        async def apply(session: AsyncClientSession) -> None:
            try:
                await self._coll.insert_one(doc, session=session)
            except DuplicateKeyError:
                raise _Refused from None
            await self._audit(session, audit)

        async with unavailable("endpoint insert"):
            return await self._transaction(apply)

    async def get(self, endpoint_id: str) -> EventEndpoint | None:
        """One endpoint by id."""
        async with unavailable("endpoint get"):
            doc = await self._coll.find_one({"_id": endpoint_id})
        return None if doc is None else decode(EventEndpoint, doc)

    async def get_many(self, endpoint_ids: Sequence[str]) -> dict[str, EventEndpoint]:
        """The endpoints that exist among ``endpoint_ids``."""
        async with unavailable("endpoint get_many"):
            docs = await self._coll.find({"_id": {"$in": list(endpoint_ids)}}).to_list()
        return {d["_id"]: decode(EventEndpoint, d) for d in docs}

    async def replace(self, endpoint: EventEndpoint, audit: AuditEvent) -> bool:
        """Writes the API-managed fields if the version still matches, with the audit event."""
        doc = encode(endpoint)
        fields = {name: doc[name] for name in _API_FIELDS}

        async def apply(session: AsyncClientSession) -> None:
            result = await self._coll.update_one(
                {"_id": endpoint.id, "version": endpoint.version},
                {"$set": {**fields, "version": endpoint.version + 1}},
                session=session,
            )
            if result.matched_count == 0:
                raise _Refused
            await self._audit(session, audit)

        async with unavailable("endpoint replace"):
            return await self._transaction(apply)

    async def delete(self, endpoint_id: str, audit: AuditEvent) -> bool:
        """Deletes the endpoint (with its audit event), then its waiting deliveries and replays."""

        async def apply(session: AsyncClientSession) -> None:
            result = await self._coll.delete_one({"_id": endpoint_id}, session=session)
            if result.deleted_count == 0:
                raise _Refused
            await self._audit(session, audit)

        async with unavailable("endpoint delete"):
            if not await self._transaction(apply):
                return False
            # Outside the transaction (a backlog can be large): a delivery queued meanwhile
            # is dropped by the worker that finds its endpoint gone.
            waiting = [DeliveryState.PENDING.value, DeliveryState.DEAD_LETTERED.value]
            await self._db[DELIVERIES].delete_many({"endpoint_id": endpoint_id, "state": {"$in": waiting}})
            await self._db[REPLAYS].delete_many({"endpoint_id": endpoint_id})
        return True

    async def list_page(self, filters: Mapping[str, Any], *, limit: int, after: str | None) -> Page[EventEndpoint]:
        """Endpoints newest first (ids are time-ordered); the cursor is the last id."""
        query: Doc = {}
        window = filters.get("created_at")
        if isinstance(window, Between) and _between(window):
            query["created_at"] = _between(window)
        if after:
            query["_id"] = {"$lt": after}
        async with unavailable("endpoint list"):
            docs = await self._coll.find(query).sort("_id", DESCENDING).limit(limit + 1).to_list()
        items = [decode(EventEndpoint, d) for d in docs[:limit]]
        return Page(items=items, next_cursor=items[-1].id if len(docs) > limit else "")

    async def list_enabled(self) -> list[EventEndpoint]:
        """Every endpoint that is not disabled."""
        async with unavailable("endpoint list_enabled"):
            docs = await self._coll.find({"disabled": False}).to_list()
        return [decode(EventEndpoint, d) for d in docs]

    async def record_success(self, endpoint_id: str, *, now: datetime, was_failing: bool) -> None:
        """Clears the failure count and backoff, and notes the success time."""
        del was_failing  # the same write either way
        async with unavailable("endpoint health"):
            await self._coll.update_one(
                {"_id": endpoint_id},
                {"$set": {"consecutive_failures": 0, "last_success_at": now, "backoff_until": None}},
            )

    async def probe_now(self, endpoint_id: str) -> None:
        """Clears the backoff's wait (the failure count stays: still one attempt at a time)."""
        async with unavailable("endpoint health"):
            await self._coll.update_one({"_id": endpoint_id}, {"$set": {"backoff_until": None}})

    async def record_failure(self, endpoint_id: str, *, now: datetime) -> int:
        """Counts a failed attempt and moves the backoff later (never earlier) once it applies.

        The count is read back after the ``$inc`` (concurrent failures each see their own
        total or a later one), so the backoff follows the failures that really happened.
        """
        async with unavailable("endpoint health"):
            await self._coll.update_one(
                {"_id": endpoint_id}, {"$inc": {"consecutive_failures": 1}, "$set": {"last_failure_at": now}}
            )
            doc = await self._coll.find_one({"_id": endpoint_id}, {"consecutive_failures": 1})
            failures = 0 if doc is None else int(doc.get("consecutive_failures", 0))
            backoff = endpoint_backoff(failures)
            if backoff is not None:
                await self._coll.update_one({"_id": endpoint_id}, {"$max": {"backoff_until": now + backoff}})
        return failures


class MongoEventDeliveries:
    """The ``EventDeliveries`` port on ``event_deliveries``, ``event_replays`` and ``event_meta``.

    Args:
        client: The store's client (``tz_aware=True``).
        database: The store's database name.
    """

    def __init__(self, client: AsyncMongoClient[Doc], database: str) -> None:
        self._db = _database(client, database)
        self._coll = self._db[DELIVERIES]

    async def insert_many(self, deliveries: Sequence[EventDelivery]) -> int:
        """Inserts deliveries; those whose (deterministic) id exists are skipped."""
        if not deliveries:
            return 0
        async with unavailable("deliveries insert"):
            try:
                result = await self._coll.insert_many([encode(d) for d in deliveries], ordered=False)
                return len(result.inserted_ids)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                    raise
                return int(exc.details.get("nInserted", 0))

    async def due(self, *, now: datetime, limit: int, skip_endpoints: Sequence[str] = ()) -> list[EventDelivery]:
        """Pending deliveries with ``next_attempt_at <= now``, the longest waiting first."""
        query: Doc = {"state": DeliveryState.PENDING.value, "next_attempt_at": {"$lte": now}}
        if skip_endpoints:
            query["endpoint_id"] = {"$nin": list(skip_endpoints)}
        async with unavailable("deliveries due"):
            docs = await self._coll.find(query).sort("next_attempt_at", ASCENDING).limit(limit).to_list()
        return [decode(EventDelivery, d) for d in docs]

    async def claim(self, delivery: EventDelivery, owner: str, *, now: datetime, until: datetime) -> bool:
        """Claims the delivery if it is unchanged since read (its ``rev``); ``next_attempt_at`` is the lease."""
        async with unavailable("delivery claim"):
            result = await self._coll.update_one(
                {"_id": delivery.id, "state": DeliveryState.PENDING.value, "rev": delivery.rev},
                {"$set": {"next_attempt_at": until, "lease_owner": owner, "last_attempt_at": now,
                          "update_time": now},
                 "$inc": {"attempt_count": 1, "rev": 1}},
            )  # fmt: skip
        return result.modified_count == 1

    async def finish(
        self,
        delivery_id: str,
        owner: str,
        *,
        state: DeliveryState,
        now: datetime,
        next_attempt_at: datetime | None,
        step: int,
        status_code: int,
        error: str,
        expire_at: datetime | None,
    ) -> bool:
        """Writes an attempt's outcome if ``owner`` still holds the claim."""
        async with unavailable("delivery finish"):
            result = await self._coll.update_one(
                {"_id": delivery_id, "state": DeliveryState.PENDING.value, "lease_owner": owner},
                {"$set": {
                    "state": state.value, "next_attempt_at": next_attempt_at, "step": step, "lease_owner": "",
                    "last_status_code": status_code, "last_error": error, "update_time": now, "expire_at": expire_at,
                }, "$inc": {"rev": 1}},
            )  # fmt: skip
        return result.modified_count == 1

    async def postpone(
        self,
        delivery: EventDelivery,
        *,
        now: datetime,
        until: datetime | None,
        step: int,
        error: str = "",
        expire_at: datetime | None = None,
    ) -> bool:
        """Moves a due, unclaimed delivery to ``until`` without an attempt; None dead-letters it."""
        update: Doc = {"next_attempt_at": until, "step": step, "lease_owner": "", "update_time": now}
        if until is None:
            update |= {"state": DeliveryState.DEAD_LETTERED.value, "last_error": error, "expire_at": expire_at}
        async with unavailable("delivery postpone"):
            result = await self._coll.update_one(
                {"_id": delivery.id, "state": DeliveryState.PENDING.value, "rev": delivery.rev},
                {"$set": update, "$inc": {"rev": 1}},
            )
        return result.modified_count == 1

    async def drop(self, delivery: EventDelivery) -> None:
        """Deletes a pending delivery whose endpoint is gone."""
        async with unavailable("delivery drop"):
            await self._coll.delete_one({"_id": delivery.id, "state": DeliveryState.PENDING.value})

    async def make_due(self, endpoint_id: str, *, now: datetime) -> int:
        """Every unclaimed pending delivery of the endpoint becomes due now (claimed ones are left alone).

        Due ones are rewritten too: their new ``rev`` makes a worker's concurrent move to a
        later step (decided while the endpoint still looked down) miss, so none stays behind.
        """
        async with unavailable("deliveries make_due"):
            result = await self._coll.update_many(
                {"endpoint_id": endpoint_id, "state": DeliveryState.PENDING.value, "lease_owner": ""},
                {"$set": {"next_attempt_at": now, "update_time": now}, "$inc": {"rev": 1}},
            )  # fmt: skip
        return result.modified_count

    async def requeue_dead(self, endpoint_id: str, *, after: int, until: int, now: datetime) -> int:
        """Dead letters of events in (after, until] become pending with a new 3-day window."""
        async with unavailable("deliveries requeue"):
            result = await self._coll.update_many(
                {"endpoint_id": endpoint_id, "state": DeliveryState.DEAD_LETTERED.value,
                 "seq": {"$gt": after, "$lte": until}},
                {"$set": {"state": DeliveryState.PENDING.value, "next_attempt_at": now, "window_start": now,
                          "step": 0, "lease_owner": "", "update_time": now, "expire_at": None},
                 "$inc": {"rev": 1}},
            )  # fmt: skip
        return result.modified_count

    async def list_page(
        self, endpoint_id: str, filters: Mapping[str, Any], *, limit: int, after: str | None
    ) -> Page[EventDelivery]:
        """Newest first by (create_time, _id); the cursor is ``<create_time ms>:<id>``."""
        query: Doc = {"endpoint_id": endpoint_id}
        if "state" in filters:
            query["state"] = str(filters["state"])
        if "event_id" in filters:
            query["event_id"] = str(filters["event_id"])
        window = filters.get("create_time")
        if isinstance(window, Between) and _between(window):
            query["create_time"] = _between(window)
        if after:
            millis, _, last_id = after.partition(":")
            at = datetime.fromtimestamp(int(millis) / 1000, tz=UTC)
            query["$or"] = [{"create_time": {"$lt": at}}, {"create_time": at, "_id": {"$lt": last_id}}]
        async with unavailable("deliveries list"):
            cursor = self._coll.find(query).sort([("create_time", DESCENDING), ("_id", DESCENDING)]).limit(limit + 1)
            docs = await cursor.to_list()
        items = [decode(EventDelivery, d) for d in docs[:limit]]
        next_cursor = ""
        if len(docs) > limit:
            last = items[-1]
            next_cursor = f"{int(last.create_time.timestamp() * 1000)}:{last.id}"
        return Page(items=items, next_cursor=next_cursor)

    async def fanout_position(self) -> int | None:
        """The last event number the fan-out handled; None before its first pass."""
        async with unavailable("fanout position"):
            doc = await self._db[_EVENT_META].find_one({"_id": _FANOUT_ID})
        return None if doc is None else int(doc["position"])

    async def save_fanout_position(self, old: int | None, new: int) -> bool:
        """Moves the position from ``old`` (None: creates it) to ``new``."""
        coll = self._db[_EVENT_META]
        async with unavailable("fanout position"):
            if old is None:
                try:
                    await coll.insert_one({"_id": _FANOUT_ID, "position": new})
                except DuplicateKeyError:
                    return False
                return True
            result = await coll.update_one({"_id": _FANOUT_ID, "position": old}, {"$set": {"position": new}})
        return result.matched_count == 1

    async def add_replay(self, replay: Replay) -> bool:
        """Stores a replay under its id; False when it exists (a retried request)."""
        doc = {
            "_id": replay.id, "endpoint_id": replay.endpoint_id, "after": replay.after, "until": replay.until,
            "position": replay.position, "created_at": replay.created_at, "done": replay.done,
            "expire_at": replay.created_at + _REPLAY_TTL,
        }  # fmt: skip
        async with unavailable("replay insert"):
            try:
                await self._db[REPLAYS].insert_one(doc)
            except DuplicateKeyError:
                return False
        return True

    async def open_replays(self, limit: int) -> list[Replay]:
        """Replays not done yet, oldest first."""
        async with unavailable("replays"):
            docs = await self._db[REPLAYS].find({"done": False}).sort("created_at", ASCENDING).limit(limit).to_list()
        return [
            Replay(id=d["_id"], endpoint_id=d["endpoint_id"], after=int(d["after"]), until=int(d["until"]),
                   position=int(d["position"]), created_at=d["created_at"], done=bool(d["done"]))
            for d in docs
        ]  # fmt: skip

    async def advance_replay(self, replay_id: str, old: int, new: int, *, done: bool) -> bool:
        """Moves a replay's position (conditional on ``old``)."""
        async with unavailable("replay advance"):
            result = await self._db[REPLAYS].update_one(
                {"_id": replay_id, "position": old}, {"$set": {"position": new, "done": done}}
            )
        return result.matched_count == 1


class StaticSecretKeys:
    """The key from ``BILLING_EVENTS_SECRET_KEY``."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the events secret key must be at least 32 bytes")
        self._key = key

    async def key(self) -> bytes:
        """The configured key."""
        return self._key

    def __repr__(self) -> str:
        return "StaticSecretKeys(****)"


class StoredSecretKeys:
    """Outside live mode without ``BILLING_EVENTS_SECRET_KEY``: a random key kept in the store.

    Created once (the first replica to need it wins the insert) and logged as a warning:
    anyone who can read the database can then derive the endpoints' secrets.
    """

    def __init__(self, client: AsyncMongoClient[Doc], database: str) -> None:
        self._coll = _database(client, database)[_META]
        self._key: bytes | None = None

    async def key(self) -> bytes:
        """The stored key, created on first use."""
        if self._key is not None:
            return self._key
        async with unavailable("events secret key"):
            doc = await self._coll.find_one({"_id": _KEY_ID})
            if doc is None:
                log.warning(
                    "BILLING_EVENTS_SECRET_KEY is not set: push endpoint secrets are derived from a key kept in "
                    "the store (development only; live mode refuses to start without the setting)"
                )
                with contextlib.suppress(DuplicateKeyError):
                    await self._coll.insert_one({"_id": _KEY_ID, "value": Binary(os.urandom(32))})
                doc = await self._coll.find_one({"_id": _KEY_ID})
        if doc is None:
            raise RuntimeError("the stored events secret key vanished")
        self._key = bytes(doc["value"])
        return self._key

    def __repr__(self) -> str:
        return "StoredSecretKeys(****)"
