"""Command line: ``billing-service serve | run | webhooks | reconcile``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from billing_service.config import ConfigError, Settings

log = logging.getLogger("billing_service")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _serve(settings: Settings, *, mongodb_uri: str | None = None) -> None:
    from billing_service.bootstrap import bootstrap
    from billing_service.entrypoints.grpc_api.server import GrpcServer

    runtime = await bootstrap(settings, mongodb_uri=mongodb_uri)
    server = GrpcServer(
        runtime.deps,
        runtime.idempotency,
        address=settings.grpc_address,
        reflection_enabled=settings.reflection,
        max_message_bytes=settings.max_message_bytes,
        health_interval=settings.health_interval_seconds,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await server.start()
        host = settings.grpc_address.rsplit(":", 1)[0]
        mode = "live" if settings.live else "test"
        print(
            f"billing gRPC API on {host}:{port} ({mode} mode; processors: "
            f"{', '.join(p.value for p in runtime.processors)}; default {settings.default_processor.value}; "
            f"store: {'embedded ' + str(settings.embedded_data_dir) if runtime.embedded else 'MONGODB_URI'})",
            flush=True,
        )
        print(f"try: grpcurl -plaintext {host}:{port} list", flush=True)
        await stop.wait()
        log.info("shutting down: draining in-flight calls", extra={"grace_s": settings.shutdown_grace_seconds})
        await server.stop(settings.shutdown_grace_seconds)
    finally:
        await runtime.aclose()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``billing-service`` command."""
    parser = argparse.ArgumentParser(prog="billing-service", description="gRPC billing service")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gRPC API (uses MONGODB_URI, or starts the embedded store)")
    sub.add_parser("run", help="local development: embedded store + gRPC API")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    if args.command in ("serve", "run"):
        asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
