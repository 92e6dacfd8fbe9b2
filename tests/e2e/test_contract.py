"""The RPCs and fields callers were missing, through a real server and the generated client.

GetPaymentMethod, GetDispute, UpdatePayment, Payment.amount_refund_pending, list filters
(bound into page tokens) and validate_only on every creating RPC: a preview writes nothing
(every document of every collection compared), uses up no request_id, and refuses exactly
what the real call refuses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import common_pb2
from billing.v1 import subscription_service_pb2 as spb
from google.protobuf import field_mask_pb2, timestamp_pb2

from billing_service.domain.common import Processor
from billing_service.domain.disputes import DisputeStatus, ProcessorDisputeState
from billing_service.domain.money import Money
from billing_service.service_layer.disputes import record_dispute
from billing_service.service_layer.idempotency import RequestContext
from tests.e2e.conftest import Api, stored_documents
from tests.helpers import rich, rid, usd


async def snapshot(api: Api) -> dict[str, dict[str, bytes]]:
    return await stored_documents(api.runtime.store.database)


async def customer_with(api: Api, token: str = "pm_card_visa") -> tuple[str, str]:
    customer = await api.billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), email="c@example.com"))
    method = await api.billing.AttachPaymentMethod(
        pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.customer.id, processor_token=token)
    )
    return customer.customer.id, method.payment_method.id


async def pay(api: Api, customer_id: str, pm_id: str, minor: int = 1000, **kw: Any) -> pb.Payment:
    response = await api.billing.CreatePayment(
        pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(minor),
                                **kw)
    )  # fmt: skip
    return response.payment


# -- reads that were missing ----------------------------------------------------------


async def test_get_payment_method(api: Api) -> None:
    customer_id, pm_id = await customer_with(api)
    got = (await api.billing.GetPaymentMethod(pb.GetPaymentMethodRequest(payment_method_id=pm_id))).payment_method
    assert (got.id, got.customer_id, got.card.last4) == (pm_id, customer_id, "4242")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.GetPaymentMethod(pb.GetPaymentMethodRequest(payment_method_id="pm_missing"))
    assert (rich(err.value).code, rich(err.value).metadata["resource_type"]) == (
        grpc.StatusCode.NOT_FOUND,
        "payment_method",
    )


async def test_get_dispute_and_filter_disputes(api: Api) -> None:
    customer_id, pm_id = await customer_with(api)
    paid = await pay(api, customer_id, pm_id)
    ctx = RequestContext("webhook:fake", "webhook/fake/test", "evt_1", "")
    state = ProcessorDisputeState(
        processor_id="du_1", status=DisputeStatus.NEEDS_RESPONSE, amount=Money(1000, "USD"), reason="fraudulent",
        opened_at=api.clock.now(), payment_id=paid.id,
    )  # fmt: skip
    dispute = await record_dispute(api.runtime.deps, ctx, Processor.FAKE, state)
    assert dispute is not None
    got = (await api.billing.GetDispute(pb.GetDisputeRequest(dispute_id=dispute.id))).dispute
    assert (got.id, got.payment_id, got.status) == (dispute.id, paid.id, pb.DISPUTE_STATUS_NEEDS_RESPONSE)
    open_ = await api.billing.ListDisputes(pb.ListDisputesRequest(filter="status = NEEDS_RESPONSE"))
    won = await api.billing.ListDisputes(pb.ListDisputesRequest(filter="status = WON"))
    assert ([d.id for d in open_.disputes], list(won.disputes)) == ([dispute.id], [])


# -- UpdatePayment and the pending refund amount ---------------------------------------


async def test_update_payment_is_idempotent_audited_and_touches_only_the_mask(api: Api) -> None:
    customer_id, pm_id = await customer_with(api)
    paid = await pay(api, customer_id, pm_id, description="old", metadata={"order": "1"})
    key = rid()
    request = pb.UpdatePaymentRequest(
        request_id=key,
        # amount and status are set but not in the mask (or output-only): not read.
        payment=pb.Payment(id=paid.id, description="new", metadata={"order": "2"}, amount=usd(1),
                           status=pb.PAYMENT_STATUS_FAILED),
        update_mask=field_mask_pb2.FieldMask(paths=["description"]),
    )  # fmt: skip
    first = (await api.billing.UpdatePayment(request)).payment
    assert (first.description, dict(first.metadata), first.amount.amount_minor, first.status) == (
        "new", {"order": "1"}, 1000, pb.PAYMENT_STATUS_SUCCEEDED,
    )  # fmt: skip
    again = (await api.billing.UpdatePayment(request)).payment
    assert again == first  # the stored answer, not a second update
    trail = await api.billing.ListAuditEvents(pb.ListAuditEventsRequest(resource_id=paid.id))
    updates = [e for e in trail.audit_events if e.action == "payment.updated"]
    assert [(e.request_id, e.data["fields"]) for e in updates] == [(key, "description")]

    request.update_mask.paths[:] = ["metadata"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.UpdatePayment(request)
    assert rich(err.value).reason == "IDEMPOTENCY_KEY_REUSED"
    for paths in (["amount"], ["status"], []):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.UpdatePayment(
                pb.UpdatePaymentRequest(request_id=rid(), payment=pb.Payment(id=paid.id),
                                        update_mask=field_mask_pb2.FieldMask(paths=paths))
            )  # fmt: skip
        assert (rich(err.value).code, rich(err.value).violations) == (grpc.StatusCode.INVALID_ARGUMENT, ["update_mask"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.UpdatePayment(
            pb.UpdatePaymentRequest(request_id=rid(), payment=pb.Payment(description="x"),
                                    update_mask=field_mask_pb2.FieldMask(paths=["description"]))
        )  # fmt: skip
    assert rich(err.value).violations == ["payment.id"]


async def test_pending_refunds_show_on_the_payment(api: Api) -> None:
    customer_id, pm_id = await customer_with(api, "pm_card_refundPending")
    paid = await pay(api, customer_id, pm_id, minor=5000)
    refund = await api.billing.CreateRefund(pb.CreateRefundRequest(request_id=rid(), payment_id=paid.id,
                                                                   amount=usd(1200)))  # fmt: skip
    assert refund.refund.status == pb.REFUND_STATUS_PENDING
    now = (await api.billing.GetPayment(pb.GetPaymentRequest(payment_id=paid.id))).payment
    assert (now.amount_refund_pending, now.amount_refunded.amount_minor) == (usd(1200), 0)


# -- filters ---------------------------------------------------------------------------


def _ts(api: Api) -> str:
    return api.clock.now().isoformat().replace("+00:00", "Z")


async def test_list_payments_by_filter_with_page_tokens_bound_to_it(api: Api) -> None:
    alice, alice_pm = await customer_with(api)
    bob, bob_pm = await customer_with(api)
    early = await pay(api, alice, alice_pm)
    api.clock.advance(timedelta(days=1))
    cut = _ts(api)
    held = [await pay(api, alice, alice_pm, capture_method=pb.CAPTURE_METHOD_MANUAL) for _ in range(3)]
    late_bob = await pay(api, bob, bob_pm)

    async def ids(flt: str, **kw: Any) -> list[str]:
        return [p.id for p in (await api.billing.ListPayments(pb.ListPaymentsRequest(filter=flt, **kw))).payments]

    assert await ids(f'create_time < "{cut}"') == [early.id]
    assert await ids(f'create_time >= "{cut}" AND status = SUCCEEDED') == [late_bob.id]
    assert await ids("status = REQUIRES_CAPTURE") == [p.id for p in reversed(held)]
    assert await ids(f'customer_id = "{alice}" AND status = PAYMENT_STATUS_SUCCEEDED') == [early.id]
    assert await ids("status = SUCCEEDED", customer_id=bob) == [late_bob.id]

    first = await api.billing.ListPayments(pb.ListPaymentsRequest(filter="status = REQUIRES_CAPTURE", page_size=2))
    second = await api.billing.ListPayments(
        pb.ListPaymentsRequest(filter="status = REQUIRES_CAPTURE", page_size=2, page_token=first.next_page_token)
    )
    assert [p.id for p in (*first.payments, *second.payments)] == [p.id for p in reversed(held)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.ListPayments(
            pb.ListPaymentsRequest(filter="status = SUCCEEDED", page_size=2, page_token=first.next_page_token)
        )
    assert rich(err.value).reason == "INVALID_PAGE_TOKEN"
    for bad in ("status = SUCCEEDED OR status = FAILED", "amount = 5", "status = nope", f'customer_id = "{bob}"'):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.ListPayments(pb.ListPaymentsRequest(filter=bad, customer_id=alice))
        info = rich(err.value)
        assert (info.code, info.reason, info.violations) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILTER",
                                                              ["filter"])  # fmt: skip


async def test_every_list_takes_its_filter(api: Api) -> None:
    start = _ts(api)
    customer_id, pm_id = await customer_with(api)
    _, other_pm = await customer_with(api)
    await api.billing.DetachPaymentMethod(pb.DetachPaymentMethodRequest(request_id=rid(), payment_method_id=pm_id))
    api.clock.advance(timedelta(hours=1))
    later = _ts(api)
    plan = (await api.subs.CreatePlan(spb.CreatePlanRequest(request_id=rid(), name="P", price=usd(900),
                                                             interval=spb.INTERVAL_MONTH))).plan  # fmt: skip
    customers = await api.billing.ListCustomers(pb.ListCustomersRequest(filter=f'create_time >= "{start}"'))
    assert len(customers.customers) == 2
    assert not (await api.billing.ListCustomers(pb.ListCustomersRequest(filter=f'create_time >= "{later}"'))).customers
    detached = await api.billing.ListPaymentMethods(
        pb.ListPaymentMethodsRequest(customer_id=customer_id, filter="status = DETACHED")
    )
    assert [m.id for m in detached.payment_methods] == [pm_id]
    plans = await api.subs.ListPlans(spb.ListPlansRequest(filter=f'create_time >= "{later}"'))
    assert [p.id for p in plans.plans] == [plan.id]

    payer, payer_pm = await customer_with(api)
    sub = (await api.subs.CreateSubscription(spb.CreateSubscriptionRequest(
        request_id=rid(), customer_id=payer, plan_id=plan.id, payment_method_id=payer_pm))).subscription  # fmt: skip
    by_plan = await api.subs.ListSubscriptions(spb.ListSubscriptionsRequest(filter=f'plan_id = "{plan.id}"'))
    assert [s.id for s in by_plan.subscriptions] == [sub.id]
    active = await api.subs.ListSubscriptions(spb.ListSubscriptionsRequest(filter="status = ACTIVE"))
    assert [s.id for s in active.subscriptions] == [sub.id]
    paid_invoices = await api.subs.ListInvoices(
        spb.ListInvoicesRequest(filter=f'subscription_id = "{sub.id}" AND status = PAID')
    )
    assert paid_invoices.invoices and all(i.status == spb.INVOICE_STATUS_PAID for i in paid_invoices.invoices)

    paid = await pay(api, payer, payer_pm, minor=3000)
    await api.billing.CreateRefund(pb.CreateRefundRequest(request_id=rid(), payment_id=paid.id, amount=usd(100)))
    refunds = await api.billing.ListRefunds(pb.ListRefundsRequest(payment_id=paid.id, filter="status = SUCCEEDED"))
    assert len(refunds.refunds) == 1
    assert other_pm


# -- validate_only ----------------------------------------------------------------------


async def _previews_then_runs(
    api: Api, call: Callable[[Any], Awaitable[Any]], request: Any, field: str
) -> tuple[Any, Any]:
    """The preview changes nothing and leaves the request_id free for the real call."""
    before = await snapshot(api)
    request.validate_only = True
    preview = getattr(await call(request), field)
    assert await snapshot(api) == before
    assert preview.id == ""
    request.validate_only = False
    real = getattr(await call(request), field)
    assert real.id
    return preview, real


async def test_validate_only_previews_every_creating_rpc_and_uses_no_request_id(api: Api) -> None:
    b, s = api.billing, api.subs
    preview, customer = await _previews_then_runs(
        api, b.CreateCustomer, pb.CreateCustomerRequest(request_id=rid(), email="v@example.com", name="V"), "customer"
    )
    assert (preview.email, preview.default_processor) == ("v@example.com", customer.default_processor)
    preview, method = await _previews_then_runs(
        api, b.AttachPaymentMethod,
        pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.id, processor_token="pm_card_visa"),
        "payment_method",
    )  # fmt: skip
    assert (preview.customer_id, preview.processor, preview.HasField("card")) == (customer.id, method.processor, False)
    preview, payment = await _previews_then_runs(
        api, b.CreatePayment,
        pb.CreatePaymentRequest(request_id=rid(), customer_id=customer.id, payment_method_id=method.id,
                                amount=usd(2500)),
        "payment",
    )  # fmt: skip
    assert (preview.status, preview.amount, payment.status) == (
        pb.PAYMENT_STATUS_PENDING, usd(2500), pb.PAYMENT_STATUS_SUCCEEDED,
    )  # fmt: skip
    preview, refund = await _previews_then_runs(
        api, b.CreateRefund, pb.CreateRefundRequest(request_id=rid(), payment_id=payment.id), "refund"
    )
    assert (preview.amount, refund.amount) == (usd(2500), usd(2500))
    preview, plan = await _previews_then_runs(
        api, s.CreatePlan,
        spb.CreatePlanRequest(request_id=rid(), name="Pro", price=usd(1200), interval=spb.INTERVAL_MONTH,
                              trial_period_days=7),
        "plan",
    )  # fmt: skip
    assert (preview.name, preview.status) == ("Pro", spb.PLAN_STATUS_ACTIVE)
    preview, sub = await _previews_then_runs(
        api, s.CreateSubscription,
        spb.CreateSubscriptionRequest(request_id=rid(), customer_id=customer.id, plan_id=plan.id,
                                      payment_method_id=method.id),
        "subscription",
    )  # fmt: skip
    assert (preview.status, preview.trial_end) == (spb.SUBSCRIPTION_STATUS_INCOMPLETE, sub.trial_end)


async def test_validate_only_refuses_what_the_real_call_refuses(api: Api) -> None:
    b, s = api.billing, api.subs
    customer_id, pm_id = await customer_with(api)
    other_id, other_pm = await customer_with(api)
    second = pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer_id, processor_token="pm_card_amex")
    detached_pm = (await b.AttachPaymentMethod(second)).payment_method.id
    await b.DetachPaymentMethod(pb.DetachPaymentMethodRequest(request_id=rid(), payment_method_id=detached_pm))
    stripe_customer = (await b.CreateCustomer(pb.CreateCustomerRequest(
        request_id=rid(), default_processor=common_pb2.PROCESSOR_STRIPE))).customer  # fmt: skip
    held = await pay(api, customer_id, pm_id, capture_method=pb.CAPTURE_METHOD_MANUAL)
    paid = await pay(api, customer_id, pm_id, minor=500)
    plan = (await s.CreatePlan(spb.CreatePlanRequest(request_id=rid(), name="Old", price=usd(100),
                                                      interval=spb.INTERVAL_MONTH))).plan  # fmt: skip
    await s.ArchivePlan(spb.ArchivePlanRequest(request_id=rid(), plan_id=plan.id))

    def payment(**kw: Any) -> pb.CreatePaymentRequest:
        return pb.CreatePaymentRequest(**{"customer_id": customer_id, "payment_method_id": pm_id,
                                          "amount": usd(100), **kw})  # fmt: skip

    cases: list[tuple[Callable[[Any], Awaitable[Any]], Any, grpc.StatusCode, str]] = [
        (b.CreatePayment, payment(customer_id="cus_missing"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (b.CreatePayment, payment(payment_method_id=other_pm), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (b.CreatePayment, payment(payment_method_id=detached_pm), grpc.StatusCode.FAILED_PRECONDITION,
         "PAYMENT_METHOD_DETACHED"),
        (b.CreatePayment, payment(amount=usd(0)), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (b.CreatePayment, payment(amount=common_pb2.Money(amount_minor=5, currency="XYZ")),
         grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CURRENCY"),
        (b.AttachPaymentMethod, pb.AttachPaymentMethodRequest(customer_id=stripe_customer.id, processor_token="pm_x"),
         grpc.StatusCode.FAILED_PRECONDITION, "PROCESSOR_NOT_CONFIGURED"),
        (b.CreateRefund, pb.CreateRefundRequest(payment_id=held.id), grpc.StatusCode.FAILED_PRECONDITION,
         "PAYMENT_NOT_REFUNDABLE"),
        (b.CreateRefund, pb.CreateRefundRequest(payment_id=paid.id, amount=usd(501)),
         grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_CAPTURED"),
        (s.CreateSubscription, spb.CreateSubscriptionRequest(customer_id=customer_id, plan_id=plan.id),
         grpc.StatusCode.FAILED_PRECONDITION, "PLAN_ARCHIVED"),
        (s.CreateSubscription, spb.CreateSubscriptionRequest(customer_id=other_id, plan_id="plan_missing"),
         grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (s.CreatePlan, spb.CreatePlanRequest(name="x", price=usd(100), interval=spb.INTERVAL_MONTH,
                                             interval_count=13), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    ]  # fmt: skip
    for call, request, code, reason in cases:
        outcomes = []
        for validate_only in (True, False):
            request.request_id = rid()
            request.validate_only = validate_only
            before = await snapshot(api)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request)
            outcomes.append((rich(err.value).code, rich(err.value).reason, rich(err.value).violations))
            if validate_only:
                assert await snapshot(api) == before, request
        assert outcomes[0] == outcomes[1], request
        assert outcomes[0][:2] == (code, reason), request


async def test_validate_only_still_checks_the_request_id(api: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreateCustomer(pb.CreateCustomerRequest(validate_only=True))
    assert rich(err.value).violations == ["request_id"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreateCustomer(pb.CreateCustomerRequest(request_id="not a uuid!", validate_only=True))
    assert rich(err.value).violations == ["request_id"]


async def test_output_only_fields_do_not_change_the_idempotency_fingerprint(api: Api) -> None:
    customer = (await api.billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid()))).customer
    key = rid()
    mask = field_mask_pb2.FieldMask(paths=["name"])
    first = await api.billing.UpdateCustomer(
        pb.UpdateCustomerRequest(request_id=key, customer=pb.Customer(id=customer.id, name="A"), update_mask=mask)
    )
    retry = await api.billing.UpdateCustomer(
        pb.UpdateCustomerRequest(
            request_id=key, update_mask=mask,
            customer=pb.Customer(id=customer.id, name="A", create_time=timestamp_pb2.Timestamp(seconds=5)),
        )
    )  # fmt: skip
    assert retry == first
