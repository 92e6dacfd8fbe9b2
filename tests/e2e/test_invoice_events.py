"""A failed renewal on the fake processor, found by the reconciliation pass, through the API:
one ``invoice.payment_failed`` event, and the attempt on the Invoice message."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from billing.v1 import billing_service_pb2 as bpb
from billing.v1 import event_service_pb2
from billing.v1 import subscription_service_pb2 as spb

from billing_service.adapters.mongo.event_log import LOG, OUTBOX
from billing_service.service_layer.reconcile import reconcile_once
from tests.e2e.conftest import Api
from tests.e2e.test_events import events_stub
from tests.helpers import rid, usd


async def _failed_listed(api: Api, invoice_id: str) -> list[Any]:
    query = f'resource_id = {invoice_id} AND type = "invoice.payment_failed"'
    for _ in range(200):
        waiting = await api.runtime.store.database[OUTBOX].count_documents({"resource_id": invoice_id})
        if not waiting and await api.runtime.store.database[LOG].count_documents({"resource_id": invoice_id}):
            break
        await asyncio.sleep(0.02)
    reply = await events_stub(api).ListEvents(event_service_pb2.ListEventsRequest(filter=query))
    return list(reply.events)


async def test_a_declined_renewal_found_by_reconciliation_is_one_payment_failed_event(api: Api) -> None:
    api.clock._now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    customer = (await api.billing.CreateCustomer(bpb.CreateCustomerRequest(request_id=rid()))).customer
    method = (
        await api.billing.AttachPaymentMethod(
            bpb.AttachPaymentMethodRequest(
                request_id=rid(), customer_id=customer.id, processor_token="pm_card_chargeDeclinedInsufficientFunds"
            )
        )
    ).payment_method
    plan = (
        await api.subs.CreatePlan(
            spb.CreatePlanRequest(
                request_id=rid(), name="Pro", price=usd(1000), interval=spb.INTERVAL_MONTH, trial_period_days=7
            )
        )
    ).plan.id
    sub = (
        await api.subs.CreateSubscription(
            spb.CreateSubscriptionRequest(
                request_id=rid(), customer_id=customer.id, plan_id=plan, payment_method_id=method.id
            )
        )
    ).subscription
    assert sub.status == spb.SUBSCRIPTION_STATUS_TRIALING
    # The trial ends; the processor's first charge is declined. Two passes find it.
    later = datetime(2026, 2, 10, tzinfo=UTC)
    await api.fake.advance_clock_to(later)
    api.clock._now = later
    await reconcile_once(api.runtime.deps, cursors={})
    await reconcile_once(api.runtime.deps, cursors={})

    invoices = (await api.subs.ListInvoices(spb.ListInvoicesRequest(subscription_id=sub.id))).invoices
    [unpaid] = [i for i in invoices if i.status == spb.INVOICE_STATUS_OPEN]
    assert unpaid.attempt_count == 1
    assert unpaid.last_payment_failure.decline_code == "insufficient_funds"
    assert unpaid.HasField("last_payment_failure_time")
    [event] = await _failed_listed(api, unpaid.id)
    assert event.cause.WhichOneof("kind") == "reconciliation"
    assert event.previous_status == "open" and event.invoice.attempt_count == 1
    assert event.invoice.status == spb.INVOICE_STATUS_OPEN
