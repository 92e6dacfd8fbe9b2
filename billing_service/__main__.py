"""Command line: ``billing-service serve | run | webhooks | reconcile | events``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from billing_service.config import ConfigError, Settings

log = logging.getLogger("billing_service")


# ``run`` (local development) serves metrics here unless BILLING_METRICS_PORT says otherwise.
DEV_METRICS_PORT = 9464
# ... and the webhook sidecar's metrics here unless BILLING_WEBHOOK_METRICS_PORT says otherwise.
DEV_WEBHOOK_METRICS_PORT = 9465


def _setup_logging(level: str) -> None:
    from billing_service.observability.logging import install_exception_hooks, setup_logging

    # JSON lines on stderr, every record through the PCI redaction filter; uncaught
    # exceptions and warnings too, so nothing else is ever written on stderr.
    setup_logging(level, stream=sys.stderr)
    install_exception_hooks()


def _config_error(exc: ConfigError) -> int:
    log.error("configuration error: %s", exc)
    return 2


async def _serve(settings: Settings, *, mongodb_uri: str | None = None) -> None:
    from billing_service.bootstrap import (
        bootstrap,
        build_janitor,
        build_push_tasks,
        build_reconciler,
        build_subscription_sampler,
    )
    from billing_service.entrypoints.grpc_api.auth import build_auth
    from billing_service.entrypoints.grpc_api.event_service import render_event
    from billing_service.entrypoints.grpc_api.server import GrpcServer

    # Before anything starts: unreadable TLS files or unknown permissions are config errors.
    interceptors, credentials = build_auth(settings)
    from billing_service.observability.metrics import BillingMetrics, MetricsInterceptor, serve_metrics
    from billing_service.observability.tracing import configure_tracing

    # Tracing first (its Mongo listener must exist before the client); metrics before auth
    # so refused calls are counted too.
    metrics = BillingMetrics()
    interceptors = [
        *configure_tracing(os.environ, service_name="billing-grpc"),
        MetricsInterceptor(metrics),
        *interceptors,
    ]
    runtime = await bootstrap(settings, mongodb_uri=mongodb_uri, metrics=metrics)
    metrics_server = None
    if settings.metrics_port:
        metrics_host = settings.grpc_address.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
        metrics_server = serve_metrics(metrics.registry, port=settings.metrics_port, host=metrics_host)
    sampler = build_subscription_sampler(runtime)
    server = GrpcServer(
        runtime.deps,
        runtime.idempotency,
        address=settings.grpc_address,
        reflection_enabled=settings.reflection,
        max_message_bytes=settings.max_message_bytes,
        health_interval=settings.health_interval_seconds,
        interceptors=interceptors,
    )
    reconciler = build_reconciler(runtime)
    push = build_push_tasks(runtime, render_event)  # None with BILLING_EVENTS_PUSH=false
    janitor = build_janitor(runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await server.start(credentials)
        runtime.start_events()
        sampler.start()
        reconciler.start()
        if push is not None:
            push.start()
        janitor.start()
        host = settings.grpc_address.rsplit(":", 1)[0]
        mode = "live" if settings.live else "test"
        print(
            f"billing gRPC API on {host}:{port} ({mode} mode; auth: {settings.auth_mode}; "
            f"{'TLS' if credentials else 'plaintext'}; processors: "
            f"{', '.join(p.value for p in runtime.processors)}; default {settings.default_processor.value}; "
            f"store: {'embedded ' + str(settings.embedded_data_dir) if runtime.embedded else 'MONGODB_URI'})",
            flush=True,
        )
        if credentials is None:
            print(f"try: grpcurl -plaintext {host}:{port} list", flush=True)
        if metrics_server is not None:
            print(f"metrics (Prometheus): {metrics_server.url}", flush=True)
        else:
            print("metrics: off (set BILLING_METRICS_PORT to serve them)", flush=True)
        await stop.wait()
        log.info("shutting down: draining in-flight calls", extra={"grace_s": settings.shutdown_grace_seconds})
        await _bounded("grpc drain", server.stop(settings.shutdown_grace_seconds), settings.shutdown_grace_seconds + 5)
    finally:
        # Each step is bounded so one stuck dependency cannot keep the process from exiting.
        await _bounded("reconciler", reconciler.stop())
        if push is not None:  # attempts in flight get the grace period (an attempt's timeout is at most 25 s)
            grace = settings.shutdown_grace_seconds
            await _bounded("push delivery", push.stop(grace_seconds=grace), grace + 5)
        await _bounded("janitor", janitor.stop())
        await _bounded("subscription sampler", sampler.stop())
        if metrics_server is not None:
            metrics_server.close()
        await _bounded("store and processors", runtime.aclose())
        log.info("stopped")


async def _bounded(step: str, work: Coroutine[Any, Any, None], seconds: float = 5.0) -> None:
    """Awaits one shutdown step for at most ``seconds``, logging a step that overran."""
    try:
        await asyncio.wait_for(work, seconds)
    except TimeoutError:
        log.warning("shutdown step timed out", extra={"step": step, "timeout_s": seconds})


async def _run_dev(settings: Settings) -> int:
    """``run``: one embedded store, the gRPC API and the webhook sidecar as child processes.

    Both children get ``MONGODB_URI`` of the one store. SIGTERM/SIGINT (or either child
    exiting) stops both, then the store.
    """
    from billing_service.bootstrap import start_embedded_store

    embedded = None
    uri = settings.mongodb_uri.value
    if not uri:
        embedded = await start_embedded_store(settings)
        uri = embedded.uri
        print(f"embedded store (SecantusDB child process) on {uri}, data in {settings.embedded_data_dir}", flush=True)
    env = {**os.environ, "MONGODB_URI": uri}
    if not env.get("BILLING_METRICS_PORT", "").strip():
        env["BILLING_METRICS_PORT"] = str(DEV_METRICS_PORT)
    if not env.get("BILLING_WEBHOOK_METRICS_PORT", "").strip():
        env["BILLING_WEBHOOK_METRICS_PORT"] = str(DEV_WEBHOOK_METRICS_PORT)
    children: list[asyncio.subprocess.Process] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for command in (["serve"], ["webhooks", "serve"]):
            children.append(
                await asyncio.create_subprocess_exec(sys.executable, "-m", "billing_service", *command, env=env)
            )
        print(
            f"webhook sidecar on {'https' if settings.webhook_tls_cert else 'http'}://{settings.webhook_address} "
            "(stripe listen --forward-to <that>/webhooks/stripe; PayPal: <that>/webhooks/paypal)",
            flush=True,
        )
        waits = [asyncio.create_task(child.wait()) for child in children]
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([*waits, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    finally:
        for child in children:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                await asyncio.wait_for(child.wait(), settings.shutdown_grace_seconds + 5)
            except TimeoutError:
                child.kill()
                await child.wait()
        if embedded is not None:
            embedded.stop()
    return max((abs(c.returncode or 0) for c in children if c.returncode not in (None, -signal.SIGTERM)), default=0)


async def _reconcile(settings: Settings, *, check: bool) -> int:
    """``reconcile``: one full pass now, regardless of the lease (an operator's explicit request);
    ``reconcile --check``: compare every record with its processor, changing nothing."""
    from billing_service.bootstrap import bootstrap
    from billing_service.entrypoints.reconciler import print_check, print_report
    from billing_service.service_layer.check import check_all
    from billing_service.service_layer.reconcile import reconcile_once

    runtime = await bootstrap(settings)
    try:
        if check:
            checked = await check_all(runtime.deps)
            print_check(checked)
            return 1 if checked.drift or checked.errors else 0
        report = await reconcile_once(runtime.deps, budget=None, event_feed=runtime.event_feed)
        print_report(report)
        return 1 if report.errors else 0
    finally:
        await runtime.aclose()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``billing-service`` command."""
    parser = argparse.ArgumentParser(prog="billing-service", description="gRPC billing service")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gRPC API (uses MONGODB_URI, or starts the embedded store)")
    sub.add_parser("run", help="local development: embedded store + gRPC API + webhook sidecar")
    reconcile = sub.add_parser("reconcile", help="converge everything not final on the processors' truth, once")
    reconcile.add_argument(
        "--check",
        action="store_true",
        help="compare every record with its processor and report the differences, changing nothing "
        "(exit status 1 when any record differs or could not be checked)",
    )
    from billing_service.entrypoints import events_cli
    from billing_service.entrypoints.webhooks import cli as webhooks_cli

    webhooks_cli.add_parser(sub)
    events_cli.add_parser(sub)
    args = parser.parse_args(argv)
    _setup_logging("INFO")  # before the settings, so a configuration error is a JSON line too
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        return _config_error(exc)
    if args.command == "run" and not os.environ.get("BILLING_METRICS_PORT", "").strip():
        settings = dataclasses.replace(settings, metrics_port=DEV_METRICS_PORT)
    _setup_logging(settings.log_level)
    if args.command == "webhooks":
        try:
            return webhooks_cli.run(args, settings)
        except ConfigError as exc:
            return _config_error(exc)
    if args.command == "events":
        try:
            return events_cli.run(args, settings)
        except ConfigError as exc:
            return _config_error(exc)
    if args.command == "run":
        return asyncio.run(_run_dev(settings))
    if args.command == "reconcile":
        return asyncio.run(_reconcile(settings, check=args.check))
    if args.command == "serve":
        try:
            asyncio.run(_serve(settings))
        except ConfigError as exc:  # TLS files or permission names, checked before serving
            return _config_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
