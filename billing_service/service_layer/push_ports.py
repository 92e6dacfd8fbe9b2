"""Ports of push delivery: endpoints, deliveries, the HTTP sender, the key, leases.

Adapters: ``MongoEventEndpoints`` and ``MongoEventDeliveries``
(``adapters/mongo/event_delivery.py``), ``MongoLeases`` (``adapters/mongo/leases.py``, the
same named leases the reconciler takes), ``HttpxPushSender`` (``adapters/push_sender.py``).
Events are read by number from the ``EventLog`` port (``event_ports``), never changed here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from billing_service.domain.common import AuditEvent
from billing_service.domain.push import DeliveryState, EventDelivery, EventEndpoint
from billing_service.service_layer.event_ports import EventLog, LoggedEvent
from billing_service.service_layer.ports import Clock, Page

__all__ = [
    "AttemptResult",
    "EventDeliveries",
    "EventEndpoints",
    "EventRenderer",
    "PushLeases",
    "PushSender",
    "PushServices",
    "Replay",
    "SecretKeys",
]


#: Turns a logged event into the exact bytes POSTed: the ``BillingEvent`` as proto3 JSON
#: (built by the gRPC layer, which owns the messages), given the log's id for its cursor.
EventRenderer = Callable[[LoggedEvent, str], bytes]


@dataclass(frozen=True)
class AttemptResult:
    """How one POST ended.

    Attributes:
        ok: The endpoint answered 2xx.
        status_code: The HTTP status; 0 when there was no answer.
        error: A ``DeliveryError`` value when not ok.
    """

    ok: bool
    status_code: int = 0
    error: str = ""


class PushSender(Protocol):
    """POSTs one signed delivery; never raises for a failed attempt."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        """Sends ``body`` to ``url`` and reports the outcome (the response body is not read)."""
        ...

    async def aclose(self) -> None:
        """Closes the connection pool."""
        ...


class PushLeases(Protocol):
    """Named leases in the store (the ``leases`` collection), so one holder at a time acts."""

    async def acquire(self, name: str, owner: str, *, now: datetime, ttl_seconds: float) -> bool:
        """Takes or renews the lease; False while another owner holds it."""
        ...

    async def release(self, name: str, owner: str) -> None:
        """Gives the lease up (only if ``owner`` still holds it)."""
        ...


class SecretKeys(Protocol):
    """The deployment's key that endpoint secrets are derived from."""

    async def key(self) -> bytes:
        """The key (at least 32 bytes)."""
        ...


@dataclass(frozen=True)
class Replay:
    """A ``REPLAY_SCOPE_ALL_EVENTS`` request the fan-out works through in the background.

    Attributes:
        id: The request's reserved id; part of the ids of the deliveries it queues.
        after: Events numbered after this ...
        until: ... up to this one (included).
        position: The last number handled so far.
        done: Every event of the range has been handled.
    """

    id: str
    endpoint_id: str
    after: int
    until: int
    position: int
    created_at: datetime
    done: bool = False


class EventEndpoints(Protocol):
    """Push endpoints (``event_endpoints``); each change is written with its audit event."""

    async def insert(self, endpoint: EventEndpoint, audit: AuditEvent) -> bool:
        """Creates the endpoint; False (nothing written) when its id exists already."""
        ...

    async def get(self, endpoint_id: str) -> EventEndpoint | None:
        """One endpoint by id."""
        ...

    async def get_many(self, endpoint_ids: Sequence[str]) -> dict[str, EventEndpoint]:
        """The endpoints that exist among ``endpoint_ids``, by id."""
        ...

    async def replace(self, endpoint: EventEndpoint, audit: AuditEvent) -> bool:
        """Writes ``endpoint`` if its stored version is still ``endpoint.version`` (then +1)."""
        ...

    async def delete(self, endpoint_id: str, audit: AuditEvent) -> bool:
        """Deletes the endpoint and its pending and dead-lettered deliveries; False if absent."""
        ...

    async def list_page(self, filters: Mapping[str, Any], *, limit: int, after: str | None) -> Page[EventEndpoint]:
        """Endpoints newest first; ``filters`` may hold ``created_at`` as a ``Between``."""
        ...

    async def list_enabled(self) -> list[EventEndpoint]:
        """Every endpoint that is not disabled (the fan-out's targets)."""
        ...

    async def record_success(self, endpoint_id: str, *, now: datetime, was_failing: bool) -> None:
        """A delivery succeeded: clears the failure count and backoff."""
        ...

    async def probe_now(self, endpoint_id: str) -> None:
        """Ends a backoff's wait, so a backing-off endpoint is tried (one at a time) at once."""
        ...

    async def record_failure(self, endpoint_id: str, *, now: datetime) -> int:
        """An attempt failed: counts it and, from the 5th in a row, moves its backoff later.

        Returns:
            The failures in a row, this one included.
        """
        ...


class EventDeliveries(Protocol):
    """Deliveries (``event_deliveries``), the fan-out's position and the replays it works on."""

    async def insert_many(self, deliveries: Sequence[EventDelivery]) -> int:
        """Inserts deliveries, ignoring those whose id exists; returns how many were new."""
        ...

    async def due(self, *, now: datetime, limit: int, skip_endpoints: Sequence[str] = ()) -> list[EventDelivery]:
        """Pending deliveries due at ``now``, the longest waiting first."""
        ...

    async def claim(self, delivery: EventDelivery, owner: str, *, now: datetime, until: datetime) -> bool:
        """Claims a delivery read by :meth:`due` if nobody changed it since (``update_one``)."""
        ...

    async def finish(
        self,
        delivery_id: str,
        owner: str,
        *,
        state: DeliveryState,
        now: datetime,
        next_attempt_at: datetime | None,
        step: int,
        status_code: int,
        error: str,
        expire_at: datetime | None,
    ) -> bool:
        """Records an attempt's outcome if ``owner`` still holds the claim."""
        ...

    async def postpone(
        self,
        delivery: EventDelivery,
        *,
        now: datetime,
        until: datetime | None,
        step: int,
        error: str = "",
        expire_at: datetime | None = None,
    ) -> bool:
        """Moves an unclaimed due delivery to ``until`` without an attempt; None dead-letters it."""
        ...

    async def drop(self, delivery: EventDelivery) -> None:
        """Deletes a delivery whose endpoint no longer exists."""
        ...

    async def make_due(self, endpoint_id: str, *, now: datetime) -> int:
        """Makes every unclaimed pending delivery of the endpoint due now."""
        ...

    async def requeue_dead(self, endpoint_id: str, *, after: int, until: int, now: datetime) -> int:
        """Dead-lettered deliveries of events numbered in (after, until] become pending, with a new window."""
        ...

    async def list_page(
        self, endpoint_id: str, filters: Mapping[str, Any], *, limit: int, after: str | None
    ) -> Page[EventDelivery]:
        """An endpoint's deliveries, newest first."""
        ...

    async def fanout_position(self) -> int | None:
        """The last event number the fan-out has handled; None before its first pass."""
        ...

    async def save_fanout_position(self, old: int | None, new: int) -> bool:
        """Moves the fan-out's position from ``old`` to ``new``; False if it was not ``old``."""
        ...

    async def add_replay(self, replay: Replay) -> bool:
        """Stores a replay; False when one with its id exists (a retried request)."""
        ...

    async def open_replays(self, limit: int) -> list[Replay]:
        """Replays not done yet, oldest first."""
        ...

    async def advance_replay(self, replay_id: str, old: int, new: int, *, done: bool) -> bool:
        """Moves a replay's position from ``old`` to ``new`` (and marks it done)."""
        ...


@dataclass
class PushServices:
    """What the push use cases and background tasks run against.

    Attributes:
        leases: Named leases: the fan-out's, and each backing-off endpoint's probe.
        allow_http: Plain http URLs are accepted (never in production).
        retention: How long finished deliveries are kept.
        page_secret: The store's page-token secret.
    """

    endpoints: EventEndpoints
    deliveries: EventDeliveries
    log: EventLog
    keys: SecretKeys
    leases: PushLeases
    clock: Clock
    page_secret: Callable[[], Awaitable[bytes]]
    allow_http: bool = False
    retention: timedelta = timedelta(days=30)
