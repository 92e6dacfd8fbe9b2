"""Inbox workers: claim stored events with leases and run their handlers.

One dispatcher per process claims events in batches and runs up to ``workers`` handlers at
once, each under a heartbeat that keeps its lease, then records the outcome. Events come
from two places:

* **stored here**: the inbox tells the workers about each event this process stores
  (``WebhookInbox.subscribe``), and the dispatcher claims those by id, with no query;
* **found by a query** (:meth:`WebhookInbox.claim_due`): every ``poll_seconds``, and again
  at once while a query fills the free slots. It finds events stored by other processes
  (other replicas, ``webhooks backfill``, ``replay``), retries that came due, events whose
  worker died (their lease lapsed), and events stored here that did not fit the queue.

Every claim writes a fresh owner token, and every later write is fenced by it, so replicas
sharing the store never run one event at the same time. A failure is retried with jittered
exponential backoff; after ``max_attempts`` the event is parked as DEAD, where
``billing-service webhooks replay`` finds it. A worker that dies mid-event lets its lease
lapse, and another worker (or the restarted sidecar) takes the event over.

Outcomes are counted in :class:`WebhookMetrics` (processed with the received → processed
lag, failed, dead), and while an event's handler runs the log request id
(``current_request_id``) is the processor's event id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import random
import secrets
import time
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

# Events stored here and not yet claimed; beyond this the query finds them instead.
_OFFERED_MAX = 1000
# Pause after the store failed a claim, so an outage is not hammered.
_STORE_BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class WorkerSettings:
    """How inbox workers run.

    Attributes:
        workers: Events handled at once in this process (0: receive only, process nothing).
        lease_seconds: How long a claim is exclusive unless renewed by the heartbeat.
        max_attempts: Attempts before an event is parked as DEAD.
        retry_base_seconds: First retry delay; doubles per attempt (with jitter).
        retry_max_seconds: Ceiling of the retry delay.
        poll_seconds: Interval of the claim query (events stored here need none).
    """

    workers: int = 16
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
    """One dispatcher and up to ``settings.workers`` concurrent handlers.

    Args:
        deps: The use cases' ports (the same the gRPC servicers use).
        inbox: Where events are stored.
        settings: Concurrency, leases and retries.
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
        self._offered: collections.deque[InboxEvent] = collections.deque()
        self._kick = asyncio.Event()
        self._query_now = True  # the first round looks for work left by an earlier run
        self._stopping = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._node = secrets.token_hex(4)
        self._tokens = itertools.count(1)
        self._subscribed = False

    def wake(self) -> None:
        """Says that work may be due: the dispatcher queries unless stored events cover it.

        The sidecar calls it after each stored delivery; the event itself has normally
        been offered already (:meth:`offer`), and then no query is needed.
        """
        if not self._offered:
            self._query_now = True
        self._kick.set()

    def offer(self, event: InboxEvent) -> None:
        """Queues an event this process has just stored, to be claimed by id."""
        if self._stopping.is_set() or self._dispatcher is None:
            return
        if len(self._offered) >= _OFFERED_MAX:
            self._query_now = True  # the query finds it (and the others left out)
            return
        self._offered.append(event)
        self._kick.set()

    def start(self) -> None:
        """Starts the dispatcher on the running loop and listens for events stored here."""
        if not self._subscribed:
            self._inbox.subscribe(self.offer)
            self._subscribed = True
        if self._settings.workers > 0 and self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch(), name=f"webhook-dispatcher-{self._node}")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Lets in-flight events finish within the grace period, then cancels the rest."""
        self._stopping.set()
        self._kick.set()
        self._offered.clear()
        if self._dispatcher is not None:
            await asyncio.gather(self._dispatcher, return_exceptions=True)
            self._dispatcher = None
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running), timeout=grace_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._running.clear()

    def _token(self) -> str:
        return f"{self._node}-{next(self._tokens)}"

    async def _dispatch(self) -> None:
        settings = self._settings
        next_query = 0.0
        while not self._stopping.is_set():
            free = settings.workers - len(self._running)
            if free <= 0:
                # Bounded, so a stop request is seen while every slot is busy.
                await asyncio.wait(set(self._running), timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                continue
            claimed: list[InboxEvent] = []
            try:
                now = self._deps.clock.now()
                if self._query_now or time.monotonic() >= next_query:
                    self._query_now = False
                    next_query = time.monotonic() + settings.poll_seconds
                    claimed = await self._inbox.claim_due(
                        self._token(), now=now, lease_seconds=settings.lease_seconds, limit=free
                    )
                    # A full batch: more may be due, look again as soon as a slot is free.
                    self._query_now = len(claimed) == free
                elif self._offered:
                    batch = [self._offered.popleft() for _ in range(min(free, len(self._offered)))]
                    claimed = await self._inbox.claim_stored(
                        self._token(), batch, now=now, lease_seconds=settings.lease_seconds
                    )
                else:
                    await self._idle(next_query - time.monotonic())
                    continue
            except StoreUnavailable:
                await self._idle(_STORE_BACKOFF_SECONDS)
                continue
            except Exception:
                log.exception("webhook dispatcher error")
                await self._idle(_STORE_BACKOFF_SECONDS)
                continue
            for event in claimed:
                task = asyncio.create_task(self._run(event), name=f"webhook-{event.event_id}")
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _idle(self, seconds: float) -> None:
        """Waits for a kick (an offer, a wake-up, stop) for at most ``seconds``."""
        self._kick.clear()
        if self._offered or self._query_now or self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._kick.wait()

    async def _run(self, event: InboxEvent) -> None:
        token = current_request_id.set(event.event_id)
        try:
            await self._process(event, event.lease_owner)
        except StoreUnavailable:
            log.warning("webhook outcome not recorded (store unavailable): event_id=%s", event.event_id)
        except Exception:
            log.exception("webhook worker error")
        finally:
            current_request_id.reset(token)

    async def run_once(self, owner: str) -> bool:
        """Claims and processes one due event; returns False when none was due."""
        clock = self._deps.clock
        claimed = await self._inbox.claim_due(
            owner, now=clock.now(), lease_seconds=self._settings.lease_seconds, limit=1
        )
        if not claimed:
            return False
        token = current_request_id.set(claimed[0].event_id)
        try:
            await self._process(claimed[0], owner)
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
