"""Live reading of the event log: each replica's tailer and ring, and one stream's reader.

The **tailer** reads ``event_log`` after its position whenever its doorbell rings (a change
stream on log inserts, whose content is not used) and at least every ``poll`` seconds, and
appends what it reads to the **ring**, the last ``size`` events in memory. A **reader**
(one per ``WatchEvents`` stream) is a position and a filter: it takes the events after its
position from the ring, or, when its position has fallen out of the ring (a slow reader,
a start in the past), from the log itself one page at a time until it reaches the ring
again. Memory is the ring plus at most one page per reader that is catching up: it does
not grow with slow readers, and the tailer never waits for a reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import cast

from billing_service.domain.errors import StoreUnavailable
from billing_service.domain.event_errors import EventCursorExpired
from billing_service.service_layer.event_ports import EventFilter, EventLog, LoggedEvent

__all__ = ["Doorbell", "Reader", "Ring", "Tailer", "stop_tasks"]

log = logging.getLogger(__name__)

#: Events a tailer reads per store round trip, and a catching-up reader per page.
TAIL_PAGE = 500
CATCH_UP_PAGE = 100


async def stop_tasks(tasks: list[asyncio.Task[None]], seconds: float = 2.0) -> None:
    """Cancels background tasks and waits for them to end, at most ``seconds``.

    Closing a change stream on a store that went away can take the driver's timeout; a
    stopping process does not wait for that.
    """
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=seconds)


class Doorbell:
    """A wake-up signal: rung by notifications, waited on with a timeout (the poll)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ring(self) -> None:
        """Wakes the waiter (or makes its next wait return at once)."""
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Returns when rung or after ``seconds``, and clears the bell."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that lands as the event is set, and the waiting loop would outlive its stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()
        self._event.clear()

    async def follow(self, source: AsyncIterator[None]) -> None:
        """Rings on every item of ``source`` (a change-stream doorbell) until cancelled.

        The source is closed on the way out (its change stream with it), while the store's
        client is still open.
        """
        generator = cast(AsyncGenerator[None, None], source)
        async with contextlib.aclosing(generator):
            async for _ in generator:
                self.ring()


class Ring:
    """The newest events in memory, consecutive by number.

    Args:
        size: How many events it keeps (the oldest drop out).
    """

    def __init__(self, size: int) -> None:
        self._events: deque[LoggedEvent] = deque(maxlen=max(1, size))
        self._last = 0
        self._started = False
        self._changed = asyncio.Event()

    @property
    def started(self) -> bool:
        """True once the tailer set its starting position."""
        return self._started

    @property
    def last(self) -> int:
        """The number of the newest event seen (the tailer's position)."""
        return self._last

    @property
    def first(self) -> int:
        """The number of the oldest event held (``last + 1`` when empty)."""
        return self._events[0].seq if self._events else self._last + 1

    def reset(self, position: int) -> None:
        """Empties the ring and continues after ``position``."""
        self._events.clear()
        self._last = position
        self._started = True
        self._notify()

    def append(self, events: list[LoggedEvent]) -> None:
        """Adds events that follow :attr:`last` without a gap (the tailer checks)."""
        for event in events:
            if event.seq != self._last + 1:
                raise ValueError(f"ring gap: {self._last} then {event.seq}")
            self._events.append(event)
            self._last = event.seq
        if events:
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def after(self, position: int, limit: int) -> list[LoggedEvent] | None:
        """Up to ``limit`` events after ``position``; None when they are no longer (or not yet) held."""
        if not self._started or position < self.first - 1:
            return None
        start = position - self.first + 1
        return list(itertools.islice(self._events, start, start + limit))

    async def wait_beyond(self, position: int, seconds: float) -> None:
        """Returns once the ring holds an event after ``position`` (or changed), or after ``seconds``."""
        if self._last > position and self._started:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # not wait_for: see Doorbell.wait
                await self._changed.wait()


class Tailer:
    """Keeps the ring filled from the log (one per replica).

    Args:
        event_log: The log.
        ring: The ring to fill.
        poll: Seconds between reads when no doorbell rings.
    """

    def __init__(self, event_log: EventLog, ring: Ring, *, poll: float = 1.0) -> None:
        self._log = event_log
        self._ring = ring
        self._poll = poll
        self.bell = Doorbell()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Starts tailing in the background (the first read sets the position: the head)."""
        self._tasks = [
            asyncio.create_task(self.bell.follow(self._log.notifications("log")), name="event-log-doorbell"),
            asyncio.create_task(self._run(), name="event-tailer"),
        ]

    async def stop(self) -> None:
        """Stops tailing."""
        await stop_tasks(self._tasks)
        self._tasks = []

    async def _run(self) -> None:
        while True:
            try:
                if not self._ring.started:
                    self._ring.reset(await self._log.head())
                while await self.step():
                    pass
            except StoreUnavailable:
                log.info("event tailer: store unavailable; retrying")
            except Exception:
                log.exception("event tailer failed; retrying")
            await self.bell.wait(self._poll)

    async def step(self) -> bool:
        """Reads one page after the ring's position into the ring; True if a full page came."""
        position = self._ring.last
        events = await self._log.read(position, TAIL_PAGE)
        if not events:
            return False
        if events[0].seq != position + 1:
            low = await self._log.low_water()
            if position + 1 < low:
                # Retention deleted what this replica had not read (a very long stall):
                # start over after the gap; readers before it get EVENT_CURSOR_EXPIRED.
                log.warning("event tailer fell behind retention", extra={"position": position, "low_water": low})
                self._ring.reset(events[0].seq - 1)
            else:
                log.error("event log gap", extra={"position": position, "next": events[0].seq})
                return False
        dense: list[LoggedEvent] = []
        for event in events:
            if event.seq != self._ring.last + len(dense) + 1:
                break
            dense.append(event)
        self._ring.append(dense)
        return len(events) == TAIL_PAGE


@dataclass
class Reader:
    """One stream's position and filter over the ring and the log.

    Attributes:
        position: Every event up to it has been examined (the heartbeat cursor).
    """

    event_log: EventLog
    ring: Ring
    filters: EventFilter
    position: int

    async def next_batch(self, seconds: float) -> list[LoggedEvent]:
        """The next matching events after :attr:`position`, waiting at most ``seconds``.

        Skipped events still advance the position. An empty list means nothing matched
        in time.

        Raises:
            EventCursorExpired: Retention deleted events after the position.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            held = self.ring.after(self.position, CATCH_UP_PAGE)
            if held is None:
                batch = await self._catch_up()
            else:
                batch = self._take(held)
            if batch:
                return batch
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            if held is not None and not held:
                await self.ring.wait_beyond(self.position, remaining)

    def _take(self, events: list[LoggedEvent]) -> list[LoggedEvent]:
        if events:
            self.position = events[-1].seq
        return [e for e in events if self.filters.matches(e)]

    async def _catch_up(self) -> list[LoggedEvent]:
        """One page from the log (the position is behind the ring, or the ring is not started)."""
        await self._check_retained()
        head = await self.event_log.head()
        if head <= self.position:
            await asyncio.sleep(0.1)  # only before the tailer started: poll the log
            return []
        # Up to the head read first: numbers are dense and committed in order, so every
        # event up to it is visible now, and a filtered read through the customer or
        # resource index that finds fewer than a page has examined everything up to it.
        events, examined = await self.event_log.read_range(self.position, head, CATCH_UP_PAGE, self.filters)
        # low_water is raised before retention deletes: a read that raced a deletion shows here.
        await self._check_retained()
        self.position = max(self.position, examined)
        return events

    async def _check_retained(self) -> None:
        low = await self.event_log.low_water()
        if self.position + 1 < low:
            raise EventCursorExpired(
                "the events after this position were deleted by retention; start again from a time",
            )
