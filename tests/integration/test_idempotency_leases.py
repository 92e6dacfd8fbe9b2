"""Idempotency leases on the embedded store: renewed while the executor lives, fencing its writes.

Before the heartbeat a request that outlived its 60 s lease (several processor calls of 3
attempts x 20 s) was taken over by its own retry while still running; and the stale
executor's commits still landed after the takeover.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.domain.common import AuditEvent, Processor, RequestOrigin
from billing_service.domain.customers import Customer
from billing_service.domain.errors import RequestInProgress
from billing_service.service_layer.clock import ManualClock, SystemClock
from billing_service.service_layer.core import Deps, commit
from billing_service.service_layer.idempotency import (
    Idempotency,
    RequestContext,
    ensure_leases,
    hold_request,
)
from billing_service.service_layer.ports import HoldOutcome, IdempotencyOutcome, Insert

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def customer(customer_id: str) -> Customer:
    return Customer(
        id=customer_id, email="", name="", description="", metadata={}, default_processor=Processor.FAKE,
        created_at=NOW, updated_at=NOW,
    )  # fmt: skip


def event(resource_id: str) -> AuditEvent:
    return AuditEvent(f"evt_{resource_id}", "svc", "r", "customer.created", "customer", resource_id, "", "x", NOW)


async def test_a_live_executor_keeps_its_lease_past_the_term(store: MongoBillingStore) -> None:
    idem = Idempotency(store, SystemClock(), lease_seconds=0.6)
    runs: list[int] = []
    release = asyncio.Event()

    async def slow(ctx: RequestContext) -> bytes:
        runs.append(ctx.attempt)
        await release.wait()  # several processor calls, longer than the lease
        return b"done"

    async def retry(ctx: RequestContext) -> bytes:
        runs.append(ctx.attempt)  # a takeover: the same request executing a second time
        return b"again"

    def call(work: object) -> asyncio.Future[bytes]:
        return asyncio.ensure_future(
            idem.run(caller="svc", method="/m", request_id="r1", fingerprint="f", resource_prefix="x", work=work)  # type: ignore[arg-type]
        )

    first = call(slow)
    await asyncio.sleep(1.5)  # 2.5 lease terms: the heartbeat must have renewed it
    try:
        with pytest.raises(RequestInProgress):
            await call(retry)
    finally:
        release.set()
    assert await first == b"done"
    assert runs == [1]  # never executed twice


async def test_a_taken_over_executor_can_neither_commit_nor_send(store: MongoBillingStore) -> None:
    clock = ManualClock(NOW)
    idem = Idempotency(store, clock, lease_seconds=60)
    deps = Deps(store=store, processors={}, default_processor=Processor.FAKE, clock=clock)
    stalled, resume = asyncio.Event(), asyncio.Event()
    outcomes: list[str] = []

    async def stale(ctx: RequestContext) -> bytes:
        stalled.set()
        await resume.wait()  # hung: its process could not reach the store, its lease lapsed
        try:
            ensure_leases(clock.now())
        except RequestInProgress:
            outcomes.append("refused to send")
        try:
            await commit(deps, [Insert(customer("cus_stale"))], [event("cus_stale")])
        except RequestInProgress:
            outcomes.append("commit refused")
        return b"stale"

    async def fresh(ctx: RequestContext) -> bytes:
        await commit(deps, [Insert(customer("cus_fresh"))], [event("cus_fresh")])
        return b"fresh"

    run = {"caller": "svc", "method": "/m", "request_id": "r2", "fingerprint": "f", "resource_prefix": "x"}
    first = asyncio.create_task(idem.run(**run, work=stale))  # type: ignore[arg-type]
    await stalled.wait()
    clock.advance(timedelta(seconds=61))  # no heartbeat reached the store in a whole term
    assert await idem.run(**run, work=fresh) == b"fresh"  # type: ignore[arg-type]
    resume.set()
    await first
    assert outcomes == ["refused to send", "commit refused"]
    assert await store.get(Customer, "cus_stale") is None
    assert await store.database["audit_events"].count_documents({"resource_id": "cus_stale"}) == 0
    assert await store.get(Customer, "cus_fresh") is not None


async def test_holding_another_requests_lapsed_record(store: MongoBillingStore) -> None:
    clock = ManualClock(NOW)
    origin = RequestOrigin("svc", "/billing.v1.BillingService/CreatePayment", "r4")
    begin = {
        "caller": origin.caller, "method": origin.method, "request_id": origin.request_id, "fingerprint": "f",
        "resource_id": "pay_1", "lease_seconds": 60, "ttl_seconds": 86400,
    }  # fmt: skip
    outcome, record = await store.idempotency_begin(**begin, owner="creator", now=clock.now())  # type: ignore[arg-type]
    assert outcome is IdempotencyOutcome.STARTED
    async with hold_request(store, clock, origin, lease_seconds=60) as hold:
        assert hold.outcome is HoldOutcome.BUSY and hold.retry_after == record.lease_until
    clock.advance(timedelta(seconds=61))  # the creator crashed
    async with hold_request(store, clock, origin, lease_seconds=60) as hold:
        assert hold.outcome is HoldOutcome.HELD
        retry, _ = await store.idempotency_begin(**begin, owner="retry", now=clock.now())  # type: ignore[arg-type]
        assert retry is IdempotencyOutcome.IN_PROGRESS  # no retry resumes the create while held
    resumed, again = await store.idempotency_begin(**begin, owner="retry", now=clock.now())  # type: ignore[arg-type]
    assert resumed is IdempotencyOutcome.STARTED and again.resource_id == "pay_1" and again.attempts == 2
    await store.idempotency_complete(again.key, "retry", response=b"r", error=None)
    async with hold_request(store, clock, origin, lease_seconds=60) as hold:
        assert hold.outcome is HoldOutcome.COMPLETED
    gone = RequestOrigin("svc", origin.method, "never-seen")
    async with hold_request(store, clock, gone, lease_seconds=60) as hold:
        assert hold.outcome is HoldOutcome.ABSENT and hold.quiet
