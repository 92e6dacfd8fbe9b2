"""A real webhook sidecar (uvicorn on a free loopback port) on the embedded store, with the
real Stripe and PayPal adapters pointed at the local imitations so re-fetches are real.

Also: signing helpers for Stripe (the SDK's own header generator) and PayPal (a test CA and
signing certificate generated in this run, trusted only by the verifier built here), and a
helper that runs the sidecar as a separate ``billing-service webhooks serve`` process.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from billing_service.adapters.mongo.inbox import MongoWebhookInbox
from billing_service.adapters.processors.paypal import PayPalPaymentProcessor, PayPalSettings
from billing_service.adapters.processors.paypal.webhooks import PayPalWebhookVerifier
from billing_service.adapters.processors.retry import RetryPolicy
from billing_service.adapters.processors.stripe import StripePaymentProcessor, StripeSettings
from billing_service.bootstrap import Runtime, bootstrap
from billing_service.config import Settings
from billing_service.domain.common import Processor
from billing_service.domain.payments import Payment
from billing_service.entrypoints.webhooks.app import Sidecar, create_app
from billing_service.entrypoints.webhooks.cli import bind
from billing_service.entrypoints.webhooks.worker import InboxWorkers, WorkerSettings
from billing_service.observability.metrics import WebhookMetrics
from billing_service.service_layer.ports import PaymentProcessor, WebhookStatus
from tests.imitations.paypal_api import PayPalImitation
from tests.imitations.stripe_api import StripeImitation

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STRIPE_KEY = "sk_test_imitation_webhooks_4eC39HqLyjWDarjT"
WHSEC = "whsec_test_primary_0123456789abcdef"
WHSEC_NEXT = "whsec_test_rotated_fedcba9876543210"
PAYPAL_WEBHOOK_ID = "8PT597110X687430LKGECATA"
CERT_URL = "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test"
FAST = RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.005)
DONE = {WebhookStatus.PROCESSED, WebhookStatus.IGNORED, WebhookStatus.ORPHAN, WebhookStatus.DEAD}

# stripe-python's HTTPXClient posts the form body as a string (``data=``), which httpx deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


# --------------------------------------------------------------------------- fixtures files


def fixture(processor: str, event_type: str) -> dict[str, Any]:
    """A copy of ``tests/fixtures/<processor>/<event_type>.json``."""
    data: dict[str, Any] = json.loads((FIXTURES / processor / f"{event_type}.json").read_text())
    return data


def stripe_event(event_type: str, obj: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A Stripe fixture with a fresh event id and ``data.object`` replaced or patched."""
    event = fixture("stripe", event_type)
    event["id"] = f"evt_test_{uuid.uuid4().hex[:20]}"
    if obj is not None:
        event["data"]["object"] = copy.deepcopy(obj)
    event["data"]["object"].update(fields)
    return event


def paypal_event(event_type: str, **resource: Any) -> dict[str, Any]:
    """A PayPal fixture with a fresh event id and resource fields patched."""
    event = fixture("paypal", event_type)
    event["id"] = f"WH-TEST-{uuid.uuid4().hex[:20].upper()}"
    event["resource"].update(resource)
    return event


def stripe_headers(body: bytes, *, secret: str = WHSEC, timestamp: int | None = None) -> dict[str, str]:
    """Headers of a Stripe delivery signed with ``secret`` by the SDK's own generator."""
    signature = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp)
    return {"Stripe-Signature": signature, "Content-Type": "application/json; charset=utf-8"}


# --------------------------------------------------------------------------- PayPal test CA


@dataclass
class TestPki:
    """A CA and a PayPal-style signing certificate made for this test run."""

    ca: x509.Certificate
    chain_pem: bytes  # leaf then CA, as PayPal serves it
    key: rsa.RSAPrivateKey
    fetched: list[str] = field(default_factory=list)

    async def fetch(self, url: str) -> bytes:
        """The injected certificate fetcher: serves the chain, records the URL (no network)."""
        self.fetched.append(url)
        return self.chain_pem

    def sign(self, body: bytes, *, webhook_id: str = PAYPAL_WEBHOOK_ID, cert_url: str = CERT_URL) -> dict[str, str]:
        """Headers of a PayPal delivery signed like PayPal does."""
        transmission_id = str(uuid.uuid4())
        transmission_time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = f"{transmission_id}|{transmission_time}|{webhook_id}|{zlib.crc32(body)}".encode()
        signature = self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return {
            "Content-Type": "application/json",
            "PAYPAL-TRANSMISSION-ID": transmission_id,
            "PAYPAL-TRANSMISSION-TIME": transmission_time,
            "PAYPAL-TRANSMISSION-SIG": base64.b64encode(signature).decode(),
            "PAYPAL-CERT-URL": cert_url,
            "PAYPAL-AUTH-ALGO": "SHA256withRSA",
        }


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def make_pki(host: str = "messageverificationcerts.sandbox.paypal.com") -> TestPki:
    """Generates a root CA and a signing certificate for ``host`` issued by it."""
    now = datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Billing Test Root CA {uuid.uuid4().hex[:6]}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=10))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    return TestPki(ca=ca, chain_pem=pem, key=key)


@pytest.fixture(scope="session")
def pki() -> TestPki:
    return make_pki()


# --------------------------------------------------------------------------- imitations


@pytest.fixture(scope="session")
def stripe_api() -> Iterator[StripeImitation]:
    with StripeImitation(api_key=STRIPE_KEY) as api:
        yield api


@pytest.fixture(scope="session")
def paypal_api() -> Iterator[PayPalImitation]:
    with PayPalImitation() as api:
        yield api


def stripe_processor(api: StripeImitation) -> StripePaymentProcessor:
    """The Stripe adapter on the imitation, verifying deliveries signed with either test secret."""
    settings = StripeSettings(secret_key=STRIPE_KEY, api_base=api.base_url, webhook_secrets=(WHSEC, WHSEC_NEXT))
    return StripePaymentProcessor(settings, retry_policy=FAST)


def paypal_processor(api: PayPalImitation, pki: TestPki) -> PayPalPaymentProcessor:
    """The PayPal adapter on the imitation, verifying deliveries signed by this run's test CA."""
    settings = PayPalSettings(
        client_id=api.client_id, client_secret=api.client_secret, base_url=api.base_url, webhook_id=PAYPAL_WEBHOOK_ID
    )
    verifier = PayPalWebhookVerifier(PAYPAL_WEBHOOK_ID, environment="sandbox", trust_roots=[pki.ca], fetch=pki.fetch)
    return PayPalPaymentProcessor(settings, retry_policy=FAST, webhook_verifier=verifier)


# --------------------------------------------------------------------------- the sidecar


@dataclass
class RunningSidecar:
    """An in-process sidecar and what tests inspect."""

    url: str
    runtime: Runtime
    inbox: MongoWebhookInbox
    http: httpx.AsyncClient
    stripe: StripePaymentProcessor
    paypal: PayPalPaymentProcessor
    pki: TestPki
    metrics: WebhookMetrics

    async def post_stripe(self, event: dict[str, Any] | bytes, **sign: Any) -> httpx.Response:
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        return await self.http.post(f"{self.url}/webhooks/stripe", content=body, headers=stripe_headers(body, **sign))

    async def post_paypal(self, event: dict[str, Any], **sign: Any) -> httpx.Response:
        body = json.dumps(event).encode()
        return await self.http.post(f"{self.url}/webhooks/paypal", content=body, headers=self.pki.sign(body, **sign))

    async def stored(self) -> int:
        return await self.inbox.collection.count_documents({})

    async def settled(self, event_ids: list[str], timeout: float = 15.0) -> dict[str, WebhookStatus]:
        """Waits until every event reached a final status; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            docs = await self.inbox.collection.find({"event_id": {"$in": event_ids}}).to_list()
            statuses = {d["event_id"]: WebhookStatus(d["status"]) for d in docs}
            if len(statuses) == len(set(event_ids)) and all(s in DONE for s in statuses.values()):
                return statuses
            if time.monotonic() > deadline:
                raise AssertionError(f"events not settled: {statuses}")
            await asyncio.sleep(0.05)

    async def audit(self, resource_id: str) -> list[Any]:
        page = await self.runtime.store.list_audit_events(resource_id, limit=500, after=None)
        return page.items


SidecarFactory = Callable[..., Awaitable[RunningSidecar]]


@pytest.fixture
async def make_sidecar(
    mongo_uri: str, stripe_api: StripeImitation, paypal_api: PayPalImitation, pki: TestPki
) -> AsyncIterator[SidecarFactory]:
    """Starts in-process sidecars on one fresh database; all are stopped afterwards."""
    database = f"wh_{uuid.uuid4().hex}"
    started: list[tuple[uvicorn.Server, asyncio.Task[None], RunningSidecar]] = []

    async def start(
        *, workers: int = 2, max_attempts: int = 5, retry_base: float = 0.05, max_body: int = 64 * 1024
    ) -> RunningSidecar:
        stripe_adapter, paypal_adapter = stripe_processor(stripe_api), paypal_processor(paypal_api, pki)
        procs: dict[Processor, PaymentProcessor] = {Processor.STRIPE: stripe_adapter, Processor.PAYPAL: paypal_adapter}
        settings = Settings(mongodb_database=database, default_processor=Processor.STRIPE)
        runtime = await bootstrap(settings, processors=procs, mongodb_uri=mongo_uri)
        inbox = MongoWebhookInbox(runtime.store.database.client, database)
        await inbox.ensure_indexes()
        pool = InboxWorkers(
            runtime.deps,
            inbox,
            WorkerSettings(
                workers=workers, lease_seconds=10, max_attempts=max_attempts, retry_base_seconds=retry_base,
                retry_max_seconds=retry_base * 4, poll_seconds=0.1,
            ),
        )  # fmt: skip
        sidecar = Sidecar(
            inbox=inbox,
            clock=runtime.deps.clock,
            ping=runtime.store.ping,
            verifiers=runtime.processors,
            max_body_bytes=max_body,
            workers=pool if workers else None,
            metrics=WebhookMetrics(),
        )
        sock = bind("127.0.0.1:0")
        server = uvicorn.Server(uvicorn.Config(create_app(sidecar), log_level="warning", lifespan="on"))
        server.capture_signals = _no_signals  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        running = RunningSidecar(
            url, runtime, inbox, httpx.AsyncClient(timeout=10), stripe_adapter, paypal_adapter, pki, sidecar.metrics
        )
        started.append((server, task, running))
        return running

    yield start
    for server, task, running in started:
        server.should_exit = True
        await task
        await running.http.aclose()
    if started:
        await started[0][2].runtime.store.database.client.drop_database(database)
    for _, _, running in started:
        await running.runtime.aclose()


def _no_signals() -> Any:
    import contextlib

    return contextlib.nullcontext()


@pytest.fixture
async def sidecar(make_sidecar: SidecarFactory) -> RunningSidecar:
    """One sidecar with two workers."""
    return await make_sidecar()


# --------------------------------------------------------------------------- a separate process


@dataclass
class SidecarProcess:
    """``billing-service webhooks serve`` as a child process."""

    proc: subprocess.Popen[str]
    url: str

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_process(env: dict[str, str]) -> SidecarProcess:
    """Starts a sidecar process and waits for its banner (which names the bound port)."""
    full = {**os.environ, **env, "BILLING_WEBHOOK_ADDRESS": "127.0.0.1:0", "BILLING_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "billing_service", "webhooks", "serve"],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("billing webhook sidecar on "):
            url = line.split()[4]
            return SidecarProcess(proc, url)
    proc.kill()
    raise RuntimeError(f"sidecar process did not start (exit {proc.poll()})")


def process_env(mongo_uri: str, database: str, stripe_api: StripeImitation, **extra: str) -> dict[str, str]:
    return {
        "MONGODB_URI": mongo_uri,
        "BILLING_MONGODB_DATABASE": database,
        "BILLING_PROCESSOR": "stripe",
        "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": stripe_api.base_url,
        "STRIPE_WEBHOOK_SECRET": f"{WHSEC},{WHSEC_NEXT}",
        "BILLING_WEBHOOK_POLL_SECONDS": "0.1",
        **extra,
    }


# --------------------------------------------------------------------------- our records


def ctx(prefix: str) -> Any:
    """A request context as the gRPC layer would build it for a fresh request."""
    from billing_service.domain.ids import new_id
    from billing_service.service_layer.idempotency import RequestContext

    return RequestContext("test-caller", f"test/{prefix}", str(uuid.uuid4()), new_id(prefix))


async def customer_with_method(runtime: Runtime, processor: Processor, token: str) -> tuple[Any, Any]:
    """Creates a customer and attaches ``token`` at ``processor`` through the use cases."""
    from billing_service.service_layer import customers as cu

    deps = runtime.deps
    customer = await cu.create_customer(
        deps, ctx("cus"), cu.CreateCustomer("ada@example.com", "Ada", "", {}, processor)
    )
    method = await cu.attach_payment_method(deps, ctx("pm"), cu.AttachPaymentMethod(customer.id, processor, token))
    return customer, method


async def create_payment(
    runtime: Runtime, processor: Processor, token: str, *, manual: bool = False, amount: int = 2500
) -> Payment:
    """A payment through the create_payment use case (declines and 3DS included)."""
    from billing_service.domain.errors import PaymentDeclined
    from billing_service.domain.money import Money
    from billing_service.domain.payments import CaptureMethod
    from billing_service.service_layer import payments as pay

    customer, method = await customer_with_method(runtime, processor, token)
    cmd = pay.CreatePayment(
        customer.id, method.id, Money(amount, "USD"), CaptureMethod.MANUAL if manual else CaptureMethod.AUTOMATIC
    )
    context = ctx("pay")
    try:
        return await pay.create_payment(runtime.deps, context, cmd)
    except PaymentDeclined:
        declined = await runtime.store.get(Payment, context.resource_id)
        assert declined is not None
        return declined


def complete_3ds(api: StripeImitation, intent_id: str) -> None:
    """The buyer completes 3-D Secure at Stripe (the imitation has no knob; its state is set)."""
    with api._lock:
        pi = api._store.objects[intent_id]
        pi.update(status="succeeded", amount_received=pi["amount"], next_action=None)
