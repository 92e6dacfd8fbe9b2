"""Push delivery with real server processes: two replicas of ``serve`` deliver every event once.

Both replicas run a delivery worker and compete for the fan-out's lease; the receiver
verifies each POST against the real clock with ``billing_client.push`` and the secret the
service returned, derived from ``BILLING_EVENTS_SECRET_KEY`` (the same on both replicas).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections import Counter
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2, billing_service_pb2_grpc, event_service_pb2, event_service_pb2_grpc
from pymongo import AsyncMongoClient

from tests.e2e.test_server_process import ServeProcess
from tests.helpers import rid
from tests.push_support import Receiver

pytestmark = pytest.mark.slow

KEY = base64.b64encode(os.urandom(32)).decode()


async def test_two_replicas_deliver_every_event_once_signed(
    mongo_uri: str, mongo_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    receiver = await Receiver().start()
    env = {"BILLING_EVENTS_SECRET_KEY": KEY}
    first = await asyncio.to_thread(ServeProcess, mongo_uri, **env)
    database = first.env["BILLING_MONGODB_DATABASE"]
    second = await asyncio.to_thread(ServeProcess, mongo_uri, BILLING_MONGODB_DATABASE=database, **env)
    try:
        async with (
            grpc.aio.insecure_channel(first.target) as one,
            grpc.aio.insecure_channel(second.target) as two,
        ):
            created = await event_service_pb2_grpc.EventServiceStub(one).CreateEventEndpoint(
                event_service_pb2.CreateEventEndpointRequest(
                    request_id=rid(), url=receiver.url, event_types=["customer.created"]
                )
            )
            receiver.secrets = [created.secret]
            stubs = [billing_service_pb2_grpc.BillingServiceStub(c) for c in (one, two)]
            customers = []
            for index in range(20):  # alternately through each replica
                reply = await stubs[index % 2].CreateCustomer(
                    billing_service_pb2.CreateCustomerRequest(request_id=rid(), email=f"c{index}@example.com")
                )
                customers.append(reply.customer.id)
            async with asyncio.timeout(30):
                while len(receiver.received) < len(customers):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # a late duplicate would arrive now
        events = [r.event for r in receiver.received if r.event is not None]
        assert sorted(e.customer.id for e in events) == sorted(customers)  # the full resource, each once
        assert Counter(r.event_id for r in receiver.received).most_common(1)[0][1] == 1
        assert receiver.rejected == 0 and receiver.concurrent == 1
    finally:
        await receiver.stop()
        for proc in (first, second):
            if proc.proc.poll() is None:
                assert await asyncio.to_thread(proc.stop) == 0
        await mongo_client.drop_database(database)
        await mongo_client.drop_database(f"{database}_fake_processor")
    # Neither replica wrote the secret in a log line, shutdown included.
    output = "".join(first.output + second.output)
    assert "billing gRPC API on" in output
    assert created.secret[6:] not in output and "whsec_" not in output
