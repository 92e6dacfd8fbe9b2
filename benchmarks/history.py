"""The history scenario: the same figures on an empty store and after months of use.

* **CreatePayment** (fake processor, c=16) on a fresh store, and on a fresh store holding
  ``payments`` earlier payments (default 50,000: 1,000 customers with a card each, 50
  payments per customer, created evenly over the last 50 days) with their audit events and
  the idempotency records their requests left; records older than the idempotency TTL are
  expired, and one janitor pass (timed, reported) removes them before measuring, as the
  janitor would have.
* **Webhooks fully applied** (``benchmarks/applied.py``, c=16) on a fresh store, and after
  ``events`` earlier webhook events (default 20,000) processed over the last 20 days and
  still inside the inbox retention.

The empty and the seeded store run side by side and their points alternate (empty,
history, empty, history), so that a busy moment of this shared machine does not fall on one
side only. History is seeded quickly but as the service writes it: one of each document is
first written by the service itself (a payment through the real gRPC server, an event
through the real inbox adapter), and the rest are copies of those documents with their own
ids, keys, owners and times, inserted in batches.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from billing.v1 import billing_service_pb2_grpc as pb_grpc

from benchmarks.harness import ROOT, WATCH, Result, closed_loop
from benchmarks.scenarios import Config, channel, create_request, seed, start_service
from billing_service.adapters.mongo.embedded import EmbeddedMongo
from billing_service.adapters.mongo.inbox import MongoWebhookInbox, inbox_id
from billing_service.adapters.mongo.janitor import MongoJanitor
from billing_service.adapters.mongo.store import MongoBillingStore, idempotency_key
from billing_service.domain.common import Processor
from billing_service.domain.ids import new_id
from billing_service.service_layer.ports import WebhookStatus

Doc = dict[str, Any]
_BATCH = 1000
_PER_CUSTOMER = 50
_TTL = timedelta(hours=48)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _spread(count: int, days: float, now: datetime) -> Iterator[datetime]:
    """``count`` times evenly spread over the last ``days``, oldest first."""
    step = timedelta(days=days) / max(count, 1)
    start = now - timedelta(days=days)
    for n in range(count):
        yield start + step * n


class PaymentHistory:
    """Copies of what one ``CreatePayment`` (and its customer and card) wrote."""

    def __init__(self, store: MongoBillingStore, customer_id: str, method_id: str, payment_id: str) -> None:
        self.db = store.database
        self.ids = (customer_id, method_id, payment_id)

    async def load(self) -> None:
        customer_id, method_id, payment_id = self.ids
        db = self.db
        self.customer = await db["customers"].find_one({"_id": customer_id})
        self.method = await db["payment_methods"].find_one({"_id": method_id})
        self.payment = await db["payments"].find_one({"_id": payment_id})
        self.audit = await db["audit_events"].find({"resource_id": payment_id}).sort("_id", 1).to_list()
        self.customer_audit = (
            await db["audit_events"].find({"resource_id": {"$in": [customer_id, method_id]}}).to_list()
        )
        self.idem = await db["idempotency"].find({}).to_list()
        self.payment_idem = next(d for d in self.idem if d["resource_id"] == payment_id)
        assert self.customer and self.method and self.payment and len(self.audit) >= 2, "templates missing"

    def _customer_docs(self, at: datetime) -> list[tuple[str, Doc]]:
        customer = copy.deepcopy(self.customer)
        method = copy.deepcopy(self.method)
        assert customer is not None and method is not None
        customer["_id"] = new_id("cus", now_ms=_ms(at))
        customer["email"] = f"{customer['_id']}@example.com"
        method["_id"] = new_id("pm", now_ms=_ms(at))
        method["customer_id"] = customer["_id"]
        for doc in (customer, method):
            for key in ("created_at", "updated_at"):
                if key in doc:
                    doc[key] = at
        out: list[tuple[str, Doc]] = [("customers", customer), ("payment_methods", method)]
        for template in self.idem:
            if template["resource_id"] not in self.ids[:2]:
                continue
            request_id = str(uuid.uuid4())
            idem = copy.deepcopy(template)
            idem.update(
                _id=idempotency_key(idem["caller"], idem["method"], request_id), request_id=request_id,
                resource_id=customer["_id"] if template["resource_id"] == self.ids[0] else method["_id"],
                owner=os.urandom(12).hex(), created_at=at, lease_until=at + timedelta(seconds=60), expires_at=at + _TTL,
            )  # fmt: skip
            out.append(("idempotency", idem))
        for template in self.customer_audit:
            event = copy.deepcopy(template)
            event["_id"] = new_id("evt", now_ms=_ms(at))
            event["resource_id"] = customer["_id"] if template["resource_id"] == self.ids[0] else method["_id"]
            event["at"] = at
            out.append(("audit_events", event))
        return out

    def _payment_docs(self, customer: Doc, method: Doc, at: datetime, n: int) -> list[tuple[str, Doc]]:
        payment = copy.deepcopy(self.payment)
        assert payment is not None
        pay_id = new_id("pay", now_ms=_ms(at))
        payment.update(_id=pay_id, customer_id=customer["_id"], payment_method_id=method["_id"])
        payment["processor_id"] = f"{payment.get('processor_id', 'ch')[:3]}{uuid.uuid4().hex[:24]}"
        for key in ("created_at", "updated_at"):
            if key in payment:
                payment[key] = at
        request_id = str(uuid.uuid4())
        out: list[tuple[str, Doc]] = [("payments", payment)]
        for template in self.audit:
            event = copy.deepcopy(template)
            event.update(_id=new_id("evt", now_ms=_ms(at)), resource_id=pay_id, at=at, request_id=request_id)
            out.append(("audit_events", event))
        idem = copy.deepcopy(self.payment_idem)
        idem.update(
            _id=idempotency_key(idem["caller"], idem["method"], request_id), request_id=request_id,
            resource_id=pay_id, owner=os.urandom(12).hex(), created_at=at, lease_until=at + timedelta(seconds=60),
            expires_at=at + _TTL, fingerprint=hashlib.sha256(f"{n}".encode()).hexdigest(),
        )  # fmt: skip
        out.append(("idempotency", idem))
        return out

    async def write(self, payments: int, *, days: float, now: datetime) -> dict[str, int]:
        """Inserts ``payments`` payments of ``payments / 50`` customers; returns documents per collection."""
        pending: dict[str, list[Doc]] = {}
        counts: dict[str, int] = {}

        async def flush(force: bool = False) -> None:
            for name, docs in pending.items():
                if docs and (force or len(docs) >= _BATCH):
                    await self.db[name].insert_many(docs, ordered=False)
                    counts[name] = counts.get(name, 0) + len(docs)
                    docs.clear()

        customers = max(-(-payments // _PER_CUSTOMER), 1)
        times = list(_spread(payments, days, now))
        for c in range(customers):
            first = times[c * _PER_CUSTOMER] - timedelta(minutes=1)
            docs = self._customer_docs(first)
            for name, doc in docs:
                pending.setdefault(name, []).append(doc)
            customer, method = docs[0][1], docs[1][1]
            for n in range(c * _PER_CUSTOMER, min((c + 1) * _PER_CUSTOMER, payments)):
                for name, doc in self._payment_docs(customer, method, times[n], n):
                    pending.setdefault(name, []).append(doc)
            await flush()
        await flush(force=True)
        return counts


async def seed_inbox_history(inbox: MongoWebhookInbox, events: int, *, days: float, now: datetime) -> int:
    """``events`` processed Stripe events: one through the adapter, the rest copies of it."""
    template_id = f"evt_history_template_{uuid.uuid4().hex[:8]}"
    body = b'{"id":"%s","object":"event","type":"payment_intent.succeeded","data":{"object":{}}}' % template_id.encode()
    payload = body + b" " * max(0, 1200 - len(body))  # the size of a real event
    at = now - timedelta(days=days)
    await inbox.insert(Processor.STRIPE, template_id, "payment_intent.succeeded", payload, now=at)
    [claimed] = await inbox.claim_due("seed-1", now=at, lease_seconds=60, limit=1)
    await inbox.complete(claimed.id, "seed-1", WebhookStatus.PROCESSED, now=at)
    template = await inbox.collection.find_one({"_id": claimed.id})
    assert template is not None
    written = 1
    batch: list[Doc] = []
    for n, when in enumerate(_spread(events - 1, days, now)):
        doc = copy.deepcopy(template)
        event_id = f"evt_history_{n:08d}_{uuid.uuid4().hex[:8]}"
        doc.update(
            _id=inbox_id(Processor.STRIPE, event_id), event_id=event_id, received_at=when, available_at=when,
            processed_at=when, processed_by=f"seed-{n}", purge_at=template["purge_at"] + (when - at),
        )  # fmt: skip
        batch.append(doc)
        if len(batch) >= _BATCH:
            await inbox.collection.insert_many(batch, ordered=False)
            written += len(batch)
            batch.clear()
    if batch:
        await inbox.collection.insert_many(batch, ordered=False)
        written += len(batch)
    return written


async def _create_payment_point(
    cfg: Config, mongo_uri: str, database: str, c: int, history: int, *, root: Path = ROOT
) -> Result:
    service = start_service(mongo_uri, database, root=root)
    try:
        ch = channel(int(service.info))
        stub = pb_grpc.BillingServiceStub(ch)
        customer_id, method_id, _ = await seed(stub, 1)

        async def op(i: int) -> object:
            return await stub.CreatePayment(create_request(customer_id, method_id))

        result = await closed_loop("history", "create_payment", c, op, seconds=cfg.seconds, warmup=cfg.warmup)
        await ch.close(None)
    finally:
        service.stop()
        WATCH.pop("server", None)
    result.path = "create_payment" if not history else "create_payment_history"
    return result


class _Store:
    """An embedded store of its own, watched as ``mongo`` while one of its points runs."""

    def __init__(self) -> None:
        self.server = EmbeddedMongo(":memory:")

    async def __aenter__(self) -> _Store:
        await self.server.start()
        self.uri = self.server.uri
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.astop()

    def watch(self) -> None:
        WATCH["mongo"] = self.server._proc.pid if self.server._proc else 0


async def _seed_payments(store: _Store, database: str, payments: int) -> Doc:
    """History in ``database``: templates through the service, copies, then one janitor pass."""
    t0 = time.monotonic()
    db_store = MongoBillingStore.connect(store.uri, database)
    try:
        service = start_service(store.uri, database)  # creates the indexes, writes the templates
        try:
            ch = channel(int(service.info))
            customer_id, method_id, [payment_id] = await seed(pb_grpc.BillingServiceStub(ch), 1)
            await ch.close(None)
        finally:
            service.stop()
            WATCH.pop("server", None)
        templates = PaymentHistory(db_store, customer_id, method_id, payment_id)
        await templates.load()
        counts = await templates.write(payments - 1, days=50, now=datetime.now(UTC))
        seeded_in = time.monotonic() - t0
        t1 = time.monotonic()
        inbox = MongoWebhookInbox(db_store.database.client, database)
        janitor = MongoJanitor(db_store.database.client, database, inbox)
        await janitor.ensure_indexes()
        swept = await janitor.sweep_once(now=datetime.now(UTC))
        left = await db_store.database["idempotency"].count_documents({})
    finally:
        await db_store.aclose()
    info: Doc = {
        "seeded_documents": counts, "seed_seconds": round(seeded_in, 1),
        "janitor_removed": swept.idempotency_records, "janitor_seconds": round(time.monotonic() - t1, 1),
        "idempotency_records_left": left,
    }  # fmt: skip
    print(f"   seeded {payments} payments in {seeded_in:.0f} s: {info}", flush=True)
    return info


async def history_path(
    cfg: Config, *, payments: int = 50_000, events: int = 20_000, c: int = 16, applied_events: int = 1000
) -> list[Result]:
    """CreatePayment and fully-applied webhooks, on an empty store and after history.

    The empty and the seeded store run side by side and their points alternate (empty,
    history, empty, history), each point at least 8 s, so that a slow moment of this
    shared machine does not land on one side only; the ratio is of the sums.
    """
    from benchmarks import applied

    results: list[Result] = []
    database = "bench_history"
    point_cfg = Config(seconds=max(cfg.seconds, 8.0), warmup=cfg.warmup, levels=cfg.levels)
    shared_mongo = WATCH.pop("mongo", None)
    try:
        async with _Store() as empty, _Store() as seeded:
            info = await _seed_payments(seeded, database, payments)
            for _round in range(2):
                for store, history in ((empty, 0), (seeded, payments)):
                    store.watch()
                    result = await _create_payment_point(point_cfg, store.uri, database, c, history)
                    result.extra.update(
                        store="fresh" if not history else f"after {payments} payments", history_payments=history
                    )
                    if history:
                        result.extra.update(info)
                    results.append(result)
        base = sum(r.rps for r in results if r.path == "create_payment")
        after = sum(r.rps for r in results if r.path == "create_payment_history")
        print(f"   create_payment: empty {base / 2:.1f}/s, after history {after / 2:.1f}/s", flush=True)

        imitation = applied.Imitation()
        try:
            async with _Store() as empty, _Store() as seeded:
                made = {}
                for store in (empty, seeded):
                    made[id(store)] = await applied.seed_payments(store.uri, applied.DATABASE, imitation.base_url)
                inbox_store = MongoBillingStore.connect(seeded.uri, applied.DATABASE)
                inbox = MongoWebhookInbox(inbox_store.database.client, applied.DATABASE)
                await inbox.ensure_indexes()
                t0 = time.monotonic()
                written = await seed_inbox_history(inbox, events, days=20, now=datetime.now(UTC))
                await inbox_store.aclose()
                print(f"   seeded {written} processed webhook events in {time.monotonic() - t0:.0f} s", flush=True)
                for _round in range(2):
                    for store, history in ((empty, 0), (seeded, events)):
                        store.watch()
                        result = await applied.applied_point(
                            cfg, store.uri, imitation.base_url, made[id(store)], c,
                            path="applied" if not history else "applied_history", history=history,
                            events=applied_events,
                        )  # fmt: skip
                        result.scenario = "history"
                        results.append(result)
                        print(f"   applied after {history} events: {result.extra['applied_per_second']}/s", flush=True)
        finally:
            imitation.stop()
    finally:
        if shared_mongo is not None:
            WATCH["mongo"] = shared_mongo
    return results
