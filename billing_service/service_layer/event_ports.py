"""Ports of the event log and of durable consumers (docs/EVENTS.md, "How it works").

The store writes each commit's events into an outbox in the commit's transaction; the
sequencer moves them into the **event log**, numbering them 1, 2, 3... in the order they
become visible. Everything that reads events (``WatchEvents`` streams, ``ListEvents``,
push fan-out) reads the log by number through :class:`EventLog`. Durable consumers keep
a position for a calling service (:class:`EventConsumers`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from billing_service.domain.event_catalog import matches
from billing_service.service_layer.ports import Entity

__all__ = [
    "ConsumerState",
    "EventConsumers",
    "EventFilter",
    "EventLog",
    "LoggedEvent",
]


@dataclass(frozen=True)
class LoggedEvent:
    """One event of the log.

    Attributes:
        seq: Its number in the log (the cursor's position), from 1, dense.
        id: The event id (``bev_...``), kept by redeliveries.
        resource: The resource's full state after the change (decoded from the snapshot
            the commit stored; client secrets are never in it).
        create_time: When the change was made (its audit event's time).
        sequence_time: When the event entered the log (monotonic in ``seq``).
        caller: The audit caller (see ``event_derivation.cause_of``).
        request_id: The caller's request id, the webhook event id or the run id.
    """

    seq: int
    id: str
    type: str
    resource_type: str
    resource_id: str
    customer_id: str
    resource_version: int
    previous_status: str
    create_time: datetime
    sequence_time: datetime
    caller: str
    request_id: str
    audit_event_ids: tuple[str, ...]
    resource: Entity | None


@dataclass(frozen=True)
class EventFilter:
    """What a reader wants from the log; every set field must match (AND).

    Attributes:
        types: Validated type patterns (``payment.succeeded``, ``payment.*``, ``*``);
            empty passes every type.
        customer_id: Only this customer's events.
        resource_id: Only this resource's events.
        resource_type: Only this kind of resource.
        created_after: ``create_time`` lower bound (see ``created_after_inclusive``).
        created_before: ``create_time`` upper bound (see ``created_before_inclusive``).
    """

    types: tuple[str, ...] = ()
    customer_id: str = ""
    resource_id: str = ""
    resource_type: str = ""
    created_after: datetime | None = None
    created_after_inclusive: bool = True
    created_before: datetime | None = None
    created_before_inclusive: bool = False

    def matches(self, event: LoggedEvent) -> bool:
        """True if ``event`` passes every set field."""
        if self.customer_id and event.customer_id != self.customer_id:
            return False
        if self.resource_id and event.resource_id != self.resource_id:
            return False
        if self.resource_type and event.resource_type != self.resource_type:
            return False
        if self.created_after is not None and (
            event.create_time < self.created_after
            or (event.create_time == self.created_after and not self.created_after_inclusive)
        ):
            return False
        if self.created_before is not None and (
            event.create_time > self.created_before
            or (event.create_time == self.created_before and not self.created_before_inclusive)
        ):
            return False
        return matches(self.types, event.type)


class EventLog(Protocol):
    """The numbered event log (``event_log``), its sequencer and its retention."""

    async def log_id(self) -> str:
        """This log's id (8 characters, made once with the log; part of every cursor)."""
        ...

    async def head(self) -> int:
        """The number of the last event in the log (0 when empty)."""
        ...

    async def low_water(self) -> int:
        """The first number retention has not deleted (1 until it deletes anything)."""
        ...

    async def read(self, after: int, limit: int, filters: EventFilter | None = None) -> list[LoggedEvent]:
        """Events numbered above ``after``, in number order, at most ``limit``.

        Filters by customer, resource or type use the log's indexes; the others are
        applied to what is read.
        """
        ...

    async def read_range(
        self, after: int, upto: int, limit: int, filters: EventFilter
    ) -> tuple[list[LoggedEvent], int]:
        """Events numbered in ``(after, upto]`` that match ``filters``, in order.

        Reads at most ``limit`` events through the log's indexes (customer, resource,
        exact types) and applies the rest of the filter to them.

        Returns:
            The matching events, and the position examined: ``upto`` when the read
            reached it, else the number of the last event read.
        """
        ...

    async def position_at(self, time: datetime) -> int:
        """The position just before the first event that entered the log at or after ``time``."""
        ...

    async def sequence_pass(self, max_batch: int = 500) -> int:
        """Moves up to ``max_batch`` committed outbox events into the log; returns how many."""
        ...

    async def apply_retention(self, now: datetime, keep: timedelta) -> int:
        """Deletes events that entered the log more than ``keep`` before ``now``; returns how many."""
        ...

    def notifications(self, target: Literal["outbox", "log"]) -> AsyncIterator[None]:
        """Yields whenever events may have been added to ``target`` (a doorbell, content unused).

        Never ends by itself; after a broken change stream it reopens from now, so a lost
        notification costs latency (readers also poll), never events.
        """
        ...


@dataclass(frozen=True)
class ConsumerState:
    """A durable consumer (``event_consumers``).

    Attributes:
        name: The consumer's name, per caller.
        acked_seq: The acknowledged position; None until the first AckEvents (a stream
            for a new consumer starts at now).
        session: The id of the stream serving it, or "".
        lease_until: Until when that stream's claim holds.
        expire_at: When it is deleted if neither connected nor acknowledged again.
    """

    caller: str
    name: str
    acked_seq: int | None
    ack_time: datetime | None
    session: str
    lease_until: datetime | None
    expire_at: datetime
    create_time: datetime
    update_time: datetime

    def connected(self, now: datetime) -> bool:
        """True while a stream's claim on it is live."""
        return bool(self.session) and self.lease_until is not None and self.lease_until > now


class EventConsumers(Protocol):
    """Durable consumers: a position per (caller, name), served by one stream at a time."""

    async def take_over(
        self, caller: str, name: str, session: str, *, now: datetime, lease: timedelta, keep: timedelta
    ) -> ConsumerState:
        """Makes ``session`` the consumer's stream (newest wins), creating the consumer if needed."""
        ...

    async def renew(self, caller: str, name: str, session: str, *, now: datetime, lease: timedelta) -> bool:
        """Extends ``session``'s claim; False when another stream took the consumer over."""
        ...

    async def release(self, caller: str, name: str, session: str, *, now: datetime) -> None:
        """Ends ``session``'s claim (its stream ended), if it still holds it."""
        ...

    async def ack(
        self, caller: str, name: str, seq: int, *, allow_rewind: bool, now: datetime, keep: timedelta
    ) -> ConsumerState:
        """Moves the position to ``seq`` (never backwards unless ``allow_rewind``); creates the consumer."""
        ...

    async def get(self, caller: str, name: str) -> ConsumerState | None:
        """The consumer, or None."""
        ...
