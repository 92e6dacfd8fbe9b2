"""The webhook inbox's claims, fencing, retention and the janitor, on the embedded store."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from billing_service.adapters.mongo.inbox import MongoWebhookInbox, inbox_id
from billing_service.adapters.mongo.janitor import MongoJanitor, sweep_expired_idempotency
from billing_service.adapters.mongo.leases import MongoLeases
from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.domain.common import Processor
from billing_service.service_layer.ports import InboxEvent, WebhookStatus

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STRIPE = Processor.STRIPE
_owners = itertools.count()


def token() -> str:
    return f"test-{next(_owners)}"


@pytest.fixture
async def inbox(store: MongoBillingStore) -> AsyncIterator[MongoWebhookInbox]:
    box = MongoWebhookInbox(store.database.client, store.database.name, retention=timedelta(days=35))
    await box.ensure_indexes()
    yield box


async def put(inbox: MongoWebhookInbox, n: int, *, at: datetime = NOW) -> list[str]:
    ids = [f"evt_{uuid.uuid4().hex[:16]}" for _ in range(n)]
    for event_id in ids:
        assert await inbox.insert(STRIPE, event_id, "payment_intent.succeeded", b"{}", now=at)
    return ids


async def test_redelivery_is_a_no_op_and_the_id_is_derived(inbox: MongoWebhookInbox) -> None:
    seen: list[InboxEvent] = []
    inbox.subscribe(seen.append)
    assert await inbox.insert(STRIPE, "evt_1", "charge.refunded", b"{}", now=NOW)
    assert not await inbox.insert(STRIPE, "evt_1", "charge.refunded", b"{}", now=NOW)
    assert not await inbox.insert(STRIPE, "evt_1", "charge.refunded", b"{}", now=NOW)
    assert [e.event_id for e in seen] == ["evt_1"]  # told once, about the stored event
    doc = await inbox.collection.find_one({"event_id": "evt_1"})
    assert doc is not None and doc["_id"] == inbox_id(STRIPE, "evt_1") == seen[0].id and doc["deliveries"] == 3
    assert inbox_id(STRIPE, "evt_1") != inbox_id(Processor.PAYPAL, "evt_1")


async def test_concurrent_claimers_never_share_an_event(inbox: MongoWebhookInbox) -> None:
    ids = await put(inbox, 60)
    stored = [e for e in [await inbox.get(STRIPE, i) for i in ids] if e is not None]
    owners: Counter[str] = Counter()

    async def by_query() -> None:
        while claimed := await inbox.claim_due(token(), now=NOW, lease_seconds=60, limit=4):
            owners.update(e.event_id for e in claimed)
            assert all(e.status is WebhookStatus.PROCESSING and e.attempts == 1 for e in claimed)

    async def by_id(chunk: list[InboxEvent]) -> None:
        claimed = await inbox.claim_stored(token(), chunk, now=NOW, lease_seconds=60)
        owners.update(e.event_id for e in claimed)

    # Six query claimers and the "receiving replica" claiming what it stored, all at once.
    await asyncio.gather(*(by_query() for _ in range(6)), *(by_id(stored[n : n + 5]) for n in range(0, 60, 5)))
    assert set(owners) == set(ids)
    assert set(owners.values()) == {1}
    docs = await inbox.collection.find({}).to_list()
    assert {d["attempts"] for d in docs} == {1}
    assert len({d["lease_owner"] for d in docs}) > 1


async def test_claim_stored_takes_only_untouched_events(inbox: MongoWebhookInbox) -> None:
    ids = await put(inbox, 3)
    stored = [e for e in [await inbox.get(STRIPE, i) for i in ids] if e is not None]
    first = await inbox.claim_due(token(), now=NOW, lease_seconds=60, limit=1)
    assert [e.event_id for e in first] == [ids[0]]  # oldest first (all equal here: any one)
    mine = token()
    won = await inbox.claim_stored(mine, stored, now=NOW, lease_seconds=60)
    assert {e.event_id for e in won} == set(ids) - {first[0].event_id}
    assert all(e.lease_owner == mine and e.attempts == 1 for e in won)
    assert await inbox.claim_stored(token(), stored, now=NOW, lease_seconds=60) == []


async def test_a_lapsed_lease_is_taken_over_and_the_old_owner_is_fenced(inbox: MongoWebhookInbox) -> None:
    [event_id] = await put(inbox, 1)
    first, second = token(), token()
    [claimed] = await inbox.claim_due(first, now=NOW, lease_seconds=30, limit=5)
    assert await inbox.claim_due(second, now=NOW + timedelta(seconds=29), lease_seconds=30, limit=5) == []
    assert await inbox.extend(claimed.id, first, until=NOW + timedelta(seconds=60))
    assert await inbox.claim_due(second, now=NOW + timedelta(seconds=59), lease_seconds=30, limit=5) == []
    [taken] = await inbox.claim_due(second, now=NOW + timedelta(seconds=61), lease_seconds=30, limit=5)
    assert (taken.event_id, taken.attempts, taken.lease_owner) == (event_id, 2, second)
    # The first worker wakes up: none of its writes land.
    assert not await inbox.extend(claimed.id, first, until=NOW + timedelta(seconds=200))
    assert not await inbox.complete(claimed.id, first, WebhookStatus.PROCESSED, now=NOW)
    await inbox.fail(claimed.id, first, error="X", retry_at=None, now=NOW)
    doc = await inbox.collection.find_one({"_id": claimed.id})
    assert doc is not None and (doc["status"], doc["lease_owner"]) == ("processing", second)
    assert await inbox.complete(taken.id, second, WebhookStatus.PROCESSED, now=NOW + timedelta(seconds=62))


async def test_retries_become_due_only_at_their_time(inbox: MongoWebhookInbox) -> None:
    [event_id] = await put(inbox, 1)
    owner = token()
    [claimed] = await inbox.claim_due(owner, now=NOW, lease_seconds=30, limit=1)
    status = await inbox.fail(
        claimed.id, owner, error="PROCESSOR_UNAVAILABLE", retry_at=NOW + timedelta(seconds=10), now=NOW
    )
    assert status is WebhookStatus.PENDING
    assert await inbox.claim_due(token(), now=NOW + timedelta(seconds=9), lease_seconds=30, limit=1) == []
    [again] = await inbox.claim_due(token(), now=NOW + timedelta(seconds=10), lease_seconds=30, limit=1)
    assert (again.event_id, again.attempts, again.last_error) == (event_id, 2, "PROCESSOR_UNAVAILABLE")
    # Not "as stored" any more: a late claim by id does not take it.
    assert await inbox.claim_stored(token(), [claimed], now=NOW + timedelta(seconds=11), lease_seconds=30) == []


async def test_finished_events_carry_their_purge_time_and_replay_clears_it(inbox: MongoWebhookInbox) -> None:
    ids = await put(inbox, 4)
    owner = token()
    claimed = await inbox.claim_due(owner, now=NOW, lease_seconds=60, limit=4)
    outcomes = [WebhookStatus.PROCESSED, WebhookStatus.IGNORED, WebhookStatus.ORPHAN]
    for event, outcome in zip(claimed, outcomes, strict=False):
        assert await inbox.complete(event.id, owner, outcome, now=NOW)
    await inbox.fail(claimed[3].id, owner, error="BUG", retry_at=None, now=NOW)
    docs = {d["event_id"]: d for d in await inbox.collection.find({}).to_list()}
    purge = {d["status"]: d.get("purge_at") for d in docs.values()}
    assert purge == {
        "processed": NOW + timedelta(days=35), "ignored": NOW + timedelta(days=35),
        "orphan": NOW + timedelta(days=35), "dead": None,
    }  # fmt: skip
    processed = next(e for e, d in docs.items() if d["status"] == "processed")
    assert await inbox.replay(None, processed, now=NOW)
    doc = await inbox.collection.find_one({"event_id": processed})
    assert doc is not None and doc["status"] == "pending" and "purge_at" not in doc
    assert set(ids) == set(docs)


async def test_stats_count_waiting_and_dead_events(inbox: MongoWebhookInbox) -> None:
    await put(inbox, 2, at=NOW - timedelta(seconds=30))
    await put(inbox, 2, at=NOW - timedelta(seconds=5))
    owner = token()
    first = await inbox.claim_due(owner, now=NOW, lease_seconds=60, limit=2)
    await inbox.complete(first[0].id, owner, WebhookStatus.PROCESSED, now=NOW)
    await inbox.fail(first[1].id, owner, error="BUG", retry_at=None, now=NOW)
    await inbox.claim_due(owner, now=NOW, lease_seconds=60, limit=1)
    stats = await inbox.stats(now=NOW)
    assert (stats.depth, stats.dead, stats.oldest_pending_seconds) == (2, 1, 5.0)


async def test_purge_removes_only_what_its_retention_let_go(inbox: MongoWebhookInbox) -> None:
    ids = await put(inbox, 7)
    owner = token()
    for n, event in enumerate(await inbox.claim_due(owner, now=NOW, lease_seconds=60, limit=7)):
        await inbox.complete(event.id, owner, WebhookStatus.PROCESSED, now=NOW + timedelta(days=n))
    later = NOW + timedelta(days=35 + 3)  # the first four (finished on days 0..3) are due
    assert await inbox.purge_finished(now=later, batch=2) == 4
    assert await inbox.purge_finished(now=later, batch=2) == 0
    left = {d["event_id"] for d in await inbox.collection.find({}).to_list()}
    assert len(left) == 3 and left < set(ids)


async def test_janitor_sweeps_once_per_lease_and_only_expired_documents(
    inbox: MongoWebhookInbox, store: MongoBillingStore
) -> None:
    db = store.database
    await db["idempotency"].insert_many([
        {"_id": f"old{n}", "expires_at": NOW - timedelta(minutes=n + 1)} for n in range(5)
    ] + [{"_id": "fresh", "expires_at": NOW + timedelta(hours=1)}])  # fmt: skip
    await db["fences"].insert_many([
        {"_id": "fence-old", "owner": "x", "expires_at": NOW - timedelta(days=1)},
        {"_id": "fence-fresh", "owner": "y", "expires_at": NOW + timedelta(days=6)},
    ])  # fmt: skip
    await db["leases"].insert_many([
        {"_id": "gone", "owner": "a", "until": NOW - timedelta(days=2)},
        {"_id": "recent", "owner": "b", "until": NOW - timedelta(hours=1)},
        # The reconciler's cursors live with its lease: kept however long it was idle.
        {"_id": "stateful", "owner": "c", "until": NOW - timedelta(days=9), "state": {"cursor": "x"}},
    ])  # fmt: skip
    [event_id] = await put(inbox, 1, at=NOW - timedelta(days=40))
    owner = token()
    [event] = await inbox.claim_due(owner, now=NOW - timedelta(days=40), lease_seconds=60, limit=1)
    await inbox.complete(event.id, owner, WebhookStatus.PROCESSED, now=NOW - timedelta(days=40))

    janitor = MongoJanitor(db.client, db.name, inbox, batch=2)
    await janitor.ensure_indexes()
    report = await janitor.sweep_with_lease(owner="replica-1", now=NOW, lease_seconds=60)
    assert (report.webhook_events, report.idempotency_records, report.leases, report.skipped) == (1, 6, 1, False)
    assert await janitor.sweep_with_lease(owner="replica-2", now=NOW, lease_seconds=60) == type(report)(skipped=True)
    left = {d["_id"] for d in await db["idempotency"].find({}).to_list()}
    assert left == {"fresh"}
    assert {d["_id"] for d in await db["fences"].find({}).to_list()} == {"fence-fresh"}
    assert {d["_id"] for d in await db["leases"].find({}).to_list()} == {"recent", "stateful", "janitor"}
    assert await inbox.get(STRIPE, event_id) is None
    assert await sweep_expired_idempotency(db.client, db.name, now=NOW) == 0
    # Its own lease lapses like any other; the next replica sweeps.
    assert await MongoLeases(db.client, db.name).acquire(
        "janitor", "replica-2", now=NOW + timedelta(minutes=2), ttl_seconds=60
    )
