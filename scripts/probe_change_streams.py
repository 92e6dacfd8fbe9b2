#!/usr/bin/env python3
"""Checks, against the embedded store, every store primitive the billing-events design uses.

Usage:
    .venv/bin/python scripts/probe_change_streams.py [--uri mongodb://...]

Without ``--uri`` it starts the embedded SecantusDB (in memory, with a small oplog) and runs
the checks against it; with ``--uri`` it runs them against any MongoDB replica set, so the same
evidence can be gathered on a real ``mongod``. It writes only to a database named
``events_probe``, which it drops at the start and at the end.

What it checks, and why the design in ``docs/EVENTS.md`` ("How it works") depends on it:

1. The outbox gap: a transaction that allocated its id first but commits last is invisible
   until it commits, so a reader that remembers "the largest id seen" skips it.
2. Change streams report inserts of concurrent transactions in commit order (by clusterTime),
   not in id order; a resume token resumes after the event it came from.
3. A change stream can be narrowed with ``$match`` (the doorbell only needs inserts).
4. Resuming from a token older than the oplog window fails with ChangeStreamHistoryLost
   (code 286): the change stream cannot be the replay source for a 30-day retention.
5. The sequencer's move (insert_many into the log + delete_many from the outbox, one
   transaction) is atomic for readers, and two sequencers racing for the same sequence
   numbers cannot both commit.
6. ``$max`` keeps a durable consumer's position monotonic.
7. ``$$CLUSTER_TIME`` (which could stamp a commit-ordered time inside a write) is not
   available, so nothing may rely on it.

Exit status 0 when every check behaved as the design assumes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from billing_service.adapters.mongo.embedded import MEMORY, EmbeddedMongo

Doc = dict[str, Any]
DB = "events_probe"
_failures: list[str] = []


def check(ok: bool, what: str, detail: str = "") -> None:
    """Prints one result line and remembers failures."""
    print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        _failures.append(what)


async def next_change(stream: AsyncChangeStream[Doc], wait_seconds: float = 5.0) -> Doc | None:
    """The stream's next change, polling with try_next for up to ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        change = await stream.try_next()
        if change is not None:
            return change
        await asyncio.sleep(0.005)
    return None


async def gap_and_commit_order(client: AsyncMongoClient[Doc], db: AsyncDatabase[Doc]) -> None:
    """Checks 1 and 2."""
    outbox = db["outbox"]
    stream = await outbox.watch()
    first, second = client.start_session(), client.start_session()
    await first.start_transaction(read_concern=ReadConcern("snapshot"))
    await outbox.insert_one({"_id": "evt_1_allocated_first"}, session=first)
    await second.start_transaction(read_concern=ReadConcern("snapshot"))
    await outbox.insert_one({"_id": "evt_2_allocated_second"}, session=second)
    await second.commit_transaction()
    visible = [d["_id"] async for d in outbox.find({}).sort("_id", ASCENDING)]
    check(
        visible == ["evt_2_allocated_second"],
        "1. the gap: a reader sees the later id before the earlier one commits",
        f"visible={visible}",
    )
    await first.commit_transaction()
    await first.end_session()
    await second.end_session()
    changes = [await next_change(stream), await next_change(stream)]
    order = [c["documentKey"]["_id"] if c else None for c in changes]
    times = [c["clusterTime"] if c else None for c in changes]
    check(
        order == ["evt_2_allocated_second", "evt_1_allocated_first"] and times[0] is not None and times[0] < times[1],
        "2. change stream order is commit order (clusterTime), not id order",
        f"order={order}",
    )
    assert changes[0] is not None
    resumed = await outbox.watch(resume_after=changes[0]["_id"])
    after = await next_change(resumed)
    check(
        after is not None and after["documentKey"]["_id"] == "evt_1_allocated_first",
        "2. resume_after a token continues with the next committed change",
    )
    await resumed.close()
    await stream.close()


async def doorbell_filter(db: AsyncDatabase[Doc]) -> None:
    """Check 3, plus the commit-to-notification latency of a single insert."""
    log = db["log"]
    stream = await log.watch([{"$match": {"operationType": "insert"}}])
    await log.insert_one({"_id": 1})
    await log.update_one({"_id": 1}, {"$set": {"x": 1}})
    await log.insert_one({"_id": 2})
    seen = [await next_change(stream), await next_change(stream)]
    kinds = [(c["operationType"], c["documentKey"]["_id"]) if c else None for c in seen]
    check(kinds == [("insert", 1), ("insert", 2)], "3. $match narrows a change stream to inserts", f"{kinds}")
    latencies = []
    for i in range(3, 53):
        started = time.perf_counter()
        await log.insert_one({"_id": i})
        await next_change(stream)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    print(f"     insert -> change notification: p50 {latencies[25]:.1f} ms, max {latencies[-1]:.1f} ms", flush=True)
    await stream.close()


async def history_lost(client: AsyncMongoClient[Doc], db: AsyncDatabase[Doc], embedded: bool) -> None:
    """Check 4 (needs a server whose oplog can be made to roll over: the embedded one)."""
    if not embedded:
        print("skip 4. history lost: needs the embedded store's pruneOplog command", flush=True)
        return
    coll = db["history"]
    stream = await coll.watch()
    await coll.insert_one({"_id": 0})
    change = await next_change(stream)
    await stream.close()
    assert change is not None
    await coll.insert_many([{"_id": i} for i in range(1, 200)])
    await client.admin.command("secantusAdmin.pruneOplog")
    try:
        late = await coll.watch(resume_after=change["_id"])
        await late.try_next()
        check(False, "4. resuming behind the oplog window fails", "it resumed")
    except OperationFailure as exc:
        check(exc.code == 286, "4. resuming behind the oplog window fails with ChangeStreamHistoryLost", str(exc.code))


async def sequencer_move(client: AsyncMongoClient[Doc], db: AsyncDatabase[Doc]) -> None:
    """Check 5: the move is atomic for readers; racing sequencers cannot both commit."""
    outbox, log = db["seq_outbox"], db["seq_log"]
    await log.create_indexes([IndexModel([("event_id", ASCENDING)], name="event_id_unique", unique=True)])
    await outbox.insert_many([{"_id": f"evt_{i:03d}"} for i in range(100)])

    async def move(first_seq: int, ids: list[str]) -> None:
        async with client.start_session() as session:
            await session.start_transaction(
                read_concern=ReadConcern("snapshot"), write_concern=WriteConcern("majority")
            )
            await log.insert_many(
                [{"_id": first_seq + n, "event_id": event_id} for n, event_id in enumerate(ids)], session=session
            )
            deleted = await outbox.delete_many({"_id": {"$in": ids}}, session=session)
            if deleted.deleted_count != len(ids):
                await session.abort_transaction()
                raise RuntimeError("someone else moved these events")
            await session.commit_transaction()

    torn: list[int] = []

    async def reader() -> None:
        for _ in range(200):
            count = await log.count_documents({})
            if count not in (0, 100):
                torn.append(count)
            await asyncio.sleep(0)

    ids = [f"evt_{i:03d}" for i in range(100)]
    await asyncio.gather(reader(), move(1, ids))
    check(not torn, "5. a moved batch is visible all at once", f"partial counts seen: {torn[:5]}")

    await outbox.insert_many([{"_id": f"evt_{i:03d}"} for i in range(100, 110)])
    more = [f"evt_{i:03d}" for i in range(100, 110)]
    results = await asyncio.gather(move(101, more), move(101, more), return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [type(r).__name__ for r in results if isinstance(r, BaseException)]
    stored = await log.count_documents({"_id": {"$gte": 101}})
    check(
        len(winners) == 1 and stored == 10,
        "5. two sequencers moving the same batch: exactly one commits",
        f"loser raised {losers}, log holds {stored}",
    )
    try:
        await move(101, ["evt_999"])
        check(False, "5. a stale sequencer reusing a sequence number is refused", "accepted")
    except (DuplicateKeyError, OperationFailure, RuntimeError) as exc:
        check(True, "5. a stale sequencer reusing a sequence number is refused", type(exc).__name__)


async def consumer_position(db: AsyncDatabase[Doc]) -> None:
    """Check 6."""
    consumers = db["consumers"]
    await consumers.update_one({"_id": "c"}, {"$max": {"acked_seq": 5}}, upsert=True)
    await consumers.update_one({"_id": "c"}, {"$max": {"acked_seq": 3}})
    doc = await consumers.find_one({"_id": "c"})
    check(doc is not None and doc["acked_seq"] == 5, "6. $max never moves a position backwards")


async def cluster_time(db: AsyncDatabase[Doc]) -> None:
    """Check 7 (informational: either answer is fine, the design does not use it)."""
    try:
        await db["ct"].update_one({"_id": 1}, [{"$set": {"t": "$$CLUSTER_TIME"}}], upsert=True)
        print("info 7. $$CLUSTER_TIME is available here (the design still does not use it)", flush=True)
    except PyMongoError as exc:
        print(f"info 7. $$CLUSTER_TIME is not available: {type(exc).__name__}", flush=True)


async def run(uri: str, embedded: bool) -> None:
    """Runs every check against ``uri``."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(uri, tz_aware=True)
    try:
        await client.drop_database(DB)
        db = client.get_database(DB, write_concern=WriteConcern("majority"), read_concern=ReadConcern("majority"))
        for name in ("outbox", "log", "history", "seq_outbox", "seq_log", "consumers", "ct"):
            await db.create_collection(name)
        steps: list[Callable[[], Awaitable[None]]] = [
            lambda: gap_and_commit_order(client, db),
            lambda: doorbell_filter(db),
            lambda: history_lost(client, db, embedded),
            lambda: sequencer_move(client, db),
            lambda: consumer_position(db),
            lambda: cluster_time(db),
        ]
        for step in steps:
            await step()
        await client.drop_database(DB)
    finally:
        await client.close()


def main() -> int:
    """Parses arguments, starts the embedded store unless ``--uri`` is given, runs the checks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", help="a MongoDB replica set to probe instead of the embedded store")
    args = parser.parse_args()
    if args.uri:
        asyncio.run(run(args.uri, embedded=False))
    else:
        with EmbeddedMongo(MEMORY, extra_args=("--oplog-max-entries", "100")) as server:
            asyncio.run(run(server.uri, embedded=True))
    print(f"{len(_failures)} check(s) failed" if _failures else "every check behaved as the design assumes")
    return 1 if _failures else 0


if __name__ == "__main__":
    sys.exit(main())
