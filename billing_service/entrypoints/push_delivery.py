"""Push delivery's background tasks in ``serve`` (built by ``bootstrap.build_push_tasks``).

Every replica of ``serve`` (with ``BILLING_EVENTS_PUSH``, the default) runs a delivery worker
and competes for the fan-out's lease; the one that holds it queues deliveries from the
event log. Nothing here is needed for the push RPCs themselves, which any replica serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from billing_service.service_layer.push_delivery import FANOUT_LEASE, DeliveryObserver, DeliveryWorker, FanOut
from billing_service.service_layer.push_ports import EventRenderer, PushSender, PushServices

__all__ = ["PushDeliveryTasks"]

log = logging.getLogger(__name__)

# The fan-out's lease outlives a few passes; a dead holder's is taken over after it.
_FANOUT_LEASE_SECONDS = 10.0
_FIRST_BACKOFF_SECONDS = 1.0


class PushDeliveryTasks:
    """The fan-out loop (works while it holds the lease) and the delivery worker of one replica.

    Args:
        push: The push services.
        sender: The HTTP sender (closed by :meth:`stop`).
        render: Builds an event's body.
        owner: This replica's name in leases and claims.
        concurrency: Attempts in flight on this replica.
        observer: Metrics.
        poll_seconds: How often the fan-out reads the log, and the worker looks for due
            deliveries when it has nothing to do.
    """

    def __init__(
        self,
        push: PushServices,
        sender: PushSender,
        render: EventRenderer,
        *,
        owner: str,
        concurrency: int = 16,
        observer: DeliveryObserver | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self._push = push
        self._sender = sender
        self._owner = owner
        self._poll = poll_seconds
        self.fanout = FanOut(push, observer=observer)
        self.worker = DeliveryWorker(push, sender, render, owner=owner, concurrency=concurrency, observer=observer)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Starts both loops in the background."""
        self._tasks = [
            asyncio.create_task(self._fanout_loop(), name="push-fanout"),
            asyncio.create_task(self.worker.serve(self._poll), name="push-worker"),
        ]

    async def _fanout_loop(self) -> None:
        failures = 0
        while True:
            try:
                now = self._push.clock.now()
                held = await self._push.leases.acquire(
                    FANOUT_LEASE, self._owner, now=now, ttl_seconds=_FANOUT_LEASE_SECONDS
                )
                if held:
                    # Passes back to back while there is a backlog, within one lease term.
                    while await self.fanout.run_pass() >= 500:
                        pass
                failures = 0
                delay = self._poll
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay = min(self._poll * 10, _FIRST_BACKOFF_SECONDS * 2 ** min(failures, 6))
                log.warning("push fan-out pass failed", exc_info=True, extra={"failures": failures})
            await asyncio.sleep(delay)

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stops the fan-out, lets attempts in flight finish for ``grace_seconds``, closes the sender."""
        for task in self._tasks:  # no new pass, no new attempt
            task.cancel()
        # Bounded: a loop that swallowed its cancellation must not hold the shutdown forever.
        stuck: set[asyncio.Task[None]] = set()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=5.0)
        for task in stuck:
            log.error("push delivery loop did not stop when cancelled", extra={"task": task.get_name()})
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("push delivery loop failed", exc_info=task.exception())
        await self.worker.drain(grace_seconds)
        with contextlib.suppress(Exception):
            await self._push.leases.release(FANOUT_LEASE, self._owner)
        await self._sender.aclose()
