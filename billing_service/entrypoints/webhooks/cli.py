"""``billing-service webhooks``: serve the sidecar, replay stored events, backfill from Stripe.

* ``webhooks`` / ``webhooks serve``: the HTTP sidecar and its inbox workers.
* ``webhooks replay --event ID [--processor stripe|paypal]``: process one stored event again.
* ``webhooks replay --dead``: make every DEAD event pending again.
* ``webhooks backfill --since 2026-01-01T00:00:00Z``: list Stripe events created since then
  (Stripe keeps 30 days) and insert the ones the inbox lacks; the workers then process them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from billing_service.config import ConfigError, Settings
from billing_service.domain.common import Processor
from billing_service.entrypoints.webhooks.inbox import scrub_payload

if TYPE_CHECKING:
    from billing_service.adapters.processors.stripe import StripePaymentProcessor

log = logging.getLogger("billing_service.webhooks")

_BACKFILL_PAGE = 100


def add_parser(sub: Any) -> None:
    """Registers the ``webhooks`` command group on the top-level subparsers."""
    webhooks = sub.add_parser("webhooks", help="the webhook sidecar: serve, replay, backfill")
    actions = webhooks.add_subparsers(dest="webhooks_command")
    actions.add_parser("serve", help="verify, store and process Stripe/PayPal webhooks (the default)")
    replay = actions.add_parser("replay", help="process stored events again")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", metavar="ID", help="the processor's event id (evt_..., WH-...)")
    which.add_argument("--dead", action="store_true", help="every event parked as dead")
    replay.add_argument("--processor", choices=[Processor.STRIPE.value, Processor.PAYPAL.value])
    backfill = actions.add_parser("backfill", help="fetch missed Stripe events from the Events API")
    backfill.add_argument("--since", required=True, metavar="ISO8601", help="e.g. 2026-01-01T00:00:00Z")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the chosen ``webhooks`` action; returns the exit status."""
    command = args.webhooks_command or "serve"
    if command == "serve":
        asyncio.run(serve(settings))
        return 0
    if command == "replay":
        processor = Processor(args.processor) if args.processor else None
        count = asyncio.run(replay(settings, event_id=args.event, dead=args.dead, processor=processor))
        print(f"{count} event(s) queued for processing", flush=True)
        return 0 if count or args.dead else 1
    if command == "backfill":
        try:
            since = parse_since(args.since)
        except ValueError as exc:
            print(f"--since: {exc}")
            return 2
        inserted, seen = asyncio.run(backfill(settings, since))
        print(f"backfill: {seen} Stripe event(s) since {since.isoformat()}, {inserted} new", flush=True)
        return 0
    raise ConfigError(f"unknown webhooks command {command}")


def parse_since(value: str) -> datetime:
    """Parses an ISO 8601 time; a time without offset is taken as UTC."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class _Built:
    runtime: Any
    inbox: Any


async def _build(settings: Settings, *, mongodb_uri: str | None = None) -> _Built:
    from billing_service.adapters.mongo.inbox import MongoWebhookInbox
    from billing_service.bootstrap import bootstrap

    runtime = await bootstrap(settings, mongodb_uri=mongodb_uri)
    inbox = MongoWebhookInbox(
        runtime.store.database.client,
        settings.mongodb_database,
        retention=timedelta(days=settings.webhook_retention_days),
    )
    try:
        await inbox.ensure_indexes()
    except Exception:
        await runtime.aclose()
        raise
    return _Built(runtime, inbox)


def build_sidecar(settings: Settings, runtime: Any, inbox: Any) -> Any:
    """Builds the app's dependencies (verifiers, workers, metrics) from settings.

    The webhook metrics join the runtime's registry (``runtime.metrics``, which already
    holds the processor-call metrics of this process), so one endpoint serves them all.
    """
    from billing_service.entrypoints.webhooks import paypal as pp
    from billing_service.entrypoints.webhooks.app import Sidecar
    from billing_service.entrypoints.webhooks.stripe import StripeWebhookVerifier
    from billing_service.entrypoints.webhooks.worker import InboxWorkers, WorkerSettings
    from billing_service.observability.metrics import WebhookMetrics

    metrics = WebhookMetrics(runtime.metrics.registry)

    stripe_verifier = StripeWebhookVerifier(
        secrets=tuple(s.value for s in settings.stripe_webhook_secrets),
        tolerance_seconds=settings.stripe_webhook_tolerance_seconds,
    )
    paypal_verifier = None
    if settings.paypal_webhook_id:
        paypal_verifier = pp.PayPalWebhookVerifier(
            settings.paypal_webhook_id,
            environment=settings.paypal_environment,
            trust_roots=pp.load_trust_roots(settings.paypal_cert_ca_file),
        )
    workers = None
    if settings.webhook_workers:
        workers = InboxWorkers(
            runtime.deps,
            inbox,
            WorkerSettings(
                workers=settings.webhook_workers,
                lease_seconds=settings.webhook_lease_seconds,
                max_attempts=settings.webhook_max_attempts,
                retry_base_seconds=settings.webhook_retry_base_seconds,
                retry_max_seconds=settings.webhook_retry_max_seconds,
                poll_seconds=settings.webhook_poll_seconds,
            ),
            metrics=metrics,
        )
    return Sidecar(
        inbox=inbox,
        clock=runtime.deps.clock,
        ping=runtime.store.ping,
        stripe=stripe_verifier,
        paypal=paypal_verifier,
        max_body_bytes=settings.webhook_max_body_bytes,
        workers=workers,
        metrics=metrics,
        # The inbox gauges refresh five poll intervals apart, at most every 5 s.
        stats_interval_seconds=min(5.0, settings.webhook_poll_seconds * 5),
    )


def bind(address: str) -> socket.socket:
    """Binds ``host:port`` (port 0 picks a free one) for uvicorn to serve on."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: accepted sockets inherit it, and asyncio turns on TCP_NODELAY only
    # for sockets whose proto is IPPROTO_TCP. With proto 0, Nagle holds the response body
    # (written after its headers) until the client's delayed ACK: +40 ms on every webhook.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port or 0)))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(settings: Settings, *, mongodb_uri: str | None = None) -> None:
    """Serves the sidecar until SIGTERM/SIGINT, then drains the workers."""
    import uvicorn

    from billing_service.entrypoints.webhooks.app import create_app
    from billing_service.observability.metrics import serve_metrics

    built = await _build(settings, mongodb_uri=mongodb_uri)
    metrics_server = None
    try:
        sidecar = build_sidecar(settings, built.runtime, built.inbox)
        sock = bind(settings.webhook_address)
        if settings.webhook_metrics_port:
            metrics_host = settings.webhook_address.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
            metrics_server = serve_metrics(
                sidecar.metrics.registry, port=settings.webhook_metrics_port, host=metrics_host
            )
        config = uvicorn.Config(
            create_app(sidecar),
            log_level="warning",
            access_log=False,  # the app logs processor, event id and type; nothing else
            lifespan="on",
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
            server_header=False,
        )
        server = uvicorn.Server(config)
        # uvicorn captures SIGTERM/SIGINT while serving (graceful shutdown, lifespan stops the
        # workers) and re-raises them afterwards; this handler then receives them, so the
        # runtime below is still closed instead of the process dying on the re-raise.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn exposes only a flag
            await asyncio.sleep(0.01)
        if server.started:
            host, port = sock.getsockname()[:2]
            configured = [p.value for p in (Processor.STRIPE, Processor.PAYPAL) if p in built.runtime.processors]
            print(
                f"billing webhook sidecar on http://{host}:{port} (POST /webhooks/stripe, /webhooks/paypal; "
                f"workers: {settings.webhook_workers}; stripe secrets: {len(settings.stripe_webhook_secrets)}; "
                f"paypal: {'on' if sidecar.paypal else 'off'}; processors: {', '.join(configured) or 'none'})",
                flush=True,
            )
            if metrics_server is not None:
                print(f"webhook metrics (Prometheus): {metrics_server.url}", flush=True)
            else:
                print("webhook metrics: off (set BILLING_WEBHOOK_METRICS_PORT to serve them)", flush=True)
        await task
    finally:
        if metrics_server is not None:
            metrics_server.close()
        await built.runtime.aclose()


async def replay(settings: Settings, *, event_id: str | None, dead: bool, processor: Processor | None = None) -> int:
    """Makes stored events pending again; a running sidecar processes them."""
    built = await _build(settings)
    try:
        now = built.runtime.deps.clock.now()
        if dead:
            count: int = await built.inbox.replay_dead(now=now)
            return count
        assert event_id is not None
        return 1 if await built.inbox.replay(processor, event_id, now=now) else 0
    finally:
        await built.runtime.aclose()


async def backfill(settings: Settings, since: datetime, *, processor: Any = None) -> tuple[int, int]:
    """Inserts the Stripe events created since ``since`` that the inbox does not have yet.

    Events come from Stripe's Events API through the Stripe adapter's own client (its key,
    base URL and retry policy), so they need no signature: we fetched them ourselves.

    Args:
        processor: A ``StripePaymentProcessor`` to use instead of one built from settings.

    Returns:
        (inserted, seen).
    """
    from billing_service.adapters.processors.stripe import StripePaymentProcessor
    from billing_service.bootstrap import build_processors

    built = await _build(settings)
    adapter = processor
    owned = False
    try:
        if adapter is None:
            adapter = build_processors(settings, built.runtime.deps.clock).get(Processor.STRIPE)
            owned = adapter is not None
        if not isinstance(adapter, StripePaymentProcessor):
            raise ConfigError("backfill needs STRIPE_SECRET_KEY (Stripe is not configured)")
        return await backfill_into(built.inbox, adapter, since, now=built.runtime.deps.clock.now)
    finally:
        if owned and adapter is not None:
            await adapter.aclose()
        await built.runtime.aclose()


async def backfill_into(inbox: Any, adapter: StripePaymentProcessor, since: datetime, *, now: Any) -> tuple[int, int]:
    """Inserts every Stripe event since ``since`` into the inbox (duplicates are skipped)."""
    inserted = seen = 0
    async for event in adapter.iter_events(since, page_size=_BACKFILL_PAGE):
        seen += 1
        body = scrub_payload(json.dumps(event, separators=(",", ":")).encode())
        if await inbox.insert(Processor.STRIPE, event["id"], event["type"], body, now=now()):
            inserted += 1
            log.info("webhook backfilled: processor=stripe event_id=%s type=%s", event["id"], event["type"])
    return inserted, seen
