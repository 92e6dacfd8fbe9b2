"""``webhooks backfill``: events listed from Stripe's and PayPal's event APIs reach the inbox exactly once,
with every amount exactly as the processor sent it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer
from billing_service.domain.money import Money
from billing_service.domain.payments import PaymentStatus
from billing_service.domain.subscriptions import Interval, Plan, PlanStatus
from billing_service.entrypoints.webhooks.cli import backfill_into
from billing_service.service_layer.ports import SubscriptionRequest
from tests.imitations.paypal_api import PayPalImitation
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import RunningSidecar, create_payment, customer_with_method

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _plan(amount: int, currency: str = "USD") -> Plan:
    now = datetime.now(UTC)
    return Plan(
        id=f"plan_backfill_{amount}", name="Pro", description="", price=Money(amount, currency),
        interval=Interval.MONTH, interval_count=1, trial_period_days=0, status=PlanStatus.ACTIVE,
        metadata={}, created_at=now, updated_at=now,
    )  # fmt: skip


async def _payloads(sidecar: RunningSidecar, processor: Processor, event_type: str) -> list[dict[str, object]]:
    docs = await sidecar.inbox.collection.find({"processor": processor.value, "type": event_type}).to_list()
    return [json.loads(bytes(d["payload"])) for d in docs]


async def test_stripe_backfill_of_price_subscription_and_invoice_events_keeps_decimals_exact(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    """Prices, subscriptions and invoices carry decimal strings (``unit_amount_decimal``), which
    the SDK turns into ``Decimal``: backfill used to crash on them (``TypeError``)."""
    since = datetime.fromtimestamp(int(time.time()) - 1, UTC)
    customer, method = await customer_with_method(sidecar.runtime, Processor.STRIPE, "pm_card_visa")
    plan = _plan(1999)
    plan.processor_refs = await sidecar.stripe.create_plan(plan, idempotency_key=f"bf-{plan.id}")
    stored = await sidecar.runtime.store.get(Customer, customer.id)
    assert stored is not None
    cus = stored.processor_refs["stripe"]
    request = SubscriptionRequest("sub_backfill", cus, method.processor_id, plan, quantity=3, trial_end=None)
    await sidecar.stripe.create_subscription(request, idempotency_key="bf-sub")

    now = lambda: datetime.now(UTC)  # noqa: E731
    inserted, seen = await backfill_into(sidecar.inbox, sidecar.stripe, since, now=now)
    assert inserted == seen and seen >= 6
    [price] = await _payloads(sidecar, Processor.STRIPE, "price.created")
    assert price["data"]["object"]["unit_amount_decimal"] == "1999"  # type: ignore[index]
    [created] = await _payloads(sidecar, Processor.STRIPE, "customer.subscription.created")
    item = created["data"]["object"]["items"]["data"][0]  # type: ignore[index]
    assert item["price"]["unit_amount_decimal"] == "1999" and item["quantity"] == 3
    [paid] = await _payloads(sidecar, Processor.STRIPE, "invoice.paid")
    assert paid["data"]["object"]["amount_paid"] == 5997  # type: ignore[index]
    assert paid["data"]["object"]["lines"]["data"][0]["pricing"]["unit_amount_decimal"] == "1999"  # type: ignore[index]
    assert await backfill_into(sidecar.inbox, sidecar.stripe, since, now=now) == (0, seen)


async def test_paypal_backfill_lists_webhook_events_by_time_and_pages(
    sidecar: RunningSidecar, paypal_api: PayPalImitation
) -> None:
    """PayPal keeps the events it sent (``GET /v1/notifications/webhooks-events``): a missed one
    is inserted once and processed like a delivery."""
    since = datetime.now(UTC) - timedelta(seconds=1)
    paid = await create_payment(sidecar.runtime, Processor.PAYPAL, paypal_api.create_setup_token("card"), amount=1234)
    assert paid.status is PaymentStatus.SUCCEEDED
    for _ in range(3):  # more than one page of events
        await create_payment(sidecar.runtime, Processor.PAYPAL, paypal_api.create_setup_token("card"), amount=500)
    listed = [e for e in paypal_api.webhook_events if e["create_time"] >= since.strftime("%Y-%m-%dT%H:%M:%S")]
    assert len(listed) >= 8

    now = lambda: datetime.now(UTC)  # noqa: E731
    inserted, seen = await backfill_into(sidecar.inbox, sidecar.paypal, since, now=now, page_size=3)
    assert inserted == seen == len(listed)
    pages = [r for r in paypal_api.requests if r.path == "/v1/notifications/webhooks-events"]
    assert len(pages) >= 3 and pages[0].query["start_time"] and pages[0].query["end_time"]
    captured = await _payloads(sidecar, Processor.PAYPAL, "PAYMENT.CAPTURE.COMPLETED")
    amounts = sorted(p["resource"]["amount"]["value"] for p in captured)  # type: ignore[index]
    assert amounts == ["12.34", "5.00", "5.00", "5.00"]
    await sidecar.settled([e["id"] for e in listed])
    assert await backfill_into(sidecar.inbox, sidecar.paypal, since, now=now, page_size=3) == (0, seen)
