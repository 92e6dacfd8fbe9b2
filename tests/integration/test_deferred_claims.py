"""Deferred claims on the embedded store: a fresh request's key is claimed by its first commit
(or right before its first processor write), and its answer rides in its last commit.

What must not change with it: nothing reaches a processor or the store without a durable
claim, concurrent duplicates execute once, a takeover fences the stale executor out, and no
write ever waits behind a crashed executor's open transaction.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from billing_service.adapters.mongo.store import MongoBillingStore, idempotency_key
from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.customers import Customer
from billing_service.domain.errors import BillingError, ConcurrencyConflict, NotFound, RequestInProgress
from billing_service.service_layer.clock import ManualClock, SystemClock
from billing_service.service_layer.core import Deps, commit
from billing_service.service_layer.executions import ensure_leases
from billing_service.service_layer.idempotency import Idempotency, RequestContext
from billing_service.service_layer.ports import Insert, PaymentProcessor

NOW = datetime(2026, 3, 1, tzinfo=UTC)
RUN = {"caller": "svc", "method": "/m", "fingerprint": "f", "resource_prefix": "cus", "defer_claim": True}


def customer(customer_id: str) -> Customer:
    return Customer(
        id=customer_id, email="", name="", description="", metadata={}, default_processor=Processor.FAKE,
        created_at=NOW, updated_at=NOW,
    )  # fmt: skip


def event(resource_id: str) -> AuditEvent:
    return AuditEvent(f"evt_{resource_id}", "svc", "r", "customer.created", "customer", resource_id, "", "x", NOW)


def answer(result: Any) -> bytes:
    return f"answer:{result.id}".encode()


class Recorder:
    """A stand-in processor (not ours to test) that notes what our record said when it was called."""

    name = Processor.FAKE

    def __init__(self, store: MongoBillingStore, request_id: str) -> None:
        self.store, self.request_id, self.seen = store, request_id, []  # type: ignore[var-annotated]

    async def create_customer(self, customer: Customer, *, idempotency_key: str) -> str:
        record = await self.store.idempotency_get(caller="svc", method="/m", request_id=self.request_id, now=NOW)
        self.seen.append(None if record is None else record.state)
        return "cus_at_processor"


def deps_for(store: MongoBillingStore, clock: Any, processor: object | None = None) -> Deps:
    procs: dict[Processor, PaymentProcessor] = {Processor.FAKE: processor} if processor else {}  # type: ignore[dict-item]
    return Deps(store=store, processors=procs, default_processor=Processor.FAKE, clock=clock)


async def test_intent_claims_and_outcome_answers_in_the_same_transactions(store: MongoBillingStore) -> None:
    clock = ManualClock(NOW)
    idem, deps = Idempotency(store, clock), deps_for(store, clock)

    async def work(ctx: RequestContext) -> bytes:
        assert await store.idempotency_get(caller="svc", method="/m", request_id="r1", now=NOW) is None
        created = customer(ctx.resource_id)
        await commit(deps, [Insert(created)], [event(created.id)], answer=created)
        record = await store.idempotency_get(caller="svc", method="/m", request_id="r1", now=NOW)
        assert record is not None and record.state == "completed" and record.response == answer(created)
        return answer(created)

    first = await idem.run(request_id="r1", work=work, answer=answer, **RUN)  # type: ignore[arg-type]
    replayed = await idem.run(request_id="r1", work=work, answer=answer, **RUN)  # type: ignore[arg-type]
    assert first == replayed


async def test_concurrent_duplicates_write_once_and_the_loser_replays(store: MongoBillingStore) -> None:
    clock = ManualClock(NOW)
    idem, deps = Idempotency(store, clock), deps_for(store, clock)
    both_read, first_done = asyncio.Event(), asyncio.Event()
    readers: list[str] = []

    async def work(ctx: RequestContext) -> bytes:
        readers.append(ctx.resource_id)
        if len(readers) == 2:
            both_read.set()
        await both_read.wait()  # both executions ran the read-only start of the use case
        if ctx.resource_id != readers[0]:
            await first_done.wait()
        created = customer(ctx.resource_id)
        await commit(deps, [Insert(created)], [event(created.id)], answer=created)
        first_done.set()
        return answer(created)

    results = await asyncio.gather(
        *(idem.run(request_id="r2", work=work, answer=answer, **RUN) for _ in range(2))  # type: ignore[arg-type]
    )
    assert results[0] == results[1] == f"answer:{readers[0]}".encode()
    assert await store.get(Customer, readers[0]) is not None
    assert await store.get(Customer, readers[1]) is None  # the loser's commit wrote nothing
    assert await store.database["audit_events"].count_documents({}) == 1


async def test_a_processor_write_is_sent_only_after_the_claim_is_durable(store: MongoBillingStore) -> None:
    clock = ManualClock(NOW)
    processor = Recorder(store, "r3")
    idem, deps = Idempotency(store, clock), deps_for(store, clock, processor)

    async def work(ctx: RequestContext) -> bytes:
        await deps.processor(Processor.FAKE).create_customer(customer(ctx.resource_id), idempotency_key="k")
        return b"done"

    assert await idem.run(request_id="r3", work=work, answer=answer, **RUN) == b"done"  # type: ignore[arg-type]
    assert processor.seen == ["in_progress"]

    # Another execution claimed the key first: this one's processor write is never sent.
    async def raced(ctx: RequestContext) -> bytes:
        await idem.run(request_id="r4", work=work_claims_and_waits, answer=answer, **RUN)  # type: ignore[arg-type]
        await deps.processor(Processor.FAKE).create_customer(customer(ctx.resource_id), idempotency_key="k")
        return b"raced"

    async def work_claims_and_waits(ctx: RequestContext) -> bytes:
        created = customer(ctx.resource_id)
        await commit(deps, [Insert(created)], [event(created.id)], answer=created)
        return answer(created)

    processor.request_id = "r4"
    replay = await idem.run(request_id="r4", work=raced, answer=answer, **RUN)  # type: ignore[arg-type]
    assert replay.startswith(b"answer:")  # the winner's answer
    assert processor.seen == ["in_progress"]  # nothing more was sent


async def test_a_final_error_before_any_write_is_stored_and_a_retryable_one_leaves_nothing(
    store: MongoBillingStore,
) -> None:
    clock = ManualClock(NOW)
    idem = Idempotency(store, clock)
    runs: list[str] = []

    async def missing(ctx: RequestContext) -> bytes:
        runs.append("missing")
        raise NotFound("customer", "cus_nope", field_path="customer_id")

    for _ in range(2):
        with pytest.raises(NotFound):
            await idem.run(request_id="r5", work=missing, answer=answer, **RUN)  # type: ignore[arg-type]
    assert runs == ["missing"]  # replayed, not executed again

    async def unavailable(ctx: RequestContext) -> bytes:
        raise RequestInProgress("store hiccup")

    with pytest.raises(RequestInProgress):
        await idem.run(request_id="r6", work=unavailable, answer=answer, **RUN)  # type: ignore[arg-type]
    assert await store.idempotency_get(caller="svc", method="/m", request_id="r6", now=NOW) is None


@pytest.mark.parametrize("loser_fails", [True, False], ids=["final-error", "no-write"])
async def test_a_duplicate_that_finishes_before_writing_replays_the_winners_answer(
    store: MongoBillingStore, loser_fails: bool
) -> None:
    """Two executions of one request: the winner commits its answer while the other still reads.

    The other then sees the resource already changed (a capture finding the payment
    SUCCEEDED) and fails before any write with a final error, or returns without writing.
    Both calls must answer what the winner answered: a duplicate never gets one of its own.
    """
    clock = ManualClock(NOW)
    idem, deps = Idempotency(store, clock), deps_for(store, clock)
    started, won = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def work(ctx: RequestContext) -> bytes:
        runs.append(ctx.resource_id)
        if len(runs) == 1:  # the winner: commits once the duplicate has started
            await started.wait()
            created = customer(ctx.resource_id)
            await commit(deps, [Insert(created)], [event(created.id)], answer=created)
            won.set()
            return answer(created)
        started.set()
        await won.wait()  # the duplicate reads after the winner's commit, before writing anything
        if loser_fails:
            raise NotFound("customer", "cus_gone", field_path="customer_id")
        return b"the duplicate's own answer"

    first = asyncio.create_task(idem.run(request_id="r7", work=work, answer=answer, **RUN))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    second = await idem.run(request_id="r7", work=work, answer=answer, **RUN)  # type: ignore[arg-type]
    assert second == await first == f"answer:{runs[0]}".encode()
    record = await store.idempotency_get(caller="svc", method="/m", request_id="r7", now=NOW)
    assert record is not None and record.state == "completed" and record.error is None


async def test_a_taken_over_deferred_executor_can_neither_commit_nor_send(store: MongoBillingStore) -> None:
    clock = ManualClock(NOW)
    idem, deps = Idempotency(store, clock, lease_seconds=60), deps_for(store, clock)
    stalled, resume = asyncio.Event(), asyncio.Event()
    outcomes: list[str] = []
    resources: list[tuple[str, int]] = []

    async def stale(ctx: RequestContext) -> bytes:
        resources.append((ctx.resource_id, ctx.attempt))
        await commit(deps, [Insert(customer(ctx.resource_id))], [event(ctx.resource_id)])  # the intent: claims
        stalled.set()
        await resume.wait()  # hung: its process could not reach the store, its lease lapsed
        try:
            ensure_leases(clock.now())
        except RequestInProgress:
            outcomes.append("refused to send")
        try:
            await commit(deps, [], [event(f"{ctx.resource_id}_late")])
        except RequestInProgress:
            outcomes.append("commit refused")
        return b"stale"

    async def takeover(ctx: RequestContext) -> bytes:
        resources.append((ctx.resource_id, ctx.attempt))
        found = await store.get(Customer, ctx.resource_id)
        assert found is not None  # resumes the first execution's resource
        return b"resumed"

    first = asyncio.create_task(idem.run(request_id="r7", work=stale, answer=answer, **RUN))  # type: ignore[arg-type]
    await stalled.wait()
    clock.advance(timedelta(seconds=61))  # no heartbeat reached the store in a whole term
    assert await idem.run(request_id="r7", work=takeover, answer=answer, **RUN) == b"resumed"  # type: ignore[arg-type]
    resume.set()
    await first
    assert outcomes == ["refused to send", "commit refused"]
    assert resources[1] == (resources[0][0], 2)
    assert await store.database["audit_events"].count_documents({"resource_id": f"{resources[0][0]}_late"}) == 0


async def test_a_live_deferred_executor_keeps_its_lease_past_the_term(store: MongoBillingStore) -> None:
    idem = Idempotency(store, SystemClock(), lease_seconds=0.6)
    deps = deps_for(store, SystemClock())
    release, claimed = asyncio.Event(), asyncio.Event()
    runs: list[int] = []

    async def slow(ctx: RequestContext) -> bytes:
        runs.append(ctx.attempt)
        await commit(deps, [Insert(customer(ctx.resource_id))], [event(ctx.resource_id)])
        claimed.set()
        await release.wait()  # several processor calls, longer than the lease
        return b"done"

    first = asyncio.ensure_future(idem.run(request_id="r8", work=slow, answer=answer, **RUN))  # type: ignore[arg-type]
    await claimed.wait()
    await asyncio.sleep(1.5)  # 2.5 lease terms: the heartbeat (a transaction) must have renewed it
    try:
        with pytest.raises(RequestInProgress):
            await idem.run(request_id="r8", work=slow, answer=answer, **RUN)  # type: ignore[arg-type]
    finally:
        release.set()
    assert await first == b"done"
    assert runs == [1]


async def test_nothing_waits_behind_a_crashed_executors_open_transaction(
    store: MongoBillingStore, mongo_uri: str
) -> None:
    """A crashed executor's outcome transaction still holds its record: retries fail fast, never hang."""
    clock = ManualClock(NOW)
    idem, deps = Idempotency(store, clock, lease_seconds=60), deps_for(store, clock)

    async def intent(ctx: RequestContext) -> bytes:
        await commit(deps, [Insert(customer(ctx.resource_id))], [event(ctx.resource_id)])
        raise ConcurrencyConflict("crash right after the intent")  # retryable: the lease is released

    with pytest.raises(ConcurrencyConflict):
        await idem.run(request_id="r9", work=intent, answer=answer, **RUN)  # type: ignore[arg-type]
    key = idempotency_key("svc", "/m", "r9")
    raw: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    session = raw.start_session(causal_consistency=False)
    try:
        # The dead executor's last transaction: it wrote the record and never committed.
        await session.start_transaction(write_concern=WriteConcern(w="majority"))
        await raw[store.database.name]["idempotency"].update_one(
            {"_id": key}, {"$set": {"fenced_at": NOW}}, session=session
        )

        async def resume(ctx: RequestContext) -> bytes:
            return b"resumed"

        started = time.monotonic()
        with pytest.raises(BillingError) as refused:
            await idem.run(request_id="r9", work=resume, answer=answer, **RUN)  # type: ignore[arg-type]
        assert time.monotonic() - started < 5, "a takeover waited behind the open transaction"
        assert refused.value.reason in {"CONCURRENT_MODIFICATION", "REQUEST_IN_PROGRESS", "STORE_UNAVAILABLE"}
    finally:
        await session.abort_transaction()
        await session.end_session()
        await raw.close()
    assert await idem.run(request_id="r9", work=resume, answer=answer, **RUN) == b"resumed"  # type: ignore[arg-type]
