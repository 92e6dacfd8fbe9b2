"""``billing-service webhooks``: serve the sidecar, replay stored events, backfill from the processors.

* ``webhooks`` / ``webhooks serve``: the HTTP sidecar and its inbox workers.
* ``webhooks replay --event ID [--processor NAME]``: process one stored event again.
* ``webhooks replay --dead``: make every DEAD event pending again.
* ``webhooks backfill --since 2026-01-01T00:00:00Z [--processor NAME]``: list the events each
  configured processor created since then (its adapter's ``list_events``; a processor that
  keeps no event list, like the fake, is skipped) and insert the ones the inbox lacks; the
  workers then process them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
from datetime import UTC, datetime
from typing import Any

from billing_service.config import ConfigError, Settings
from billing_service.domain.common import Processor
from billing_service.domain.errors import NotSupportedByProcessor
from billing_service.service_layer.event_intake import backfill_into

__all__ = ["add_parser", "backfill", "backfill_into", "bind", "parse_since", "replay", "run", "serve"]

log = logging.getLogger("billing_service.webhooks")


def add_parser(sub: Any) -> None:
    """Registers the ``webhooks`` command group on the top-level subparsers."""
    webhooks = sub.add_parser("webhooks", help="the webhook sidecar: serve, replay, backfill")
    actions = webhooks.add_subparsers(dest="webhooks_command")
    actions.add_parser("serve", help="verify, store and process the processors' webhooks (the default)")
    replay = actions.add_parser("replay", help="process stored events again")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", metavar="ID", help="the processor's event id (evt_..., WH-...)")
    which.add_argument("--dead", action="store_true", help="every event parked as dead")
    replay.add_argument("--processor", choices=[p.value for p in Processor])
    backfill = actions.add_parser("backfill", help="fetch missed events from the processors' event lists")
    backfill.add_argument("--since", required=True, metavar="ISO8601", help="e.g. 2026-01-01T00:00:00Z")
    backfill.add_argument(
        "--processor",
        choices=[p.value for p in Processor],
        help="only this processor (default: every configured one that keeps an event list)",
    )


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
        only = Processor(args.processor) if args.processor else None
        try:
            counts = asyncio.run(backfill(settings, since, only=only))
        except ConfigError as exc:
            print(f"backfill: {exc}", flush=True)
            return 2
        for name, (inserted, seen) in counts.items():
            print(f"backfill: {seen} {name.value} event(s) since {since.isoformat()}, {inserted} new", flush=True)
        return 0
    raise ConfigError(f"unknown webhooks command {command}")


def parse_since(value: str) -> datetime:
    """Parses an ISO 8601 time; a time without offset is taken as UTC."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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

    from billing_service.bootstrap import bootstrap, build_sidecar
    from billing_service.entrypoints.webhooks.app import create_app
    from billing_service.entrypoints.webhooks.tls import check_tls_files
    from billing_service.observability.metrics import serve_metrics

    tls = check_tls_files(settings)  # before anything starts: bad files are a config error
    runtime = await bootstrap(settings, mongodb_uri=mongodb_uri)
    metrics_server = None
    try:
        sidecar = build_sidecar(runtime)
        sock = bind(settings.webhook_address)
        if settings.webhook_metrics_port:
            metrics_host = settings.webhook_address.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
            metrics_server = serve_metrics(
                sidecar.metrics.registry, port=settings.webhook_metrics_port, host=metrics_host
            )
        config = uvicorn.Config(
            create_app(sidecar),
            log_level="warning",
            log_config=None,  # uvicorn's records go to our root handler: JSON, redacted
            access_log=False,  # the app logs processor, event id and type; nothing else
            lifespan="on",
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
            server_header=False,
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
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
            processors = runtime.processors
            verified = [name.value for name, verifier in sidecar.verifiers.items() if verifier.verifies_webhooks]
            print(
                f"billing webhook sidecar on {'https' if tls else 'http'}://{host}:{port} "
                f"(POST /webhooks/<processor>; workers: {settings.webhook_workers}; "
                f"verifying: {', '.join(verified) or 'none'}; "
                f"processors: {', '.join(p.value for p in processors) or 'none'})",
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
        await runtime.aclose()


async def replay(settings: Settings, *, event_id: str | None, dead: bool, processor: Processor | None = None) -> int:
    """Makes stored events pending again; a running sidecar processes them."""
    from billing_service.bootstrap import bootstrap

    runtime = await bootstrap(settings)
    try:
        now = runtime.deps.clock.now()
        if dead:
            return await runtime.inbox.replay_dead(now=now)
        assert event_id is not None
        return 1 if await runtime.inbox.replay(processor, event_id, now=now) else 0
    finally:
        await runtime.aclose()


async def backfill(
    settings: Settings, since: datetime, *, only: Processor | None = None
) -> dict[Processor, tuple[int, int]]:
    """Inserts the events each processor created since ``since`` that the inbox does not have yet.

    Events come from the processor's own event list through its adapter (its credentials,
    base URL and retry policy), so they need no signature: we fetched them ourselves.

    Args:
        only: Backfill this processor alone.

    Returns:
        Per processor that keeps an event list, (inserted, seen).

    Raises:
        ConfigError: No configured processor keeps an event list (or ``only`` is not
            configured, or keeps none).
    """
    from billing_service.bootstrap import bootstrap

    runtime = await bootstrap(settings)
    try:
        processors = runtime.processors
        if only is not None and only not in processors:
            raise ConfigError(f"backfill: {only.value} is not configured")
        counts: dict[Processor, tuple[int, int]] = {}
        for name, source in processors.items():
            if only is not None and name is not only:
                continue
            try:
                counts[name] = await backfill_into(runtime.inbox, source, since, now=runtime.deps.clock.now)
            except NotSupportedByProcessor:
                continue  # keeps no event list (the fake)
        if not counts:
            wanted = only.value if only is not None else "a configured processor"
            raise ConfigError(f"backfill needs {wanted} that keeps an event list")
        return counts
    finally:
        await runtime.aclose()
