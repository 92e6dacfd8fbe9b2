"""``MongoFakeState``: the fake processor's own database, next to the service's on one server.

It plays the processor's storage, so it is a separate database (``<database>_fake_processor``)
that nothing of ours reads: a ``state`` document with the version and the id counters, and
one ``rows`` document per record or idempotency key. A save is one transaction: the
version moves from the expected one to the next (otherwise nothing is written) and the
changed rows are upserted.
"""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient, ReplaceOne
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from billing_service.adapters.processors._fake_state import FakeSnapshot, FakeStateConflict, Row
from billing_service.domain.errors import ProcessorError

_STATE_ID = "state"


def _unavailable(exc: PyMongoError) -> ProcessorError:
    # The fake processor is as available as its storage, and says so as a processor would.
    return ProcessorError(
        f"the fake processor's storage failed: {type(exc).__name__}", reason="PROCESSOR_UNAVAILABLE", retryable=True
    )


class MongoFakeState:
    """Implements the fake processor's ``FakeStateStore`` on MongoDB.

    Args:
        client: A client created with ``tz_aware=True`` (the service's own).
        database: The fake's database name.
    """

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        self._client = client
        db = client.get_database(
            database, write_concern=WriteConcern(w="majority"), read_concern=ReadConcern("majority")
        )
        self._state = db["state"]
        self._rows = db["rows"]

    async def version(self) -> int:
        """The stored state's version; 0 before the first save."""
        try:
            doc = await self._state.find_one({"_id": _STATE_ID}, {"version": 1})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return 0 if doc is None else int(doc["version"])

    async def load(self) -> FakeSnapshot:
        """Everything stored, read in one snapshot transaction."""
        try:
            async with self._client.start_session() as session:
                await session.start_transaction(read_concern=ReadConcern("snapshot"))
                state = await self._state.find_one({"_id": _STATE_ID}, session=session)
                rows = await self._rows.find({}, session=session).to_list()
                await session.commit_transaction()
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        if state is None:
            return FakeSnapshot(0, {}, [])
        return FakeSnapshot(
            int(state["version"]),
            {k: int(v) for k, v in state.get("counters", {}).items()},
            [(r["table"], r["key"], r["doc"]) for r in rows],
        )

    async def save(self, expected_version: int, counters: dict[str, int], rows: list[Row]) -> int:
        """Writes counters and rows if nobody saved since ``expected_version`` (see the port)."""
        new_version = expected_version + 1
        try:
            async with self._client.start_session() as session:
                await session.start_transaction(
                    read_concern=ReadConcern("snapshot"), write_concern=WriteConcern(w="majority")
                )
                try:
                    if expected_version <= 0:
                        await self._state.insert_one(
                            {"_id": _STATE_ID, "version": new_version, "counters": counters}, session=session
                        )
                    else:
                        moved = await self._state.update_one(
                            {"_id": _STATE_ID, "version": expected_version},
                            {"$set": {"version": new_version, "counters": counters}},
                            session=session,
                        )
                        if moved.matched_count == 0:
                            raise FakeStateConflict
                    if rows:
                        await self._rows.bulk_write(
                            [
                                ReplaceOne(
                                    {"_id": f"{table}:{key}"},
                                    {"_id": f"{table}:{key}", "table": table, "key": key, "doc": doc},
                                    upsert=True,
                                )
                                for table, key, doc in rows
                            ],
                            session=session,
                        )
                    await session.commit_transaction()
                except BaseException:
                    if session.in_transaction:
                        await session.abort_transaction()
                    raise
        except DuplicateKeyError:
            raise FakeStateConflict from None
        except PyMongoError as exc:
            if exc.has_error_label("TransientTransactionError"):
                raise FakeStateConflict from None  # a write conflict: reload and redo
            raise _unavailable(exc) from exc
        return new_version
