"""Scenario 3, webhook ingestion: signed Stripe events POSTed to the real sidecar.

Paths, each at the runner's concurrency levels (1, 16, 64), closed loop, loopback only:

* ``sidecar``: ``billing-service webhooks serve`` as a child process (the real CLI, so the
  real wiring: uvicorn, the Starlette app, the SDK's signature check, scrubbing, the inbox
  insert with its unique index, metrics) with **inbox workers off**
  (``BILLING_WEBHOOK_WORKERS=0``): what is measured is ingestion, verify + store + 2xx,
  which is all a processor waits for. Every request is a fresh event id, so every one is
  an insert (no duplicates).
* ``sidecar_workers``: the same with 4 inbox workers running beside the receiver
  (informational: the events are about a processor this benchmark does not configure, so
  each is claimed and completed as ORPHAN: two more store round trips per event, off the
  request path but on the same cores).
* ``bare_endpoint``: the same server stack (Starlette under uvicorn, same options, same
  socket setup) whose one route reads the body and answers 200 doing no work.
* ``store_floor``: the same inbox insert (same document, same unique index, same write
  concern) issued directly with PyMongo async from the client process.

Every store-backed point runs on a fresh embedded store of its own (and the sidecar paths on
a fresh sidecar process): SecantusDB slows down as writes accumulate in its process, so a
shared store would favour whichever path ran first (:func:`fresh_store`). The levels are
interleaved (all paths at c=1, then at c=16, ...) like the read scenario's.

The HTTP client is a minimal HTTP/1.1 keep-alive client on asyncio streams, one
connection per concurrent caller, each request signed on the fly (HMAC-SHA256, Stripe's
``t=…,v1=…`` scheme): about 30 µs of client CPU per request, so that on this 2-core machine
the client does not take the cores the sidecar and the store need (httpx costs ~10x more
per request). Its CPU is reported in every row (``client``).

    python -m benchmarks.webhook bare [--port P]   # the bare endpoint child (prints READY <port>)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from bson import Binary

from benchmarks.harness import ROOT, WATCH, Child, Result, closed_loop
from benchmarks.scenarios import Config
from billing_service.adapters.mongo.embedded import EmbeddedMongo
from billing_service.adapters.mongo.inbox import MongoWebhookInbox
from billing_service.adapters.mongo.store import MongoBillingStore

SECRET = "whsec_bench_0123456789abcdef0123456789abcdef"
_ID_MARK = "evt_@@ID@@"


def event_template() -> tuple[bytes, bytes]:
    """A ``payment_intent.succeeded`` event as Stripe sends it (~1.2 KB), split around its id."""
    event = {
        "id": _ID_MARK,
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": "pi_3QbenchPaymentIntent0001",
                "object": "payment_intent",
                "amount": 2500,
                "amount_capturable": 0,
                "amount_received": 2500,
                "canceled_at": None,
                "cancellation_reason": None,
                "capture_method": "automatic",
                "client_secret": "pi_3QbenchPaymentIntent0001_secret_bench0123456789",
                "confirmation_method": "automatic",
                "created": int(time.time()) - 60,
                "currency": "usd",
                "customer": "cus_QbenchCustomer0001",
                "description": "Order 1001",
                "last_payment_error": None,
                "latest_charge": "ch_3QbenchCharge00000001",
                "livemode": False,
                "metadata": {"billing_payment_id": "pay_01jbench0000000000000000001", "order": "1001"},
                "next_action": None,
                "payment_method": "pm_1QbenchPaymentMethod01",
                "payment_method_types": ["card"],
                "status": "succeeded",
            }
        },
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": "req_bench0001", "idempotency_key": "billing-bench-0001"},
        "type": "payment_intent.succeeded",
    }
    head, tail = json.dumps(event, indent=2).encode().split(_ID_MARK.encode())
    return head, tail


class Signer:
    """Builds signed Stripe deliveries with fresh event ids."""

    def __init__(self, secret: str = SECRET) -> None:
        self._key = secret.encode()
        self._head, self._tail = event_template()
        self._run = uuid.uuid4().hex[:10]

    def body(self, point: str, i: int) -> bytes:
        return b"%sevt_bench_%s_%s_%09d%s" % (self._head, self._run.encode(), point.encode(), i, self._tail)

    def request(self, host: bytes, body: bytes) -> bytes:
        t = b"%d" % int(time.time())
        signature = hmac.new(self._key, t + b"." + body, hashlib.sha256).hexdigest().encode()
        return (
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Stripe-Signature: t=%s,v1=%s\r\nContent-Length: %d\r\n\r\n%s"
        ) % (host, t, signature, len(body), body)


class HttpConnections:
    """``size`` keep-alive HTTP/1.1 connections to one loopback server; one request each at a time."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.host = b"127.0.0.1:%d" % port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = [None] * size

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def send(self, request: bytes) -> bytes:
        """Sends one request; returns the body of a 2xx answer, raises on anything else."""
        conn = self._idle.pop() or await self._open()
        reader, writer = conn
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
        except BaseException:
            writer.close()
            self._idle.append(None)
            raise
        self._idle.append(conn)
        if not 200 <= status < 300:
            raise RuntimeError(f"HTTP {status}: {body[:100]!r}")
        return body

    async def aclose(self) -> None:
        for conn in self._idle:
            if conn is not None:
                conn[1].close()
        self._idle = [None] * len(self._idle)


class Sidecar:
    """``billing-service webhooks serve`` as a child process (optionally under pyinstrument).

    Args:
        workers: ``BILLING_WEBHOOK_WORKERS`` (-1: leave it unset, the sidecar's default).
        extra_env: More environment (a processor's key and API base, worker settings).
        root: The checkout whose ``billing_service`` runs (another git worktree, for a
            baseline of earlier code measured in the same run); this one by default.
    """

    def __init__(
        self,
        mongo_uri: str,
        database: str,
        *,
        workers: int,
        profile: str = "",
        extra_env: dict[str, str] | None = None,
        root: Path = ROOT,
        base_env: dict[str, str] | None = None,
    ) -> None:
        env = {
            **(os.environ if base_env is None else base_env),
            "PYTHONPATH": str(root),
            "MONGODB_URI": mongo_uri,
            "BILLING_MONGODB_DATABASE": database,
            "STRIPE_WEBHOOK_SECRET": SECRET,
            "BILLING_WEBHOOK_ADDRESS": "127.0.0.1:0",
            **({"BILLING_WEBHOOK_WORKERS": str(workers)} if workers >= 0 else {}),
            "BILLING_WEBHOOK_METRICS_PORT": "0",
            "BILLING_LOG_LEVEL": "ERROR",  # the probe's forged delivery would log a warning
            **(extra_env or {}),
        }
        prefix = ["-m", "pyinstrument", "-i", "0.0005", "-r", "text", "-o", profile] if profile else []
        self.proc = subprocess.Popen(
            [sys.executable, *prefix, "-m", "billing_service", "webhooks", "serve"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("billing webhook sidecar on "):
                self.port = int(line.split()[4].rsplit(":", 1)[1])
                break
        if not self.port:
            self.stop()
            raise RuntimeError(f"webhook sidecar did not start (exit {self.proc.returncode})")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.asynccontextmanager
async def fresh_store() -> AsyncIterator[str]:
    """A new embedded store for one point, watched as ``mongo`` while it runs.

    SecantusDB gets slower as writes accumulate in the process, whichever database they went
    to (a fresh collection took 781 inserts/s on a new server and 111/s after ~12,000 earlier
    inserts), so a shared store would favour whichever path runs first.
    """
    mongo = EmbeddedMongo(":memory:")
    await mongo.start()
    previous = WATCH.get("mongo")
    WATCH["mongo"] = mongo._proc.pid if mongo._proc else 0
    try:
        yield mongo.uri
    finally:
        if previous is None:
            WATCH.pop("mongo", None)
        else:
            WATCH["mongo"] = previous
        await mongo.astop()


async def _http_point(cfg: Config, path: str, port: int, c: int, signer: Signer) -> Result:
    pool = HttpConnections(port, c)
    point = f"{path[:2]}{c}"

    def op(i: int) -> Awaitable[bytes]:
        return pool.send(signer.request(pool.host, signer.body(point, i)))

    try:
        return await closed_loop("webhook", path, c, op, seconds=cfg.seconds, warmup=cfg.warmup)
    finally:
        await pool.aclose()


async def _sidecar_point(cfg: Config, path: str, workers: int, c: int, signer: Signer) -> Result:
    """One point against a sidecar process of its own on a store of its own."""
    profile = str(cfg.profile_dir / f"webhook_{path}_c{c}.txt") if cfg.profile_dir else ""
    async with fresh_store() as mongo_uri:
        sidecar = Sidecar(mongo_uri, "bench_webhook", workers=workers, profile=profile)
        WATCH["sidecar"] = sidecar.proc.pid
        try:
            # Check the wiring: a signed event is accepted, a forged one is not.
            probe = HttpConnections(sidecar.port, 1)
            answer = json.loads(await probe.send(signer.request(probe.host, signer.body("probe", c))))
            assert answer == {"received": True, "duplicate": False}, answer
            forged = Signer("whsec_not_the_secret")
            try:
                await probe.send(forged.request(probe.host, forged.body("forged", c)))
            except RuntimeError as exc:
                assert "HTTP 400" in str(exc)
            else:
                raise AssertionError("the sidecar accepted a forged signature")
            await probe.aclose()
            result = await _http_point(cfg, path, sidecar.port, c, signer)
            result.extra["store"] = "fresh"
            return result
        finally:
            sidecar.stop()
            WATCH.pop("sidecar", None)


class StoreFloor:
    """The sidecar's inbox insert, issued directly with PyMongo (no HTTP, no verification)."""

    def __init__(self, store: MongoBillingStore, database: str) -> None:
        self.inbox = MongoWebhookInbox(store.database.client, database)
        self.coll = self.inbox.collection
        head, tail = event_template()
        # What the sidecar stores: the verified event without its client secret.
        event = json.loads(head + b"evt_x" + tail)
        event["data"]["object"]["client_secret"] = "[scrubbed]"
        self.payload = Binary(json.dumps(event, separators=(",", ":")).encode())
        self.run = uuid.uuid4().hex[:10]

    def op(self, point: int) -> Callable[[int], Awaitable[object]]:
        async def insert(i: int) -> object:
            now = datetime.now(UTC)
            return await self.coll.insert_one({
                "_id": f"whe_{uuid.uuid4().hex}", "processor": "stripe",
                "event_id": f"evt_bench_{self.run}_{point}_{i:09d}", "type": "payment_intent.succeeded",
                "payload": self.payload, "status": "pending", "received_at": now, "available_at": now,
                "attempts": 0, "deliveries": 1, "lease_owner": "", "last_error": "",
            })  # fmt: skip

        return insert


async def _floor_point(cfg: Config, c: int) -> Result:
    async with fresh_store() as mongo_uri:
        store = MongoBillingStore.connect(mongo_uri, "bench_webhook")
        try:
            floor = StoreFloor(store, "bench_webhook")
            await floor.inbox.ensure_indexes()
            result = await closed_loop("webhook", "store_floor", c, floor.op(c), seconds=cfg.seconds, warmup=cfg.warmup)
            result.extra["store"] = "fresh"
            return result
        finally:
            await store.aclose()


async def webhook_path(cfg: Config, mongo_uri: str) -> list[Result]:
    """Sidecar ingestion vs a bare endpoint on the same stack vs the raw inbox insert.

    ``mongo_uri`` (the runner's shared store) is not used: every store-backed point runs on
    a fresh embedded store of its own (see :func:`fresh_store`).
    """
    results: list[Result] = []
    signer = Signer()
    bare = Child(["-m", "benchmarks.webhook", "bare"])
    shared_mongo = WATCH.pop("mongo", None)
    try:
        for c in cfg.levels:
            results.append(await _sidecar_point(cfg, "sidecar", 0, c, signer))
            WATCH["bare"] = bare.proc.pid
            results.append(await _http_point(cfg, "bare_endpoint", int(bare.info), c, signer))
            results[-1].extra["store"] = "none"
            WATCH.pop("bare", None)
            results.append(await _floor_point(cfg, c))
            results.append(await _sidecar_point(cfg, "sidecar_workers", 4, c, signer))
    finally:
        bare.stop()
        if shared_mongo is not None:
            WATCH["mongo"] = shared_mongo
    return results


# ------------------------------------------------------------------ the bare endpoint


async def serve_bare(port: int) -> None:
    """Starlette under uvicorn, configured like the sidecar, answering 200 doing no work."""
    import signal

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from billing_service.entrypoints.webhooks.cli import bind

    async def ok(request: Request) -> Response:
        await request.body()
        return JSONResponse({"received": True, "duplicate": False})

    app = Starlette(routes=[Route("/webhooks/stripe", ok, methods=["POST"])])
    sock = bind(f"127.0.0.1:{port}")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", server_header=False)
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await task


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    bare = sub.add_parser("bare")
    bare.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve_bare(args.port))


if __name__ == "__main__":
    main()
