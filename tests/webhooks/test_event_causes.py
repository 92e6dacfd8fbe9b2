"""A change a processor's webhook causes has its billing event, with the webhook as its cause."""

from __future__ import annotations

from billing_service.adapters.mongo.event_log import OUTBOX
from billing_service.domain.common import Processor
from billing_service.domain.event_derivation import cause_of
from billing_service.domain.payments import PaymentStatus
from billing_service.service_layer.ports import WebhookStatus
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import RunningSidecar, create_payment, stripe_event
from tests.webhooks.test_processing import pi_object


async def test_a_capture_reported_by_webhook_has_an_event_caused_by_it(
    sidecar: RunningSidecar, stripe_api: StripeImitation
) -> None:
    held = await create_payment(sidecar.runtime, Processor.STRIPE, "pm_card_visa", manual=True)
    assert held.status is PaymentStatus.REQUIRES_CAPTURE
    await sidecar.stripe.capture_payment(held.processor_id, held.amount, idempotency_key=f"dashboard-capture-{held.id}")
    event = stripe_event("payment_intent.succeeded", pi_object(stripe_api, held.processor_id))
    assert (await sidecar.post_stripe(event)).status_code == 200
    assert await sidecar.settled([event["id"]]) == {event["id"]: WebhookStatus.PROCESSED}
    # The sidecar runs no sequencer: its events wait in the outbox for a serving replica's.
    docs = await sidecar.runtime.store.database[OUTBOX].find({"resource_id": held.id}).to_list()
    succeeded = [d for d in docs if d["type"] == "payment.succeeded"]
    assert len(succeeded) == 1
    cause = cause_of(succeeded[0]["caller"], succeeded[0]["request_id"])
    assert (cause.kind, cause.processor, cause.event_id) == ("webhook", "stripe", event["id"])
    assert succeeded[0]["snapshot"]["status"] == "succeeded"
    assert sidecar.runtime.store.unaudited_changes == 0
