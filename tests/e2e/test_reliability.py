"""Fault tolerance and reconciliation: what happens when things break, and what is lost (nothing)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from pymongo import AsyncMongoClient

from billing_service.adapters.mongo.leases import MongoLeases
from billing_service.domain.errors import ProcessorUnavailable
from billing_service.domain.payments import Payment, PaymentStatus
from billing_service.service_layer.reconcile import reconcile_once, reconcile_with_lease
from tests.e2e.conftest import Api
from tests.helpers import rich, rid, usd


async def customer_with(api: Api, token: str = "pm_card_visa") -> tuple[str, str]:
    c = await api.billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid()))
    m = await api.billing.AttachPaymentMethod(
        pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=c.customer.id, processor_token=token)
    )
    return c.customer.id, m.payment_method.id


async def test_reconcile_repairs_drift_that_webhooks_would_have_reported(api: Api) -> None:
    customer_id, three_ds = await customer_with(api, "pm_card_authenticationRequired")
    _, pending_refund_pm = await customer_with(api, "pm_card_refundPending")
    stuck = (
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=three_ds,
                                    amount=usd(1000))
        )
    ).payment  # fmt: skip
    assert stuck.status == pb.PAYMENT_STATUS_REQUIRES_ACTION
    await api.fake.complete_action(stuck.processor_id)  # the buyer finished 3-D Secure; no webhook came

    other = (await api.billing.ListCustomers(pb.ListCustomersRequest())).customers[0].id
    paid = (
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(request_id=rid(), customer_id=other, payment_method_id=pending_refund_pm,
                                    amount=usd(2000))
        )
    ).payment  # fmt: skip
    refund = (await api.billing.CreateRefund(pb.CreateRefundRequest(request_id=rid(), payment_id=paid.id))).refund
    assert refund.status == pb.REFUND_STATUS_PENDING
    await api.fake.settle_refunds()

    report = await reconcile_once(api.runtime.deps)
    assert report.repaired == {"payment": 1, "refund": 1}
    assert report.errors == 0
    fixed = (await api.billing.GetPayment(pb.GetPaymentRequest(payment_id=stuck.id))).payment
    assert fixed.status == pb.PAYMENT_STATUS_SUCCEEDED
    refunded = (await api.billing.GetPayment(pb.GetPaymentRequest(payment_id=paid.id))).payment
    assert refunded.amount_refunded.amount_minor == 2000
    trail = (await api.billing.ListAuditEvents(pb.ListAuditEventsRequest(resource_id=stuck.id))).audit_events
    repair = trail[-1]
    assert (repair.caller, repair.before_status, repair.after_status) == ("reconciler", "requires_action", "succeeded")
    # A second pass finds nothing to repair.
    again = await reconcile_once(api.runtime.deps)
    assert again.repaired == {}


@pytest.mark.parametrize("after_effect", [False, True], ids=["never-sent", "charged-then-lost"])
async def test_reconcile_resumes_a_payment_whose_caller_never_retried(api: Api, after_effect: bool) -> None:
    customer_id, pm_id = await customer_with(api)
    api.fake.fail_next("create_payment", ProcessorUnavailable("connection reset"), after_effect=after_effect)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(990))
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    payments = (await api.billing.ListPayments(pb.ListPaymentsRequest(customer_id=customer_id))).payments
    assert [p.status for p in payments] == [pb.PAYMENT_STATUS_PENDING]

    assert (await reconcile_once(api.runtime.deps)).repaired == {}  # too young: its request may still retry
    api.clock.advance(timedelta(minutes=5))
    report = await reconcile_once(api.runtime.deps)
    assert report.repaired == {"payment": 1}
    final = (await api.billing.GetPayment(pb.GetPaymentRequest(payment_id=payments[0].id))).payment
    assert final.status == pb.PAYMENT_STATUS_SUCCEEDED
    assert len([c for c in api.fake.charges_created if c.succeeded]) == 1


async def test_reconciler_runs_on_one_replica_at_a_time(api: Api) -> None:
    store = api.runtime.store
    leases = MongoLeases(store.database.client, store.database.name)
    first, second = await asyncio.gather(
        reconcile_with_lease(api.runtime.deps, leases, owner="replica-a"),
        reconcile_with_lease(api.runtime.deps, leases, owner="replica-b"),
    )
    assert sorted([first.skipped, second.skipped]) == [False, True]
    winner = "replica-a" if not first.skipped else "replica-b"
    loser = "replica-b" if winner == "replica-a" else "replica-a"
    assert not (await reconcile_with_lease(api.runtime.deps, leases, owner=winner)).skipped  # renews
    assert (await reconcile_with_lease(api.runtime.deps, leases, owner=loser)).skipped
    await leases.release("reconciler", winner)
    assert not (await reconcile_with_lease(api.runtime.deps, leases, owner=loser)).skipped


async def test_store_write_failure_is_unavailable_leaves_nothing_half_written_and_retry_succeeds(
    api: Api, mongo_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    customer_id, pm_id = await customer_with(api)
    db = api.runtime.store.database
    request = pb.CreatePaymentRequest(
        request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(1500)
    )
    assert api.runtime.event_tasks is not None
    await api.runtime.event_tasks.stop()  # the sequencer's transactions would take the fail point
    await mongo_client.admin.command(
        {"configureFailPoint": "failCommand", "mode": {"times": 1},
         "data": {"failCommands": ["commitTransaction"], "errorCode": 8}}
    )  # fmt: skip
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.CreatePayment(request)
    finally:
        await mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    info = rich(err.value)
    assert (info.code, info.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    assert info.retry_delay_ms is not None
    assert await db["payments"].count_documents({}) == 0
    assert await db["audit_events"].count_documents({"resource_type": "payment"}) == 0
    assert api.fake.charges_created == []

    payment = (await api.billing.CreatePayment(request)).payment
    assert payment.status == pb.PAYMENT_STATUS_SUCCEEDED
    assert await db["payments"].count_documents({}) == 1
    actions = [e["action"] for e in await db["audit_events"].find({"resource_id": payment.id}).to_list()]
    assert actions == ["payment.created", "payment.succeeded"]
    assert len(api.fake.charges_created) == 1


async def test_store_down_mid_request_then_retry_resumes_without_a_second_charge(
    api: Api, mongo_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    """The processor charged, then the store refused to record it: the retry records it, once."""
    customer_id, pm_id = await customer_with(api)
    request = pb.CreatePaymentRequest(
        request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(2500)
    )
    # Let the first commit (payment.created) through, fail the second (the processor's outcome).
    original = api.fake.create_payment
    assert api.runtime.event_tasks is not None
    await api.runtime.event_tasks.stop()  # the sequencer's transactions would take the fail point

    async def charge_then_break_store(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        await mongo_client.admin.command(
            {"configureFailPoint": "failCommand", "mode": {"times": 1},
             "data": {"failCommands": ["commitTransaction"], "errorCode": 8}}
        )  # fmt: skip
        return result

    api.fake.create_payment = charge_then_break_store  # type: ignore[method-assign]
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.CreatePayment(request)
    finally:
        api.fake.create_payment = original  # type: ignore[method-assign]
        await mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    stored = await api.runtime.store.list_page(Payment, {"customer_id": customer_id}, limit=5, after=None)
    assert [p.status for p in stored.items] == [PaymentStatus.PENDING]

    payment = (await api.billing.CreatePayment(request)).payment
    assert payment.status == pb.PAYMENT_STATUS_SUCCEEDED
    assert payment.id == stored.items[0].id
    assert len(api.fake.charges_created) == 1


async def test_two_servers_on_one_store_never_double_charge_or_over_refund(mongo_uri: str) -> None:
    from tests.e2e.conftest import start_api, stop_api

    shared_db = f"e2e_shared_{uuid.uuid4().hex}"
    first = await start_api(mongo_uri, database=shared_db)
    second = await start_api(mongo_uri, database=shared_db, processors={})
    # Both replicas talk to one processor, as they would to Stripe.
    second.runtime.deps.processors = first.runtime.deps.processors
    try:
        customer_id, pm_id = await customer_with(first)
        request = pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                          amount=usd(1000))  # fmt: skip

        async def create(api: Api) -> str:
            for _ in range(300):
                try:
                    return (await api.billing.CreatePayment(request)).payment.id
                except grpc.aio.AioRpcError as err:
                    assert rich(err).reason == "REQUEST_IN_PROGRESS"
                    await asyncio.sleep(0.02)
            raise AssertionError("never completed")

        ids = await asyncio.gather(*(create(api) for api in [first, second] * 10))
        assert len(set(ids)) == 1
        assert len(first.fake.charges_created) == 1

        async def refund(api: Api) -> str:
            try:
                await api.billing.CreateRefund(pb.CreateRefundRequest(request_id=rid(), payment_id=ids[0],
                                                                      amount=usd(150)))  # fmt: skip
                return "ok"
            except grpc.aio.AioRpcError as err:
                return rich(err).reason

        outcomes = await asyncio.gather(*(refund(api) for api in [first, second] * 10))
        assert outcomes.count("ok") == 6
        final = (await second.billing.GetPayment(pb.GetPaymentRequest(payment_id=ids[0]))).payment
        assert final.amount_refunded.amount_minor == 900
        refunds = (await first.billing.ListRefunds(pb.ListRefundsRequest(payment_id=ids[0]))).refunds
        assert len(refunds) == 6
    finally:
        await stop_api(second, drop=False)
        await stop_api(first)


def test_reconcile_command_runs_one_pass(mongo_uri: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "MONGODB_URI": mongo_uri, "BILLING_MONGODB_DATABASE": f"rc_{uuid.uuid4().hex}"}
    done = subprocess.run(
        [sys.executable, "-m", "billing_service", "reconcile"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "errors: 0" in done.stdout


async def test_a_refund_the_processor_refuses_releases_its_reservation(api: Api) -> None:
    from billing_service.domain.errors import RefundExceedsCaptured

    customer_id, pm_id = await customer_with(api)
    paid = (
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(
                request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(1000)
            )
        )
    ).payment
    # PayPal answers an over-refund this way (its ledger disagrees with ours, e.g. a dashboard refund).
    api.fake.fail_next("create_refund", RefundExceedsCaptured("refund exceeds the capture at PayPal"))  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreateRefund(pb.CreateRefundRequest(request_id=rid(), payment_id=paid.id, amount=usd(400)))
    assert rich(err.value).reason == "REFUND_EXCEEDS_CAPTURED"
    refunds = (await api.billing.ListRefunds(pb.ListRefundsRequest(payment_id=paid.id))).refunds
    assert [r.status for r in refunds] == [pb.REFUND_STATUS_FAILED]
    stored = await api.runtime.store.get(Payment, paid.id)
    assert stored is not None and (stored.amount_refunded, stored.amount_refund_pending) == (0, 0)
    full = await api.billing.CreateRefund(pb.CreateRefundRequest(request_id=rid(), payment_id=paid.id))
    assert full.refund.amount.amount_minor == 1000
