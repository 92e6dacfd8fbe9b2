"""From one commit to its billing events: the pure rule the store applies inside ``commit``.

The store hands over what it is about to write (each changed resource, with its kind, id,
the version it writes, whether it inserts it, and its customer) plus the commit's audit
events; this module returns the billing events of that commit, in order. No use case
builds an event, so none can forget one (docs/EVENTS.md, "The outbox, written with the
change"):

- each changed resource yields the types :func:`event_catalog.event_types` picks from
  the audit events about it (``previous_status`` from the first one's ``before_status``,
  ``status`` from the last one's ``after_status``, their actions);
- cause, caller, request id and time come from those audit events;
- a changed resource without an audit event still gets ``<resource_type>.updated`` (an
  event never fails a commit); it is reported in :attr:`Derived.unaudited` so the store
  can log and count it, and the tests make it a failure;
- audit events about resources the commit does not change yield nothing.

Nothing here reads a clock (``now`` is passed in) or does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from billing_service.domain.common import AuditEvent
from billing_service.domain.event_catalog import EVENT_TYPES, event_types
from billing_service.domain.ids import new_id

__all__ = [
    "CAUSE_KINDS",
    "ChangedResource",
    "Derived",
    "DerivedEvent",
    "EventCause",
    "cause_of",
    "derive_events",
]

#: The ``cause`` kinds of a BillingEvent (``billing.v1.EventCause``).
CAUSE_KINDS: Final = ("request", "webhook", "reconciliation", "scheduled_job")

_WEBHOOK_PREFIX: Final = "webhook:"
_SCHEDULER_PREFIX: Final = "scheduler:"
_RECONCILER: Final = "reconciler"


@dataclass(frozen=True)
class ChangedResource:
    """One entity a commit writes, as the derivation needs it.

    Attributes:
        resource_type: ``payment``, ``refund``... (one of ``event_catalog.RESOURCE_TYPES``).
        resource_id: The entity's id.
        created: The commit inserts it.
        version: The version the commit writes (1 at creation).
        customer_id: The customer it belongs to ("" for plans).
    """

    resource_type: str
    resource_id: str
    created: bool
    version: int
    customer_id: str


@dataclass(frozen=True)
class DerivedEvent:
    """One billing event of a commit, without the resource's snapshot (the store adds it).

    Attributes:
        change_index: Position of its resource in the commit's changes (for the snapshot).
        index: Its place among the commit's events (the sequencer's order within a commit).
    """

    id: str
    type: str
    resource_type: str
    resource_id: str
    customer_id: str
    resource_version: int
    previous_status: str
    create_time: datetime
    caller: str
    request_id: str
    audit_event_ids: tuple[str, ...]
    change_index: int
    index: int


@dataclass(frozen=True)
class Derived:
    """The events of one commit, and the changed resources that had no audit event."""

    events: list[DerivedEvent] = field(default_factory=list)
    unaudited: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EventCause:
    """Why an event happened, read from the audit caller (``billing.v1.EventCause``).

    Attributes:
        kind: One of :data:`CAUSE_KINDS`.
        caller: For ``request``: the calling service.
        request_id: For ``request``: its request id.
        processor: For ``webhook``: the processor's name (``stripe``).
        event_id: For ``webhook``: the processor's event id.
        run_id: For ``reconciliation`` and ``scheduled_job``: the run.
        job: For ``scheduled_job``: the job's name.
    """

    kind: str
    caller: str = ""
    request_id: str = ""
    processor: str = ""
    event_id: str = ""
    run_id: str = ""
    job: str = ""


def cause_of(caller: str, request_id: str) -> EventCause:
    """The cause of a change made by ``caller`` (as audit events name it).

    ``webhook:<processor>`` is a processor's webhook (the request id is its event id),
    ``reconciler`` reconciliation (the request id is the run), ``scheduler:<job>`` a
    scheduled job; anything else is a calling service's request.
    """
    if caller.startswith(_WEBHOOK_PREFIX):
        return EventCause("webhook", processor=caller[len(_WEBHOOK_PREFIX) :], event_id=request_id)
    if caller == _RECONCILER:
        return EventCause("reconciliation", run_id=request_id)
    if caller.startswith(_SCHEDULER_PREFIX):
        return EventCause("scheduled_job", job=caller[len(_SCHEDULER_PREFIX) :], run_id=request_id)
    return EventCause("request", caller=caller, request_id=request_id)


def derive_events(
    changes: Sequence[ChangedResource],
    audit_events: Sequence[AuditEvent],
    *,
    now: datetime,
    new_event_id: Callable[[], str] = lambda: new_id("bev"),
) -> Derived:
    """The billing events of one commit, in the order of its changes.

    Args:
        changes: The entities the commit writes, in its order (bookkeeping-only updates
            left out by the caller).
        audit_events: Every audit event of the commit.
        now: The time used for a change that has no audit event.
        new_event_id: Makes event ids (tests pass a counter).

    Returns:
        The events, and the ids of changed resources that came without an audit event.
    """
    by_resource: dict[str, list[AuditEvent]] = {}
    for event in audit_events:
        by_resource.setdefault(event.resource_id, []).append(event)
    fallback = audit_events[0] if audit_events else None
    out: list[DerivedEvent] = []
    unaudited: list[str] = []
    for change_index, change in enumerate(changes):
        about = by_resource.get(change.resource_id, [])
        if about:
            types = event_types(
                change.resource_type,
                created=change.created,
                previous_status=about[0].before_status,
                status=about[-1].after_status,
                actions=[e.action for e in about],
            )
            previous = "" if change.created else about[0].before_status
            first = about[0]
            caller, request_id, at = first.caller, first.request_id, about[-1].at
        else:
            unaudited.append(change.resource_id)
            types = [f"{change.resource_type}.created" if change.created else f"{change.resource_type}.updated"]
            previous = ""
            # The commit's other audit events say who caused it, if there are any.
            caller = fallback.caller if fallback is not None else ""
            request_id = fallback.request_id if fallback is not None else ""
            at = fallback.at if fallback is not None else now
        for picked in types:
            # A type the catalogue lacks is a programming error upstream; never fail the commit.
            name = picked if picked in EVENT_TYPES else f"{change.resource_type}.updated"
            out.append(
                DerivedEvent(
                    id=new_event_id(),
                    type=name,
                    resource_type=change.resource_type,
                    resource_id=change.resource_id,
                    customer_id=change.customer_id,
                    resource_version=change.version,
                    previous_status=previous,
                    create_time=at,
                    caller=caller,
                    request_id=request_id,
                    audit_event_ids=tuple(e.id for e in about),
                    change_index=change_index,
                    index=len(out),
                )
            )
    return Derived(events=out, unaudited=unaudited)
