"""The sidecar as separate processes on one store: crash after storing, and two replicas."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from billing_service.domain.common import Processor
from billing_service.domain.payments import Payment, PaymentStatus
from billing_service.service_layer.ports import WebhookStatus
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import (
    RunningSidecar,
    SidecarFactory,
    create_payment,
    process_env,
    start_process,
    stripe_event,
    stripe_headers,
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")]


@pytest.fixture
async def local(make_sidecar: SidecarFactory) -> RunningSidecar:
    """An in-process runtime on the test's database, used to set up records and inspect them
    (its workers are off: only the processes under test process events)."""
    return await make_sidecar(workers=0)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def _captured_elsewhere(local: RunningSidecar, api: StripeImitation) -> tuple[Payment, dict[str, Any]]:
    """A payment we hold as requires_capture that Stripe already captured, and its event."""
    paid = await create_payment(local.runtime, Processor.STRIPE, "pm_card_visa", manual=True)
    await local.stripe.capture_payment(paid.processor_id, paid.amount, idempotency_key=f"cap-{paid.id}")
    intent = next(o for o in api.objects("payment_intent") if o["id"] == paid.processor_id)
    return paid, stripe_event("payment_intent.succeeded", intent)


async def _post(http: httpx.AsyncClient, url: str, event: dict[str, Any]) -> int:
    body = json.dumps(event).encode()
    response = await http.post(f"{url}/webhooks/stripe", content=body, headers=stripe_headers(body))
    return response.status_code


async def _wait_processed(
    local: RunningSidecar, event_ids: list[str], timeout: float = 20
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        docs = await local.inbox.collection.find({"event_id": {"$in": event_ids}}).to_list()
        if len(docs) == len(event_ids) and all(d["status"] == WebhookStatus.PROCESSED.value for d in docs):
            return {d["event_id"]: d for d in docs}
        assert time.monotonic() < deadline, Counter(d["status"] for d in docs)
        await asyncio.sleep(0.1)


async def test_killed_after_storing_is_processed_once_after_restart(
    local: RunningSidecar, stripe_api: StripeImitation, mongo_uri: str, http: httpx.AsyncClient
) -> None:
    database = local.runtime.settings.mongodb_database
    paid, event = await _captured_elsewhere(local, stripe_api)
    receiving = start_process(process_env(mongo_uri, database, stripe_api, BILLING_WEBHOOK_WORKERS="0"))
    try:
        assert await _post(http, receiving.url, event) == 200
    finally:
        receiving.kill()  # SIGKILL: stored, acknowledged, never processed
    doc = await local.inbox.collection.find_one({"event_id": event["id"]})
    assert doc is not None and doc["status"] == WebhookStatus.PENDING.value and doc["attempts"] == 0
    assert (await local.runtime.store.get(Payment, paid.id)).status is PaymentStatus.REQUIRES_CAPTURE  # type: ignore[union-attr]

    restarted = start_process(process_env(mongo_uri, database, stripe_api, BILLING_WEBHOOK_WORKERS="2"))
    try:
        docs = await _wait_processed(local, [event["id"]])
        assert await _post(http, restarted.url, event) == 200  # Stripe retries the delivery too
    finally:
        restarted.stop()
    assert docs[event["id"]]["attempts"] == 1
    assert (await local.runtime.store.get(Payment, paid.id)).status is PaymentStatus.SUCCEEDED  # type: ignore[union-attr]
    webhook_changes = [e for e in await local.audit(paid.id) if e.caller == "webhook:stripe"]
    assert [(e.action, e.request_id) for e in webhook_changes] == [("payment.succeeded", event["id"])]


async def test_two_sidecars_on_one_store_process_each_event_exactly_once(
    local: RunningSidecar, stripe_api: StripeImitation, mongo_uri: str, http: httpx.AsyncClient
) -> None:
    database = local.runtime.settings.mongodb_database
    prepared = [await _captured_elsewhere(local, stripe_api) for _ in range(12)]
    env = process_env(mongo_uri, database, stripe_api, BILLING_WEBHOOK_WORKERS="4")
    replicas = [start_process(env), start_process(env)]
    try:
        # A burst: every event delivered three times, spread over both replicas.
        posts = [
            _post(http, replicas[(i + n) % 2].url, event) for i, (_, event) in enumerate(prepared) for n in range(3)
        ]
        assert set(await asyncio.gather(*posts)) == {200}
        # Plus events about objects we never created, and an unknown type.
        orphan = stripe_event("payment_intent.succeeded", id=f"pi_unknown_{uuid.uuid4().hex[:8]}")
        await _post(http, replicas[0].url, orphan)
        docs = await _wait_processed(local, [e["id"] for _, e in prepared])
    finally:
        for replica in replicas:
            replica.stop()
    assert all(d["attempts"] == 1 and d["deliveries"] == 3 for d in docs.values())
    assert len({d["_id"] for d in docs.values()}) == len(prepared)
    nodes = {d["processed_by"].split("-")[0] for d in docs.values()}
    assert len(nodes) == 2, "both replicas should have taken part"
    for paid, event in prepared:
        assert (await local.runtime.store.get(Payment, paid.id)).status is PaymentStatus.SUCCEEDED  # type: ignore[union-attr]
        changes = [(e.action, e.request_id) for e in await local.audit(paid.id) if e.caller == "webhook:stripe"]
        assert changes == [("payment.succeeded", event["id"])]
    orphan_doc = await local.inbox.collection.find_one({"event_id": orphan["id"]})
    assert orphan_doc is not None and orphan_doc["status"] in (WebhookStatus.ORPHAN.value, WebhookStatus.PENDING.value)
