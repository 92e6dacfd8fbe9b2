"""Watch billing events with a stream that reconnects and resumes by itself.

.. code-block:: python

    import grpc
    from billing.v1 import event_service_pb2
    from billing_client.events import EventWatch

    async with grpc.aio.insecure_channel("billing:50051") as channel:
        watch = EventWatch(channel, event_service_pb2.WatchEventsRequest(event_types=["payment.*"]))
        async for event in watch:
            handle(event)          # at least once: drop repeats by event.id
            save(watch.cursor)     # optional: resume from here after a restart

:class:`EventWatch` remembers the cursor of the last event it handed out (or of the last
heartbeat: the position the server examined), and when the stream breaks (a server
restart, a deploy, the network) it reconnects with backoff and resumes after that cursor,
so nothing is skipped; an event may arrive again, with the same id. It does not
reconnect on errors that a retry cannot fix: ``EVENT_CONSUMER_TAKEN_OVER`` (another
process took the durable consumer: two processes sharing one name must not keep taking it
from each other), ``EVENT_CURSOR_EXPIRED``, ``INVALID_EVENT_CURSOR``, a bad request or a
refused permission. Those raise ``grpc.aio.AioRpcError``; :func:`error_reason` reads
their ``ErrorInfo`` reason.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from billing.v1 import billing_event_pb2, event_service_pb2, event_service_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["RETRYABLE_CODES", "EventWatch", "error_reason"]

#: Status codes after which the stream is opened again.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ``google.rpc.ErrorInfo`` reason of a failed call ("" when it has none)."""
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return str(info.reason)
    return ""


class EventWatch:
    """A ``WatchEvents`` stream that reconnects and resumes after its last cursor.

    Args:
        channel: A channel to the billing service (it reconnects by itself).
        request: Filters, start and consumer, as for ``WatchEvents``. After the first
            event or heartbeat, reconnections start after :attr:`cursor` instead.
        metadata: Call metadata (``authorization`` for a bearer token).
        min_backoff: First wait before reconnecting, in seconds (doubled per failure,
            with jitter, up to ``max_backoff``; reset by every message received).
        max_backoff: Longest wait between attempts.
        max_attempts: Give up (raise the last error) after this many failed attempts in a
            row; None retries forever.

    Attributes:
        cursor: The position to resume after: the last event handed out, or the last
            heartbeat's position ("" before the first message).
        reconnects: How many times the stream was opened again.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        request: event_service_pb2.WatchEventsRequest | None = None,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
        max_attempts: int | None = None,
    ) -> None:
        self._stub: Any = event_service_pb2_grpc.EventServiceStub(channel)
        self._request = request or event_service_pb2.WatchEventsRequest()
        self._metadata = tuple(metadata)
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._max_attempts = max_attempts
        self.cursor = ""
        self.reconnects = 0

    def _next_request(self) -> event_service_pb2.WatchEventsRequest:
        request = event_service_pb2.WatchEventsRequest()
        request.CopyFrom(self._request)
        if self.cursor:
            request.after_cursor = self.cursor
        return request

    async def __aiter__(self) -> AsyncIterator[billing_event_pb2.BillingEvent]:
        failures = 0
        while True:
            call = self._stub.WatchEvents(self._next_request(), metadata=self._metadata)
            try:
                async for message in call:
                    failures = 0
                    if message.HasField("event"):
                        # The cursor moves once the caller asks for the next event: an
                        # event being handled when the stream breaks is sent again.
                        yield message.event
                        self.cursor = message.event.cursor
                    elif message.heartbeat.cursor:
                        self.cursor = message.heartbeat.cursor
                # The server ended the stream without an error (it never does by itself):
                # open it again after a short pause.
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE_CODES or error_reason(error) == "EVENT_CONSUMER_TAKEN_OVER":
                    raise
                failures += 1
                if self._max_attempts is not None and failures >= self._max_attempts:
                    raise
            finally:
                call.cancel()
            delay = min(self._max_backoff, self._min_backoff * (2 ** max(0, failures - 1)))
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # jitter, not security
            self.reconnects += 1
