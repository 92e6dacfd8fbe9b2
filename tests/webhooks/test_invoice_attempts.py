"""A failed payment attempt of a renewal invoice is one ``invoice.payment_failed`` event, whoever
reports it first (the webhook or reconciliation), however often the same state is read."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from billing_service.adapters.mongo.event_log import OUTBOX
from billing_service.domain.common import Processor
from billing_service.domain.event_derivation import cause_of
from billing_service.domain.ids import new_id
from billing_service.domain.money import Money
from billing_service.domain.subscriptions import Interval, Invoice, InvoiceStatus, Subscription, SubscriptionStatus
from billing_service.service_layer import plans
from billing_service.service_layer import subscriptions as su
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import WebhookStatus
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import RunningSidecar, ctx, customer_with_method

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def reconciler() -> RequestContext:
    """The context a reconciliation pass syncs with (``reconcile.CALLER``, the run id)."""
    return RequestContext("reconciler", "reconcile", f"run-{uuid.uuid4()}", new_id("rec"))


async def _subscribed(sidecar: RunningSidecar) -> tuple[Subscription, str]:
    """An active Stripe subscription whose first invoice was paid; its card's processor id."""
    deps = sidecar.runtime.deps
    customer, method = await customer_with_method(sidecar.runtime, Processor.STRIPE, "pm_card_visa")
    plan = await plans.create_plan(
        deps, ctx("plan"), plans.CreatePlan("Pro", "", Money(1500, "USD"), Interval.MONTH, 1, 0)
    )
    sub = await su.create_subscription(
        deps, ctx("sub"), su.CreateSubscription(customer.id, plan.id, method.id, quantity=1, trial_period_days=None)
    )
    assert sub.status is SubscriptionStatus.ACTIVE
    return sub, method.processor_id


async def _failed_events(sidecar: RunningSidecar, invoice_id: str) -> list[dict[str, Any]]:
    docs = await sidecar.runtime.store.database[OUTBOX].find({"resource_id": invoice_id}).to_list()
    return sorted((d for d in docs if d["type"] == "invoice.payment_failed"), key=lambda d: d["resource_version"])


async def _invoice(sidecar: RunningSidecar, processor_id: str) -> Invoice:
    found = await sidecar.runtime.store.find_one(Invoice, {"processor": "stripe", "processor_id": processor_id})
    assert found is not None
    return found


def _event(stripe_api: StripeImitation, invoice_id: str, nth: int) -> dict[str, Any]:
    """The ``nth`` (0-based) ``invoice.payment_failed`` Stripe sent for ``invoice_id``."""
    sent = [e for e in stripe_api.objects("event") if e["data"]["object"]["id"] == invoice_id]
    return [e for e in sent if e["type"] == "invoice.payment_failed"][nth]


async def test_a_failed_renewal_reported_by_webhook_is_one_event_redelivery_and_reconciliation_add_none(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    sub, card = await _subscribed(sidecar)
    stripe_api.set_card_behaviour(card, "decline:insufficient_funds")
    renewal = stripe_api.renew(sub.processor_id)
    webhook = _event(stripe_api, renewal["id"], 0)
    assert webhook["data"]["object"]["attempt_count"] == 1
    assert (await sidecar.post_stripe(webhook)).status_code == 200
    assert await sidecar.settled([webhook["id"]]) == {webhook["id"]: WebhookStatus.PROCESSED}

    invoice = await _invoice(sidecar, renewal["id"])
    assert (invoice.status, invoice.attempt_count) == (InvoiceStatus.OPEN, 1)
    assert invoice.last_failure is not None and invoice.last_failure.decline_code == "insufficient_funds"
    assert invoice.last_failure_time is not None and invoice.next_attempt_time is not None
    [failed] = await _failed_events(sidecar, invoice.id)
    cause = cause_of(failed["caller"], failed["request_id"])
    assert (cause.kind, cause.processor, cause.event_id) == ("webhook", "stripe", webhook["id"])
    assert (failed["previous_status"], failed["snapshot"]["status"]) == ("open", "open")
    assert failed["snapshot"]["attempt_count"] == 1
    assert (await _stored_sub(sidecar, sub.id)).status is SubscriptionStatus.PAST_DUE
    trail = [e for e in await sidecar.audit(invoice.id) if e.action == "invoice.payment_failed"]
    assert [(e.data["attempt_count"], e.data["decline_code"]) for e in trail] == [("1", "insufficient_funds")]

    # The same delivery again, the same state under another event id, reconciliation, and two
    # concurrent re-reads: nothing new happened at Stripe, so nothing new is recorded.
    assert (await sidecar.post_stripe(webhook)).status_code == 200
    other = _event(stripe_api, renewal["id"], 0) | {"id": f"evt_{uuid.uuid4().hex[:24]}"}
    assert (await sidecar.post_stripe(other)).status_code == 200
    assert await sidecar.settled([other["id"]]) == {other["id"]: WebhookStatus.PROCESSED}
    deps = sidecar.runtime.deps
    await su.sync_subscription(deps, reconciler(), sub.id)
    await asyncio.gather(su.sync_subscription(deps, reconciler(), sub.id), su.sync_subscription(deps, ctx("x"), sub.id))
    assert len(await _failed_events(sidecar, invoice.id)) == 1
    assert (await _invoice(sidecar, renewal["id"])).attempt_count == 1
    assert sidecar.runtime.store.unaudited_changes == 0

    # The second attempt (Stripe's retry) fails too: a second event.
    stripe_api.retry_invoice(renewal["id"])
    second = _event(stripe_api, renewal["id"], 1)
    assert (await sidecar.post_stripe(second)).status_code == 200
    assert await sidecar.settled([second["id"]]) == {second["id"]: WebhookStatus.PROCESSED}
    events = await _failed_events(sidecar, invoice.id)
    assert [e["snapshot"]["attempt_count"] for e in events] == [1, 2]
    assert cause_of(events[1]["caller"], events[1]["request_id"]).event_id == second["id"]
    # A late delivery of the first attempt's event reads today's state: nothing new, nothing backwards.
    assert (await sidecar.post_stripe(other | {"id": f"evt_{uuid.uuid4().hex[:24]}"})).status_code == 200
    await su.sync_subscription(deps, reconciler(), sub.id)
    assert len(await _failed_events(sidecar, invoice.id)) == 2
    assert (await _invoice(sidecar, renewal["id"])).attempt_count == 2


async def test_a_failed_renewal_found_by_reconciliation_has_the_reconciliation_as_its_cause(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    sub, card = await _subscribed(sidecar)
    stripe_api.set_card_behaviour(card, "decline:generic_decline")
    renewal = stripe_api.renew(sub.processor_id)
    deps = sidecar.runtime.deps
    run = reconciler()
    # The webhook never came; the reconciliation pass (and a second, concurrent one) finds it.
    await asyncio.gather(su.sync_subscription(deps, run, sub.id), su.sync_subscription(deps, reconciler(), sub.id))
    invoice = await _invoice(sidecar, renewal["id"])
    [failed] = await _failed_events(sidecar, invoice.id)
    cause = cause_of(failed["caller"], failed["request_id"])
    assert cause.kind == "reconciliation" and cause.run_id.startswith("run-")
    # First seen already failed: created, open and payment_failed come from one commit.
    types = [
        d["type"] for d in await sidecar.runtime.store.database[OUTBOX].find({"resource_id": invoice.id}).to_list()
    ]
    assert types == ["invoice.created", "invoice.open", "invoice.payment_failed"]
    assert invoice.last_failure is not None and invoice.last_failure.code == "card_declined"

    # Paid on the retry: invoice.paid, and no payment_failed for the successful attempt.
    stripe_api.set_card_behaviour(card, "ok")
    stripe_api.retry_invoice(renewal["id"])
    await su.sync_subscription(deps, reconciler(), sub.id)
    paid = await _invoice(sidecar, renewal["id"])
    assert (paid.status, paid.attempt_count, paid.next_attempt_time) == (InvoiceStatus.PAID, 2, None)
    assert len(await _failed_events(sidecar, invoice.id)) == 1
    assert (await _stored_sub(sidecar, sub.id)).status is SubscriptionStatus.ACTIVE


async def _stored_sub(sidecar: RunningSidecar, subscription_id: str) -> Subscription:
    sub = await sidecar.runtime.store.get(Subscription, subscription_id)
    assert sub is not None
    return sub
