"""The event log's background work: the sequencer and retention, each leased to one replica.

The leases are for efficiency only: two sequencers at once (a stale lease) cannot number
an event twice or leave a gap, because each pass is one transaction that conflicts with
any other (see ``MongoEventLog.sequence_pass``); two retention runs only repeat deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from billing_service.domain.errors import StoreUnavailable
from billing_service.service_layer.event_ports import EventLog
from billing_service.service_layer.event_stream import Doorbell, stop_tasks

__all__ = ["EventLeases", "Retention", "Sequencer"]

log = logging.getLogger(__name__)

SEQUENCER_LEASE = "event-sequencer"
RETENTION_LEASE = "event-retention"
#: Events one sequencer pass moves at most.
SEQUENCER_BATCH = 500


class EventLeases(Protocol):
    """Named leases in the store (``MongoLeases``)."""

    async def acquire(self, name: str, owner: str, *, now: datetime, ttl_seconds: float) -> bool:
        """Takes or renews the lease; False while another owner holds it."""
        ...

    async def release(self, name: str, owner: str) -> None:
        """Gives the lease up."""
        ...


def _now() -> datetime:
    # Leases and retention are about real time (process liveness, sequence_time), never a
    # test's manual clock.
    return datetime.now(UTC)


class _Loop:
    """A background task that stops cleanly."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def _spawn(self, work: Callable[[], Awaitable[None]], name: str) -> None:
        async def run() -> None:
            await work()

        self._tasks.append(asyncio.create_task(run(), name=name))

    async def stop(self) -> None:
        """Cancels the tasks and waits for them, 2 seconds at most (a store call may hang)."""
        await stop_tasks(self._tasks)
        self._tasks = []


class Sequencer(_Loop):
    """Moves committed outbox events into the log while holding the ``event-sequencer`` lease.

    Woken by a change stream on outbox inserts, by :meth:`wake` (a local commit), and
    every ``poll`` seconds in any case.

    Args:
        event_log: The log.
        leases: Named leases.
        poll: Seconds between passes when nothing rings.
        lease_seconds: The lease's term; it is renewed every ``renew_seconds``.
    """

    def __init__(
        self,
        event_log: EventLog,
        leases: EventLeases,
        *,
        poll: float = 0.25,
        lease_seconds: float = 10.0,
        renew_seconds: float = 2.0,
        owner: str | None = None,
    ) -> None:
        super().__init__()
        self._log = event_log
        self._leases = leases
        self._poll = poll
        self._lease_seconds = lease_seconds
        self._renew_seconds = renew_seconds
        self.owner = owner or f"seq-{secrets.token_hex(6)}"
        self.bell = Doorbell()
        self.holding = False

    def wake(self) -> None:
        """Asks for a pass now (called after a local commit that wrote events)."""
        self.bell.ring()

    def start(self) -> None:
        """Starts the doorbell and the loop."""
        self._spawn(lambda: self.bell.follow(self._log.notifications("outbox")), "event-outbox-doorbell")
        self._spawn(self._run, "event-sequencer")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        renew_at = 0.0
        while True:
            try:
                if loop.time() >= renew_at:
                    self.holding = await self._leases.acquire(
                        SEQUENCER_LEASE, self.owner, now=_now(), ttl_seconds=self._lease_seconds
                    )
                    renew_at = loop.time() + self._renew_seconds
                if self.holding:
                    while await self._log.sequence_pass(SEQUENCER_BATCH) and loop.time() < renew_at:
                        pass
            except StoreUnavailable:
                log.info("event sequencer: store unavailable; retrying")
            except Exception:
                log.exception("event sequencer pass failed; retrying")
            await self.bell.wait(self._poll if self.holding else self._renew_seconds)

    async def stop(self) -> None:
        """Stops the loop and gives the lease up so another replica takes over at once."""
        await super().stop()
        if self.holding:
            with contextlib.suppress(Exception):
                await self._leases.release(SEQUENCER_LEASE, self.owner)


class Retention(_Loop):
    """Deletes events older than ``keep``, every ``interval`` seconds, on one replica at a time.

    Args:
        event_log: The log.
        leases: Named leases.
        keep: The retention period.
        interval: Seconds between runs (hourly by default).
    """

    def __init__(self, event_log: EventLog, leases: EventLeases, *, keep: timedelta, interval: float = 3600.0) -> None:
        super().__init__()
        self._log = event_log
        self._leases = leases
        self._keep = keep
        self._interval = interval
        self.owner = f"ret-{secrets.token_hex(6)}"

    def start(self) -> None:
        """Starts the hourly loop (the first run is right away)."""
        self._spawn(self._run, "event-retention")

    async def run_once(self) -> int:
        """One run if the lease is free; returns how many events it deleted."""
        if not await self._leases.acquire(RETENTION_LEASE, self.owner, now=_now(), ttl_seconds=600):
            return 0
        try:
            deleted = await self._log.apply_retention(_now(), self._keep)
        finally:
            await self._leases.release(RETENTION_LEASE, self.owner)
        if deleted:
            log.info("event retention deleted events", extra={"deleted": deleted})
        return deleted

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except StoreUnavailable:
                log.info("event retention: store unavailable; retrying next time")
            except Exception:
                log.exception("event retention failed; retrying next time")
            await asyncio.sleep(self._interval)
