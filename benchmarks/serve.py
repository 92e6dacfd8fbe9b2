"""Server children for the benchmarks: the real gRPC service, or a bare grpc.aio server.

    python -m benchmarks.serve service --mongo-uri URI --database DB [--port P] [--reuseport] [--profile OUT]
    python -m benchmarks.serve bare --response FILE [--port P]

Prints ``READY <port>`` once serving; stops on SIGTERM (writing the profile if asked).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import grpc
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc as pb_grpc


async def _wait_for_sigterm() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_service(args: argparse.Namespace) -> None:
    """The service exactly as ``__main__`` wires it (metrics interceptor, no auth), fake processor."""
    from billing_service.bootstrap import bootstrap
    from billing_service.config import Settings
    from billing_service.entrypoints.grpc_api.server import GrpcServer
    from billing_service.observability.metrics import BillingMetrics, MetricsInterceptor

    # The fake in memory: the figures measure the service, not the fake's own persistence.
    settings = Settings(
        mongodb_database=args.database, health_interval_seconds=5.0, log_level="WARNING", fake_state="memory"
    )
    metrics = BillingMetrics()
    runtime = await bootstrap(settings, mongodb_uri=args.mongo_uri, metrics=metrics)
    server = GrpcServer(
        runtime.deps,
        runtime.idempotency,
        address=f"127.0.0.1:{args.port}",
        reflection_enabled=False,
        interceptors=[MetricsInterceptor(metrics)],
        so_reuseport=args.reuseport,
    )
    profiler: Any = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
    port = await server.start()
    # BENCH_NO_EVENT_TASKS=1: no sequencer, retention or tailer (the outbox is still written
    # in every commit): shows what the event log's background work costs the write path.
    if os.environ.get("BENCH_NO_EVENT_TASKS") != "1":
        runtime.start_events()
    if profiler is not None:
        profiler.start()
    print(f"READY {port}", flush=True)
    try:
        await _wait_for_sigterm()
    finally:
        if profiler is not None:
            profiler.stop()
            Path(args.profile).write_text(profiler.output_text(unicode=True, color=False, show_all=False))
            Path(args.profile).with_suffix(".html").write_text(profiler.output_html())
        await server.stop(1)
        await runtime.aclose()


class _BareBilling(pb_grpc.BillingServiceServicer):
    def __init__(self, response: pb.GetPaymentResponse) -> None:
        self._response = response

    async def GetPayment(
        self, request: pb.GetPaymentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetPaymentResponse:
        return self._response


async def serve_bare(args: argparse.Namespace) -> None:
    """Answers GetPayment with one message held in memory: the transport's limit."""
    response = pb.GetPaymentResponse.FromString(Path(args.response).read_bytes())
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_BillingServiceServicer_to_server(_BareBilling(response), server)  # type: ignore[abstract,no-untyped-call]
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    print(f"READY {port}", flush=True)
    await _wait_for_sigterm()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    svc = sub.add_parser("service")
    svc.add_argument("--mongo-uri", required=True)
    svc.add_argument("--database", required=True)
    svc.add_argument("--port", type=int, default=0)
    svc.add_argument("--reuseport", action="store_true")
    svc.add_argument("--profile", default="")
    bare = sub.add_parser("bare")
    bare.add_argument("--response", required=True)
    bare.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve_service(args) if args.mode == "service" else serve_bare(args))


if __name__ == "__main__":
    main()
