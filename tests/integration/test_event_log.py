"""The event log adapter against the embedded store: sequencer passes, reads, retention, consumers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from billing_service.adapters.mongo.codecs import encode
from billing_service.adapters.mongo.event_consumers import MongoEventConsumers
from billing_service.adapters.mongo.event_log import LOG, OUTBOX, MongoEventLog, outbox_documents
from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.customers import Customer
from billing_service.domain.event_derivation import ChangedResource, derive_events
from billing_service.domain.ids import new_id
from billing_service.service_layer.event_ports import EventFilter


@pytest.fixture
async def db(mongo_uri: str) -> AsyncIterator[tuple[AsyncMongoClient[dict[str, Any]], str]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    name = f"t_{uuid.uuid4().hex}"
    yield client, name
    await client.drop_database(name)
    await client.close()


def _customer_commit(customer_id: str, version: int, *, action: str = "customer.updated") -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    customer = Customer(
        id=customer_id, email="a@example.com", name="A", description="", metadata={},
        default_processor=Processor.FAKE, created_at=now, updated_at=now,
    )  # fmt: skip
    customer.version = version
    audit = AuditEvent(
        id=new_id("evt"), caller="svc", request_id="r", action=action, resource_type="customer",
        resource_id=customer_id, before_status="active", after_status="active", at=now,
    )  # fmt: skip
    change = ChangedResource("customer", customer_id, version == 1, version, customer_id)
    derived = derive_events([change], [audit], now=now)
    snapshot = encode(customer) | {"version": version}
    return outbox_documents(derived, [snapshot], new_id("cmt"))


async def test_sequence_pass_numbers_densely_and_empties_the_outbox(db: Any) -> None:
    client, name = db
    event_log = MongoEventLog(client, name)
    await event_log.ensure_indexes()
    for i in range(5):
        await client[name][OUTBOX].insert_many(_customer_commit(f"cus_{i}", 1))
    assert await event_log.head() == 0
    assert await event_log.sequence_pass(3) >= 3
    while await event_log.sequence_pass(3):
        pass
    assert await client[name][OUTBOX].count_documents({}) == 0
    events = await event_log.read(0, 100)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert all(e.type == "customer.created" for e in events)
    assert isinstance(events[0].resource, Customer) and events[0].resource.version == 1
    assert await event_log.head() == 5
    times = [e.sequence_time for e in events]
    assert times == sorted(times)
    assert (await event_log.read(2, 2))[0].seq == 3
    only = await event_log.read(0, 100, EventFilter(customer_id="cus_3"))
    assert [e.resource_id for e in only] == ["cus_3"]
    assert await event_log.read_range(0, 2, 100, EventFilter(types=("customer.*",))) == (events[:2], 2)
    assert await event_log.read_range(0, 5, 2, EventFilter()) == (events[:2], 2)
    assert await event_log.read_range(0, 5, 2, EventFilter(types=("payment.*",))) == ([], 5)


async def test_a_resource_s_versions_are_numbered_in_order_across_commit_ids(db: Any) -> None:
    client, name = db
    event_log = MongoEventLog(client, name)
    await event_log.ensure_indexes()
    # Version 2 under a smaller commit id than version 1 (another replica's clock).
    v2 = _customer_commit("cus_x", 2)
    v1 = _customer_commit("cus_x", 1)
    v2[0]["commit"]["id"], v1[0]["commit"]["id"] = "cmt_0", "cmt_1"
    await client[name][OUTBOX].insert_many(v1 + v2)
    # A batch of one still takes the resource's other event along (the closure).
    assert await event_log.sequence_pass(1) == 2
    events = await event_log.read(0, 10)
    assert [e.resource_version for e in events] == [1, 2]


async def test_two_sequencers_racing_never_number_twice(db: Any) -> None:
    client, name = db
    logs = [MongoEventLog(client, name) for _ in range(3)]
    await logs[0].ensure_indexes()
    for i in range(60):
        await client[name][OUTBOX].insert_many(_customer_commit(f"cus_{i:03d}", 1))

    async def drain(event_log: MongoEventLog) -> None:
        for _ in range(200):
            await event_log.sequence_pass(7)
            if await client[name][OUTBOX].count_documents({}) == 0:
                return

    await asyncio.gather(*(drain(x) for x in logs))
    docs = await client[name][LOG].find({}).sort("_id", 1).to_list()
    assert [d["_id"] for d in docs] == list(range(1, 61))
    assert len({d["event_id"] for d in docs}) == 60


async def test_position_at_and_retention(db: Any) -> None:
    client, name = db
    event_log = MongoEventLog(client, name)
    await event_log.ensure_indexes()
    await client[name][OUTBOX].insert_many(_customer_commit("cus_old", 1))
    await event_log.sequence_pass()
    await asyncio.sleep(0.02)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.02)
    await client[name][OUTBOX].insert_many(_customer_commit("cus_new", 1))
    await event_log.sequence_pass()
    assert await event_log.position_at(middle) == 1
    assert await event_log.position_at(middle - timedelta(days=1)) == 0
    assert await event_log.position_at(middle + timedelta(days=1)) == 2
    assert await event_log.low_water() == 1
    deleted = await event_log.apply_retention(datetime.now(UTC), datetime.now(UTC) - middle)
    assert deleted == 1
    assert await event_log.low_water() == 2
    assert [e.seq for e in await event_log.read(0, 10)] == [2]
    # The newest event is kept whatever its age: numbering goes on from it.
    assert await event_log.apply_retention(datetime.now(UTC) + timedelta(days=2), timedelta(days=1)) == 0
    assert await event_log.low_water() == 2
    assert await event_log.head() == 2


async def test_log_id_is_made_once_and_shared(db: Any) -> None:
    client, name = db
    a, b = MongoEventLog(client, name), MongoEventLog(client, name)
    ids = await asyncio.gather(a.log_id(), b.log_id())
    assert ids[0] == ids[1] and len(ids[0]) == 8


async def test_notifications_ring_on_inserts(db: Any) -> None:
    client, name = db
    event_log = MongoEventLog(client, name)
    await event_log.ensure_indexes()
    bell = event_log.notifications("outbox")
    await asyncio.wait_for(anext(bell), 5)  # opened
    await client[name][OUTBOX].insert_many(_customer_commit("cus_bell", 1))
    await asyncio.wait_for(anext(bell), 5)
    await bell.aclose()  # type: ignore[attr-defined]


async def test_consumers_take_over_renew_ack(db: Any) -> None:
    client, name = db
    consumers = MongoEventConsumers(client, name)
    await consumers.ensure_indexes()
    now = datetime.now(UTC)
    lease, keep = timedelta(seconds=15), timedelta(days=30)
    first = await consumers.take_over("svc", "ent", "s1", now=now, lease=lease, keep=keep)
    assert first.acked_seq is None and first.connected(now)
    assert await consumers.renew("svc", "ent", "s1", now=now, lease=lease)
    await consumers.take_over("svc", "ent", "s2", now=now, lease=lease, keep=keep)
    assert not await consumers.renew("svc", "ent", "s1", now=now, lease=lease)
    assert (await consumers.ack("svc", "ent", 7, allow_rewind=False, now=now, keep=keep)).acked_seq == 7
    assert (await consumers.ack("svc", "ent", 3, allow_rewind=False, now=now, keep=keep)).acked_seq == 7
    assert (await consumers.ack("svc", "ent", 3, allow_rewind=True, now=now, keep=keep)).acked_seq == 3
    await consumers.release("svc", "ent", "s1", now=now)  # not the holder: no effect
    got = await consumers.get("svc", "ent")
    assert got is not None and got.connected(now)
    await consumers.release("svc", "ent", "s2", now=now)
    got = await consumers.get("svc", "ent")
    assert got is not None and not got.connected(now)
    assert await consumers.get("other", "ent") is None
    fresh = await consumers.ack("other", "ent", 1, allow_rewind=False, now=now, keep=keep)
    assert fresh.acked_seq == 1 and fresh.caller == "other"
