"""A real gRPC server on a free port, on the embedded store, called through the generated client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2_grpc, subscription_service_pb2_grpc

from billing_service.adapters.processors.fake import FakePaymentProcessor
from billing_service.adapters.processors.paypal import PayPalPaymentProcessor, PayPalSettings
from billing_service.adapters.processors.retry import RetryPolicy
from billing_service.adapters.processors.stripe import StripePaymentProcessor, StripeSettings
from billing_service.bootstrap import Runtime, bootstrap
from billing_service.config import Settings
from billing_service.domain.common import Processor
from billing_service.entrypoints.grpc_api.server import GrpcServer
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.ports import PaymentProcessor
from tests.imitations.paypal_api import PayPalImitation
from tests.imitations.stripe_api import StripeImitation

FAST_RETRIES = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005)


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
    channel_credentials: grpc.ChannelCredentials | None = None, database: str | None = None,
) -> Api:  # fmt: skip
    clock = clock or ManualClock()
    fake = FakePaymentProcessor(clock)
    procs: dict[Processor, PaymentProcessor] = {Processor.FAKE: fake, **(processors or {})}
    settings = Settings(
        mongodb_database=database or f"e2e_{uuid.uuid4().hex}",
        default_processor=default_processor,
        idempotency_lease_seconds=lease_seconds,
        health_interval_seconds=0.2,
    )
    runtime = await bootstrap(settings, clock=clock, processors=procs, mongodb_uri=mongo_uri)
    server = GrpcServer(
        runtime.deps, runtime.idempotency, address="127.0.0.1:0", health_interval=0.2, interceptors=interceptors
    )
    await server.start(server_credentials)
    runtime.start_events()
    channel = (
        grpc.aio.secure_channel(f"127.0.0.1:{server.port}", channel_credentials)
        if channel_credentials is not None
        else grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    )
    return Api(
        runtime, server, channel, billing_service_pb2_grpc.BillingServiceStub(channel),
        subscription_service_pb2_grpc.SubscriptionServiceStub(channel), fake, clock,
    )  # fmt: skip


#: Collections whose documents move by themselves: the sequencer moves events from the outbox
#: into the log (and holds its lease) at any moment.
EVENT_COLLECTIONS = frozenset({"event_outbox", "event_log", "event_meta", "leases"})


async def stored_documents(db: Any) -> dict[str, dict[str, bytes]]:
    """Digest of every document by collection, with the billing events as one set of ids.

    An event counts once whether it is still in the outbox or already in the log, so a
    snapshot taken while the sequencer works compares equal unless an event was added.
    """
    import hashlib

    import bson

    # The outbox first, then the log: an event moved in between is found in the log.
    waiting = await db["event_outbox"].find({}, {"_id": 1}).to_list()
    logged = await db["event_log"].find({}, {"event_id": 1}).to_list()
    out: dict[str, dict[str, bytes]] = {"events": {str(d["_id"]): b"" for d in waiting}}
    out["events"].update({str(d["event_id"]): b"" for d in logged})
    for name in await db.list_collection_names():
        if name not in EVENT_COLLECTIONS:
            docs = await db[name].find({}).to_list()
            out[name] = {repr(d["_id"]): hashlib.sha256(bson.encode(d)).digest() for d in docs}
    return out


async def stop_api(api: Api, *, drop: bool = True) -> None:
    await api.channel.close(None)
    await api.server.stop(1)
    if api.runtime.event_tasks is not None:
        await api.runtime.event_tasks.stop()  # their change streams end before the database goes
    if drop:
        client = api.runtime.store.database.client
        # A commit refused by a fail point leaves its transaction open on the server until the
        # transaction lifetime (60 s) reaps it, as on mongod; it would hold the drop behind it.
        await client.admin.command({"killAllSessions": []})
        await client.drop_database(api.runtime.settings.mongodb_database)
    await api.runtime.aclose()  # closes the processors too


@pytest.fixture
async def api(mongo_uri: str) -> AsyncIterator[Api]:
    """The service with the fake processor on a fresh database."""
    running = await start_api(mongo_uri)
    try:
        yield running
    finally:
        await stop_api(running)


# ---------------------------------------------------------------------------
# Real processor adapters against the local imitations
# ---------------------------------------------------------------------------

STRIPE_KEY = "sk_test_imitation_e2e_4eC39HqLyjWDarjtT1zdp7dc"


@pytest.fixture(scope="session")
def stripe_imitation() -> Iterator[StripeImitation]:
    """The local Stripe API imitation (shared; reset per test)."""
    with StripeImitation(api_key=STRIPE_KEY, stall_seconds=1.5) as server:
        yield server


@pytest.fixture(scope="session")
def paypal_imitation() -> Iterator[PayPalImitation]:
    """The local PayPal API imitation (shared; reset per test)."""
    with PayPalImitation(stall_seconds=1.5) as server:
        yield server


def stripe_processor(imitation: StripeImitation) -> StripePaymentProcessor:
    """A StripePaymentProcessor on the real SDK, pointed at the imitation."""
    settings = StripeSettings(secret_key=STRIPE_KEY, api_base=imitation.base_url, timeout_seconds=0.75)
    return StripePaymentProcessor(settings, retry_policy=FAST_RETRIES)


def paypal_processor(imitation: PayPalImitation) -> PayPalPaymentProcessor:
    """A PayPalPaymentProcessor on the real SDK, pointed at the imitation."""
    settings = PayPalSettings(
        client_id=imitation.client_id, client_secret=imitation.client_secret, base_url=imitation.base_url,
        timeout_seconds=0.75,
    )  # fmt: skip
    return PayPalPaymentProcessor(settings, retry_policy=FAST_RETRIES)


@pytest.fixture
async def processors_api(
    mongo_uri: str, stripe_imitation: StripeImitation, paypal_imitation: PayPalImitation
) -> AsyncIterator[Api]:
    """The service with Stripe (default), PayPal and the fake, all real adapters."""
    stripe_imitation.reset()
    paypal_imitation.reset()
    procs: dict[Processor, PaymentProcessor] = {
        Processor.STRIPE: stripe_processor(stripe_imitation),
        Processor.PAYPAL: paypal_processor(paypal_imitation),
    }
    # The imitations check timestamps against the real time (trial ends must be in the future).
    clock = ManualClock(datetime.now(UTC))
    running = await start_api(mongo_uri, processors=procs, default_processor=Processor.STRIPE, clock=clock)
    try:
        yield running
    finally:
        await stop_api(running)
