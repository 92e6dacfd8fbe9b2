"""Push delivery on the embedded store, to a real HTTP endpoint on a loopback port.

The event log is read from real ``event_log`` documents written in the documented shape;
the endpoint verifies every POST with the receivers' helper (``billing_client.push``). A
manual clock drives the retry schedule, so three days of retries take well under a second.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from itertools import pairwise
from typing import Any

from billing_service.adapters.mongo.event_delivery import MongoEventDeliveries
from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.adapters.push_sender import HttpxPushSender
from billing_service.domain.common import Processor
from billing_service.domain.ids import new_id
from billing_service.domain.push import RETRY_STEPS, RETRY_WINDOW, EventDelivery, delivery_id
from billing_service.entrypoints.grpc_api.event_service import render_event as render
from billing_service.entrypoints.push_delivery import PushDeliveryTasks
from billing_service.service_layer import push_endpoints
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.push_delivery import DeliveryWorker, FanOut
from billing_service.service_layer.push_ports import PushServices
from tests.helpers import rid
from tests.push_support import SECOND, T0, Receiver, advance_to, log_events, push_services


def _ctx(prefix: str) -> RequestContext:
    return RequestContext("ops", "/billing.v1.EventService/X", rid(), new_id(prefix))


async def _setup(store: MongoBillingStore) -> tuple[ManualClock, PushServices, Deps]:
    clock = ManualClock(T0)
    push = await push_services(store, clock)
    deps = Deps(store=store, processors={}, default_processor=Processor.FAKE, clock=clock, push=push)
    return clock, push, deps


async def _endpoint(deps: Deps, url: str, *types: str, disabled: bool = False) -> push_endpoints.EndpointView:
    cmd = push_endpoints.CreateEndpoint(url=url, event_types=types or ("*",), disabled=disabled)
    return await push_endpoints.create_endpoint(deps, _ctx("ep"), cmd)


async def _deliveries(store: MongoBillingStore) -> list[dict[str, Any]]:
    return await store.database["event_deliveries"].find({}).sort("seq", 1).to_list()


def _worker(push: PushServices, sender: HttpxPushSender, owner: str = "w1", **kwargs: Any) -> DeliveryWorker:
    return DeliveryWorker(push, sender, render, owner=owner, rng=random.Random(7), **kwargs)


async def test_fanout_queues_each_event_once_for_each_matching_endpoint(store: MongoBillingStore) -> None:
    clock, push, deps = await _setup(store)
    payments = await _endpoint(deps, "https://a.example/hook", "payment.*")
    refunds = await _endpoint(deps, "https://b.example/hook", "refund.succeeded")
    await _endpoint(deps, "https://c.example/hook", "*", disabled=True)
    clock.advance(SECOND)
    seqs = await log_events(
        store.database, ["payment.created", "payment.succeeded", "refund.succeeded", "customer.created"], at=clock.now()
    )
    fanout = FanOut(push)
    assert await fanout.run_pass() == 4
    expected = {
        delivery_id(payments.endpoint.id, seqs[0]),
        delivery_id(payments.endpoint.id, seqs[1]),
        delivery_id(refunds.endpoint.id, seqs[2]),
    }
    assert {d["_id"] for d in await _deliveries(store)} == expected
    assert await fanout.run_pass() == 0  # nothing new

    # A crash between the inserts and saving the position: the pass repeats, nothing doubles.
    await store.database["event_meta"].update_one({"_id": "push_fanout"}, {"$set": {"position": 0}})
    assert await fanout.run_pass() == 4
    assert {d["_id"] for d in await _deliveries(store)} == expected

    # An endpoint created later does not get the events that entered the log before it.
    clock.advance(SECOND)
    late = await _endpoint(deps, "https://d.example/hook", "*")
    clock.advance(SECOND)
    (newer,) = await log_events(store.database, ["customer.updated"], at=clock.now())
    assert await fanout.run_pass() == 1
    late_ones = [d for d in await _deliveries(store) if d["endpoint_id"] == late.endpoint.id]
    assert [d["seq"] for d in late_ones] == [newer]


async def test_two_replicas_claim_one_delivery_once(store: MongoBillingStore, mongo_uri: str) -> None:
    clock, push, deps = await _setup(store)
    await _endpoint(deps, "https://a.example/hook")
    clock.advance(SECOND)
    await log_events(store.database, ["payment.created"], at=clock.now())
    await FanOut(push).run_pass()
    # Two replicas: each its own client, both read the same due delivery, then both claim it.
    other = MongoBillingStore.connect(mongo_uri, store.database.name)
    try:
        replicas = [push.deliveries, MongoEventDeliveries(other.database.client, store.database.name)]
        seen: list[EventDelivery] = []
        for deliveries in replicas:
            seen += await deliveries.due(now=clock.now(), limit=10)
        until = clock.now() + timedelta(seconds=30)
        won = await asyncio.gather(*(r.claim(d, f"w{i}", now=clock.now(), until=until) for i, (r, d) in
                                     enumerate(zip(replicas, seen, strict=True))))  # fmt: skip
        assert sorted(won) == [False, True]
    finally:
        await other.aclose()


async def test_endpoint_that_fails_times_out_and_recovers_gets_every_event_once(store: MongoBillingStore) -> None:
    clock, push, deps = await _setup(store)
    receiver = await Receiver(now=clock, hang_seconds=2.0).start()
    sender = HttpxPushSender(timeout_seconds=0.3)
    try:
        view = await _endpoint(deps, receiver.url, "payment.*")
        first_secret = view.secret
        receiver.secrets = [first_secret]
        worker = _worker(push, sender)
        clock.advance(SECOND)
        await log_events(store.database, ["payment.created"] * 3, at=clock.now())
        await FanOut(push).run_pass()
        logged = {d["event_id"] for d in await _deliveries(store)}

        receiver.mode = "fail"  # 500s
        assert await worker.run_once() == 3
        rows = await _deliveries(store)
        assert {(r["state"], r["attempt_count"], r["last_status_code"], r["last_error"]) for r in rows} == {
            ("pending", 1, 500, "http_status")
        }
        assert all(timedelta(seconds=26) <= r["next_attempt_at"] - clock.now() <= timedelta(seconds=34) for r in rows)
        assert await worker.run_once() == 0  # nothing due yet

        receiver.mode = "hang"  # answers after the sender's timeout
        clock.advance(timedelta(seconds=40))
        assert await worker.run_once() == 3
        rows = await _deliveries(store)
        assert {(r["attempt_count"], r["last_status_code"], r["last_error"]) for r in rows} == {(2, 0, "timeout")}
        endpoint = await push.endpoints.get(view.endpoint.id)
        assert endpoint is not None and endpoint.consecutive_failures == 6 and endpoint.backing_off()

        # Backing off: one attempt at a time, the others skip a step of their schedule.
        receiver.mode = "fail"
        clock.advance(timedelta(minutes=5))
        assert await worker.run_once() == 1
        assert receiver.requests == 7

        # A rotation while it is down: both secrets sign during the overlap.
        rotated = await push_endpoints.rotate_secret(
            deps, _ctx("sk"), push_endpoints.RotateSecret(view.endpoint.id, timedelta(hours=1))
        )
        assert rotated.secret != first_secret and len(rotated.secrets) == 2
        receiver.secrets = [first_secret]  # the receiver has not deployed the new one yet
        receiver.mode = "ok"
        clock.advance(timedelta(minutes=10))
        assert await worker.run_once() == 1  # the probe succeeds...
        receiver.secrets = [rotated.secret]  # ...and the receiver switches to the new secret
        assert await worker.run_once() == 2  # ...which made the backlog due at once
        assert sorted(receiver.event_ids()) == sorted(logged)  # every event, once
        assert {r.signatures for r in receiver.received} == {2}
        assert receiver.rejected == 0
        assert {r["state"] for r in await _deliveries(store)} == {"succeeded"}
        endpoint = await push.endpoints.get(view.endpoint.id)
        assert endpoint is not None and endpoint.consecutive_failures == 0 and endpoint.last_success_at is not None

        # After the overlap only the new secret signs; the old one no longer verifies.
        clock.advance(timedelta(hours=2))
        await log_events(store.database, ["payment.succeeded"], at=clock.now())
        await FanOut(push).run_pass()
        receiver.secrets = [first_secret]
        await worker.run_once()
        assert receiver.rejected == 1
        receiver.secrets = [rotated.secret]
        clock.advance(timedelta(minutes=1))
        assert await worker.run_once() == 1
        assert receiver.received[-1].signatures == 1
    finally:
        await sender.aclose()
        await receiver.stop()


async def test_dead_letter_after_three_days_then_replay(store: MongoBillingStore) -> None:
    clock, push, deps = await _setup(store)
    receiver = await Receiver(now=clock, mode="fail").start()
    sender = HttpxPushSender(timeout_seconds=2)
    try:
        view = await _endpoint(deps, receiver.url)
        receiver.secrets = [view.secret]
        worker = _worker(push, sender)
        clock.advance(SECOND)
        (seq,) = await log_events(store.database, ["refund.succeeded"], at=clock.now())
        await FanOut(push).run_pass()
        queued = clock.now()
        attempts = []
        for _ in range(30):
            await worker.run_once()
            (row,) = await _deliveries(store)
            if row["state"] != "pending":
                break
            attempts.append(row["last_attempt_at"])
            advance_to(clock, row["next_attempt_at"])
        assert row["state"] == "dead_lettered"
        assert row["last_error"] == "http_status" and row["last_status_code"] == 500
        assert row["attempt_count"] == receiver.requests == 16
        assert row["last_attempt_at"] == queued + RETRY_WINDOW  # the last attempt is made when the window ends
        waits = [b - a for a, b in pairwise(attempts)]
        for wait, step in zip(waits, RETRY_STEPS, strict=False):  # the documented schedule, +-10 %
            assert step * 0.9 <= wait <= step * 1.1
        assert row["expire_at"] is not None

        # Replay by API (the use case the RPC runs): pending again with a fresh window.
        receiver.mode = "ok"
        replayed = await push_endpoints.replay_events(deps, _ctx("rpl"), push_endpoints.ReplayCommand(view.endpoint.id))
        assert replayed.requeued_count == 1
        assert await worker.run_once() == 1
        (row,) = await _deliveries(store)
        assert row["state"] == "succeeded" and row["attempt_count"] == 17
        assert receiver.event_ids() == [row["event_id"]]

        # Every event of a window, delivered before or not: new deliveries, in the background.
        everything = await push_endpoints.replay_events(
            deps, _ctx("rpl"), push_endpoints.ReplayCommand(view.endpoint.id, all_events=True)
        )
        assert everything.first_cursor == everything.last_cursor == f"{seq:016x}-{await store.events.log_id()}"
        assert await FanOut(push).run_pass() == 1
        assert await worker.run_once() == 1
        assert receiver.event_ids() == [row["event_id"]] * 2
        assert len({r.delivery_id for r in receiver.received}) == 2
    finally:
        await sender.aclose()
        await receiver.stop()


async def test_workers_of_two_replicas_never_send_one_delivery_twice_at_once(
    store: MongoBillingStore, mongo_uri: str
) -> None:
    clock, push, deps = await _setup(store)
    receiver = await Receiver(now=clock, delay_seconds=0.02).start()
    other = MongoBillingStore.connect(mongo_uri, store.database.name)
    senders = [HttpxPushSender(), HttpxPushSender()]
    try:
        view = await _endpoint(deps, receiver.url)
        receiver.secrets = [view.secret]
        clock.advance(SECOND)
        logged = await log_events(store.database, ["payment.created"] * 40, at=clock.now())
        await FanOut(push).run_pass()
        second = await push_services(other, clock)
        workers = [_worker(push, senders[0], "replica-a"), _worker(second, senders[1], "replica-b")]

        async def drain(worker: DeliveryWorker) -> int:
            total = 0
            while await push.deliveries.due(now=clock.now(), limit=1) or worker.in_flight:
                total += await worker.run_once()
            return total

        counts = await asyncio.gather(*(drain(w) for w in workers))
        assert sum(counts) == len(logged)
        assert receiver.concurrent == 1
        assert len(receiver.received) == len(set(receiver.event_ids())) == len(logged)
    finally:
        for sender in senders:
            await sender.aclose()
        await other.aclose()
        await receiver.stop()


async def test_a_crashed_workers_claim_expires_and_another_delivers(store: MongoBillingStore) -> None:
    clock, push, deps = await _setup(store)
    receiver = await Receiver(now=clock, mode="hang", hang_seconds=5).start()
    sender = HttpxPushSender(timeout_seconds=10)
    try:
        view = await _endpoint(deps, receiver.url)
        receiver.secrets = [view.secret]
        clock.advance(SECOND)
        await log_events(store.database, ["customer.created"], at=clock.now())
        await FanOut(push).run_pass()
        crashed = _worker(push, sender, "replica-a")
        (attempt,) = await crashed.scan()
        while receiver.requests == 0:
            await asyncio.sleep(0.01)
        attempt.cancel()  # the worker dies mid-POST: its claim stays in the store
        await asyncio.gather(attempt, return_exceptions=True)

        receiver.mode = "ok"
        survivor = _worker(push, sender, "replica-b")
        assert await survivor.run_once() == 0  # still claimed
        clock.advance(timedelta(seconds=31))  # the claim (30 s) has ended
        assert await survivor.run_once() == 1
        assert [r.attempt for r in receiver.received] == [2]
        (row,) = await _deliveries(store)
        assert row["state"] == "succeeded" and row["lease_owner"] == ""
    finally:
        await sender.aclose()
        await receiver.stop()


async def test_the_background_tasks_of_serve_deliver_by_themselves(store: MongoBillingStore) -> None:
    clock, push, deps = await _setup(store)
    receiver = await Receiver(now=clock).start()
    tasks = PushDeliveryTasks(push, HttpxPushSender(), render, owner="replica-a", poll_seconds=0.05)
    try:
        view = await _endpoint(deps, receiver.url, "payment.*")
        receiver.secrets = [view.secret]
        tasks.start()
        clock.advance(SECOND)
        logged = await log_events(
            store.database, ["payment.created", "refund.created", "payment.failed"], at=clock.now()
        )
        async with asyncio.timeout(10):  # the receiver answers, then the worker records it
            while {r["state"] for r in await _deliveries(store)} != {"succeeded"} or len(receiver.received) < 2:
                await asyncio.sleep(0.02)
        rows = await _deliveries(store)
        assert [r["seq"] for r in rows] == [logged[0], logged[2]]
        assert len(receiver.received) == 2
    finally:
        await tasks.stop(grace_seconds=1)
        await receiver.stop()
    assert await store.database["leases"].find_one({"_id": "event-fanout"}) is None  # released on stop


async def test_a_delivery_whose_event_retention_deleted_is_dead_lettered_at_once(store: MongoBillingStore) -> None:
    clock, push, deps = await _setup(store)
    sender = HttpxPushSender()
    try:
        await _endpoint(deps, "http://127.0.0.1:9/never-called")
        clock.advance(SECOND)
        first, _ = await log_events(store.database, ["payment.created", "payment.failed"], at=clock.now())
        await FanOut(push).run_pass()
        # Retention's order: low_water first, then the delete (here of the first event only).
        await store.database["event_meta"].update_one({"_id": "log"}, {"$max": {"low_water": first + 1}})
        await store.database["event_log"].delete_one({"_id": first})
        await _worker(push, sender).run_once()
        rows = {r["seq"]: r for r in await _deliveries(store)}
        assert (rows[first]["state"], rows[first]["last_error"]) == ("dead_lettered", "event_expired")
        assert rows[first + 1]["last_error"] == "connection_failed"  # its event was there: really attempted
    finally:
        await sender.aclose()


async def test_stopping_ends_the_loops_even_as_an_attempt_frees_a_slot(store: MongoBillingStore) -> None:
    # On Python 3.11 asyncio.wait_for loses a cancellation that lands as its event is set: the
    # worker's loop would go on polling after serve stopped it.
    _, push, _ = await _setup(store)
    tasks = PushDeliveryTasks(push, HttpxPushSender(), render, owner="replica-a", poll_seconds=5)
    tasks.start()
    await asyncio.sleep(0.2)  # both loops idle: the worker waits for a free slot or its poll
    tasks.worker._freed.set()  # an attempt finishing just as serve stops
    async with asyncio.timeout(10):
        await tasks.stop(grace_seconds=0)
    assert all(task.done() for task in tasks._tasks)
