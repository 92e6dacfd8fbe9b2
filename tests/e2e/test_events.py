"""EventService through a real server: WatchEvents, ListEvents, consumers, cursors, retention."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2, event_service_pb2, event_service_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from tests.e2e.conftest import Api
from tests.helpers import rich, rid, usd


def events_stub(api: Api) -> event_service_pb2_grpc.EventServiceAsyncStub:
    return event_service_pb2_grpc.EventServiceStub(api.channel)  # type: ignore[return-value]


class Watcher:
    """A WatchEvents stream read in the background into ``messages``."""

    def __init__(self, stub: Any, request: event_service_pb2.WatchEventsRequest) -> None:
        self.call = stub.WatchEvents(request)
        self.messages: list[event_service_pb2.WatchEventsResponse] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.call:
                self.messages.append(message)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err

    @property
    def events(self) -> list[Any]:
        return [m.event for m in self.messages if m.HasField("event")]

    async def until(self, predicate: Any, seconds: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not predicate(self):
            if loop.time() > end:
                raise AssertionError(f"timed out; got {[e.type for e in self.events]}, error {self.error}")
            if self.task.done() and not predicate(self):
                raise AssertionError(f"stream ended: {self.error}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


@contextlib.asynccontextmanager
async def watching(api: Api, **fields: Any) -> AsyncIterator[Watcher]:
    watcher = Watcher(events_stub(api), event_service_pb2.WatchEventsRequest(**fields))
    try:
        await watcher.until(lambda w: w.messages)  # the first heartbeat: established
        yield watcher
    finally:
        await watcher.close()


async def pay(api: Api, amount: int = 1500, token: str = "pm_card_visa") -> tuple[str, str]:
    customer = (await api.billing.CreateCustomer(billing_service_pb2.CreateCustomerRequest(request_id=rid()))).customer
    method = (
        await api.billing.AttachPaymentMethod(
            billing_service_pb2.AttachPaymentMethodRequest(
                request_id=rid(), customer_id=customer.id, processor_token=token
            )
        )
    ).payment_method
    payment = (
        await api.billing.CreatePayment(
            billing_service_pb2.CreatePaymentRequest(
                request_id=rid(), customer_id=customer.id, payment_method_id=method.id, amount=usd(amount)
            )
        )
    ).payment
    return customer.id, payment.id


async def test_watch_starts_with_a_heartbeat_then_sends_each_change_in_order(api: Api) -> None:
    async with watching(api) as watcher:
        first = watcher.messages[0]
        assert first.HasField("heartbeat") and first.heartbeat.cursor
        customer_id, payment_id = await pay(api)
        await watcher.until(lambda w: any(e.type == "payment.succeeded" for e in w.events))
    types = [e.type for e in watcher.events]
    # The fake processor's customer is created on first use: customer.updated (processor linked).
    assert types == [
        "customer.created", "customer.updated", "payment_method.created", "payment.created", "payment.succeeded"
    ]  # fmt: skip
    created, succeeded = watcher.events[3], watcher.events[4]
    assert (created.resource_version, succeeded.resource_version) == (1, 2)
    assert succeeded.previous_status == "pending" and succeeded.customer_id == customer_id
    assert succeeded.payment.id == payment_id and succeeded.payment.amount.amount_minor == 1500
    assert succeeded.payment.status == billing_service_pb2.PAYMENT_STATUS_SUCCEEDED
    assert succeeded.cause.request.caller == "anonymous" and succeeded.cause.request.request_id
    assert len(succeeded.audit_event_ids) == 1 and succeeded.id.startswith("bev_")
    cursors = [e.cursor for e in watcher.events]
    assert cursors == sorted(cursors) and first.heartbeat.cursor < cursors[0]
    assert api.runtime.store.unaudited_changes == 0


async def test_filters_resume_after_a_cursor_and_list_history(api: Api) -> None:
    customer_a, payment_a = await pay(api)
    customer_b, _ = await pay(api, 700)
    stub = events_stub(api)
    async with watching(
        api, start_point=event_service_pb2.START_POINT_EARLIEST, event_types=["payment.*"], customer_id=customer_a
    ) as watcher:
        await watcher.until(lambda w: len(w.events) == 2)
        assert [e.resource_id for e in watcher.events] == [payment_a, payment_a]
    after = watcher.events[0].cursor
    async with watching(api, after_cursor=after, resource_id=payment_a) as watcher:
        await watcher.until(lambda w: len(w.events) == 1)
        assert watcher.events[0].type == "payment.succeeded"
    # ListEvents: a payment's whole history, and paging over everything.
    listed = await stub.ListEvents(event_service_pb2.ListEventsRequest(filter=f"resource_id = {payment_a}"))
    assert [e.type for e in listed.events] == ["payment.created", "payment.succeeded"]
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListEvents(event_service_pb2.ListEventsRequest(page_size=3, page_token=token))
        seen.extend(e.id for e in page.events)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 10  # 5 per payment (customer.updated: linked at the fake)
    typed = await stub.ListEvents(
        event_service_pb2.ListEventsRequest(filter=f'type = "customer.*" AND customer_id = {customer_b}')
    )
    assert [e.type for e in typed.events] == ["customer.created", "customer.updated"]
    later = datetime.now(UTC) + timedelta(hours=1)
    empty = await stub.ListEvents(event_service_pb2.ListEventsRequest(filter=f'create_time >= "{later.isoformat()}"'))
    assert not empty.events and not empty.next_page_token


async def test_bad_requests_are_refused_clearly(api: Api) -> None:
    stub = events_stub(api)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"after_cursor": "nonsense"}, "INVALID_EVENT_CURSOR"),
        ({"after_cursor": "0000000000000001-zzzzzzzz"}, "INVALID_EVENT_CURSOR"),
        ({"event_types": ["payment.exploded"]}, "INVALID_ARGUMENT"),
        ({"consumer_id": "Bad Name"}, "INVALID_ARGUMENT"),
        ({"heartbeat_interval": Duration(seconds=0)}, "INVALID_ARGUMENT"),
    ]
    for fields, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.WatchEvents(event_service_pb2.WatchEventsRequest(**fields)):
                pass
        assert rich(info.value).reason == reason, fields
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListEvents(event_service_pb2.ListEventsRequest(filter="status = x"))
    assert rich(info.value).reason == "INVALID_FILTER"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetEventConsumer(event_service_pb2.GetEventConsumerRequest(consumer_id="never-used"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_idle_streams_get_heartbeats_with_the_examined_position(api: Api) -> None:
    async with watching(api, event_types=["refund.*"], heartbeat_interval=Duration(seconds=1)) as watcher:
        await pay(api)
        await watcher.until(lambda w: len(w.messages) >= 3, seconds=5)
    assert not watcher.events
    beats = [m.heartbeat.cursor for m in watcher.messages]
    assert beats == sorted(beats) and beats[-1] > beats[0]  # moved past the skipped events


async def test_durable_consumer_resumes_after_its_ack_and_newest_stream_wins(api: Api) -> None:
    assert api.runtime.deps.events is not None
    api.runtime.deps.events.consumer_renew_seconds = 0.2
    stub = events_stub(api)
    async with watching(api, consumer_id="entitlements") as first:
        await pay(api)
        await first.until(lambda w: len(w.events) == 5)
        acked = first.events[1].cursor
        reply = await stub.AckEvents(
            event_service_pb2.AckEventsRequest(request_id=rid(), consumer_id="entitlements", cursor=acked)
        )
        assert reply.consumer.acked_cursor == acked and reply.consumer.connected
        # An older acknowledgement never moves it back.
        older = first.events[0].cursor
        again = await stub.AckEvents(
            event_service_pb2.AckEventsRequest(request_id=rid(), consumer_id="entitlements", cursor=older)
        )
        assert again.consumer.acked_cursor == acked
        async with watching(api, consumer_id="entitlements") as second:
            await second.until(lambda w: len(w.events) == 3)
            assert [e.id for e in second.events] == [e.id for e in first.events[2:]]
            await first.until(lambda w: w.task.done(), seconds=5)
            assert first.error is not None and rich(first.error).reason == "EVENT_CONSUMER_TAKEN_OVER"
    got = await stub.GetEventConsumer(event_service_pb2.GetEventConsumerRequest(consumer_id="entitlements"))
    assert got.consumer.acked_cursor == acked
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.AckEvents(
            event_service_pb2.AckEventsRequest(
                request_id=rid(), consumer_id="entitlements", cursor=acked[:15] + "f" + acked[16:]
            )
        )
    assert rich(info.value).reason == "INVALID_EVENT_CURSOR"  # beyond the head


async def test_a_cursor_older_than_retention_is_expired(api: Api) -> None:
    await pay(api)
    stub = events_stub(api)
    first = (await stub.ListEvents(event_service_pb2.ListEventsRequest(page_size=1))).events[0]
    await asyncio.sleep(0.01)
    deleted = await api.runtime.store.events.apply_retention(datetime.now(UTC), timedelta(0))
    assert deleted >= 1
    # A time inside the retention period starts at the oldest event kept.
    hour_ago = Timestamp()
    hour_ago.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    low = await api.runtime.store.events.low_water()
    async with watching(api, start_time=hour_ago) as watcher:
        assert int(watcher.messages[0].heartbeat.cursor[:16], 16) == low - 1
        await watcher.until(lambda w: len(w.events) == 1)  # the one event kept
    long_ago = Timestamp()
    long_ago.FromDatetime(datetime.now(UTC) - timedelta(days=31))
    for fields in ({"after_cursor": first.cursor}, {"start_time": long_ago}):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.WatchEvents(event_service_pb2.WatchEventsRequest(**fields)):
                pass
        assert rich(info.value).reason == "EVENT_CURSOR_EXPIRED", fields
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
