"""Push delivery at work: the fan-out (one replica) and the delivery workers (every replica).

**Fan-out.** Whoever holds the ``event-fanout`` lease reads the event log after its saved
position and inserts one delivery per (event, matching enabled endpoint) with a
deterministic id, then moves its position with a conditional write. A crash between the
two only repeats inserts, which the ids make no-ops. It also works through the stored
replays of every event of a window (``ReplayEvents`` with ``REPLAY_SCOPE_ALL_EVENTS``),
page by page, the same way.

**Workers.** Every replica finds due deliveries with one indexed query and claims each with
a conditional ``update_one`` that moves ``next_attempt_at`` to the end of a 30 s claim:
``next_attempt_at`` is the lease, so of all workers of all replicas only one holds a
delivery, and a crashed worker's delivery is due again when its claim ends. The attempt
signs the event with the endpoint's active secrets and POSTs it (10 s timeout); its outcome
is written only while the claim is still the worker's. No ``findAndModify`` anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from datetime import datetime, timedelta
from typing import Final, Protocol

from billing_service.domain.event_signing import SIGNATURE_HEADER, active_secrets, derive_secret, sign
from billing_service.domain.push import (
    CLAIM_SECONDS,
    RETRY_WINDOW,
    DeliveryError,
    DeliveryState,
    EventDelivery,
    EventEndpoint,
    delivery_id,
    next_attempt_at,
)
from billing_service.service_layer.event_ports import EventFilter, LoggedEvent
from billing_service.service_layer.push_ports import AttemptResult, EventRenderer, PushSender, PushServices

__all__ = ["FANOUT_LEASE", "USER_AGENT", "DeliveryObserver", "DeliveryWorker", "FanOut"]

log = logging.getLogger(__name__)

FANOUT_LEASE: Final = "event-fanout"
USER_AGENT: Final = "billing-service/0.1.0"
_PROBE_LEASE: Final = "event-endpoint-probe:"


class DeliveryObserver(Protocol):
    """Metrics of push delivery (``observability.metrics.push``)."""

    def push_attempt(self, outcome: str) -> None:
        """One attempt ended: ``succeeded`` or a ``DeliveryError`` value."""
        ...

    def push_dead_lettered(self) -> None:
        """A delivery gave up."""
        ...

    def push_delivered(self, lag_seconds: float) -> None:
        """A delivery succeeded, ``lag_seconds`` after its event entered the log."""
        ...

    def push_fanout(self, behind: int) -> None:
        """The fan-out is ``behind`` events behind the log's head."""
        ...


class _NoMetrics:
    def push_attempt(self, outcome: str) -> None:
        pass

    def push_dead_lettered(self) -> None:
        pass

    def push_delivered(self, lag_seconds: float) -> None:
        pass

    def push_fanout(self, behind: int) -> None:
        pass


def _new_delivery(endpoint: EventEndpoint, event: LoggedEvent, now: datetime, replay_id: str = "") -> EventDelivery:
    return EventDelivery(
        id=delivery_id(endpoint.id, event.seq, replay_id), endpoint_id=endpoint.id, event_id=event.id,
        seq=event.seq, event_type=event.type, state=DeliveryState.PENDING, create_time=now, update_time=now,
        window_start=now, next_attempt_at=now, replay_id=replay_id,
    )  # fmt: skip


class FanOut:
    """Queues deliveries from the event log (run by the holder of :data:`FANOUT_LEASE`).

    Args:
        push: The push services.
        batch: Events read per pass (and per replay per pass).
        observer: Metrics.
    """

    def __init__(self, push: PushServices, *, batch: int = 500, observer: DeliveryObserver | None = None) -> None:
        self._push = push
        self._batch = batch
        self._observer = observer or _NoMetrics()

    async def run_pass(self) -> int:
        """One pass over the log and the open replays; returns how many events it handled."""
        return await self._log_pass() + await self._replay_pass()

    async def _start_position(self) -> int:
        # First pass ever: from the oldest endpoint's creation (events before it are not
        # queued anyway), or the head when there is no endpoint yet.
        endpoints = await self._push.endpoints.list_enabled()
        if not endpoints:
            return await self._push.log.head()
        return await self._push.log.position_at(min(e.created_at for e in endpoints))

    async def _log_pass(self) -> int:
        deliveries = self._push.deliveries
        position = await deliveries.fanout_position()
        if position is None:
            start = await self._start_position()
            if not await deliveries.save_fanout_position(None, start):
                return 0  # another fan-out started first; the next pass reads its position
            position = start
        # After an outage longer than the retention period this reads on from what is left.
        events = await self._push.log.read(after=position, limit=self._batch)
        if not events:
            self._observer.push_fanout(0)
            return 0
        endpoints = await self._push.endpoints.list_enabled()
        now = self._push.clock.now()
        queued = [_new_delivery(ep, e, now) for e in events for ep in endpoints if ep.wants(e.type, e.sequence_time)]
        if queued:
            await deliveries.insert_many(queued)
        if not await deliveries.save_fanout_position(position, events[-1].seq):
            log.warning("push fan-out position moved under us (a second fan-out?)")
        self._observer.push_fanout(max(0, await self._push.log.head() - events[-1].seq))
        return len(events)

    async def _replay_pass(self) -> int:
        handled = 0
        for replay in await self._push.deliveries.open_replays(limit=10):
            endpoint = await self._push.endpoints.get(replay.endpoint_id)
            if endpoint is None:
                await self._push.deliveries.advance_replay(replay.id, replay.position, replay.until, done=True)
                continue
            # The endpoint's types, read through the log's indexes where they serve them.
            wanted, examined = await self._push.log.read_range(
                replay.position, replay.until, self._batch, EventFilter(types=tuple(endpoint.event_types))
            )
            now = self._push.clock.now()
            queued = [_new_delivery(endpoint, e, now, replay.id) for e in wanted]
            if queued:
                await self._push.deliveries.insert_many(queued)
            done = examined >= replay.until
            await self._push.deliveries.advance_replay(replay.id, replay.position, examined, done=done)
            handled += len(wanted)
        return handled


class DeliveryWorker:
    """Claims due deliveries and POSTs them, at most ``concurrency`` at a time.

    Args:
        push: The push services.
        sender: Sends one signed POST.
        render: Builds the exact body of an event.
        owner: This worker's name in claims (unique per process).
        concurrency: Attempts in flight in this process.
        per_endpoint: Attempts in flight per endpoint in this process.
        batch: Due deliveries read per scan.
        observer: Metrics.
        rng: Jitter source.
    """

    def __init__(
        self,
        push: PushServices,
        sender: PushSender,
        render: EventRenderer,
        *,
        owner: str,
        concurrency: int = 16,
        per_endpoint: int = 4,
        batch: int = 50,
        observer: DeliveryObserver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._push = push
        self._sender = sender
        self._render = render
        self._owner = owner
        self._concurrency = concurrency
        self._per_endpoint = per_endpoint
        self._batch = batch
        self._observer = observer or _NoMetrics()
        self._rng = rng or random.Random()
        self._inflight: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._freed = asyncio.Event()
        self._probing: set[str] = set()
        # Deliveries this worker is sending: never claimed again while their attempt runs, even
        # if the claim ended under it (a stalled event loop, a clock moved by a test).
        self._sending: set[str] = set()

    @property
    def in_flight(self) -> int:
        """Attempts running now."""
        return len(self._tasks)

    async def run_once(self) -> int:
        """One scan, waiting for every attempt it started; returns how many it started."""
        started = await self.scan()
        if started:
            await asyncio.gather(*started, return_exceptions=True)
        return len(started)

    async def serve(self, poll_seconds: float = 1.0) -> None:
        """Scans whenever an attempt slot is free, at least every ``poll_seconds``, until cancelled.

        Cancelling it stops the scans only: the attempts in flight go on (see :meth:`drain`).
        """
        while True:
            try:
                started = await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("push delivery scan failed", exc_info=True)
                started = []
            if started and len(self._tasks) < self._concurrency:
                await asyncio.sleep(0)
                continue
            self._freed.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that lands as the event is set, and this loop would outlive ``stop``.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_seconds):
                    await self._freed.wait()

    async def drain(self, grace_seconds: float) -> None:
        """Lets running attempts finish for ``grace_seconds``, then cancels the rest.

        A cancelled attempt's claim ends by itself; another worker sends it again.
        """
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=max(grace_seconds, 0.0))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def scan(self) -> list[asyncio.Task[None]]:
        """Claims the due deliveries it has room for and starts their attempts."""
        free = self._concurrency - len(self._tasks)
        if free <= 0:
            return []
        now = self._push.clock.now()
        full = [ep for ep, n in self._inflight.items() if n >= self._per_endpoint]
        due = await self._push.deliveries.due(now=now, limit=min(self._batch, max(free, 1) * 4), skip_endpoints=full)
        if not due:
            return []
        endpoints = await self._push.endpoints.get_many(sorted({d.endpoint_id for d in due}))
        started: list[asyncio.Task[None]] = []
        for delivery in due:
            if len(self._tasks) >= self._concurrency:
                break
            endpoint = endpoints.get(delivery.endpoint_id)
            if endpoint is None:
                await self._push.deliveries.drop(delivery)  # queued just as its endpoint was deleted
                continue
            if self._inflight[endpoint.id] >= self._per_endpoint or delivery.id in self._sending:
                continue
            task = await self._start(delivery, endpoint, now)
            if task is not None:
                started.append(task)
        return started

    async def _start(
        self, delivery: EventDelivery, endpoint: EventEndpoint, now: datetime
    ) -> asyncio.Task[None] | None:
        if endpoint.disabled:
            # Nothing is sent while it is disabled: wait for the window's end (re-enabling makes
            # it due at once), then give up.
            end = delivery.window_start + RETRY_WINDOW
            await self._postpone(delivery, now, end if now < end else None, delivery.step)
            return None
        probe = False
        if endpoint.backing_off():
            # One attempt at a time across replicas; the others skip a step of their schedule.
            waiting = endpoint.backoff_until is not None and endpoint.backoff_until > now
            if (
                waiting
                or endpoint.id in self._probing
                or not await self._push.leases.acquire(
                    _PROBE_LEASE + endpoint.id, self._owner, now=now, ttl_seconds=CLAIM_SECONDS
                )
            ):
                step = delivery.step + 1
                await self._postpone(delivery, now, self._next(delivery, step, now), step)
                return None
            probe = True
            self._probing.add(endpoint.id)
        until = now + timedelta(seconds=CLAIM_SECONDS)
        if not await self._push.deliveries.claim(delivery, self._owner, now=now, until=until):
            if probe:
                self._probing.discard(endpoint.id)
                await self._push.leases.release(_PROBE_LEASE + endpoint.id, self._owner)
            return None  # another worker claimed it first
        self._inflight[endpoint.id] += 1
        self._sending.add(delivery.id)
        task = asyncio.create_task(self._attempt(delivery, endpoint, probe), name=f"push-{delivery.id}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, endpoint.id, delivery.id))
        return task

    def _done(self, task: asyncio.Task[None], endpoint_id: str, sent_id: str) -> None:
        self._tasks.discard(task)
        self._sending.discard(sent_id)
        self._inflight[endpoint_id] -= 1
        if self._inflight[endpoint_id] <= 0:
            del self._inflight[endpoint_id]
        self._freed.set()

    def _next(self, delivery: EventDelivery, step: int, now: datetime) -> datetime | None:
        return next_attempt_at(delivery.window_start, step, now=now, jitter=self._rng.uniform(-0.1, 0.1))

    async def _postpone(self, delivery: EventDelivery, now: datetime, until: datetime | None, step: int) -> None:
        error = delivery.last_error or DeliveryError.ENDPOINT_UNAVAILABLE.value
        expire = now + self._push.retention if until is None else None
        moved = await self._push.deliveries.postpone(
            delivery, now=now, until=until, step=step, error=error, expire_at=expire
        )
        if moved and until is None:
            self._observer.push_dead_lettered()

    async def _attempt(self, delivery: EventDelivery, endpoint: EventEndpoint, probe: bool) -> None:
        try:
            events = await self._event(delivery.seq)
            if events is None:
                await self._record(delivery, endpoint, None, AttemptResult(False, 0, DeliveryError.EVENT_EXPIRED))
                return
            body = self._render(events, await self._push.log.log_id())
            result = await self._post(delivery, endpoint, body)
            await self._record(delivery, endpoint, events, result)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The claim ends by itself and another attempt follows: at least once.
            log.exception("push delivery attempt crashed", extra={"delivery_id": delivery.id})
        finally:
            if probe:
                self._probing.discard(endpoint.id)
                with contextlib.suppress(Exception):
                    await self._push.leases.release(_PROBE_LEASE + endpoint.id, self._owner)

    async def _event(self, seq: int) -> LoggedEvent | None:
        found = await self._push.log.read(after=seq - 1, limit=1)
        return found[0] if found and found[0].seq == seq else None  # else deleted by retention

    async def _post(self, delivery: EventDelivery, endpoint: EventEndpoint, body: bytes) -> AttemptResult:
        now = self._push.clock.now()
        key = await self._push.keys.key()
        secrets = [derive_secret(key, endpoint.id, slot.id) for slot in active_secrets(endpoint.secrets, now)]
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Billing-Event-Id": delivery.event_id,
            "Billing-Event-Type": delivery.event_type,
            "Billing-Delivery-Id": delivery.id,
            "Billing-Delivery-Attempt": str(delivery.attempt_count + 1),
            SIGNATURE_HEADER: sign(body, secrets, timestamp=int(now.timestamp())),
        }
        return await self._sender.post(endpoint.url, body, headers)

    async def _record(
        self, delivery: EventDelivery, endpoint: EventEndpoint, event: LoggedEvent | None, result: AttemptResult
    ) -> None:
        now = self._push.clock.now()
        deliveries = self._push.deliveries
        self._observer.push_attempt("succeeded" if result.ok else result.error)
        if result.ok:
            recorded = await deliveries.finish(
                delivery.id, self._owner, state=DeliveryState.SUCCEEDED, now=now, next_attempt_at=None,
                step=delivery.step, status_code=result.status_code, error="", expire_at=now + self._push.retention,
            )  # fmt: skip
            failing = endpoint.consecutive_failures > 0
            await self._push.endpoints.record_success(endpoint.id, now=now, was_failing=failing)
            if failing:
                # The receiver is back: its backlog is due now, not at each delivery's next step.
                await deliveries.make_due(endpoint.id, now=now)
            if recorded and event is not None:
                self._observer.push_delivered(max(0.0, (now - event.sequence_time).total_seconds()))
            return
        step = delivery.step + 1
        retry_at = None if result.error == DeliveryError.EVENT_EXPIRED else self._next(delivery, step, now)
        state = DeliveryState.PENDING if retry_at is not None else DeliveryState.DEAD_LETTERED
        recorded = await deliveries.finish(
            delivery.id, self._owner, state=state, now=now, next_attempt_at=retry_at, step=step,
            status_code=result.status_code, error=result.error,
            expire_at=None if retry_at is not None else now + self._push.retention,
        )  # fmt: skip
        if recorded and retry_at is None:
            self._observer.push_dead_lettered()
            log.warning("push delivery dead-lettered", extra={"delivery_id": delivery.id, "endpoint_id": endpoint.id})
        if result.error != DeliveryError.EVENT_EXPIRED:
            await self._push.endpoints.record_failure(endpoint.id, now=now)
