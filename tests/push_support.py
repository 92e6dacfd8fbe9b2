"""Test support for push delivery: events in the log, push services on the embedded store, a receiver.

- :func:`log_events` appends ``event_log`` documents in the log's shape (docs/EVENTS.md,
  "The event log and cursors") to the test's database, read back by the real
  ``MongoEventLog``: many events of chosen types without the use cases that cause them;
- :func:`push_services` builds the push services as ``bootstrap`` does, on that log;
- :class:`Receiver` is a real HTTP endpoint on a loopback port that verifies every POST with
  the receivers' helper (``billing_client.push``), and can be told to fail, hang or answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from billing.v1.billing_event_pb2 import BillingEvent
from billing_client.push import SIGNATURE_HEADER, SignatureVerificationError, construct_event, verify_signature
from pymongo.asynchronous.database import AsyncDatabase

from billing_service.adapters.mongo.event_delivery import (
    MongoEventDeliveries,
    MongoEventEndpoints,
    StaticSecretKeys,
    ensure_push_indexes,
)
from billing_service.adapters.mongo.leases import MongoLeases
from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.domain.ids import new_id
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.push_ports import PushServices

KEY = b"k" * 16 + b"e" * 16 + b"y" * 8


async def log_events(
    db: AsyncDatabase[dict[str, Any]], types: Sequence[str], *, at: datetime, customer_id: str = "cus_1"
) -> list[int]:
    """Appends events of ``types`` to ``event_log`` (numbers follow the head); returns their numbers."""
    coll = db["event_log"]
    last = await coll.find_one({}, sort=[("_id", -1)])
    seq = 0 if last is None else int(last["_id"])
    docs: list[dict[str, Any]] = []
    for index, event_type in enumerate(types):
        seq += 1
        resource_type = event_type.split(".", 1)[0]
        docs.append({
            "_id": seq, "event_id": new_id("bev"), "sequence_time": at,
            "commit": {"id": new_id("cmt"), "index": index}, "type": event_type, "resource_type": resource_type,
            "resource_id": f"{resource_type[:3]}_{seq}", "customer_id": customer_id, "resource_version": 1,
            "previous_status": "", "create_time": at, "caller": "orders-service", "request_id": f"req-{seq}",
            "audit_event_ids": [new_id("evt")], "snapshot": None,
        })  # fmt: skip
    await coll.insert_many(docs)
    return [d["_id"] for d in docs]


async def push_services(store: MongoBillingStore, clock: ManualClock, *, allow_http: bool = True) -> PushServices:
    """Push services on the test's database (the log read from its documents)."""
    client, name = store.database.client, store.database.name
    await ensure_push_indexes(client, name)
    return PushServices(
        endpoints=MongoEventEndpoints(client, name), deliveries=MongoEventDeliveries(client, name),
        log=store.events, keys=StaticSecretKeys(KEY), leases=MongoLeases(client, name),
        clock=clock, page_secret=store.page_token_secret, allow_http=allow_http,
    )  # fmt: skip


@dataclass
class Received:
    """One verified POST."""

    event_id: str
    delivery_id: str
    attempt: int
    signatures: int
    event: BillingEvent | None = None
    #: Which of the receiver's secrets verify the POST each on its own (their indexes).
    verified_by: frozenset[int] = frozenset()


@dataclass
class Receiver:
    """A real HTTP endpoint on 127.0.0.1 that verifies deliveries with ``billing_client.push``.

    Attributes:
        secrets: The secrets it accepts (a request verifying with none of them gets 400).
        mode: ``ok`` (200), ``fail`` (500), ``hang`` (answers after ``hang_seconds``).
        now: The receiver's clock for the signature's tolerance (the service's manual clock).
        received: Every verified POST answered 2xx, in order.
        rejected: Requests whose signature did not verify.
        concurrent: The most requests for one delivery id in flight at once.
    """

    secrets: list[str] = field(default_factory=list)
    mode: str = "ok"
    hang_seconds: float = 2.0
    delay_seconds: float = 0.0
    now: ManualClock | None = None
    received: list[Received] = field(default_factory=list)
    requests: int = 0
    rejected: int = 0
    concurrent: int = 0
    _inflight: dict[str, int] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/billing-events"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def event_ids(self) -> list[str]:
        return [r.event_id for r in self.received]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = await self._answer(body, headers)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test stops the server mid-request
        finally:
            writer.close()

    async def _answer(self, body: bytes, headers: dict[str, str]) -> int:
        self.requests += 1
        delivery = headers.get("billing-delivery-id", "")
        self._inflight[delivery] = self._inflight.get(delivery, 0) + 1
        self.concurrent = max(self.concurrent, self._inflight[delivery])
        try:
            if self.mode == "hang":
                await asyncio.sleep(self.hang_seconds)
                return 200
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            if self.mode == "fail":
                return 500
            now = self.now.now().timestamp() if self.now is not None else None
            try:
                event = construct_event(body, headers[SIGNATURE_HEADER.lower()], self.secrets, now=now)
            except (KeyError, SignatureVerificationError):
                self.rejected += 1
                return 400
            header = headers[SIGNATURE_HEADER.lower()]
            alone = frozenset(i for i, secret in enumerate(self.secrets) if _verifies(body, header, secret, now))
            attempt = int(headers.get("billing-delivery-attempt", "0"))
            self.received.append(Received(event.id, delivery, attempt, header.count("v1="), event, alone))
            return 200
        finally:
            self._inflight[delivery] -= 1


def _verifies(body: bytes, header: str, secret: str, now: float | None) -> bool:
    try:
        verify_signature(body, header, [secret], now=now)
    except SignatureVerificationError:
        return False
    return True


def advance_to(clock: ManualClock, when: datetime | None) -> None:
    """Moves the manual clock forward to ``when`` (never back)."""
    if when is not None and when > clock.now():
        clock.advance(when - clock.now())


T0 = datetime(2026, 6, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
