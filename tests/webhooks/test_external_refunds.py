"""A refund made in Stripe's dashboard is mirrored on our payment once, from either event."""

from __future__ import annotations

import uuid

import httpx
import pytest

from billing_service.domain.common import Processor
from billing_service.domain.payments import Payment, Refund, RefundStatus
from billing_service.service_layer.ports import WebhookStatus
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import STRIPE_KEY, RunningSidecar, create_payment, stripe_event

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def dashboard_refund(api: StripeImitation, intent_id: str, amount: int) -> dict[str, object]:
    """What a person refunding in the Dashboard does: no metadata of ours on the refund."""
    response = httpx.post(
        f"{api.base_url}/v1/refunds",
        data={"payment_intent": intent_id, "amount": str(amount)},
        headers={"Authorization": f"Bearer {STRIPE_KEY}", "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 200, response.text
    refund: dict[str, object] = response.json()
    return refund


async def test_dashboard_refund_is_mirrored_once_from_both_events(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    paid = await create_payment(sidecar.runtime, Processor.STRIPE, "pm_card_visa", amount=2500)
    refund = dashboard_refund(stripe_api, paid.processor_id, 700)
    charge = next(o for o in stripe_api.objects("charge") if o["payment_intent"] == paid.processor_id)
    created = stripe_event("refund.created", refund)
    refunded = stripe_event("charge.refunded", {**charge, "refunds": {"object": "list", "data": [refund]}})
    for event in (created, refunded, created, refunded):
        assert (await sidecar.post_stripe(event)).status_code == 200
    statuses = await sidecar.settled([created["id"], refunded["id"]])
    assert set(statuses.values()) == {WebhookStatus.PROCESSED}

    after = await sidecar.runtime.store.get(Payment, paid.id)
    assert after is not None and (after.amount_refunded, after.amount_refund_pending) == (700, 0)
    mirrored = (await sidecar.runtime.store.list_page(Refund, {"payment_id": paid.id}, limit=10, after=None)).items
    assert [(r.processor_id, r.amount.amount_minor, r.status) for r in mirrored] == [
        (refund["id"], 700, RefundStatus.SUCCEEDED)
    ]
    trail = [e.action for e in await sidecar.audit(mirrored[0].id)]
    assert trail == ["refund.mirrored"]


async def test_a_refund_of_an_unknown_payment_stays_an_orphan(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    elsewhere = await create_payment(sidecar.runtime, Processor.STRIPE, "pm_card_visa")
    refund = dashboard_refund(stripe_api, elsewhere.processor_id, 100)
    # Forget the payment: the refund is about nothing we know.
    await sidecar.runtime.store.database["payments"].delete_one({"_id": elsewhere.id})
    event = stripe_event("refund.created", refund)
    assert (await sidecar.post_stripe(event)).status_code == 200
    assert await sidecar.settled([event["id"]]) == {event["id"]: WebhookStatus.ORPHAN}
    assert await sidecar.runtime.store.database["refunds"].count_documents({}) == 0
