"""Use cases of reading events: WatchEvents, ListEvents, AckEvents, GetEventConsumer.

Where a stream starts, how it reads (:class:`~.event_stream.Reader`), when it sends a
heartbeat, and how a durable consumer is served by one stream at a time (newest wins;
the older stream ends with ``EVENT_CONSUMER_TAKEN_OVER`` within one renewal interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from billing_service.domain.errors import InvalidArgument, NotFound
from billing_service.domain.event_cursor import decode_cursor
from billing_service.domain.event_errors import EventConsumerTakenOver, EventCursorExpired, InvalidEventCursor
from billing_service.service_layer.event_ports import ConsumerState, EventConsumers, EventFilter, EventLog, LoggedEvent
from billing_service.service_layer.event_stream import Reader, Ring
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import Clock

__all__ = [
    "Ack",
    "EventDeps",
    "Heartbeat",
    "Watch",
    "ack_events",
    "get_consumer",
    "list_events",
    "validate_consumer_name",
    "watch_events",
]

log = logging.getLogger(__name__)

_CONSUMER_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
#: The scan bound of one ListEvents page (events examined), so a narrow filter over a long
#: history answers a short page with a token instead of scanning everything at once.
LIST_SCAN_LIMIT: Final = 5000
_LIST_READ: Final = 500


@dataclass
class EventDeps:
    """What the event use cases run against.

    Attributes:
        log: The event log.
        consumers: Durable consumers.
        ring: This replica's ring (filled by its tailer).
        retention: How long events and idle consumers are kept.
        consumer_lease: How long a stream's claim on a consumer holds without renewal.
        consumer_renew_seconds: How often a stream renews (and checks) its claim.
    """

    log: EventLog
    consumers: EventConsumers
    ring: Ring
    clock: Clock
    retention: timedelta = timedelta(days=30)
    consumer_lease: timedelta = timedelta(seconds=15)
    consumer_renew_seconds: float = 5.0


def validate_consumer_name(name: str, field_path: str) -> str:
    """Checks a durable consumer's name (1 to 64 of ``a-z 0-9 . _ -``, a letter first)."""
    if not _CONSUMER_NAME.match(name):
        raise InvalidArgument.field(
            field_path, "must be 1 to 64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter"
        )
    return name


@dataclass(frozen=True)
class Watch:
    """A validated WatchEvents request.

    Attributes:
        start: ``default`` (the consumer's position, else now), ``now``, ``earliest``,
            ``time`` or ``cursor``.
        heartbeat_seconds: Longest silence before a heartbeat.
    """

    filters: EventFilter
    consumer: str
    start: Literal["default", "now", "earliest", "time", "cursor"]
    start_time: datetime | None
    after_cursor: str
    heartbeat_seconds: float


@dataclass(frozen=True)
class Heartbeat:
    """A stream's sign of life: the position examined so far."""

    position: int
    time: datetime


async def _retained(ev: EventDeps, position: int) -> int:
    if position + 1 < await ev.log.low_water():
        raise EventCursorExpired("the events after this position were deleted by retention; start again from a time")
    return position


async def cursor_position(ev: EventDeps, cursor: str, field_path: str) -> int:
    """The position a client's cursor names, refused when malformed, foreign or beyond the head."""
    position = decode_cursor(cursor, await ev.log.log_id(), field_path)
    if position > await ev.log.head():
        raise InvalidEventCursor.field(field_path, "is beyond the last event of the log")
    return position


async def _start(ev: EventDeps, watch: Watch, consumer: ConsumerState | None) -> int:
    if watch.start == "cursor":
        return await _retained(ev, await cursor_position(ev, watch.after_cursor, "after_cursor"))
    if watch.start == "earliest":
        return await ev.log.low_water() - 1
    if watch.start == "time":
        assert watch.start_time is not None
        # Retention works on the time events entered the log, which is the real time.
        if watch.start_time < datetime.now(UTC) - ev.retention:
            raise EventCursorExpired("start_time is older than the retention period")
        return await _retained(ev, await ev.log.position_at(watch.start_time))
    if watch.start == "default" and consumer is not None and consumer.acked_seq is not None:
        return await _retained(ev, consumer.acked_seq)
    return await ev.log.head()


async def watch_events(ev: EventDeps, caller: str, watch: Watch) -> AsyncIterator[LoggedEvent | Heartbeat]:
    """The stream: a heartbeat with the start position, then matching events and heartbeats.

    Raises:
        EventCursorExpired: The start (or, later, the position of a stream that fell
            behind) is older than what retention keeps.
        InvalidEventCursor: ``after_cursor`` was not issued by this log.
        EventConsumerTakenOver: A newer stream took the consumer over.
    """
    session = f"ses_{secrets.token_hex(8)}"
    consumer: ConsumerState | None = None
    if watch.consumer:
        consumer = await ev.consumers.take_over(
            caller, watch.consumer, session, now=ev.clock.now(), lease=ev.consumer_lease, keep=ev.retention
        )
    lost = asyncio.Event()
    renewer = asyncio.create_task(_renew(ev, caller, watch.consumer, session, lost)) if consumer else None
    try:
        reader = Reader(ev.log, ev.ring, watch.filters, await _start(ev, watch, consumer))
        loop = asyncio.get_running_loop()
        yield Heartbeat(reader.position, ev.clock.now())
        quiet_since = loop.time()
        while True:
            if lost.is_set():
                raise EventConsumerTakenOver(
                    "a newer WatchEvents stream took this consumer over",
                    metadata={"consumer_id": watch.consumer},
                )
            # Short waits keep a takeover noticed within a second of the renewal that finds it.
            wait = min(1.0, max(0.0, quiet_since + watch.heartbeat_seconds - loop.time()))
            batch = await reader.next_batch(wait)
            for event in batch:
                yield event
            if batch:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= watch.heartbeat_seconds:
                yield Heartbeat(reader.position, ev.clock.now())
                quiet_since = loop.time()
    finally:
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewer
            with contextlib.suppress(Exception):
                await ev.consumers.release(caller, watch.consumer, session, now=ev.clock.now())


async def _renew(ev: EventDeps, caller: str, name: str, session: str, lost: asyncio.Event) -> None:
    while True:
        await asyncio.sleep(ev.consumer_renew_seconds)
        try:
            held = await ev.consumers.renew(caller, name, session, now=ev.clock.now(), lease=ev.consumer_lease)
        except Exception:
            log.info("event consumer renewal failed; retrying", exc_info=True)
            continue
        if not held:
            lost.set()
            return


@dataclass(frozen=True)
class Ack:
    """A validated AckEvents request."""

    consumer: str
    cursor: str
    allow_rewind: bool


async def ack_events(ev: EventDeps, ctx: RequestContext, ack: Ack) -> ConsumerState:
    """Moves the caller's consumer to the cursor (never backwards unless ``allow_rewind``)."""
    position = await cursor_position(ev, ack.cursor, "cursor")
    return await ev.consumers.ack(
        ctx.caller, ack.consumer, position, allow_rewind=ack.allow_rewind, now=ev.clock.now(), keep=ev.retention
    )


async def get_consumer(ev: EventDeps, caller: str, name: str) -> ConsumerState:
    """The caller's consumer ``name``.

    Raises:
        NotFound: It does not exist (never used, or expired).
    """
    validate_consumer_name(name, "consumer_id")
    found = await ev.consumers.get(caller, name)
    if found is None:
        raise NotFound("event_consumer", name, field_path="consumer_id")
    return found


async def list_events(
    ev: EventDeps, filters: EventFilter, *, after: int | None, limit: int
) -> tuple[list[LoggedEvent], int | None]:
    """One page of retained events in log order.

    Args:
        filters: What to return.
        after: The position the previous page ended at (None: the first page).
        limit: Page size.

    Returns:
        The events, and the position to continue after (None at the end of the log).
    """
    low = await ev.log.low_water()
    if after is None:
        after = low - 1
        if filters.created_after is not None:
            # An event enters the log after it is created: none created at or after the
            # bound entered the log before it, so the scan may start there.
            after = max(after, await ev.log.position_at(filters.created_after))
    position = max(after, low - 1)
    head = await ev.log.head()
    out: list[LoggedEvent] = []
    scanned_to = position
    while len(out) < limit and scanned_to < head and scanned_to - position < LIST_SCAN_LIMIT:
        events, scanned_to = await ev.log.read_range(scanned_to, head, _LIST_READ, filters)
        out.extend(events)
    if len(out) > limit:
        out = out[:limit]
        scanned_to = out[-1].seq
    return out, (scanned_to if scanned_to < head else None)
