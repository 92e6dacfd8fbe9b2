"""Push delivery end to end: a real payment becomes an event, POSTed signed to a local HTTP receiver.

The service runs on a free port on the embedded store and is called through the generated
client; the receiver verifies every POST with ``billing_client.push``. The sequencer, the
fan-out and the worker are run one pass at a time here (``serve`` runs them as loops), except
in the outage test, where ``serve``'s own background tasks deliver while the test only moves
the manual clock: so the retry schedule and the endpoint's back-off pass in well under a
second of waiting each.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from billing.v1 import billing_service_pb2, event_service_pb2, event_service_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from billing_service.adapters.push_sender import HttpxPushSender
from billing_service.domain.push import ENDPOINT_BACKOFF_AFTER, RETRY_WINDOW
from billing_service.entrypoints.grpc_api.event_service import render_event
from billing_service.entrypoints.push_delivery import PushDeliveryTasks
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.push_delivery import DeliveryWorker, FanOut
from tests.e2e.conftest import Api, start_api, stop_api
from tests.helpers import rich, rid, usd
from tests.push_support import Receiver


@pytest.fixture
async def push_api(mongo_uri: str) -> AsyncIterator[tuple[Api, Receiver]]:
    api = await start_api(mongo_uri)
    receiver = await Receiver(now=api.clock).start()
    try:
        yield api, receiver
    finally:
        await receiver.stop()
        await stop_api(api)


def _stub(api: Api) -> event_service_pb2_grpc.EventServiceAsyncStub:
    return event_service_pb2_grpc.EventServiceStub(api.channel)


async def _pump(api: Api, worker: DeliveryWorker) -> int:
    """One sequencer pass, one fan-out pass, one worker scan; returns the attempts made."""
    deps = api.runtime.deps
    assert deps.events is not None and deps.push is not None
    # The background sequencer runs too: wait until every committed event is in the log.
    outbox = api.runtime.store.database["event_outbox"]
    while await outbox.count_documents({}):
        if not await deps.events.log.sequence_pass():
            await asyncio.sleep(0.01)
    await FanOut(deps.push).run_pass()
    attempts = 0
    while started := await worker.run_once():  # at most 4 per endpoint at a time
        attempts += started
    return attempts


async def _pay(api: Api) -> billing_service_pb2.Payment:
    billing = api.billing
    customer = (await billing.CreateCustomer(billing_service_pb2.CreateCustomerRequest(
        request_id=rid(), email="ada@example.com"))).customer  # fmt: skip
    method = (await billing.AttachPaymentMethod(billing_service_pb2.AttachPaymentMethodRequest(
        request_id=rid(), customer_id=customer.id, processor_token="pm_card_visa"))).payment_method  # fmt: skip
    return (await billing.CreatePayment(billing_service_pb2.CreatePaymentRequest(
        request_id=rid(), customer_id=customer.id, payment_method_id=method.id, amount=usd(2500),
        description="Order 1042"))).payment  # fmt: skip


async def _all_documents(api: Api) -> str:
    db = api.runtime.store.database
    parts = []
    for name in await db.list_collection_names():
        async for doc in db[name].find({}):
            parts.append(f"{name}: {doc!r}")
    return "\n".join(parts)


async def test_a_payment_reaches_the_endpoint_signed_and_no_secret_is_stored(
    push_api: tuple[Api, Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api, receiver = push_api
    events = _stub(api)
    create = event_service_pb2.CreateEventEndpointRequest(
        request_id=rid(), url=receiver.url, event_types=["payment.*"], description="orders team"
    )
    created = await events.CreateEventEndpoint(create)
    assert created.secret.startswith("whsec_") and created.endpoint.id.startswith("ep_")
    again = await events.CreateEventEndpoint(create)  # a retry: the stored answer, the same secret
    assert again.secret == created.secret and again.endpoint.id == created.endpoint.id
    receiver.secrets = [created.secret]

    payment = await _pay(api)
    assert payment.status == billing_service_pb2.PAYMENT_STATUS_SUCCEEDED
    sender = HttpxPushSender()
    assert api.runtime.deps.push is not None
    worker = DeliveryWorker(api.runtime.deps.push, sender, render_event, owner="e2e")
    try:
        assert await _pump(api, worker) == 2
        received = {r.event_id for r in receiver.received}
        succeeded = next(r.event for r in receiver.received if r.event and r.event.type == "payment.succeeded")
        assert succeeded is not None and succeeded.payment.id == payment.id  # the full state, as GetPayment
        assert succeeded.payment.amount.amount_minor == 2500 and succeeded.payment.amount.currency == "USD"
        assert succeeded.payment.status == billing_service_pb2.PAYMENT_STATUS_SUCCEEDED
        assert succeeded.cause.request.request_id and succeeded.customer_id == payment.customer_id
        listed = await events.ListEventDeliveries(event_service_pb2.ListEventDeliveriesRequest(
            endpoint_id=created.endpoint.id, filter="state = SUCCEEDED"))  # fmt: skip
        assert {d.event_id for d in listed.deliveries} == received
        assert {d.event_type for d in listed.deliveries} == {"payment.created", "payment.succeeded"}
        assert all(d.attempt_count == 1 and d.last_status_code == 200 for d in listed.deliveries)

        # A rotation, retried: one new secret; both sign during the overlap.
        rotate = event_service_pb2.RotateEventEndpointSecretRequest(
            request_id=rid(), endpoint_id=created.endpoint.id, overlap=Duration(seconds=3600)
        )
        rotated = await events.RotateEventEndpointSecret(rotate)
        assert (await events.RotateEventEndpointSecret(rotate)).secret == rotated.secret != created.secret
        got = (await events.GetEventEndpoint(event_service_pb2.GetEventEndpointRequest(
            endpoint_id=created.endpoint.id))).endpoint  # fmt: skip
        assert [s.hint for s in got.secrets] == [rotated.secret[-4:], created.secret[-4:]]
        assert got.secrets[1].HasField("expire_time") and not got.secrets[0].HasField("expire_time")

        # The receiver accepts either while it deploys the new one: each verifies every POST alone.
        receiver.secrets = [created.secret, rotated.secret]
        await events.UpdateEventEndpoint(event_service_pb2.UpdateEventEndpointRequest(
            request_id=rid(), endpoint=event_service_pb2.EventEndpoint(id=created.endpoint.id, event_types=["*"]),
            update_mask=FieldMask(paths=["event_types"])))  # fmt: skip
        await _pay(api)
        assert await _pump(api, worker) >= 4
        assert receiver.rejected == 0
        later = receiver.received[2:]
        assert {r.signatures for r in later} == {2}  # the old and the new secret, during the overlap
        assert {r.verified_by for r in later} == {frozenset({0, 1})}  # with the old alone, with the new alone
        assert {"customer.created", "payment_method.created", "payment.created", "payment.succeeded"} <= {
            r.event.type for r in later if r.event
        }

        # Every event of the window again, by API: new deliveries of the same events.
        replay = await events.ReplayEvents(event_service_pb2.ReplayEventsRequest(
            request_id=rid(), endpoint_id=created.endpoint.id,
            scope=event_service_pb2.REPLAY_SCOPE_ALL_EVENTS))  # fmt: skip
        assert replay.first_cursor and replay.last_cursor >= replay.first_cursor
        before = len(receiver.received)
        assert await _pump(api, worker) > 0
        assert {r.event_id for r in receiver.received[before:]} >= received
    finally:
        await sender.aclose()

    # Neither secret in any document (endpoints, idempotency records, audit events, deliveries)
    # nor in any log line of the service, its arguments included.
    stored = await _all_documents(api)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)
    assert caplog.records  # the service did log while it ran
    for secret in (created.secret, rotated.secret):
        assert secret not in stored and secret[6:] not in stored
        assert secret[6:] not in logged
    assert "whsec_" not in stored and "whsec_" not in logged


async def test_endpoint_rpcs_check_their_input_and_need_events_manage(push_api: tuple[Api, Receiver]) -> None:
    api, receiver = push_api
    events = _stub(api)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events.CreateEventEndpoint(event_service_pb2.CreateEventEndpointRequest(
            request_id=rid(), url="https://169.254.169.254/latest", event_types=["payment.*"]))  # fmt: skip
    assert rich(caught.value).violations == ["url"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events.CreateEventEndpoint(event_service_pb2.CreateEventEndpointRequest(
            request_id=rid(), url=receiver.url, event_types=["payment.nope"]))  # fmt: skip
    assert rich(caught.value).violations == ["event_types[0]"]
    preview = await events.CreateEventEndpoint(event_service_pb2.CreateEventEndpointRequest(
        request_id=rid(), url=receiver.url, event_types=["*"], validate_only=True))  # fmt: skip
    assert preview.endpoint.id == "" and preview.secret == ""
    listed = await events.ListEventEndpoints(event_service_pb2.ListEventEndpointsRequest())
    assert list(listed.endpoints) == []

    # Concurrent duplicates: one endpoint; each call answers with it or says the first still runs.
    create = event_service_pb2.CreateEventEndpointRequest(request_id=rid(), url=receiver.url, event_types=["*"])
    answers = await asyncio.gather(*(events.CreateEventEndpoint(create) for _ in range(4)), return_exceptions=True)
    ok = [a for a in answers if isinstance(a, event_service_pb2.CreateEventEndpointResponse)]
    busy = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert ok and all(rich(b).reason == "REQUEST_IN_PROGRESS" for b in busy)
    assert len({(a.endpoint.id, a.secret) for a in ok}) == 1
    listed = await events.ListEventEndpoints(event_service_pb2.ListEventEndpointsRequest())
    assert [e.id for e in listed.endpoints] == [ok[0].endpoint.id]

    created = ok[0]
    delete = event_service_pb2.DeleteEventEndpointRequest(request_id=rid(), endpoint_id=created.endpoint.id)
    await events.DeleteEventEndpoint(delete)
    await events.DeleteEventEndpoint(delete)  # the same request again: its stored answer
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events.GetEventEndpoint(event_service_pb2.GetEventEndpointRequest(endpoint_id=created.endpoint.id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    trail = await api.billing.ListAuditEvents(
        billing_service_pb2.ListAuditEventsRequest(resource_id=created.endpoint.id)
    )
    assert [(e.action, e.after_status) for e in trail.audit_events] == [
        ("event_endpoint.created", "enabled"),
        ("event_endpoint.deleted", "deleted"),
    ]


async def test_dead_letters_listed_and_replayed_from_the_shell(mongo_uri: str) -> None:
    database = f"e2e_push_cli_{uuid.uuid4().hex[:8]}"
    # The shell commands run on the system clock: the service's starts there too.
    api = await start_api(mongo_uri, database=database, clock=ManualClock(datetime.now(UTC)))
    receiver = await Receiver(now=api.clock, mode="fail").start()
    sender = HttpxPushSender()
    try:
        created = await _stub(api).CreateEventEndpoint(event_service_pb2.CreateEventEndpointRequest(
            request_id=rid(), url=receiver.url, event_types=["payment.*"]))  # fmt: skip
        await _pay(api)
        assert api.runtime.deps.push is not None
        worker = DeliveryWorker(api.runtime.deps.push, sender, render_event, owner="e2e")
        assert await _pump(api, worker) == 2  # both fail
        api.clock.advance(timedelta(hours=73))
        assert await _pump(api, worker) == 2  # and fail again after their 3 days: dead letters

        env = {**os.environ, "MONGODB_URI": mongo_uri, "BILLING_MONGODB_DATABASE": database}

        async def cli(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "billing_service", "events", *args]
            return await asyncio.to_thread(
                subprocess.run, command, env=env, capture_output=True, text=True, timeout=60, check=False
            )

        listed = await cli("deliveries", "--endpoint", created.endpoint.id, "--state", "dead-lettered")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.count("dead_lettered") == 2 and "http_status" in listed.stdout
        assert "2 deliveries" in listed.stdout
        replayed = await cli("replay", "--endpoint", created.endpoint.id)
        assert replayed.returncode == 0, replayed.stderr
        assert "2 dead-lettered deliveries" in replayed.stdout

        receiver.mode = "ok"
        receiver.secrets = [created.secret]
        assert await _pump(api, worker) == 2
        assert len(receiver.received) == 2
        missing = await cli("deliveries", "--endpoint", "ep_missing")
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stdout
    finally:
        await sender.aclose()
        await receiver.stop()
        await stop_api(api)


async def test_an_endpoint_that_fails_times_out_and_recovers_gets_every_event_once_it_is_back(
    push_api: tuple[Api, Receiver],
) -> None:
    """500s, then answers after the sender's timeout, then 200s: every event arrives once, by id."""
    api, receiver = push_api
    push = api.runtime.deps.push
    assert push is not None
    db = api.runtime.store.database
    started_at = api.clock.now()
    created = await _stub(api).CreateEventEndpoint(
        event_service_pb2.CreateEventEndpointRequest(request_id=rid(), url=receiver.url, event_types=["*"])
    )
    receiver.secrets = [created.secret]
    receiver.mode, receiver.hang_seconds = "fail", 0.6
    # serve's tasks, with an attempt timeout shorter than the receiver's hang.
    tasks = PushDeliveryTasks(
        push, HttpxPushSender(timeout_seconds=0.3), render_event, owner="replica-a", poll_seconds=0.02,
        observer=api.runtime.metrics,
    )  # fmt: skip

    async def until(done: Callable[[], Awaitable[bool]], step: timedelta) -> None:
        """Waits for ``done``, moving the clock by ``step`` whenever no attempt is running."""
        async with asyncio.timeout(30):
            while not await done():
                await asyncio.sleep(0.02)
                if not tasks.worker.in_flight:  # a running attempt's claim must not end under it
                    api.clock.advance(step)

    async def logged_ids() -> set[str]:
        return {d["event_id"] async for d in db["event_log"].find({}, {"event_id": 1})}

    async def errors(name: str) -> int:
        return await db["event_deliveries"].count_documents({"last_error": name})

    def attempts(outcome: str) -> float:
        value = api.runtime.metrics.registry.get_sample_value(
            "billing_event_delivery_attempts_total", {"outcome": outcome}
        )
        return value or 0.0

    tasks.start()
    try:
        # Down: every event of these payments is queued and the endpoint answers 500.
        async with asyncio.timeout(30):
            for _ in range(3):
                await _pay(api)

        async def all_queued_and_backing_off() -> bool:
            expected = await logged_ids()
            queued = await db["event_deliveries"].count_documents({})
            empty = await db["event_outbox"].count_documents({}) == 0
            return empty and queued == len(expected) and receiver.requests >= ENDPOINT_BACKOFF_AFTER

        await until(all_queued_and_backing_off, timedelta(0))
        assert receiver.received == [] and await errors("http_status") > 0

        # Hanging: it accepts the connection and answers after the sender gave up.
        receiver.mode = "hang"
        failed = receiver.requests

        async def timed_out_twice() -> bool:
            return receiver.requests >= failed + 2 and await errors("timeout") >= 2

        await until(timed_out_twice, timedelta(minutes=1))
        assert receiver.received == []

        # Back: the probe succeeds and the whole backlog follows.
        receiver.mode = "ok"
        expected = await logged_ids()

        async def everything_delivered() -> bool:
            pending = await db["event_deliveries"].count_documents({"state": {"$ne": "succeeded"}})
            return pending == 0 and {r.event_id for r in receiver.received} == expected

        await until(everything_delivered, timedelta(minutes=1))
    finally:
        await tasks.stop(grace_seconds=2)

    # Every event of the outage, by id, none missing and none twice.
    assert len(expected) >= 4 * 3  # customer, payment method, payment created and succeeded
    counts = Counter(r.event_id for r in receiver.received)
    assert set(counts) == expected and max(counts.values()) == 1
    assert receiver.rejected == 0
    assert {r.event.id for r in receiver.received if r.event} == expected  # each body is its event
    assert attempts("http_status") >= ENDPOINT_BACKOFF_AFTER and attempts("timeout") >= 2
    assert attempts("succeeded") == len(expected)
    # Retried, not dead-lettered: the outage was well inside the 3-day window.
    assert api.clock.now() - started_at < RETRY_WINDOW
    assert await db["event_deliveries"].count_documents({"state": "dead_lettered"}) == 0
    assert max(r.attempt for r in receiver.received) > 1  # some were delivered on a retry
    endpoint = await push.endpoints.get(created.endpoint.id)
    assert endpoint is not None and endpoint.consecutive_failures == 0
