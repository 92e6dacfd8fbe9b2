"""A real gRPC server on a free port, on the embedded store, called through the generated client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2_grpc, subscription_service_pb2_grpc

from billing_service.adapters.processors.fake import FakePaymentProcessor
from billing_service.bootstrap import Runtime, bootstrap
from billing_service.config import Settings
from billing_service.domain.common import Processor
from billing_service.entrypoints.grpc_api.server import GrpcServer
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.ports import PaymentProcessor


@dataclass
class Api:
    """A running service and clients for it."""

    runtime: Runtime
    server: GrpcServer
    channel: grpc.aio.Channel
    billing: billing_service_pb2_grpc.BillingServiceAsyncStub
    subs: subscription_service_pb2_grpc.SubscriptionServiceAsyncStub
    fake: FakePaymentProcessor
    clock: ManualClock

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


async def start_api(
    mongo_uri: str, *, processors: dict[Processor, PaymentProcessor] | None = None, clock: ManualClock | None = None,
    default_processor: Processor = Processor.FAKE, lease_seconds: float = 60.0,
    interceptors: Sequence[Any] = (), server_credentials: grpc.ServerCredentials | None = None,
    channel_credentials: grpc.ChannelCredentials | None = None,
) -> Api:  # fmt: skip
    clock = clock or ManualClock()
    fake = FakePaymentProcessor(clock)
    procs: dict[Processor, PaymentProcessor] = {Processor.FAKE: fake, **(processors or {})}
    settings = Settings(
        mongodb_database=f"e2e_{uuid.uuid4().hex}",
        default_processor=default_processor,
        idempotency_lease_seconds=lease_seconds,
        health_interval_seconds=0.2,
    )
    runtime = await bootstrap(settings, clock=clock, processors=procs, mongodb_uri=mongo_uri)
    server = GrpcServer(
        runtime.deps, runtime.idempotency, address="127.0.0.1:0", health_interval=0.2, interceptors=interceptors
    )
    await server.start(server_credentials)
    channel = (
        grpc.aio.secure_channel(f"127.0.0.1:{server.port}", channel_credentials)
        if channel_credentials is not None
        else grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    )
    return Api(
        runtime, server, channel, billing_service_pb2_grpc.BillingServiceStub(channel),
        subscription_service_pb2_grpc.SubscriptionServiceStub(channel), fake, clock,
    )  # fmt: skip


async def stop_api(api: Api) -> None:
    await api.channel.close(None)
    await api.server.stop(1)
    await api.runtime.store.database.client.drop_database(api.runtime.settings.mongodb_database)
    await api.runtime.aclose()


@pytest.fixture
async def api(mongo_uri: str) -> AsyncIterator[Api]:
    """The service with the fake processor on a fresh database."""
    running = await start_api(mongo_uri)
    try:
        yield running
    finally:
        await stop_api(running)
