"""Events with real server processes: a SIGKILL and restart under a stream, two replicas."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2, billing_service_pb2_grpc, event_service_pb2
from billing_client.events import EventWatch
from pymongo import AsyncMongoClient

from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.customers import Customer
from billing_service.domain.ids import new_id
from billing_service.service_layer.ports import Insert
from tests.e2e.test_crash import free_port
from tests.e2e.test_server_process import ServeProcess
from tests.helpers import rid

pytestmark = pytest.mark.slow

EVENTS = 1000


def _customer(index: int) -> tuple[Customer, AuditEvent]:
    now = datetime.now(UTC)
    customer = Customer(
        id=new_id("cus"), email=f"c{index}@example.com", name=f"C{index}", description="", metadata={},
        default_processor=Processor.FAKE, created_at=now, updated_at=now,
    )  # fmt: skip
    audit = AuditEvent(
        id=new_id("evt"), caller="load-writer", request_id=str(uuid.uuid4()), action="customer.created",
        resource_type="customer", resource_id=customer.id, before_status="", after_status="active", at=now,
    )  # fmt: skip
    return customer, audit


async def test_a_watcher_misses_nothing_across_a_sigkill_and_restart(
    mongo_uri: str, mongo_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    """1,000 commits while the server is killed and restarted under a resuming watcher."""
    port = free_port()
    env = {"BILLING_GRPC_ADDRESS": f"127.0.0.1:{port}"}
    server = await asyncio.to_thread(ServeProcess, mongo_uri, **env)
    database = server.env["BILLING_MONGODB_DATABASE"]
    env["BILLING_MONGODB_DATABASE"] = database
    # Another process writing (as another replica or the webhook sidecar would): each
    # commit writes a customer, its audit event and its billing event.
    writer = MongoBillingStore.connect(mongo_uri, database)
    committed: list[str] = []
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            watch = EventWatch(
                channel,
                event_service_pb2.WatchEventsRequest(event_types=["customer.created"]),
                min_backoff=0.05,
                max_backoff=0.5,
            )
            events: list[Any] = []

            async def read() -> None:
                async for event in watch:
                    events.append(event)
                    if len({e.id for e in events}) == EVENTS:
                        return

            reader = asyncio.ensure_future(read())
            while not watch.cursor:  # the stream is established (its first heartbeat)
                await asyncio.sleep(0.02)

            async def write() -> None:
                for index in range(EVENTS):
                    customer, audit = _customer(index)
                    await writer.commit([Insert(customer)], [audit])
                    committed.append(customer.id)

            writing = asyncio.ensure_future(write())
            while len(events) < EVENTS // 4:
                await asyncio.sleep(0.01)
            server.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(server.proc.wait)
            seen_before_kill = len(events)
            server = await asyncio.to_thread(ServeProcess, mongo_uri, **env)
            await writing
            await asyncio.wait_for(reader, 120)
        assert seen_before_kill < EVENTS
        assert watch.reconnects >= 1
        ids = [e.id for e in events]
        assert sorted({e.resource_id for e in events}) == sorted(committed)  # none missing
        # At least once: a repeat is the same event (same id, same cursor), never a new one.
        by_id: dict[str, str] = {}
        for event in events:
            assert by_id.setdefault(event.id, event.cursor) == event.cursor
        assert len(set(ids)) == EVENTS
        # Cursor order, and positions that leave no room for a skipped event.
        cursors = sorted(set(by_id.values()))
        positions = [int(c[:16], 16) for c in cursors]
        assert positions == list(range(positions[0], positions[0] + EVENTS))
        order = [e.cursor for e in events]
        assert order == sorted(order)  # a repeat comes right after the event it repeats
    finally:
        await writer.aclose()
        if server.proc.poll() is None:
            await asyncio.to_thread(server.stop)
        await mongo_client.drop_database(database)
        await mongo_client.drop_database(f"{database}_fake_processor")


async def test_two_replicas_one_watcher_each_both_see_every_event(
    mongo_uri: str, mongo_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    first = await asyncio.to_thread(ServeProcess, mongo_uri)
    database = first.env["BILLING_MONGODB_DATABASE"]
    second = await asyncio.to_thread(ServeProcess, mongo_uri, BILLING_MONGODB_DATABASE=database)
    try:
        async with (
            grpc.aio.insecure_channel(first.target) as one,
            grpc.aio.insecure_channel(second.target) as two,
        ):
            watches = [
                EventWatch(channel, event_service_pb2.WatchEventsRequest(event_types=["customer.created"]))
                for channel in (one, two)
            ]
            seen: list[list[str]] = [[], []]

            async def read(index: int) -> None:
                async for event in watches[index]:
                    seen[index].append(event.resource_id)
                    if len(seen[index]) == 20:
                        return

            readers = [asyncio.ensure_future(read(i)) for i in (0, 1)]
            while not all(w.cursor for w in watches):
                await asyncio.sleep(0.02)
            stubs = [billing_service_pb2_grpc.BillingServiceStub(c) for c in (one, two)]
            created = []
            for index in range(20):  # alternately through each replica
                reply = await stubs[index % 2].CreateCustomer(
                    billing_service_pb2.CreateCustomerRequest(request_id=rid())
                )
                created.append(reply.customer.id)
            await asyncio.wait_for(asyncio.gather(*readers), 30)
        assert seen[0] == created and seen[1] == created
    finally:
        for proc in (first, second):
            if proc.proc.poll() is None:
                await asyncio.to_thread(proc.stop)
        await mongo_client.drop_database(database)
        await mongo_client.drop_database(f"{database}_fake_processor")
