"""Commit-to-delivery latency of WatchEvents, as a ratio to a raw change stream on the same store.

One service child process (sequencer, tailer, EventService) on the benchmark's store. This
process commits customers through its own ``MongoBillingStore`` (as another replica or the
webhook sidecar would: the outbox is written in the commit's transaction), one at a time,
and measures from the call to ``commit`` (so both figures include the commit itself) to
the moment each watcher receives the event: with 1 and with 20 ``WatchEvents`` streams.
The baseline is the same commits seen by 1 and 20 raw change streams on the ``customers``
collection, opened from this process on the same store, in the same run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from billing.v1 import event_service_pb2, event_service_pb2_grpc
from pymongo import AsyncMongoClient

from benchmarks.harness import Result, percentile
from benchmarks.scenarios import Config, channel, start_service
from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.customers import Customer
from billing_service.domain.ids import new_id
from billing_service.service_layer.ports import Insert

WATCHERS = (1, 20)
COMMITS = 150


def _customer() -> tuple[Customer, AuditEvent]:
    now = datetime.now(UTC)
    customer = Customer(
        id=new_id("cus"), email="bench@example.com", name="Bench", description="", metadata={},
        default_processor=Processor.FAKE, created_at=now, updated_at=now,
    )  # fmt: skip
    audit = AuditEvent(
        id=new_id("evt"), caller="bench", request_id=str(uuid.uuid4()), action="customer.created",
        resource_type="customer", resource_id=customer.id, before_status="", after_status="active", at=now,
    )  # fmt: skip
    return customer, audit


async def _measure(
    store: MongoBillingStore, arrivals: dict[str, list[float]], watchers: int, commits: int
) -> list[float]:
    """Commits one customer at a time; returns every watcher's commit-to-arrival latency (ms)."""
    latencies: list[float] = []
    for _ in range(commits):
        customer, audit = _customer()
        arrivals[customer.id] = []
        # From the commit call: a change stream may announce the change before the
        # commit's answer is back, so "after commit returned" would go negative.
        committed = time.perf_counter()
        await store.commit([Insert(customer)], [audit])
        deadline = committed + 10
        while len(arrivals[customer.id]) < watchers and time.perf_counter() < deadline:
            await asyncio.sleep(0.0005)
        latencies += [(t - committed) * 1000 for t in arrivals.pop(customer.id)]
        await asyncio.sleep(0.005)
    return latencies


async def _watch_events(port: int, watchers: int, arrivals: dict[str, list[float]]) -> list[asyncio.Task[None]]:
    ready = asyncio.Event()
    started = 0

    async def one() -> None:
        nonlocal started
        async with channel(port, own_connection=True) as ch:
            stub: Any = event_service_pb2_grpc.EventServiceStub(ch)
            request = event_service_pb2.WatchEventsRequest(event_types=["customer.created"])
            async for message in stub.WatchEvents(request):
                if message.HasField("heartbeat"):
                    started += 1
                    if started == watchers:
                        ready.set()
                    continue
                found = arrivals.get(message.event.resource_id)
                if found is not None:
                    found.append(time.perf_counter())

    tasks = [asyncio.ensure_future(one()) for _ in range(watchers)]
    await asyncio.wait_for(ready.wait(), 30)
    return tasks


async def _change_streams(
    client: AsyncMongoClient[dict[str, Any]], database: str, watchers: int, arrivals: dict[str, list[float]]
) -> list[asyncio.Task[None]]:
    opened = 0
    ready = asyncio.Event()

    async def one() -> None:
        nonlocal opened
        async with await client[database]["customers"].watch([{"$match": {"operationType": "insert"}}]) as stream:
            opened += 1
            if opened == watchers:
                ready.set()
            async for change in stream:
                found = arrivals.get(change["documentKey"]["_id"])
                if found is not None:
                    found.append(time.perf_counter())

    tasks = [asyncio.ensure_future(one()) for _ in range(watchers)]
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(0.2)
    return tasks


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _result(path: str, watchers: int, latencies: list[float], seconds: float, extra: dict[str, Any]) -> Result:
    values = sorted(latencies)
    return Result(
        scenario="events", path=path, concurrency=watchers, ops=len(values), errors=0, seconds=seconds,
        rps=len(values) / seconds if seconds else 0.0, p50_ms=percentile(values, 0.5), p99_ms=percentile(values, 0.99),
        extra=extra,
    )  # fmt: skip


async def events_path(cfg: Config, mongo_uri: str) -> list[Result]:
    """WatchEvents and raw change streams, 1 and 20 of each, on the same commits' kind."""
    del cfg  # a fixed number of commits per point (latency, not throughput)
    database = f"bench_events_{uuid.uuid4().hex[:8]}"
    store = MongoBillingStore.connect(mongo_uri, database)
    await store.ensure_indexes()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    service = start_service(mongo_uri, database)
    results: list[Result] = []
    try:
        port = int(service.info)
        for watchers in WATCHERS:
            arrivals: dict[str, list[float]] = {}
            tasks = await _change_streams(client, database, watchers, arrivals)
            await _measure(store, arrivals, watchers, 10)  # warm-up
            t0 = time.perf_counter()
            raw = await _measure(store, arrivals, watchers, COMMITS)
            raw_seconds = time.perf_counter() - t0
            await _stop(tasks)
            arrivals = {}
            tasks = await _watch_events(port, watchers, arrivals)
            await _measure(store, arrivals, watchers, 10)
            t0 = time.perf_counter()
            watched = await _measure(store, arrivals, watchers, COMMITS)
            watch_seconds = time.perf_counter() - t0
            await _stop(tasks)
            raw_p50, raw_p99 = percentile(sorted(raw), 0.5), percentile(sorted(raw), 0.99)
            ours_p50, ours_p99 = percentile(sorted(watched), 0.5), percentile(sorted(watched), 0.99)
            ratios = {"ratio_p50": round(ours_p50 / raw_p50, 2), "ratio_p99": round(ours_p99 / raw_p99, 2)}
            results.append(_result("raw change stream", watchers, raw, raw_seconds, {}))
            results.append(_result("WatchEvents", watchers, watched, watch_seconds, ratios))
            print(
                f"   {watchers:>2} watcher(s): WatchEvents p50 {ours_p50:.1f} ms p99 {ours_p99:.1f} ms; "
                f"raw change stream p50 {raw_p50:.1f} ms p99 {raw_p99:.1f} ms; "
                f"ratio p50 {ratios['ratio_p50']} p99 {ratios['ratio_p99']}",
                flush=True,
            )
    finally:
        service.stop()
        await store.aclose()
        await client.drop_database(database)
        await client.close()
    return results
