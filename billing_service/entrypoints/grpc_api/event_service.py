"""EventService: WatchEvents, ListEvents, AckEvents, GetEventConsumer, and the push RPCs (``events_push``).

One entry per RPC (see :mod:`.runner`). Events are converted here from the log's snapshots
to the messages the Get RPCs return, without client secrets (``without_client_secrets``);
:func:`render_event` is the same message as the JSON body pushed to endpoints.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Final

from billing.v1 import billing_event_pb2, common_pb2, event_service_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from billing_service.domain.common import Processor
from billing_service.domain.errors import FailedPrecondition, InvalidArgument
from billing_service.domain.event_catalog import RESOURCE_TYPES, validate_type_patterns
from billing_service.domain.event_cursor import decode_cursor, encode_cursor
from billing_service.domain.event_derivation import cause_of
from billing_service.entrypoints.grpc_api import convert
from billing_service.entrypoints.grpc_api.base import without_client_secrets
from billing_service.entrypoints.grpc_api.events_push import PUSH_RPCS
from billing_service.entrypoints.grpc_api.runner import Read, Runner, Service, Stream, Write
from billing_service.observability.context import current_caller
from billing_service.service_layer import events
from billing_service.service_layer.core import Deps
from billing_service.service_layer.event_ports import ConsumerState, EventFilter, LoggedEvent
from billing_service.service_layer.filtering import FilterField, FilterSpec, created, parse_filter
from billing_service.service_layer.idempotency import Idempotency, RequestContext
from billing_service.service_layer.pagination import decode_token, encode_token, page_size
from billing_service.service_layer.ports import Between

__all__ = ["EVENTS", "EventServicer", "consumer_pb", "event_pb", "render_event"]

_DEFAULT_HEARTBEAT: Final = 15.0
_MIN_HEARTBEAT: Final = 1.0
_MAX_HEARTBEAT: Final = 300.0


def _event_deps(deps: Deps) -> events.EventDeps:
    if deps.events is None:
        raise FailedPrecondition("events are not served by this process")
    return deps.events


# -- conversion -----------------------------------------------------------------------

_RESOURCE_FIELDS: Final[dict[str, tuple[str, Callable[[Any], Message]]]] = {
    "customer": ("customer", convert.customer_pb),
    "payment_method": ("payment_method", convert.payment_method_pb),
    "payment": ("payment", convert.payment_pb),
    "refund": ("refund", convert.refund_pb),
    "plan": ("plan", convert.plan_pb),
    "subscription": ("subscription", convert.subscription_pb),
    "invoice": ("invoice", convert.invoice_pb),
    "dispute": ("dispute", convert.dispute_pb),
}


def _cause_pb(caller: str, request_id: str) -> billing_event_pb2.EventCause:
    cause = cause_of(caller, request_id)
    if cause.kind == "webhook":
        known = cause.processor in {p.value for p in Processor}
        processor = convert.PROCESSOR_TO_PB[Processor(cause.processor)] if known else common_pb2.PROCESSOR_UNSPECIFIED
        return billing_event_pb2.EventCause(
            webhook=billing_event_pb2.WebhookCause(processor=processor, event_id=cause.event_id)
        )
    if cause.kind == "reconciliation":
        return billing_event_pb2.EventCause(reconciliation=billing_event_pb2.ReconciliationCause(run_id=cause.run_id))
    if cause.kind == "scheduled_job":
        return billing_event_pb2.EventCause(
            scheduled_job=billing_event_pb2.ScheduledJobCause(job=cause.job, run_id=cause.run_id)
        )
    return billing_event_pb2.EventCause(
        request=billing_event_pb2.RequestCause(caller=cause.caller, request_id=cause.request_id)
    )


def event_pb(event: LoggedEvent, log_id: str) -> billing_event_pb2.BillingEvent:
    """The ``BillingEvent`` message of a logged event (the resource as its Get RPC returns it)."""
    out = billing_event_pb2.BillingEvent(
        id=event.id,
        type=event.type,
        resource_type=event.resource_type,
        resource_id=event.resource_id,
        customer_id=event.customer_id,
        resource_version=event.resource_version,
        previous_status=event.previous_status,
        create_time=convert.ts(event.create_time),
        cause=_cause_pb(event.caller, event.request_id),
        cursor=encode_cursor(event.seq, log_id),
        audit_event_ids=event.audit_event_ids,
    )
    found = _RESOURCE_FIELDS.get(event.resource_type)
    if found is not None and event.resource is not None:
        name, to_message = found
        getattr(out, name).CopyFrom(to_message(event.resource))
    # Client secrets are never stored, so never in a snapshot; cleared once more anyway.
    return without_client_secrets(out)


def render_event(event: LoggedEvent, log_id: str) -> bytes:
    """The body POSTed to push endpoints: the event as proto3 JSON, original field names, compact.

    ``int64`` values are strings, as proto3 JSON prescribes; receivers verify these exact
    bytes (``billing_client.push``) and parse them into ``billing.v1.BillingEvent``.
    """
    fields = json_format.MessageToDict(event_pb(event, log_id), preserving_proto_field_name=True)
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def consumer_pb(state: ConsumerState, log_id: str, now: datetime) -> event_service_pb2.EventConsumer:
    """The ``EventConsumer`` message."""
    return event_service_pb2.EventConsumer(
        id=state.name,
        acked_cursor="" if state.acked_seq is None else encode_cursor(state.acked_seq, log_id),
        ack_time=convert.ts(state.ack_time),
        connected=state.connected(now),
        expire_time=convert.ts(state.expire_at),
        create_time=convert.ts(state.create_time),
        update_time=convert.ts(state.update_time),
    )


# -- WatchEvents ----------------------------------------------------------------------


def _watch(r: event_service_pb2.WatchEventsRequest) -> events.Watch:
    types = validate_type_patterns(list(r.event_types), "event_types")
    consumer = events.validate_consumer_name(r.consumer_id, "consumer_id") if r.consumer_id else ""
    heartbeat = _DEFAULT_HEARTBEAT
    if r.HasField("heartbeat_interval"):
        heartbeat = r.heartbeat_interval.ToTimedelta().total_seconds()
        if not _MIN_HEARTBEAT <= heartbeat <= _MAX_HEARTBEAT:
            raise InvalidArgument.field("heartbeat_interval", "must be between 1 second and 5 minutes")
    which = r.WhichOneof("start")
    start_time: datetime | None = None
    start: Any = "default"
    if which == "start_point":
        if r.start_point == event_service_pb2.START_POINT_NOW:
            start = "now"
        elif r.start_point == event_service_pb2.START_POINT_EARLIEST:
            start = "earliest"
        elif r.start_point != event_service_pb2.START_POINT_UNSPECIFIED:
            raise InvalidArgument.field("start_point", "is not a StartPoint value")
    elif which == "start_time":
        start, start_time = "time", r.start_time.ToDatetime(tzinfo=UTC)
    elif which == "after_cursor":
        if not r.after_cursor:
            raise InvalidArgument.field("after_cursor", "is empty")
        start = "cursor"
    return events.Watch(
        filters=EventFilter(types=types, customer_id=r.customer_id, resource_id=r.resource_id),
        consumer=consumer,
        start=start,
        start_time=start_time,
        after_cursor=r.after_cursor,
        heartbeat_seconds=heartbeat,
    )


async def _watch_stream(
    deps: Deps, r: event_service_pb2.WatchEventsRequest
) -> AsyncIterator[event_service_pb2.WatchEventsResponse]:
    event_deps = _event_deps(deps)
    watch = _watch(r)
    log_id = await event_deps.log.log_id()
    async for item in events.watch_events(event_deps, current_caller.get(), watch):
        if isinstance(item, events.Heartbeat):
            yield event_service_pb2.WatchEventsResponse(
                heartbeat=event_service_pb2.Heartbeat(
                    time=convert.ts(item.time), cursor=encode_cursor(item.position, log_id)
                )
            )
        else:
            yield event_service_pb2.WatchEventsResponse(event=event_pb(item, log_id))


# -- ListEvents -----------------------------------------------------------------------

_LIST_FILTER: Final = FilterSpec(
    {
        "type": FilterField("type"),
        "resource_type": FilterField("resource_type"),
        "resource_id": FilterField("resource_id"),
        "customer_id": FilterField("customer_id"),
        "create_time": created("create_time"),
    }
)


def _list_filter(text: str) -> EventFilter:
    parsed = parse_filter(text, _LIST_FILTER)
    types: tuple[str, ...] = ()
    if "type" in parsed:
        types = validate_type_patterns([str(parsed["type"])], "filter", allow_all=False)
    resource_type = str(parsed.get("resource_type", ""))
    if resource_type and resource_type not in RESOURCE_TYPES:
        raise InvalidArgument.field("filter", f"resource_type must be one of {', '.join(RESOURCE_TYPES)}")
    window = parsed.get("create_time")
    window = window if isinstance(window, Between) else Between()
    return EventFilter(
        types=types,
        customer_id=str(parsed.get("customer_id", "")),
        resource_id=str(parsed.get("resource_id", "")),
        resource_type=resource_type,
        created_after=window.lower,
        created_after_inclusive=window.lower_inclusive,
        created_before=window.upper,
        created_before_inclusive=window.upper_inclusive,
    )


async def _list(deps: Deps, r: event_service_pb2.ListEventsRequest) -> event_service_pb2.ListEventsResponse:
    event_deps = _event_deps(deps)
    filters = _list_filter(r.filter)
    limit = page_size(r.page_size)
    secret = await deps.store.page_token_secret()
    bound = {"filter": r.filter}
    cursor = decode_token(r.page_token, bound, secret)
    log_id = await event_deps.log.log_id()
    after = None if cursor is None else decode_cursor(cursor, log_id, "page_token")
    items, next_position = await events.list_events(event_deps, filters, after=after, limit=limit)
    token = "" if next_position is None else encode_token(encode_cursor(next_position, log_id), bound, secret)
    return event_service_pb2.ListEventsResponse(events=[event_pb(e, log_id) for e in items], next_page_token=token)


# -- consumers ------------------------------------------------------------------------


def _ack(r: event_service_pb2.AckEventsRequest) -> events.Ack:
    return events.Ack(
        consumer=events.validate_consumer_name(r.consumer_id, "consumer_id"),
        cursor=r.cursor,
        allow_rewind=r.allow_rewind,
    )


async def _ack_run(deps: Deps, ctx: RequestContext, cmd: events.Ack) -> event_service_pb2.AckEventsResponse:
    event_deps = _event_deps(deps)
    state = await events.ack_events(event_deps, ctx, cmd)
    return event_service_pb2.AckEventsResponse(
        consumer=consumer_pb(state, await event_deps.log.log_id(), event_deps.clock.now())
    )


async def _get_consumer(
    deps: Deps, r: event_service_pb2.GetEventConsumerRequest
) -> event_service_pb2.GetEventConsumerResponse:
    event_deps = _event_deps(deps)
    state = await events.get_consumer(event_deps, current_caller.get(), r.consumer_id)
    return event_service_pb2.GetEventConsumerResponse(
        consumer=consumer_pb(state, await event_deps.log.log_id(), event_deps.clock.now())
    )


# -- the RPCs -------------------------------------------------------------------------

EVENTS = Service(
    event_service_pb2.DESCRIPTOR.services_by_name["EventService"],
    [
        Stream("WatchEvents", event_service_pb2.WatchEventsRequest, "events:read", _watch_stream),
        Read("ListEvents", event_service_pb2.ListEventsRequest, "events:read", _list, lambda resp: resp),
        Write(
            "AckEvents", event_service_pb2.AckEventsRequest, "events:read", "evc",
            _ack, _ack_run, lambda resp: resp,
        ),
        Read(
            "GetEventConsumer", event_service_pb2.GetEventConsumerRequest, "events:read",
            _get_consumer, lambda resp: resp,
        ),
        *PUSH_RPCS,
    ],
)  # fmt: skip


class EventServicer:
    """Implements billing.v1.EventService: one handler per entry of :data:`EVENTS`.

    Args:
        deps: Ports for the use cases (``deps.events`` set).
        idempotency: Runs AckEvents at most once per request_id.
        store_serving: False while health finds the store down (calls then fail at once).
    """

    def __init__(self, deps: Deps, idempotency: Idempotency, store_serving: Callable[[], bool] = lambda: True) -> None:
        Runner(deps, idempotency, store_serving).bind(self, EVENTS)
