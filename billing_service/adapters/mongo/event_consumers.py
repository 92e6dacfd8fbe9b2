"""``MongoEventConsumers``: durable consumers in ``event_consumers``.

One document per (caller, name), ``_id`` = sha256(caller, name). A stream takes a consumer
over with one upsert that sets its session (newest wins, no waiting for a dead stream);
it renews its claim with an ``update_one`` that matches only while the session is still
its own, so a renewal that matches nothing means another stream took over. Acknowledging
is ``$max`` on the position (``$set`` with ``allow_rewind``). Unused consumers expire by a
TTL index on ``expire_at``. No ``findAndModify`` anywhere (slow on SecantusDB).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.errors import DuplicateKeyError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from billing_service.adapters.mongo.budget import unavailable
from billing_service.service_layer.event_ports import ConsumerState

__all__ = ["CONSUMERS", "CONSUMER_INDEXES", "MongoEventConsumers"]

Doc = dict[str, Any]

CONSUMERS: Final = "event_consumers"
CONSUMER_INDEXES: Final = [IndexModel([("expire_at", ASCENDING)], name="expire_at_ttl", expireAfterSeconds=0)]


def _key(caller: str, name: str) -> str:
    return hashlib.sha256(f"{caller}\x1f{name}".encode()).hexdigest()


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _state(doc: Doc) -> ConsumerState:
    acked = doc.get("acked_seq")
    return ConsumerState(
        caller=str(doc["caller"]),
        name=str(doc["name"]),
        acked_seq=None if acked is None else int(acked),
        ack_time=_utc(doc.get("ack_time")),
        session=str(doc.get("session") or ""),
        lease_until=_utc(doc.get("lease_until")),
        expire_at=_utc(doc["expire_at"]) or datetime.now(UTC),
        create_time=_utc(doc["create_time"]) or datetime.now(UTC),
        update_time=_utc(doc["update_time"]) or datetime.now(UTC),
    )


class MongoEventConsumers:
    """Durable consumers over MongoDB.

    Args:
        client: The store's client (``tz_aware=True``).
        database: Database name.
    """

    def __init__(self, client: AsyncMongoClient[Doc], database: str) -> None:
        self._coll = client.get_database(
            database, write_concern=WriteConcern(w="majority"), read_concern=ReadConcern("majority")
        )[CONSUMERS]

    async def ensure_indexes(self) -> None:
        """Creates the TTL index."""
        async with unavailable("ensure_indexes"):
            await self._coll.create_indexes(CONSUMER_INDEXES)

    async def take_over(
        self, caller: str, name: str, session: str, *, now: datetime, lease: timedelta, keep: timedelta
    ) -> ConsumerState:
        """Makes ``session`` the consumer's stream, creating the consumer if needed."""
        key = _key(caller, name)
        update = {
            "$set": {"session": session, "lease_until": now + lease, "update_time": now, "expire_at": now + keep},
            "$setOnInsert": {"caller": caller, "name": name, "acked_seq": None, "ack_time": None, "create_time": now},
        }
        async with unavailable("event consumer"):
            try:
                await self._coll.update_one({"_id": key}, update, upsert=True)
            except DuplicateKeyError:  # two first takeovers raced: the other inserted it
                await self._coll.update_one({"_id": key}, update)
            doc = await self._coll.find_one({"_id": key})
        assert doc is not None
        return _state(doc)

    async def renew(self, caller: str, name: str, session: str, *, now: datetime, lease: timedelta) -> bool:
        """Extends ``session``'s claim; False once another stream holds the consumer."""
        async with unavailable("event consumer"):
            result = await self._coll.update_one(
                {"_id": _key(caller, name), "session": session},
                {"$set": {"lease_until": now + lease}},
            )
        return result.matched_count == 1

    async def release(self, caller: str, name: str, session: str, *, now: datetime) -> None:
        """Ends ``session``'s claim if it still holds the consumer."""
        async with unavailable("event consumer"):
            await self._coll.update_one(
                {"_id": _key(caller, name), "session": session},
                {"$set": {"session": None, "lease_until": None, "update_time": now}},
            )

    async def ack(
        self, caller: str, name: str, seq: int, *, allow_rewind: bool, now: datetime, keep: timedelta
    ) -> ConsumerState:
        """Moves the position (``$max``, or ``$set`` with ``allow_rewind``); creates the consumer."""
        key = _key(caller, name)
        times = {"ack_time": now, "update_time": now, "expire_at": now + keep}
        insert = {"caller": caller, "name": name, "session": None, "lease_until": None, "create_time": now}
        async with unavailable("event consumer"):
            if allow_rewind:
                update: Doc = {"$set": {"acked_seq": seq, **times}, "$setOnInsert": insert}
                await self._upsert(key, update)
            else:
                # $max on a null field: null sorts below numbers, so the first ack sets it.
                await self._upsert(key, {"$max": {"acked_seq": seq}, "$set": times, "$setOnInsert": insert})
            doc = await self._coll.find_one({"_id": key})
        assert doc is not None
        return _state(doc)

    async def _upsert(self, key: str, update: Doc) -> None:
        try:
            await self._coll.update_one({"_id": key}, update, upsert=True)
        except DuplicateKeyError:
            await self._coll.update_one({"_id": key}, update)

    async def get(self, caller: str, name: str) -> ConsumerState | None:
        """The consumer, or None."""
        async with unavailable("event consumer"):
            doc = await self._coll.find_one({"_id": _key(caller, name)})
        return None if doc is None else _state(doc)
