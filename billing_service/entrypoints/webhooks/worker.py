"""Inbox workers: claim stored events with leases and run their handlers.

Each worker loops: claim the oldest due event (an atomic lease in the store, so replicas
sharing the store never run one event at the same time), run its handler while a
heartbeat keeps the lease, then record the outcome. A failure is retried with jittered
exponential backoff; after ``max_attempts`` the event is parked as DEAD, where
``billing-service webhooks replay`` finds it. A worker that dies mid-event simply lets
its lease lapse, and another worker (or the restarted sidecar) takes the event over.

Outcomes are counted in :class:`WebhookMetrics` (processed with the received → processed
lag, failed, dead), and while an event's handler runs the log request id
(``current_request_id``) is the processor's event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from billing_service.domain.common import Processor
from billing_service.domain.errors import BillingError, ProcessorError, StoreUnavailable
from billing_service.entrypoints.webhooks.handlers import HANDLERS, Handler, handle
from billing_service.observability.logging import current_request_id
from billing_service.observability.metrics import WebhookMetrics
from billing_service.service_layer.core import Deps
from billing_service.service_layer.ports import InboxEvent, WebhookInbox, WebhookStatus

log = logging.getLogger("billing_service.webhooks")


@dataclass(frozen=True)
class WorkerSettings:
    """How inbox workers run.

    Attributes:
        workers: Concurrent workers in this process (0: receive only, process nothing).
        lease_seconds: How long a claim is exclusive unless renewed by the heartbeat.
        max_attempts: Attempts before an event is parked as DEAD.
        retry_base_seconds: First retry delay; doubles per attempt (with jitter).
        retry_max_seconds: Ceiling of the retry delay.
        poll_seconds: Idle wait between claims when nothing new was received here.
    """

    workers: int = 4
    lease_seconds: float = 60.0
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    poll_seconds: float = 1.0

    def backoff(self, attempt: int, hint: float = 0.0) -> float:
        """Delay before attempt ``attempt + 1``: exponential, capped, half-jittered."""
        delay: float = min(self.retry_base_seconds * 2.0 ** max(attempt - 1, 0), self.retry_max_seconds)
        return max(delay * (0.5 + random.random() / 2), min(hint, self.retry_max_seconds))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BillingError):
        return exc.reason
    return type(exc).__name__


class InboxWorkers:
    """A pool of inbox workers sharing one wake-up signal.

    Args:
        deps: The use cases' ports (the same the gRPC servicers use).
        inbox: Where events are stored.
        settings: Pool size, leases and retries.
        handlers: The event table (tests may pass their own).
        metrics: Where outcomes are counted (the app's, so one registry has them all).
    """

    def __init__(
        self,
        deps: Deps,
        inbox: WebhookInbox,
        settings: WorkerSettings,
        *,
        handlers: Mapping[tuple[Processor, str], Handler] = HANDLERS,
        metrics: WebhookMetrics | None = None,
    ) -> None:
        self._deps = deps
        self._inbox = inbox
        self._settings = settings
        self._handlers = handlers
        self.metrics = metrics if metrics is not None else WebhookMetrics()
        # Parked (idle) workers; wake() resumes one of them. A wake-up finding none parked is
        # remembered, so a worker that just found nothing claims once more instead of sleeping.
        self._parked: list[asyncio.Future[None]] = []
        self._missed_wake = False
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._node = secrets.token_hex(4)

    def wake(self) -> None:
        """Tells one idle worker that an event was just stored.

        One, not all: a worker that claims an event keeps claiming until none is due, so
        one stored event needs one worker, and every other woken worker would only run an
        empty claim query against the store.
        """
        while self._parked:
            waiter = self._parked.pop()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._missed_wake = True

    def start(self) -> None:
        """Starts the workers on the running loop."""
        for n in range(self._settings.workers):
            owner = f"{self._node}-{n}"
            self._tasks.append(asyncio.create_task(self._loop(owner), name=f"webhook-worker-{owner}"))

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Lets in-flight events finish within the grace period, then cancels the rest."""
        self._stopping.set()
        for waiter in self._parked:
            if not waiter.done():
                waiter.set_result(None)
        self._parked.clear()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()

    async def _loop(self, owner: str) -> None:
        while not self._stopping.is_set():
            try:
                worked = await self.run_once(owner)
            except StoreUnavailable:
                worked = False
            except Exception:
                log.exception("webhook worker error")
                worked = False
            if worked:
                continue
            if self._missed_wake:
                self._missed_wake = False
                continue
            await self._park()

    async def _park(self) -> None:
        """Waits for a wake-up, at most one poll interval."""
        if self._stopping.is_set():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._parked.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_seconds):
                    await waiter
        finally:
            if waiter in self._parked:
                self._parked.remove(waiter)

    async def run_once(self, owner: str) -> bool:
        """Claims and processes one due event; returns False when none was due."""
        clock = self._deps.clock
        event = await self._inbox.claim(owner, now=clock.now(), lease_seconds=self._settings.lease_seconds)
        if event is None:
            return False
        token = current_request_id.set(event.event_id)
        try:
            await self._process(event, owner)
        finally:
            current_request_id.reset(token)
        return True

    async def _process(self, event: InboxEvent, owner: str) -> None:
        clock = self._deps.clock
        processor = event.processor.value
        if event.attempts > self._settings.max_attempts:
            # Taken over after its workers kept dying on it: park it rather than loop.
            await self._inbox.fail(event.id, owner, error="LEASE_EXPIRED", retry_at=None, now=clock.now())
            self.metrics.dead(processor, event.type)
            self._log("dead", event, "LEASE_EXPIRED")
            return
        heartbeat = asyncio.create_task(self._heartbeat(event, owner))
        try:
            status = await handle(self._deps, event, self._handlers)
        except asyncio.CancelledError:
            raise  # the lease lapses and another worker takes the event over
        except Exception as exc:
            await self._failed(event, owner, exc)
            return
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        now = clock.now()
        if await self._inbox.complete(event.id, owner, status, now=now):
            self.metrics.processed(processor, event.type, lag_seconds=(now - event.received_at).total_seconds())
            self._log(status.value, event)
        else:
            log.warning("webhook lease lost before completion: event_id=%s", event.event_id)

    async def _failed(self, event: InboxEvent, owner: str, exc: Exception) -> None:
        reason = _reason(exc)
        now = self._deps.clock.now()
        retry_at = None
        if event.attempts < self._settings.max_attempts:
            hint = exc.retry_after_seconds if isinstance(exc, ProcessorError) else 0.0
            retry_at = now + timedelta(seconds=self._settings.backoff(event.attempts, hint))
        if not isinstance(exc, BillingError):
            log.warning("webhook handler raised %s", reason, exc_info=exc)
        status = await self._inbox.fail(event.id, owner, error=reason, retry_at=retry_at, now=now)
        self.metrics.failed(event.processor.value, event.type)
        if status is WebhookStatus.DEAD:
            self.metrics.dead(event.processor.value, event.type)
        self._log("dead" if status is WebhookStatus.DEAD else "retry", event, reason)

    async def _heartbeat(self, event: InboxEvent, owner: str) -> None:
        interval = max(self._settings.lease_seconds / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            until = self._deps.clock.now() + timedelta(seconds=self._settings.lease_seconds)
            with contextlib.suppress(StoreUnavailable):
                if not await self._inbox.extend(event.id, owner, until=until):
                    return

    @staticmethod
    def _log(outcome: str, event: InboxEvent, reason: str = "") -> None:
        log.info(
            "webhook %s: processor=%s event_id=%s type=%s attempt=%d%s",
            outcome,
            event.processor.value,
            event.event_id,
            event.type,
            event.attempts,
            f" reason={reason}" if reason else "",
        )
