"""The real service stack one model example runs against.

A ``World`` is: a fresh database on the session's embedded store, the service built by
``bootstrap`` (real use cases, real store over the wire, a manual clock), the real gRPC
server on a free port called through the generated client, one processor behind a
``GatedProcessor`` (the fake, or the Stripe adapter on the real SDK against the
imitation), and the webhook path the sidecar uses: the inbox, and the inbox worker run one
event at a time. Stripe events are signed and POSTed to the sidecar's ASGI app exactly as
Stripe delivers them; the fake emits no events of its own, so the world derives one
per change it sees in the fake's ledger and records it in the same inbox.

Everything runs on one private event loop; the model's rules call ``World.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import httpx
import stripe
from billing.v1 import billing_service_pb2_grpc, subscription_service_pb2_grpc
from google.protobuf.message import Message

from billing_service.adapters.processors.retry import RetryPolicy
from billing_service.adapters.processors.stripe import StripePaymentProcessor, StripeSettings
from billing_service.bootstrap import Runtime, bootstrap
from billing_service.config import Settings
from billing_service.domain.common import Processor
from billing_service.domain.processor_events import VerifiedEvent
from billing_service.entrypoints.grpc_api.server import GrpcServer
from billing_service.entrypoints.webhooks.app import Sidecar, create_app
from billing_service.entrypoints.webhooks.handlers import HANDLERS, Handler, Json
from billing_service.entrypoints.webhooks.worker import InboxWorkers, WorkerSettings
from billing_service.service_layer import webhooks as wh
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.core import Deps
from billing_service.service_layer.event_intake import record
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import PaymentProcessor, WebhookStatus
from billing_service.service_layer.reconcile import EVENTS_OVERLAP, ReconcileReport, reconcile_once
from tests.helpers import rich
from tests.model.processors import DashboardFake, DashboardStripe, GatedProcessor

T = TypeVar("T")

CALLER = "anonymous"  # auth off: every call is the anonymous caller
BILLING = "/billing.v1.BillingService/"
SUBSCRIPTIONS = "/billing.v1.SubscriptionService/"
LEASE_SECONDS = 60.0
STRIPE_KEY = "sk_test_imitation_model_4eC39HqLyjWDarjtT1zd"
WHSEC = "whsec_test_model_0123456789abcdef"
# Codes a retry is expected to see before the request's final answer.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}


def processor_key(method: str, request_id: str, step: str) -> str:
    """The processor idempotency key the service derives for one step of a request."""
    return RequestContext(CALLER, method, request_id, "").processor_key(step)


@dataclass
class Outcome:
    """What one RPC answered."""

    ok: bool
    response: Message | None = None
    code: grpc.StatusCode | None = None
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """True when this is the request's final answer (a retry must get the same)."""
        return self.ok or self.code not in TRANSIENT

    def signature(self) -> tuple[Any, ...]:
        """What a replay must reproduce exactly."""
        if self.ok:
            assert self.response is not None
            return ("ok", self.response.SerializeToString(deterministic=True))
        return ("error", self.code, self.reason)

    def __str__(self) -> str:
        return "OK" if self.ok else f"{self.code.name if self.code else '?'}/{self.reason}"


@dataclass
class Event:
    """One event the processor emitted, and how often it was delivered."""

    event_id: str
    type: str
    body: dict[str, Any]
    delivered: int = 0


# The fake processor's event types: each names one ledger object; the handler re-fetches it.
async def _fake_payment(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    return await wh.converge_payment(deps, ctx, Processor.FAKE, event["object_id"])


async def _fake_refund(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    return await wh.converge_refund(deps, ctx, Processor.FAKE, event["object_id"])


async def _fake_subscription(deps: Deps, ctx: RequestContext, event: Json) -> WebhookStatus:
    return await wh.converge_subscription(deps, ctx, Processor.FAKE, event["object_id"])


FAKE_HANDLERS: dict[tuple[Processor, str], Handler] = {
    (Processor.FAKE, "payment.updated"): _fake_payment,
    (Processor.FAKE, "refund.updated"): _fake_refund,
    (Processor.FAKE, "subscription.updated"): _fake_subscription,
}


class World:
    """One example's service stack (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, kind: Processor, mongo_uri: str, api: DashboardStripe | None):
        self.loop = loop
        self.kind = kind
        self.mongo_uri = mongo_uri
        self.stripe_api = api if kind is Processor.STRIPE else None
        self.clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
        self.fake: DashboardFake | None = None
        self.events: list[Event] = []
        self._seen: dict[tuple[str, str], Any] = {}
        self._event_seq = itertools.count(1)
        self._stripe_seq = -1
        self.tasks: list[asyncio.Task[Any]] = []
        # The reconciler loop runs from the service's start: its events cursor starts there.
        self.cursors: dict[str, str] = {"events": (self.clock.now() - EVENTS_OVERLAP).isoformat()}

    # -- lifecycle -------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Runs ``coro`` on the world's loop (other tasks of the loop progress meanwhile)."""
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    async def start(self) -> None:
        """Builds and starts everything."""
        inner: Any
        if self.kind is Processor.FAKE:
            inner = self.fake = DashboardFake(self.clock)
        else:
            assert self.stripe_api is not None
            self.stripe_api.reset()
            self.stripe_api.clock = self.clock
            self._stripe_seq = -1
            stripe_settings = StripeSettings(
                STRIPE_KEY, api_base=self.stripe_api.base_url, timeout_seconds=10, webhook_secrets=(WHSEC,)
            )
            policy = RetryPolicy(2, base_delay=0.001, max_delay=0.002)
            inner = StripePaymentProcessor(stripe_settings, retry_policy=policy)
        self.gate = GatedProcessor(inner)
        procs: dict[Processor, PaymentProcessor] = {self.kind: self.gate}  # type: ignore[dict-item]
        settings = Settings(
            mongodb_database=f"model_{uuid.uuid4().hex}", default_processor=self.kind,
            idempotency_lease_seconds=LEASE_SECONDS, health_interval_seconds=3600, reflection=False,
        )  # fmt: skip
        uri = self.mongo_uri
        self.runtime: Runtime = await bootstrap(settings, clock=self.clock, processors=procs, mongodb_uri=uri)
        self.deps = self.runtime.deps
        self.store = self.runtime.store
        self.server = GrpcServer(
            self.deps, self.runtime.idempotency, address="127.0.0.1:0", health_interval=3600, reflection_enabled=False
        )
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.billing = billing_service_pb2_grpc.BillingServiceStub(self.channel)
        self.subs = subscription_service_pb2_grpc.SubscriptionServiceStub(self.channel)
        self.runtime.start_events()  # the event outbox's sequencer, retention and tailer, as `serve` runs them
        self.inbox = self.runtime.inbox
        self.workers = InboxWorkers(
            self.deps, self.inbox,
            WorkerSettings(workers=0, lease_seconds=30, max_attempts=6, retry_base_seconds=1, retry_max_seconds=8),
            handlers={**HANDLERS, **FAKE_HANDLERS},
        )  # fmt: skip
        sidecar = Sidecar(
            inbox=self.inbox, clock=self.clock, ping=self.store.ping, verifiers=dict(self.runtime.processors),
            max_body_bytes=512 * 1024, workers=None, stats_interval_seconds=0,
        )  # fmt: skip
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(sidecar)), base_url="http://sidecar")

    async def stop(self) -> None:
        """Stops everything and drops the database."""
        for hold in list(self.gate.holds):
            self.gate.disarm(hold)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.aclose()
        await self.channel.close(None)
        await self.server.stop(0)
        if self.runtime.event_tasks is not None:
            await self.runtime.event_tasks.stop()  # their change streams end before the database goes
        with contextlib.suppress(Exception):
            await self.store.database.client.drop_database(self.store.database.name)
        await self.runtime.aclose()

    # -- calls -----------------------------------------------------------------------

    async def call(self, rpc: Callable[..., Awaitable[Message]], request: Message) -> Outcome:
        """One RPC through the generated client."""
        try:
            response = await rpc(request, timeout=60)
        except grpc.aio.AioRpcError as err:
            r = rich(err)
            return Outcome(False, code=r.code, reason=r.reason, metadata=r.metadata)
        return Outcome(True, response=response)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Starts ``coro`` as a task the world cancels when it stops."""
        task = self.loop.create_task(coro)
        self.tasks.append(task)
        return task

    async def settle(self, task: asyncio.Task[Any], hold: Any = None, *, limit: float = 30.0) -> None:
        """Waits until ``task`` finished or its call sits at ``hold``."""
        waits: list[asyncio.Future[Any]] = [task]
        if hold is not None:
            waits.append(asyncio.ensure_future(hold.arrived.wait()))
        try:
            await asyncio.wait(waits, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits[1:]:
                w.cancel()

    # -- the processor's events ------------------------------------------------------------

    def collect_events(self) -> None:
        """Adds what the processor emitted since the last look to ``events``."""
        if self.stripe_api is not None:
            for e in self.stripe_api.events_since(self._stripe_seq):
                self._stripe_seq = max(self._stripe_seq, e.pop("_seq"))
                self.events.append(Event(e["id"], e["type"], e))
            return
        assert self.fake is not None
        ledger = self.fake.ledger
        now: dict[tuple[str, str], Any] = {}
        for p in ledger.payments.values():
            now["payment", p.id] = (p.status, p.amount_captured, p.amount_capturable, p.amount_refunded)
        for r in ledger.refunds.values():
            now["refund", r.id] = (r.status,)
        for s in ledger.subscriptions.values():
            now["subscription", s.id] = (s.status, s.period_end, s.cancel_at_period_end, s.price.id, s.quantity)
        for (kind, object_id), state in now.items():
            if self._seen.get((kind, object_id)) != state:
                event_id = f"evt_fake_{next(self._event_seq)}"
                body = {"id": event_id, "type": f"{kind}.updated", "object_id": object_id}
                self.events.append(Event(event_id, f"{kind}.updated", body))
        self._seen = now

    async def deliver(self, event: Event) -> None:
        """Delivers ``event`` once more, as the processor would."""
        event.delivered += 1
        raw = json.dumps(event.body).encode()
        if self.kind is Processor.STRIPE:
            header = stripe.WebhookSignature.generate_signature_header(raw.decode(), WHSEC)
            headers = {"Stripe-Signature": header, "Content-Type": "application/json"}
            response = await self.http.post("/webhooks/stripe", content=raw, headers=headers)
            assert response.status_code == 200, (response.status_code, response.text)
            return
        await record(self.inbox, self.clock, Processor.FAKE, VerifiedEvent(event.event_id, event.type, event.body), raw)

    async def process_webhooks(self, limit: int) -> int:
        """Runs the inbox worker on up to ``limit`` due events; returns how many it ran."""
        done = 0
        while done < limit and await self.workers.run_once("model-worker"):
            done += 1
        return done

    async def drain_webhooks(self) -> None:
        """Processes the inbox until nothing waits (moving the clock over retry delays)."""
        for _ in range(20):
            await self.process_webhooks(10_000)
            stats = await self.inbox.stats(now=self.clock.now())
            if stats.depth == 0:
                return
            self.clock.advance(timedelta(seconds=10))
        raise AssertionError("the webhook inbox does not drain")

    async def inbox_statuses(self) -> dict[str, int]:
        """How many stored events ended in each status."""
        counts: dict[str, int] = {}
        async for doc in self.inbox.collection.find({}, projection={"status": 1}):
            counts[doc["status"]] = counts.get(doc["status"], 0) + 1
        return counts

    async def reconcile(self, errors: list[str] | None = None) -> ReconcileReport:
        """One reconciliation pass, as the reconciler loop or ``billing-service reconcile`` runs it."""

        def on_error(resource_id: str, exc: BaseException) -> None:
            if errors is not None:
                errors.append(f"{resource_id}: {getattr(exc, 'reason', type(exc).__name__)} {exc}")

        report = await reconcile_once(
            self.deps, budget=None, cursors=self.cursors, event_feed=self.runtime.event_feed, on_error=on_error
        )
        self.cursors = report.cursors  # kept between passes, as the reconciler loop keeps them with its lease
        return report

    def clear_faults(self) -> None:
        """Forgets processor faults no call consumed."""
        if self.fake is not None:
            self.fake.clear_faults()
        if self.stripe_api is not None:
            self.stripe_api.clear_faults()


__all__ = ["BILLING", "SUBSCRIPTIONS", "Event", "Outcome", "World", "processor_key"]
