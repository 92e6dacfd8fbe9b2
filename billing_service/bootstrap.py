"""Wiring: builds the store, processors and use-case dependencies from settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from billing_service.adapters.mongo.embedded import EmbeddedMongo
from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.config import Settings
from billing_service.domain.common import Processor
from billing_service.observability.metrics import BillingMetrics, DriftRecorder, KpiRecorder
from billing_service.observability.processor import InstrumentedProcessor
from billing_service.service_layer.clock import SystemClock
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import Idempotency
from billing_service.service_layer.ports import Clock, PaymentProcessor, WebhookVerifier

if TYPE_CHECKING:
    from billing_service.adapters.processors._fake_state import FakeStateStore

log = logging.getLogger(__name__)

#: Processors whose event lists feed every reconciliation pass (a lost webhook's event
#: reaches the inbox that way). Stripe's Events API lists every event of the account;
#: PayPal's list (the webhook notifications of our app) is read by ``webhooks backfill``
#: only, as before this was a processor verb: adding it here makes each pass read it too.
RECONCILE_EVENT_SOURCES = (Processor.STRIPE,)


def build_processors(
    settings: Settings, clock: Clock, *, fake_state: FakeStateStore | None = None
) -> dict[Processor, PaymentProcessor]:
    """Creates one adapter per enabled processor, each with its own client.

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
class Runtime:
    """Everything a process built from settings owns, closed in reverse order."""

    settings: Settings
    store: MongoBillingStore
    deps: Deps
    idempotency: Idempotency
    embedded: EmbeddedMongo | None = None
    processors: Mapping[Processor, PaymentProcessor] = field(default_factory=dict)
    metrics: BillingMetrics = field(default_factory=BillingMetrics)
    event_sources: Mapping[Processor, PaymentProcessor] = field(default_factory=dict)

    async def aclose(self) -> None:
        """Closes processors, the store client and the embedded server."""
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
    """Builds a runtime: store (embedded when no URI is set), processors and deps.

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
    try:
        await store.ensure_indexes()
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
        fake_state = MongoFakeState(store.database.client, f"{settings.mongodb_database}_fake_processor")
    built = dict(processors) if processors is not None else build_processors(settings, clock, fake_state=fake_state)
    procs: dict[Processor, PaymentProcessor] = {
        name: InstrumentedProcessor(adapter, metrics) for name, adapter in built.items()
    }
    deps = Deps(
        store=store, processors=procs, default_processor=settings.default_processor, clock=clock,
        lease_seconds=settings.idempotency_lease_seconds,
    )  # fmt: skip
    deps.audit_hooks.append(KpiRecorder(metrics))
    deps.drift_hooks.append(DriftRecorder(metrics))
    idempotency = Idempotency(
        store,
        clock,
        lease_seconds=settings.idempotency_lease_seconds,
        ttl_seconds=settings.idempotency_ttl_hours * 3600,
    )
    return Runtime(
        settings=settings, store=store, deps=deps, idempotency=idempotency, embedded=embedded, processors=procs,
        metrics=metrics, event_sources={name: procs[name] for name in RECONCILE_EVENT_SOURCES if name in procs},
    )  # fmt: skip
