"""Errors of the events API (EventService), each with its ``billing.v1.ErrorReason``.

They subclass the general errors of :mod:`billing_service.domain.errors`, so the one
mapping table in ``entrypoints/grpc_api/errors.py`` gives them their status codes
(INVALID_ARGUMENT, FAILED_PRECONDITION) without a change. They are defined with the
contract (``protos/billing/v1/event_service.proto``); the event log, the stream and the
consumers that raise them come with the implementation of issue 12.
"""

from __future__ import annotations

from billing_service.domain.errors import FailedPrecondition, InvalidArgument

__all__ = ["EventConsumerTakenOver", "EventCursorExpired", "InvalidEventCursor"]


class InvalidEventCursor(InvalidArgument):
    """A cursor was not issued by this service's event log (malformed, or from another log).

    Build it with ``InvalidEventCursor.field("after_cursor", "...")`` so the BadRequest
    names the request field.
    """

    reason = "INVALID_EVENT_CURSOR"


class EventCursorExpired(FailedPrecondition):
    """The events after the requested position were deleted by retention."""

    reason = "EVENT_CURSOR_EXPIRED"


class EventConsumerTakenOver(FailedPrecondition):
    """A newer stream took over the durable consumer this stream served."""

    reason = "EVENT_CONSUMER_TAKEN_OVER"
