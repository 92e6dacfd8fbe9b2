"""Webhooks fully applied: signed events verified, stored, claimed, re-fetched, applied, completed.

Against ``billing-service webhooks serve`` as a child process with its inbox workers on and
Stripe configured against the Stripe API imitation (``tests/imitations/stripe_api.py``, a
child process of its own, ``benchmarks/stripe_child.py``). Each point:

1. seeds ``PAYMENTS`` payments through the real service (an in-process gRPC server whose
   Stripe adapter calls the imitation), so each has a PaymentIntent there;
2. POSTs ``events`` signed ``payment_intent.succeeded`` events about those payments (a
   fresh event id each, rotating over the payments) from ``c`` keep-alive connections,
   closed loop, as fast as the sidecar acknowledges them;
3. waits until every one of them is finished (polled by event id).

The sidecar runs with its default worker settings (``BILLING_WEBHOOK_WORKERS`` unset), from
this checkout or from another (``--baseline-root``, earlier code in the same run). Each
event is verified, stored, claimed by a worker, re-fetched from the imitation
(``GET /v1/payment_intents/<id>``), converged onto our payment (which already agrees,
as for the many events a busy account sends about a payment that is already settled)
and completed. Reported per point: the acknowledgement rate and latency (the HTTP
answers), and the **applied** rate = events / (last event's ``processed_at`` - first
POST). The ratio the issue asks for is applied / the ingestion-only rate
(``webhook/sidecar`` with workers off, measured in the same run at the same c).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc as pb_grpc
from billing.v1 import common_pb2

from benchmarks.harness import ROOT, WATCH, Child, Result, cpu_seconds, percentile
from benchmarks.scenarios import Config
from benchmarks.webhook import SECRET, HttpConnections, Sidecar
from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.domain.common import Processor
from billing_service.domain.payments import Payment

STRIPE_KEY = "sk_test_bench_imitation_0123456789abcdef"
PAYMENTS = 20
DATABASE = "bench_applied"
_DONE = ("processed", "ignored", "orphan", "dead")


@dataclass(frozen=True)
class SeededPayment:
    """One of our payments and its PaymentIntent at the imitation."""

    payment_id: str
    intent_id: str
    amount: int


class Imitation:
    """The Stripe imitation child, watched as ``imitation``."""

    def __init__(self) -> None:
        self.child = Child(["-m", "benchmarks.stripe_child", "--api-key", STRIPE_KEY])
        self.base_url = self.child.info
        WATCH["imitation"] = self.child.proc.pid

    def stop(self) -> None:
        WATCH.pop("imitation", None)
        self.child.stop()


def sidecar_env(api_base: str) -> dict[str, str]:
    """The sidecar's Stripe settings (everything else stays at its default)."""
    return {"STRIPE_SECRET_KEY": STRIPE_KEY, "STRIPE_API_BASE": api_base, "BILLING_PROCESSOR": "stripe"}


async def seed_payments(mongo_uri: str, database: str, api_base: str, count: int = PAYMENTS) -> list[SeededPayment]:
    """Creates ``count`` succeeded Stripe payments through the real service, in process."""
    from billing_service.bootstrap import bootstrap
    from billing_service.config import Secret, Settings
    from billing_service.entrypoints.grpc_api.server import GrpcServer

    settings = Settings(
        mongodb_database=database, stripe_secret_key=Secret(STRIPE_KEY), stripe_api_base=api_base,
        default_processor=Processor.STRIPE, enable_fake=False, log_level="WARNING",
    )  # fmt: skip
    runtime = await bootstrap(settings, mongodb_uri=mongo_uri)
    server = GrpcServer(runtime.deps, runtime.idempotency, address="127.0.0.1:0", reflection_enabled=False)
    port = await server.start()
    seeded: list[SeededPayment] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.BillingServiceStub(channel)
            customer = await stub.CreateCustomer(
                pb.CreateCustomerRequest(request_id=str(uuid.uuid4()), email="applied@example.com")
            )
            method = await stub.AttachPaymentMethod(
                pb.AttachPaymentMethodRequest(
                    request_id=str(uuid.uuid4()), customer_id=customer.customer.id, processor_token="pm_card_visa"
                )
            )
            for n in range(count):
                created = await stub.CreatePayment(
                    pb.CreatePaymentRequest(
                        request_id=str(uuid.uuid4()), customer_id=customer.customer.id,
                        payment_method_id=method.payment_method.id,
                        amount=common_pb2.Money(amount_minor=1000 + n, currency="USD"), description=f"order {n}",
                    )
                )  # fmt: skip
                stored = await runtime.store.get(Payment, created.payment.id)
                assert stored is not None and stored.processor_id, "the seeded payment has no PaymentIntent"
                seeded.append(SeededPayment(stored.id, stored.processor_id, stored.amount.amount_minor))
    finally:
        await server.stop(0)
        await runtime.aclose()
    return seeded


class EventMaker:
    """Signed ``payment_intent.succeeded`` deliveries about the seeded payments."""

    def __init__(self, payments: list[SeededPayment]) -> None:
        self._key = SECRET.encode()
        self._run = uuid.uuid4().hex[:10]
        self._parts = [self._template(p) for p in payments]

    @staticmethod
    def _template(p: SeededPayment) -> tuple[bytes, bytes]:
        now = int(time.time())
        event = {
            "id": "@@ID@@", "object": "event", "api_version": "2026-10-28.endive", "created": now,
            "data": {"object": {
                "id": p.intent_id, "object": "payment_intent", "amount": p.amount, "amount_capturable": 0,
                "amount_received": p.amount, "canceled_at": None, "cancellation_reason": None,
                "capture_method": "automatic", "client_secret": f"{p.intent_id}_secret_bench0123456789",
                "confirmation_method": "automatic", "created": now - 60, "currency": "usd",
                "customer": "cus_QbenchCustomer0001", "description": "bench", "last_payment_error": None,
                "latest_charge": "ch_3QbenchCharge00000001", "livemode": False,
                "metadata": {"billing_payment_id": p.payment_id}, "next_action": None,
                "payment_method": "pm_1QbenchPaymentMethod01", "payment_method_types": ["card"],
                "status": "succeeded",
            }},
            "livemode": False, "pending_webhooks": 1, "request": {"id": "req_bench", "idempotency_key": None},
            "type": "payment_intent.succeeded",
        }  # fmt: skip
        head, tail = json.dumps(event, indent=2).encode().split(b"@@ID@@")
        return head, tail

    def event_id(self, point: str, i: int) -> str:
        return f"evt_applied_{self._run}_{point}_{i:07d}"

    def request(self, host: bytes, point: str, i: int) -> bytes:
        head, tail = self._parts[i % len(self._parts)]
        body = b"%s%s%s" % (head, self.event_id(point, i).encode(), tail)
        t = b"%d" % int(time.time())
        signature = hmac.new(self._key, t + b"." + body, hashlib.sha256).hexdigest().encode()
        return (
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Stripe-Signature: t=%s,v1=%s\r\nContent-Length: %d\r\n\r\n%s"
        ) % (host, t, signature, len(body), body)


async def _send(port: int, c: int, events: int, maker: EventMaker, point: str) -> tuple[list[float], int, float]:
    """POSTs ``events`` deliveries from ``c`` connections; returns latencies, errors and the start time."""
    pool = HttpConnections(port, c)
    latencies: list[float] = []
    errors = 0
    next_i = 0

    async def caller() -> None:
        nonlocal next_i, errors
        while next_i < events:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            try:
                await pool.send(maker.request(pool.host, point, i))
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    started = datetime.now(UTC)
    try:
        await asyncio.gather(*(caller() for _ in range(c)))
    finally:
        await pool.aclose()
    return latencies, errors, started.timestamp()


def _by_event_id(event_ids: list[str]) -> dict[str, Any]:
    return {"processor": Processor.STRIPE.value, "event_id": {"$in": event_ids}}


async def _drain(store: MongoBillingStore, ids: list[str], timeout: float) -> bool:
    """Waits until every event in ``ids`` is finished.

    Polls by event id only (the last few sent, then all of them), through the unique
    (processor, event_id) index every version of the inbox has: a count by status would read
    the whole backlog on every poll and take store time from the workers measured.
    """
    coll = store.database["webhook_events"]
    deadline = time.monotonic() + timeout
    for probe in (ids[-16:], ids):
        while True:
            docs = await coll.find(_by_event_id(probe), projection={"status": 1}).to_list()
            if len(docs) == len(probe) and all(d["status"] in _DONE for d in docs):
                break
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.25)
    return True


async def applied_point(
    cfg: Config,
    mongo_uri: str,
    api_base: str,
    payments: list[SeededPayment],
    c: int,
    *,
    path: str = "applied",
    root: Path = ROOT,
    events: int = 1000,
    drain_timeout: float = 180.0,
    history: int = 0,
) -> Result:
    """One point: ``events`` deliveries at concurrency ``c`` to a sidecar with its workers on."""
    maker = EventMaker(payments)
    point = f"{path}{c}"
    store = MongoBillingStore.connect(mongo_uri, DATABASE)
    # The sidecar's own default worker count (BILLING_WEBHOOK_WORKERS unset), whichever code runs.
    env = {k: v for k, v in os.environ.items() if k != "BILLING_WEBHOOK_WORKERS"}
    sidecar = Sidecar(mongo_uri, DATABASE, workers=-1, extra_env=sidecar_env(api_base), root=root, base_env=env)
    WATCH["sidecar"] = sidecar.proc.pid
    try:
        watched = {"client": os.getpid(), **WATCH}
        cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        t0 = time.perf_counter()
        latencies, errors, started = await _send(sidecar.port, c, events, maker, point)
        acked_in = time.perf_counter() - t0
        ids = [maker.event_id(point, i) for i in range(events)]
        drained = await _drain(store, ids, drain_timeout)
        elapsed = time.perf_counter() - t0
        cpu = {name: round((cpu_seconds(pid) - cpu_before[name]) / elapsed, 2) for name, pid in watched.items()}
        docs = (
            await store.database["webhook_events"]
            .find(_by_event_id(ids), projection={"status": 1, "processed_at": 1})
            .to_list()
        )
    finally:
        sidecar.stop()
        WATCH.pop("sidecar", None)
        await store.aclose()
    statuses: dict[str, int] = {}
    for d in docs:
        statuses[d["status"]] = statuses.get(d["status"], 0) + 1
    done = [d["processed_at"].timestamp() for d in docs if d.get("processed_at") is not None]
    applied_seconds = (max(done) - started) if done else float("nan")
    applied = statuses.get("processed", 0)
    latencies.sort()
    return Result(
        scenario="webhook_applied",
        path=path,
        concurrency=c,
        ops=len(latencies),
        errors=errors,
        seconds=round(acked_in, 3),
        rps=round(len(latencies) / acked_in, 1) if acked_in else 0.0,
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        extra={
            "cores_used": cpu,
            "applied_per_second": round(applied / applied_seconds, 1) if done else 0.0,
            "applied_seconds": round(applied_seconds, 3),
            "statuses": statuses,
            "drained": drained,
            "history_events": history,
            "store": "fresh" if not history else f"after {history} earlier events",
        },
    )


async def applied_path(cfg: Config, *, baseline_root: Path | None = None, events: int = 1000) -> list[Result]:
    """Ingestion only vs fully applied (vs the baseline checkout's code), c = 4 and 16.

    Every point runs on a fresh embedded store of its own (said in its row): the history
    scenario measures the same path after earlier events.
    """
    from benchmarks.webhook import Signer, _sidecar_point, fresh_store

    results: list[Result] = []
    imitation = Imitation()
    shared_mongo = WATCH.pop("mongo", None)
    try:
        for c in (4, 16):
            ingest = await _sidecar_point(cfg, "sidecar", 0, c, Signer())
            ingest.scenario = "webhook_applied"
            ingest.path = "ingest_only"
            ingest.extra["store"] = "fresh"
            results.append(ingest)
            runs: list[tuple[str, Path]] = [("applied", ROOT)]
            if baseline_root is not None:
                runs.append(("applied_baseline", baseline_root))
            for path, root in runs:
                async with fresh_store() as mongo_uri:
                    payments = await seed_payments(mongo_uri, DATABASE, imitation.base_url)
                    result = await applied_point(
                        cfg, mongo_uri, imitation.base_url, payments, c, path=path, root=root, events=events
                    )
                print(
                    f"   {path} c={c}: acked {result.rps}/s p99 {result.p99_ms} ms, "
                    f"applied {result.extra['applied_per_second']}/s {result.extra['statuses']}",
                    flush=True,
                )
                results.append(result)
    finally:
        imitation.stop()
        if shared_mongo is not None:
            WATCH["mongo"] = shared_mongo
    return results
