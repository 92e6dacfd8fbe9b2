"""The reconciler: a loop that survives any failure, bounded incremental passes, drift made visible.

Before: any exception that was not a BillingError ended the background loop silently;
every pass re-read everything not final plus every live subscription with all invoices;
and nothing reported drift without repairing it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest
from billing.v1 import billing_service_pb2 as pb
from pymongo import AsyncMongoClient

from billing_service.adapters.mongo.leases import MongoLeases
from billing_service.bootstrap import build_reconciler
from billing_service.service_layer.reconcile import reconcile_once, reconcile_with_lease
from tests.e2e.conftest import STRIPE_KEY, Api, stored_documents
from tests.e2e.test_processors_e2e import stripe_customer
from tests.e2e.test_reliability import customer_with
from tests.helpers import rid, usd
from tests.imitations.stripe_api import StripeImitation

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def passes(api: Api, outcome: str) -> float:
    return api.runtime.metrics.registry.get_sample_value("billing_reconcile_passes_total", {"outcome": outcome}) or 0.0


async def test_the_loop_logs_counts_backs_off_and_goes_on_after_any_failure(api: Api) -> None:
    payments = api.runtime.store.database["payments"]
    # A document no code of ours wrote (a float amount): decoding it raises a TypeError, a bug.
    await payments.insert_one({"_id": "pay_corrupt", "status": "pending", "amount": {"amount_minor": 1.5}})
    loop = build_reconciler(api.runtime, interval=0.05)
    loop.start()
    try:
        for _ in range(200):
            if passes(api, "failed") >= 2:
                break
            await asyncio.sleep(0.05)
        assert passes(api, "failed") >= 2 and passes(api, "ok") == 0  # before: the loop died at the first
        await payments.delete_one({"_id": "pay_corrupt"})
        for _ in range(200):
            if passes(api, "ok") >= 1:
                break
            await asyncio.sleep(0.05)
        assert passes(api, "ok") >= 1
    finally:
        await loop.stop()


async def test_passes_are_bounded_and_resume_from_their_cursors(api: Api) -> None:
    customer_id, pm_id = await customer_with(api, "pm_card_authenticationRequired")
    for _ in range(5):  # five payments waiting for their buyers (not final: every pass looks at them)
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                    amount=usd(1000))
        )  # fmt: skip
    store = api.runtime.store
    leases = MongoLeases(store.database.client, store.database.name)
    seen = []
    for _ in range(3):
        report = await reconcile_with_lease(api.runtime.deps, leases, owner="replica-a", budget=2)
        seen.append((report.checked.get("payment", 0), report.more))
    assert seen == [(2, True), (2, True), (1, False)]  # 5 payments over three bounded passes
    assert (await leases.load_state("reconciler"))["payments:requires_action"] == ""  # wrapped around
    # Another replica that takes the lease over continues from the saved cursors.
    await leases.release("reconciler", "replica-a")
    report = await reconcile_with_lease(api.runtime.deps, leases, owner="replica-b", budget=2)
    assert (report.checked.get("payment", 0), report.more) == (2, True)


async def test_events_made_outside_the_service_reach_the_inbox_once(
    processors_api: Api, stripe_imitation: StripeImitation
) -> None:
    api = processors_api
    customer_id, pm_id = await stripe_customer(api)
    payment = (
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                    amount=usd(2000))
        )
    ).payment  # fmt: skip
    # A refund made in Stripe's dashboard whose webhook never arrived.
    response = httpx.post(
        f"{stripe_imitation.base_url}/v1/refunds",
        data={"payment_intent": payment.processor_id, "amount": "500"},
        headers={"Authorization": f"Bearer {STRIPE_KEY}", "Idempotency-Key": str(uuid.uuid4())},
    )
    refund_id = response.json()["id"]
    inbox = api.runtime.inbox
    feed = api.runtime.event_feed
    assert feed is not None
    first = await reconcile_once(api.runtime.deps, event_feed=feed, cursors={})
    assert first.events > 0 and first.cursors["events"]
    stored = await inbox.collection.find({"type": "refund.created"}).to_list()
    assert [json.loads(e["payload"])["data"]["object"]["id"] for e in stored] == [refund_id]
    again = await reconcile_once(api.runtime.deps, event_feed=feed, cursors=first.cursors)
    assert again.events == 0  # deduplicated by event id


async def fingerprint(db: Any) -> str:
    # Billing events count by id, wherever the sequencer has moved them (stored_documents).
    return hashlib.sha256(repr(sorted((await stored_documents(db)).items())).encode()).hexdigest()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "billing_service", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def test_reconcile_check_reports_drift_and_changes_nothing(
    processors_api: Api, stripe_imitation: StripeImitation, mongo_uri: str, mongo_client: AsyncMongoClient[Any]
) -> None:
    api = processors_api
    customer_id, pm_id = await stripe_customer(api)
    authorized = (
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                    amount=usd(1000), capture_method=pb.CAPTURE_METHOD_MANUAL)
        )
    ).payment  # fmt: skip
    # Captured in Stripe's dashboard; the webhook was lost.
    captured = httpx.post(
        f"{stripe_imitation.base_url}/v1/payment_intents/{authorized.processor_id}/capture",
        headers={"Authorization": f"Bearer {STRIPE_KEY}", "Idempotency-Key": str(uuid.uuid4())},
    )
    assert captured.status_code == 200, captured.text
    database = api.runtime.settings.mongodb_database
    env = {
        "MONGODB_URI": mongo_uri, "BILLING_MONGODB_DATABASE": database,
        "STRIPE_SECRET_KEY": STRIPE_KEY, "STRIPE_API_BASE": stripe_imitation.base_url,
    }  # fmt: skip
    # The server's own background work (the event sequencer's lease renewals) must not
    # blur what the command under test writes: stop it first.
    if api.runtime.event_tasks is not None:
        await api.runtime.event_tasks.stop()
    before = await fingerprint(mongo_client[database])

    checked = await asyncio.to_thread(run_cli, "reconcile", "--check", env=env)
    assert checked.returncode == 1, checked.stderr
    assert (
        f"drift payment {authorized.id}: ours requires_capture (capturable 1000), processor succeeded (captured 1000)"
        in checked.stdout
    )
    assert "drift: 1" in checked.stdout
    assert await fingerprint(mongo_client[database]) == before  # nothing changed

    repaired = await asyncio.to_thread(run_cli, "reconcile", env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"drift payment {authorized.id}: ours requires_capture, processor succeeded (repaired)" in repaired.stdout
    clean = await asyncio.to_thread(run_cli, "reconcile", "--check", env=env)
    assert clean.returncode == 0 and "drift: 0" in clean.stdout, clean.stdout + clean.stderr


async def test_the_lookup_due_sweep_is_indexed_and_skips_records_not_due(api: Api) -> None:
    await api.runtime.store.ensure_indexes()
    indexes = await api.runtime.store.database["payments"].index_information()
    assert "lookup_after" in indexes
    report = await reconcile_once(api.runtime.deps, budget=10)
    assert report.checked == {} and report.cursors["payments:lookup"] == ""
