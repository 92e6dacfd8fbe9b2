"""A cancel never races its payment's create, and money moved on a final payment is never dropped.

Before: ``CancelPayment`` on a PENDING payment without a processor id cancelled it locally
while the ``CreatePayment`` holding the request was still inside its processor call; the
create's SUCCEEDED was then refused by the state machine, so the buyer was charged, we
said CANCELED, and reconciliation skipped it (final).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb

from billing_service.domain.common import Processor
from billing_service.domain.errors import ProcessorUnavailable
from billing_service.domain.payments import Payment, PaymentStatus
from billing_service.service_layer.reconcile import reconcile_once
from billing_service.service_layer.webhooks import converge_payment, webhook_context
from tests.e2e.conftest import Api
from tests.e2e.test_reliability import customer_with
from tests.helpers import rich, rid, usd


class Gate:
    """Holds the fake's create_payment inside the processor call until released."""

    def __init__(self, api: Api) -> None:
        self.entered, self.release = asyncio.Event(), asyncio.Event()
        original = api.fake.create_payment

        async def gated(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            await self.release.wait()
            return await original(*args, **kwargs)

        api.fake.create_payment = gated  # type: ignore[method-assign]


async def pending_payment(api: Api, customer_id: str) -> pb.Payment:
    listed = (await api.billing.ListPayments(pb.ListPaymentsRequest(customer_id=customer_id))).payments
    assert [p.status for p in listed] == [pb.PAYMENT_STATUS_PENDING]
    return listed[0]


async def cancel(api: Api, payment_id: str) -> pb.Payment | str:
    try:
        return (
            await api.billing.CancelPayment(pb.CancelPaymentRequest(request_id=rid(), payment_id=payment_id))
        ).payment
    except grpc.aio.AioRpcError as err:
        return rich(err).reason


def drift_count(api: Api, outcome: str) -> float:
    value = api.runtime.metrics.registry.get_sample_value(
        "billing_drift_total", {"resource": "payment", "outcome": outcome}
    )
    return value or 0.0


async def test_a_cancel_waits_while_the_create_is_inside_its_processor_call(api: Api) -> None:
    customer_id, pm_id = await customer_with(api)
    gate = Gate(api)
    request = pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                      amount=usd(1200))  # fmt: skip
    create = asyncio.ensure_future(api.billing.CreatePayment(request))
    await gate.entered.wait()
    payment = await pending_payment(api, customer_id)

    assert await cancel(api, payment.id) == "REQUEST_IN_PROGRESS"  # before: CANCELED, then charged anyway
    gate.release.set()
    assert (await create).payment.status == pb.PAYMENT_STATUS_SUCCEEDED
    assert await cancel(api, payment.id) == "PAYMENT_NOT_CANCELABLE"
    stored = await api.runtime.store.get(Payment, payment.id)
    assert stored is not None and stored.status is PaymentStatus.SUCCEEDED
    assert len(api.fake.charges_created) == 1


@pytest.mark.parametrize(
    ("capture", "after_effect", "expected"),
    [
        (pb.CAPTURE_METHOD_AUTOMATIC, True, "PAYMENT_NOT_CANCELABLE"),  # charged: it is SUCCEEDED
        (pb.CAPTURE_METHOD_MANUAL, True, "canceled"),  # authorized: voided at the processor
        (pb.CAPTURE_METHOD_AUTOMATIC, False, "canceled"),  # never reached: nothing to undo
    ],
    ids=["charged", "authorized", "never-sent"],
)
async def test_a_cancel_after_a_lost_create_learns_what_the_processor_did(
    api: Api, capture: pb.CaptureMethod.ValueType, after_effect: bool, expected: str
) -> None:
    customer_id, pm_id = await customer_with(api)
    api.fake.fail_next("create_payment", ProcessorUnavailable("connection reset"), after_effect=after_effect)
    request = pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                      amount=usd(800), capture_method=capture)  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError):
        await api.billing.CreatePayment(request)
    payment = await pending_payment(api, customer_id)

    answer = await cancel(api, payment.id)
    stored = await api.runtime.store.get(Payment, payment.id)
    assert stored is not None
    if expected == "PAYMENT_NOT_CANCELABLE":
        assert answer == expected
        assert stored.status is PaymentStatus.SUCCEEDED and stored.processor_id  # before: CANCELED while charged
    else:
        assert isinstance(answer, pb.Payment) and answer.status == pb.PAYMENT_STATUS_CANCELED
        assert stored.status is PaymentStatus.CANCELED
    if after_effect:
        at_processor = await api.fake.get_payment(api.fake.charges_created[0].processor_payment_id)
        assert at_processor.status.value == ("succeeded" if expected == "PAYMENT_NOT_CANCELABLE" else "canceled")
    # The create's retry resumes nothing: it answers with the settled payment and never charges again.
    again = (await api.billing.CreatePayment(request)).payment
    assert again.id == payment.id
    assert again.status == pb.PaymentStatus.Value("PAYMENT_STATUS_" + stored.status.value.upper())
    assert len(api.fake.charges_created) == (1 if after_effect else 0)


Repair = Callable[[Api, Payment, str], Awaitable[None]]


async def by_reconciliation(api: Api, payment: Payment, processor_id: str) -> None:
    api.clock.advance(timedelta(seconds=2 * api.runtime.settings.idempotency_lease_seconds + 1))
    report = await reconcile_once(api.runtime.deps)
    assert [d.resource_id for d in report.drift] == [payment.id]


async def by_webhook(api: Api, payment: Payment, processor_id: str) -> None:
    ctx = webhook_context(Processor.FAKE, "evt_late_success", "payment_intent.succeeded")
    await converge_payment(api.runtime.deps, ctx, Processor.FAKE, processor_id, payment_id=payment.id)


@pytest.mark.parametrize("repair", [by_reconciliation, by_webhook], ids=["reconciliation", "webhook"])
async def test_a_charge_landing_after_a_cancel_is_drift_that_is_repaired(api: Api, repair: Repair) -> None:
    """The residual race: the create's executor lost its lease without knowing (its store was
    unreachable), a cancel proved nothing was at the processor, and then the stale executor's
    charge landed. Its own commit is refused by the fence; the charge surfaces as drift."""
    customer_id, pm_id = await customer_with(api)
    gate = Gate(api)
    request = pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                      amount=usd(1500))  # fmt: skip
    create = asyncio.ensure_future(api.billing.CreatePayment(request))
    await gate.entered.wait()
    payment = await pending_payment(api, customer_id)
    lease = api.runtime.settings.idempotency_lease_seconds
    api.clock.advance(timedelta(seconds=lease + 1))  # no heartbeat reached the store

    canceled = await cancel(api, payment.id)
    assert isinstance(canceled, pb.Payment) and canceled.status == pb.PAYMENT_STATUS_CANCELED
    gate.release.set()  # the stale executor's charge goes through at the processor...
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create
    assert rich(err.value).reason == "REQUEST_IN_PROGRESS"  # ...but its commit is refused
    charged = api.fake.charges_created[0].processor_payment_id
    stored = await api.runtime.store.get(Payment, payment.id)
    assert stored is not None and stored.status is PaymentStatus.CANCELED and stored.lookup_after is not None

    await repair(api, stored, charged)
    repaired = await api.runtime.store.get(Payment, payment.id)
    assert repaired is not None
    assert (repaired.status, repaired.processor_id, repaired.amount_captured) == (
        PaymentStatus.SUCCEEDED, charged, 1500,
    )  # fmt: skip
    trail = (await api.billing.ListAuditEvents(pb.ListAuditEventsRequest(resource_id=payment.id))).audit_events
    assert [(e.action, e.before_status, e.after_status) for e in trail][-1] == (
        "payment.drift_repaired", "canceled", "succeeded",
    )  # fmt: skip
    assert (drift_count(api, "found"), drift_count(api, "repaired")) == (1.0, 1.0)


async def test_an_authorization_held_for_a_failed_payment_is_voided(api: Api) -> None:
    customer_id, pm_id = await customer_with(api)
    gate = Gate(api)
    request = pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                      amount=usd(900), capture_method=pb.CAPTURE_METHOD_MANUAL)  # fmt: skip
    create = asyncio.ensure_future(api.billing.CreatePayment(request))
    await gate.entered.wait()
    payment = await pending_payment(api, customer_id)
    api.clock.advance(timedelta(seconds=api.runtime.settings.idempotency_lease_seconds + 1))
    assert isinstance(await cancel(api, payment.id), pb.Payment)
    gate.release.set()
    with pytest.raises(grpc.aio.AioRpcError):
        await create
    authorized = api.fake.charges_created[0].processor_payment_id
    assert (await api.fake.get_payment(authorized)).status is PaymentStatus.REQUIRES_CAPTURE

    stored_before = await api.runtime.store.get(Payment, payment.id)
    assert stored_before is not None
    await by_webhook(api, stored_before, authorized)  # reports the authorization
    assert (await api.fake.get_payment(authorized)).status is PaymentStatus.CANCELED  # released at the processor
    stored = await api.runtime.store.get(Payment, payment.id)
    assert stored is not None and (stored.status, stored.processor_id) == (PaymentStatus.CANCELED, authorized)
    trail = (await api.billing.ListAuditEvents(pb.ListAuditEventsRequest(resource_id=payment.id))).audit_events
    assert "payment.drift_voided" in [e.action for e in trail]
