"""The composition root: the one place that builds what the processes need from settings.

:func:`bootstrap` builds a :class:`Runtime`: the store (the embedded server when no URI is
set), the processor adapters (the fake's state included) wrapped in their metrics, the
use cases' ``Deps``, idempotency, the leases, the webhook inbox and the reconciler's event
feed. The ``build_*`` functions build the background jobs (reconciler, janitor, sampler)
and the webhook sidecar's pieces from a runtime. ``__main__`` and the CLI subcommands call them and hand the entrypoints
what they need.

This module and ``adapters/`` are the only code that touches the raw database client or
names a processor's adapter (``tests/unit/test_layering.py`` holds everything else to it).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from billing_service.adapters.mongo.counts import subscription_counter
from billing_service.adapters.mongo.embedded import EmbeddedMongo
from billing_service.adapters.mongo.event_delivery import (
    MongoEventDeliveries,
    MongoEventEndpoints,
    StaticSecretKeys,
    StoredSecretKeys,
    ensure_push_indexes,
)
from billing_service.adapters.mongo.inbox import MongoWebhookInbox
from billing_service.adapters.mongo.leases import MongoLeases
from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.config import Settings
from billing_service.domain.common import Processor
from billing_service.observability.metrics import BillingMetrics, DriftRecorder, KpiRecorder, SubscriptionSampler
from billing_service.observability.processor import InstrumentedProcessor
from billing_service.service_layer.clock import SystemClock
from billing_service.service_layer.core import Deps
from billing_service.service_layer.event_intake import event_feed
from billing_service.service_layer.event_ports import EventLog
from billing_service.service_layer.event_stream import Ring, Tailer
from billing_service.service_layer.event_tasks import Retention, Sequencer
from billing_service.service_layer.events import EventDeps
from billing_service.service_layer.idempotency import Idempotency
from billing_service.service_layer.ports import Clock, Leases, PaymentProcessor, WebhookVerifier
from billing_service.service_layer.push_ports import EventRenderer, PushServices, SecretKeys
from billing_service.service_layer.reconcile import DEFAULT_BUDGET, EventFeed

if TYPE_CHECKING:
    from billing_service.adapters.processors._fake_state import FakeStateStore
    from billing_service.entrypoints.janitor import JanitorLoop
    from billing_service.entrypoints.push_delivery import PushDeliveryTasks
    from billing_service.entrypoints.reconciler import ReconcilerLoop
    from billing_service.entrypoints.webhooks.app import Sidecar

log = logging.getLogger(__name__)

#: Processors whose event lists feed every reconciliation pass (a lost webhook's event
#: reaches the inbox that way). Stripe's Events API lists every event of the account;
#: PayPal's list (the webhook notifications of our app) is read by ``webhooks backfill``
#: only, as before this was a processor verb: adding it here makes each pass read it too.
RECONCILE_EVENT_SOURCES = (Processor.STRIPE,)


def build_processors(
    settings: Settings, clock: Clock, *, fake_state: FakeStateStore | None = None
) -> dict[Processor, PaymentProcessor]:
    """Creates one adapter per enabled processor, each with its own client and webhook settings.

    Args:
        fake_state: Where the fake processor keeps its state (None: in memory).
    """
    processors: dict[Processor, PaymentProcessor] = {}
    if settings.enable_fake:
        from billing_service.adapters.processors.fake import FakePaymentProcessor

        processors[Processor.FAKE] = FakePaymentProcessor(clock, state=fake_state)
    if settings.stripe_secret_key:
        from billing_service.adapters.processors.stripe import StripePaymentProcessor, StripeSettings

        processors[Processor.STRIPE] = StripePaymentProcessor(
            StripeSettings(
                secret_key=settings.stripe_secret_key.value,
                api_base=settings.stripe_api_base,
                max_attempts=settings.stripe_max_attempts,
                webhook_secrets=tuple(s.value for s in settings.stripe_webhook_secrets),
                webhook_tolerance_seconds=settings.stripe_webhook_tolerance_seconds,
            )
        )
    if settings.paypal_client_id:
        from billing_service.adapters.processors.paypal import PayPalPaymentProcessor, PayPalSettings

        processors[Processor.PAYPAL] = PayPalPaymentProcessor(
            PayPalSettings(
                client_id=settings.paypal_client_id,
                client_secret=settings.paypal_client_secret.value,
                environment=settings.paypal_environment,
                base_url=settings.paypal_base_url or None,
                webhook_id=settings.paypal_webhook_id,
                webhook_ca_file=settings.paypal_cert_ca_file,
            )
        )
    return processors


def webhook_verifiers(
    settings: Settings, processors: Mapping[Processor, PaymentProcessor]
) -> dict[Processor, WebhookVerifier]:
    """Who verifies each processor's webhook deliveries in the sidecar.

    A configured processor's adapter verifies its own. A processor whose webhooks are
    configured without its API (Stripe signing secrets without a secret key, a PayPal
    webhook id without client credentials) gets its adapter's verifier alone: its events
    are then stored, and processed as ORPHAN (nothing of ours can be there).
    """
    verifiers: dict[Processor, WebhookVerifier] = dict(processors)
    if Processor.STRIPE not in verifiers and settings.stripe_webhook_secrets:
        from billing_service.adapters.processors.stripe.webhooks import StripeWebhookVerifier

        verifiers[Processor.STRIPE] = StripeWebhookVerifier(
            secrets=tuple(s.value for s in settings.stripe_webhook_secrets),
            tolerance_seconds=settings.stripe_webhook_tolerance_seconds,
        )
    if Processor.PAYPAL not in verifiers and settings.paypal_webhook_id:
        from billing_service.adapters.processors.paypal.webhooks import PayPalWebhookVerifier, load_trust_roots

        verifiers[Processor.PAYPAL] = PayPalWebhookVerifier(
            settings.paypal_webhook_id,
            environment=settings.paypal_environment,
            trust_roots=load_trust_roots(settings.paypal_cert_ca_file),
        )
    return verifiers


@dataclass
class EventTasks:
    """The event log's background work in a serving process: sequencer, retention, tailer."""

    sequencer: Sequencer
    retention: Retention
    tailer: Tailer
    running: bool = False

    def start(self) -> None:
        """Starts the three (idempotent)."""
        if not self.running:
            self.sequencer.start()
            self.retention.start()
            self.tailer.start()
            self.running = True

    async def stop(self) -> None:
        """Stops them; the sequencer gives its lease up."""
        if self.running:
            await self.tailer.stop()
            await self.retention.stop()
            await self.sequencer.stop()
            self.running = False


def build_event_tasks(store: MongoBillingStore, events: EventDeps, leases: Leases) -> EventTasks:
    """The sequencer, retention and tailer of one process (started by ``serve``)."""
    sequencer = Sequencer(store.events, leases)
    # A commit through this process wakes the sequencer at once (others: its change stream).
    store.on_events = sequencer.wake
    return EventTasks(
        sequencer=sequencer,
        retention=Retention(store.events, leases, keep=events.retention),
        tailer=Tailer(store.events, events.ring),
    )


@dataclass
class Runtime:
    """Everything a process built from settings owns, closed in reverse order.

    Attributes:
        store: The store adapter (tests and admin tooling read its ``database``).
        leases: Named leases (the reconciler's) in the store.
        inbox: The webhook inbox, its indexes created.
        event_feed: Feeds the ``RECONCILE_EVENT_SOURCES`` processors' events into the
            inbox on every reconciliation pass; None when none is configured.
        embedded: The embedded server this process started, if any.
        processors: The configured adapters, wrapped in their metrics.
    """

    settings: Settings
    store: MongoBillingStore
    deps: Deps
    idempotency: Idempotency
    leases: Leases
    inbox: MongoWebhookInbox
    event_feed: EventFeed | None = None
    embedded: EmbeddedMongo | None = None
    processors: Mapping[Processor, PaymentProcessor] = field(default_factory=dict)
    metrics: BillingMetrics = field(default_factory=BillingMetrics)
    event_tasks: EventTasks | None = None

    def start_events(self) -> None:
        """Starts the event log's background work (serving processes only)."""
        if self.event_tasks is not None:
            self.event_tasks.start()

    async def aclose(self) -> None:
        """Stops the event tasks; closes processors, the store client and the embedded server."""
        if self.event_tasks is not None:
            await self.event_tasks.stop()
        for processor in self.processors.values():
            try:
                await processor.aclose()
            except Exception:
                log.warning("processor close failed", exc_info=True)
        await self.store.aclose()
        if self.embedded is not None:
            self.embedded.stop()


async def start_embedded_store(settings: Settings) -> EmbeddedMongo:
    """Starts the embedded MongoDB-wire server with data under the configured directory."""
    # Fsync the log on every commit: a committed payment must survive a power cut.
    embedded = EmbeddedMongo(settings.embedded_data_dir, extra_args=("--sync-on-commit",))
    await embedded.start()
    log.info("embedded store started", extra={"data_dir": str(settings.embedded_data_dir), "uri": embedded.uri})
    return embedded


async def bootstrap(
    settings: Settings,
    *,
    clock: Clock | None = None,
    processors: Mapping[Processor, PaymentProcessor] | None = None,
    mongodb_uri: str | None = None,
    metrics: BillingMetrics | None = None,
) -> Runtime:
    """Builds a runtime: store (embedded when no URI is set), processors, deps and the rest.

    Args:
        settings: Validated settings.
        clock: Time source (tests pass a manual clock).
        processors: Adapters to use instead of building them from settings (tests).
        mongodb_uri: Overrides ``settings.mongodb_uri`` (the supervisor passes the
            embedded server's URI to its children).
        metrics: The process's metrics; a fresh registry when None. Processors are
            wrapped to measure their calls and committed audit events feed the KPIs.
    """
    clock = clock or SystemClock()
    embedded: EmbeddedMongo | None = None
    uri = mongodb_uri or settings.mongodb_uri.value
    if not uri:
        embedded = await start_embedded_store(settings)
        uri = embedded.uri
    store = MongoBillingStore.connect(uri, settings.mongodb_database)
    client = store.database.client
    # Finished events carry purge_at = finish + retention (TTL index; the janitor sweeps too).
    inbox = MongoWebhookInbox(
        client, settings.mongodb_database, retention=timedelta(days=settings.webhook_retention_days)
    )
    try:
        await store.ensure_indexes()
        await inbox.ensure_indexes()
        await ensure_push_indexes(client, settings.mongodb_database)
    except Exception:
        await store.aclose()
        if embedded is not None:
            embedded.stop()
        raise
    metrics = metrics if metrics is not None else BillingMetrics()
    fake_state: FakeStateStore | None = None
    if processors is None and settings.enable_fake and settings.fake_state == "store":
        from billing_service.adapters.mongo.fake_state import MongoFakeState

        # The fake plays a processor: its state outlives restarts, in its own database.
        fake_state = MongoFakeState(client, f"{settings.mongodb_database}_fake_processor")
    built = dict(processors) if processors is not None else build_processors(settings, clock, fake_state=fake_state)
    procs: dict[Processor, PaymentProcessor] = {
        name: InstrumentedProcessor(adapter, metrics) for name, adapter in built.items()
    }
    deps = Deps(
        store=store, processors=procs, default_processor=settings.default_processor, clock=clock,
        lease_seconds=settings.idempotency_lease_seconds,
    )  # fmt: skip
    deps.events = EventDeps(
        log=store.events,
        consumers=store.consumers,
        ring=Ring(settings.events_ring_size),
        clock=clock,
        retention=timedelta(days=settings.events_retention_days),
    )
    # Every replica serves the push RPCs; BILLING_EVENTS_PUSH decides only who delivers.
    deps.push = build_push_services(settings, store, clock, store.events, retention=deps.events.retention)
    deps.audit_hooks.append(KpiRecorder(metrics))
    deps.drift_hooks.append(DriftRecorder(metrics))
    idempotency = Idempotency(
        store,
        clock,
        lease_seconds=settings.idempotency_lease_seconds,
        ttl_seconds=settings.idempotency_ttl_hours * 3600,
    )
    sources = {name: procs[name] for name in RECONCILE_EVENT_SOURCES if name in procs}
    leases = MongoLeases(client, settings.mongodb_database)
    return Runtime(
        settings=settings, store=store, deps=deps, idempotency=idempotency, leases=leases, inbox=inbox,
        event_feed=event_feed(sources, inbox, clock), embedded=embedded, processors=procs, metrics=metrics,
        event_tasks=build_event_tasks(store, deps.events, leases),
    )  # fmt: skip


def replica_name() -> str:
    """This process's name among replicas (lease owner): host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def build_reconciler(
    runtime: Runtime, interval: float | None = None, *, budget: int | None = DEFAULT_BUDGET
) -> ReconcilerLoop:
    """The reconciler loop of ``serve``: a bounded pass every ``interval`` seconds under the lease.

    Args:
        interval: Seconds between passes; ``settings.reconcile_interval_seconds`` when None
            (0 disables the loop).
        budget: Records per sweep and pass.
    """
    from billing_service.entrypoints.reconciler import ReconcilerLoop

    return ReconcilerLoop(
        runtime.deps,
        runtime.leases,
        runtime.settings.reconcile_interval_seconds if interval is None else interval,
        metrics=runtime.metrics,
        event_feed=runtime.event_feed,
        budget=budget,
        owner=replica_name(),
    )


def build_push_services(
    settings: Settings, store: MongoBillingStore, clock: Clock, log_reader: EventLog, *, retention: timedelta
) -> PushServices:
    """Push delivery's services on the store's database (``ensure_push_indexes`` makes its indexes).

    Without ``BILLING_EVENTS_SECRET_KEY`` (refused in live mode) the endpoints' secrets are
    derived from a key kept in the store, and a warning says so when it is first used.
    """
    client, name = store.database.client, store.database.name
    key = settings.events_key
    keys: SecretKeys = StaticSecretKeys(key) if key else StoredSecretKeys(client, name)
    return PushServices(
        endpoints=MongoEventEndpoints(client, name), deliveries=MongoEventDeliveries(client, name),
        log=log_reader, keys=keys, leases=MongoLeases(client, name), clock=clock,
        page_secret=store.page_token_secret, allow_http=settings.push_allows_http, retention=retention,
    )  # fmt: skip


def build_push_tasks(runtime: Runtime, render: EventRenderer) -> PushDeliveryTasks | None:
    """Push delivery's fan-out and worker for ``serve``; None with ``BILLING_EVENTS_PUSH=false``.

    Args:
        render: Builds the POSTed body of an event (the gRPC layer's ``BillingEvent`` JSON).
    """
    from billing_service.adapters.push_sender import HttpxPushSender
    from billing_service.entrypoints.push_delivery import PushDeliveryTasks

    settings = runtime.settings
    if not settings.events_push or runtime.deps.push is None:
        return None
    sender = HttpxPushSender(
        timeout_seconds=settings.events_delivery_timeout_seconds, max_connections=settings.events_delivery_concurrency
    )
    return PushDeliveryTasks(
        runtime.deps.push, sender, render, owner=replica_name(), concurrency=settings.events_delivery_concurrency,
        observer=runtime.metrics,
    )  # fmt: skip


def build_janitor(runtime: Runtime, interval: float | None = None) -> JanitorLoop:
    """The janitor loop of ``serve``: finished inbox events, expired idempotency records, old leases.

    Args:
        interval: Seconds between passes; ``settings.janitor_interval_seconds`` when None
            (0 disables the loop).
    """
    from billing_service.adapters.mongo.janitor import MongoJanitor, SweepReport
    from billing_service.entrypoints.janitor import JanitorLoop

    every = runtime.settings.janitor_interval_seconds if interval is None else interval
    database = runtime.store.database
    janitor = MongoJanitor(database.client, database.name, runtime.inbox)
    owner = replica_name()

    async def sweep(now: datetime) -> SweepReport:
        return await janitor.sweep_with_lease(owner=owner, now=now, lease_seconds=max(every * 2, 60.0))

    return JanitorLoop(sweep, runtime.deps.clock, every)


def build_subscription_sampler(runtime: Runtime) -> SubscriptionSampler:
    """Refreshes the subscription gauges from the store (``serve``)."""
    return SubscriptionSampler(runtime.metrics, subscription_counter(runtime.store))


def build_sidecar(runtime: Runtime) -> Sidecar:
    """The webhook sidecar's dependencies: verifiers, inbox, workers and metrics.

    The webhook metrics join the runtime's registry (``runtime.metrics``, which already
    holds the processor-call metrics of this process), so one endpoint serves them all.
    """
    from billing_service.entrypoints.webhooks.app import Sidecar
    from billing_service.entrypoints.webhooks.worker import InboxWorkers, WorkerSettings
    from billing_service.observability.metrics import WebhookMetrics

    settings = runtime.settings
    metrics = WebhookMetrics(runtime.metrics.registry)
    workers = None
    if settings.webhook_workers:
        workers = InboxWorkers(
            runtime.deps,
            runtime.inbox,
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
        inbox=runtime.inbox,
        clock=runtime.deps.clock,
        ping=runtime.store.ping,
        verifiers=webhook_verifiers(settings, runtime.processors),
        max_body_bytes=settings.webhook_max_body_bytes,
        workers=workers,
        metrics=metrics,
        # The inbox gauges refresh five poll intervals apart, at most every 5 s.
        stats_interval_seconds=min(5.0, settings.webhook_poll_seconds * 5),
    )
