"""The webhook sidecar's ASGI app (Starlette).

``POST /webhooks/<processor>`` (``stripe``, ``paypal``: any ``Processor`` name; anything
else is 404) accepts a delivery only after, in this order: the declared size fits (413),
the body is JSON (415), the raw body read with a cap fits (413), the processor's verifier
(its adapter's ``verify_webhook``) checks the signature on the raw bytes (400, no details;
a processor whose webhooks are not configured here, or that sends none, refuses them
all), and the body is an event (400:
strict UTF-8 JSON, one object, nested at most ``processor_events.MAX_DEPTH``).
The raw event is then inserted into the inbox and acknowledged with 200; a redelivery
is acknowledged the same way and changes nothing. Nothing is stored for a refused
request. ``GET /healthz`` answers while the process lives, ``GET /readyz`` only while the
store answers (with the inbox's depth and lag).

Every delivery is counted in the sidecar's :class:`WebhookMetrics`: received, then either
rejected (cause ``too_large``, ``bad_content_type``, ``bad_signature``, ``bad_event``
for a body that is not a usable event, whatever the parser raised, ``bad_request`` for a
malformed Content-Length or a client gone mid-body, ``store_unavailable`` or
``store_error``, both answered 503) or stored / ``duplicate``. No request is ever
answered 500. While the app runs, a sampler refreshes
the inbox depth and lag gauges every ``stats_interval_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from billing_service.domain.common import Processor
from billing_service.domain.errors import StoreUnavailable
from billing_service.domain.processor_events import BadEvent, SignatureError, VerifiedEvent
from billing_service.entrypoints.webhooks.worker import InboxWorkers
from billing_service.observability.context import current_request_id
from billing_service.observability.metrics import WebhookMetrics
from billing_service.service_layer.event_intake import record
from billing_service.service_layer.ports import Clock, WebhookInbox, WebhookVerifier

log = logging.getLogger("billing_service.webhooks")

JSON_TYPE = "application/json"


class _TooLarge(Exception):
    pass


@dataclass
class Sidecar:
    """What the app needs.

    Attributes:
        inbox: Where verified events are stored.
        clock: Time source for received_at.
        ping: Raises ``StoreUnavailable`` unless the store answers (readiness).
        verifiers: Who verifies each processor's deliveries: its adapter, or for a processor
            whose webhooks are configured without API access, a verifier of its own.
        max_body_bytes: Largest accepted body.
        workers: The inbox workers started with the app (None: receive only).
        metrics: Where deliveries are counted (give the workers the same one).
        stats_interval_seconds: How often the inbox depth/lag gauges are refreshed (0: never).
    """

    inbox: WebhookInbox
    clock: Clock
    ping: Callable[[], Awaitable[None]]
    verifiers: Mapping[Processor, WebhookVerifier]
    max_body_bytes: int
    workers: InboxWorkers | None = None
    metrics: WebhookMetrics = field(default_factory=WebhookMetrics)
    stats_interval_seconds: float = 5.0


def _bad_request() -> Response:
    return PlainTextResponse("bad request", status_code=400)


def _retry_later(text: str) -> Response:
    return PlainTextResponse(text, status_code=503, headers={"Retry-After": "5"})


async def _read_body(request: Request, limit: int) -> bytes:
    """Reads the raw body, refusing more than ``limit`` bytes whatever Content-Length said."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def create_app(sidecar: Sidecar) -> Starlette:
    """Builds the ASGI app; the lifespan starts and stops the inbox workers."""

    metrics = sidecar.metrics

    async def receive(request: Request, processor: Processor) -> Response:
        name = processor.value
        metrics.received(name)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                metrics.rejected(name, "bad_request")
                return _bad_request()
            if int(declared) > sidecar.max_body_bytes:
                metrics.rejected(name, "too_large")
                return PlainTextResponse("payload too large", status_code=413)
        if _media_type(request) != JSON_TYPE:
            metrics.rejected(name, "bad_content_type")
            return PlainTextResponse("unsupported media type", status_code=415)
        try:
            body = await _read_body(request, sidecar.max_body_bytes)
        except _TooLarge:
            metrics.rejected(name, "too_large")
            return PlainTextResponse("payload too large", status_code=413)
        except ClientDisconnect:
            metrics.rejected(name, "bad_request")
            return _bad_request()
        try:
            event = await _verify_and_parse(processor, body, request.headers)
        except SignatureError:
            metrics.rejected(name, "bad_signature")
            log.warning("webhook rejected: processor=%s reason=signature", name)
            return _bad_request()
        except BadEvent:
            metrics.rejected(name, "bad_event")
            log.warning("webhook rejected: processor=%s reason=payload", name)
            return _bad_request()
        except Exception as exc:
            # Whatever else a body can make the verifier or parser raise is still the body's
            # fault: a 400 without details, never a 500 with a traceback.
            metrics.rejected(name, "bad_event")
            log.warning("webhook rejected: processor=%s reason=%s", name, type(exc).__name__)
            return _bad_request()
        token = current_request_id.set(event.event_id)
        try:
            created = await record(sidecar.inbox, sidecar.clock, processor, event, body)
        except StoreUnavailable:
            # Not acknowledged: the processor redelivers later.
            metrics.rejected(name, "store_unavailable")
            return _retry_later("store unavailable")
        except Exception:
            # A bug while storing: not acknowledged (the processor redelivers), logged as JSON.
            metrics.rejected(name, "store_error")
            log.exception("webhook not stored: processor=%s", name)
            return _retry_later("not stored")
        finally:
            current_request_id.reset(token)
        if not created:
            metrics.duplicate(name)
        elif sidecar.workers is not None:
            sidecar.workers.wake()
        return JSONResponse({"received": True, "duplicate": not created})

    async def _verify_and_parse(processor: Processor, body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
        verifier = sidecar.verifiers.get(processor)
        if verifier is None:
            raise SignatureError(f"{processor.value} webhooks are not configured here")
        return await verifier.verify_webhook(headers, body)

    async def webhook(request: Request) -> Response:
        try:
            processor = Processor(request.path_params["processor"])
        except ValueError:
            # Before any counting: a path a caller makes up must not become a metric label.
            return PlainTextResponse("not found", status_code=404)
        return await receive(request, processor)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        try:
            await sidecar.ping()
            stats = await sidecar.inbox.stats(now=sidecar.clock.now())
        except Exception as exc:
            if not isinstance(exc, StoreUnavailable):
                log.warning("readiness check failed", exc_info=True)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse(
            {
                "status": "ready",
                "inbox_depth": stats.depth,
                "inbox_dead": stats.dead,
                "inbox_lag_seconds": round(stats.oldest_pending_seconds, 3),
            }
        )

    async def sample_inbox() -> None:
        while True:
            try:
                stats = await sidecar.inbox.stats(now=sidecar.clock.now())
                metrics.set_inbox(depth=stats.depth, oldest_age_seconds=stats.oldest_pending_seconds)
            except StoreUnavailable:
                pass  # the gauges keep their last value; readiness reports the outage
            except Exception:
                log.warning("inbox stats failed", exc_info=True)
            await asyncio.sleep(sidecar.stats_interval_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        sampler = None
        if sidecar.stats_interval_seconds > 0:
            sampler = asyncio.create_task(sample_inbox(), name="webhook-inbox-stats")
        if sidecar.workers is not None:
            sidecar.workers.start()
        try:
            yield
        finally:
            if sidecar.workers is not None:
                await sidecar.workers.stop()
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler

    return Starlette(
        routes=[
            Route("/webhooks/{processor}", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
