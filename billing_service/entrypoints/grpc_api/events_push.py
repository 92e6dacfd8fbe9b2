"""EventService's push RPCs: endpoints, secret rotation, deliveries and replays (one entry each).

The create and rotate answers hold a secret that must never rest anywhere: the runner stores
their idempotency answer without it (``without_client_secrets`` clears ``secret`` fields),
and a replayed answer gets it back here (``on_replay``) by deriving it again from the
deployment's key and the ids the stored answer kept.
"""

from __future__ import annotations

from datetime import UTC, timedelta

from billing.v1 import event_service_pb2
from google.protobuf.duration_pb2 import Duration

from billing_service.domain.errors import InvalidArgument
from billing_service.domain.push import DeliveryState, EventDelivery
from billing_service.entrypoints.grpc_api import convert
from billing_service.entrypoints.grpc_api.runner import Read, Write
from billing_service.service_layer import push_endpoints
from billing_service.service_layer.core import Deps

__all__ = ["PUSH_RPCS", "delivery_pb", "endpoint_pb"]

DELIVERY_STATE_TO_PB = {
    DeliveryState.PENDING: event_service_pb2.EVENT_DELIVERY_STATE_PENDING,
    DeliveryState.SUCCEEDED: event_service_pb2.EVENT_DELIVERY_STATE_SUCCEEDED,
    DeliveryState.DEAD_LETTERED: event_service_pb2.EVENT_DELIVERY_STATE_DEAD_LETTERED,
}
_SCOPES = (
    event_service_pb2.REPLAY_SCOPE_UNSPECIFIED,
    event_service_pb2.REPLAY_SCOPE_DEAD_LETTERED,
    event_service_pb2.REPLAY_SCOPE_ALL_EVENTS,
)
_MAX_OVERLAP_SECONDS = 7 * 86400


# -- encoders ---------------------------------------------------------------------------


def endpoint_pb(view: push_endpoints.EndpointView) -> event_service_pb2.EventEndpoint:
    """The API's view of an endpoint: active secrets by id and hint, never a secret."""
    e = view.endpoint
    return event_service_pb2.EventEndpoint(
        id=e.id, url=e.url, event_types=e.event_types, description=e.description, disabled=e.disabled,
        metadata=e.metadata, consecutive_failures=e.consecutive_failures,
        last_success_time=convert.ts(e.last_success_at), last_failure_time=convert.ts(e.last_failure_at),
        create_time=convert.ts(e.created_at), update_time=convert.ts(e.updated_at),
        secrets=[
            event_service_pb2.EventEndpointSecret(id=slot.id, hint=hint, create_time=convert.ts(slot.created_at),
                                   expire_time=convert.ts(slot.expires_at))
            for slot, hint in view.secrets
        ],
    )  # fmt: skip


def delivery_pb(d: EventDelivery) -> event_service_pb2.EventDelivery:
    """One delivery with its last attempt (the receiver's answer body is never kept)."""
    pending = d.state is DeliveryState.PENDING
    return event_service_pb2.EventDelivery(
        id=d.id, endpoint_id=d.endpoint_id, event_id=d.event_id, event_type=d.event_type,
        state=DELIVERY_STATE_TO_PB[d.state], attempt_count=d.attempt_count,
        next_attempt_time=convert.ts(d.next_attempt_at) if pending else None,
        last_attempt_time=convert.ts(d.last_attempt_at), last_status_code=d.last_status_code, last_error=d.last_error,
        create_time=convert.ts(d.create_time), update_time=convert.ts(d.update_time),
    )  # fmt: skip


def _created(view: push_endpoints.EndpointView) -> event_service_pb2.CreateEventEndpointResponse:
    return event_service_pb2.CreateEventEndpointResponse(endpoint=endpoint_pb(view), secret=view.secret)


def _rotated(view: push_endpoints.EndpointView) -> event_service_pb2.RotateEventEndpointSecretResponse:
    return event_service_pb2.RotateEventEndpointSecretResponse(endpoint=endpoint_pb(view), secret=view.secret)


# -- decoders ---------------------------------------------------------------------------


def _create(r: event_service_pb2.CreateEventEndpointRequest) -> push_endpoints.CreateEndpoint:
    cmd = push_endpoints.CreateEndpoint(
        url=r.url, event_types=tuple(r.event_types), description=r.description, disabled=r.disabled,
        metadata=dict(r.metadata),
    )  # fmt: skip
    cmd.validate()
    return cmd


def _update(r: event_service_pb2.UpdateEventEndpointRequest) -> push_endpoints.UpdateEndpoint:
    e = r.endpoint
    cmd = push_endpoints.UpdateEndpoint(
        endpoint_id=e.id, paths=frozenset(r.update_mask.paths), url=e.url, event_types=tuple(e.event_types),
        description=e.description, disabled=e.disabled, metadata=dict(e.metadata),
    )  # fmt: skip
    cmd.validate()
    return cmd


def _duration(d: Duration, field_path: str) -> timedelta:
    if d.seconds < 0 or d.nanos < 0 or d.seconds > _MAX_OVERLAP_SECONDS:
        raise InvalidArgument.field(field_path, "must be between 0 and 7 days")
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


def _rotate(r: event_service_pb2.RotateEventEndpointSecretRequest) -> push_endpoints.RotateSecret:
    overlap = _duration(r.overlap, "overlap") if r.HasField("overlap") else push_endpoints.DEFAULT_OVERLAP
    cmd = push_endpoints.RotateSecret(endpoint_id=r.endpoint_id, overlap=overlap)
    cmd.validate()
    return cmd


def _replay(r: event_service_pb2.ReplayEventsRequest) -> push_endpoints.ReplayCommand:
    if r.scope not in _SCOPES:
        raise InvalidArgument.field("scope", "is not a ReplayScope value")
    cmd = push_endpoints.ReplayCommand(
        endpoint_id=r.endpoint_id, all_events=r.scope == event_service_pb2.REPLAY_SCOPE_ALL_EVENTS,
        start=r.start_time.ToDatetime(tzinfo=UTC) if r.HasField("start_time") else None,
        end=r.end_time.ToDatetime(tzinfo=UTC) if r.HasField("end_time") else None,
    )  # fmt: skip
    cmd.validate()
    return cmd


# -- replayed answers: the secret again ----------------------------------------------------


async def _created_secret(
    deps: Deps, response: event_service_pb2.CreateEventEndpointResponse
) -> event_service_pb2.CreateEventEndpointResponse:
    endpoint_id = response.endpoint.id
    if endpoint_id:
        response.secret = await push_endpoints.secret_for(
            deps, endpoint_id, push_endpoints.creation_secret_id(endpoint_id)
        )
    return response


async def _rotated_secret(
    deps: Deps, response: event_service_pb2.RotateEventEndpointSecretResponse
) -> event_service_pb2.RotateEventEndpointSecretResponse:
    if response.endpoint.id and response.endpoint.secrets:
        # Newest first: the secret this rotation created.
        response.secret = await push_endpoints.secret_for(deps, response.endpoint.id, response.endpoint.secrets[0].id)
    return response


# -- the RPCs -------------------------------------------------------------------------------

MANAGE = "events:manage"

#: The push entries of EventService (the watch entries live with the event log's).
PUSH_RPCS: list[object] = [
    Write(
        "CreateEventEndpoint",
        event_service_pb2.CreateEventEndpointRequest,
        MANAGE,
        "ep",
        _create,
        push_endpoints.create_endpoint,
        _created,
        preview=push_endpoints.preview_endpoint,
        on_replay=_created_secret,
    ),
    Read(
        "GetEventEndpoint",
        event_service_pb2.GetEventEndpointRequest,
        MANAGE,
        lambda deps, r: push_endpoints.get_endpoint(deps, r.endpoint_id),
        lambda v: event_service_pb2.GetEventEndpointResponse(endpoint=endpoint_pb(v)),
    ),
    Read(
        "ListEventEndpoints",
        event_service_pb2.ListEventEndpointsRequest,
        MANAGE,
        lambda deps, r: push_endpoints.list_endpoints(
            deps, requested_size=r.page_size, token=r.page_token, filter_text=r.filter
        ),
        lambda page: event_service_pb2.ListEventEndpointsResponse(
            endpoints=map(endpoint_pb, page[0]), next_page_token=page[1]
        ),
    ),
    Write(
        "UpdateEventEndpoint",
        event_service_pb2.UpdateEventEndpointRequest,
        MANAGE,
        "ep",
        _update,
        push_endpoints.update_endpoint,
        lambda v: event_service_pb2.UpdateEventEndpointResponse(endpoint=endpoint_pb(v)),
    ),
    Write(
        "DeleteEventEndpoint",
        event_service_pb2.DeleteEventEndpointRequest,
        MANAGE,
        "ep",
        lambda r: r.endpoint_id,
        push_endpoints.delete_endpoint,
        lambda _: event_service_pb2.DeleteEventEndpointResponse(),
    ),
    Write(
        "RotateEventEndpointSecret",
        event_service_pb2.RotateEventEndpointSecretRequest,
        MANAGE,
        "sk",
        _rotate,
        push_endpoints.rotate_secret,
        _rotated,
        on_replay=_rotated_secret,
    ),
    Read(
        "ListEventDeliveries",
        event_service_pb2.ListEventDeliveriesRequest,
        MANAGE,
        lambda deps, r: push_endpoints.list_deliveries(
            deps, r.endpoint_id, requested_size=r.page_size, token=r.page_token, filter_text=r.filter
        ),
        lambda page: event_service_pb2.ListEventDeliveriesResponse(
            deliveries=map(delivery_pb, page[0]), next_page_token=page[1]
        ),
    ),
    Write(
        "ReplayEvents",
        event_service_pb2.ReplayEventsRequest,
        MANAGE,
        "rpl",
        _replay,
        push_endpoints.replay_events,
        lambda res: event_service_pb2.ReplayEventsResponse(
            requeued_count=res.requeued_count, first_cursor=res.first_cursor, last_cursor=res.last_cursor
        ),
    ),
]
