"""End to end through the generated client: the payment flow, idempotency, refunds, audit, bad input."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import common_pb2
from google.protobuf import field_mask_pb2

from billing_service.domain.payments import Payment
from tests.e2e.conftest import Api
from tests.helpers import rich, rid, usd


async def customer_with_card(api: Api, token: str = "pm_card_visa") -> tuple[str, str]:
    customer = await api.billing.CreateCustomer(
        pb.CreateCustomerRequest(request_id=rid(), email="ada@example.com", name="Ada")
    )
    method = await api.billing.AttachPaymentMethod(
        pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.customer.id, processor_token=token)
    )
    return customer.customer.id, method.payment_method.id


async def test_customer_payment_partial_refund_flow(api: Api) -> None:
    customer_id, pm_id = await customer_with_card(api)
    methods = await api.billing.ListPaymentMethods(pb.ListPaymentMethodsRequest(customer_id=customer_id))
    card = methods.payment_methods[0].card
    assert (card.brand, card.last4) == ("visa", "4242")

    created = await api.billing.CreatePayment(
        pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(5000))
    )
    payment = created.payment
    assert payment.status == pb.PAYMENT_STATUS_SUCCEEDED
    assert payment.amount_captured.amount_minor == 5000
    assert payment.processor_id

    refund = await api.billing.CreateRefund(
        pb.CreateRefundRequest(request_id=rid(), payment_id=payment.id, amount=usd(1500),
                               reason=pb.REFUND_REASON_REQUESTED_BY_CUSTOMER)
    )  # fmt: skip
    assert refund.refund.status == pb.REFUND_STATUS_SUCCEEDED
    after = await api.billing.GetPayment(pb.GetPaymentRequest(payment_id=payment.id))
    assert after.payment.amount_refunded.amount_minor == 1500
    refunds = await api.billing.ListRefunds(pb.ListRefundsRequest(payment_id=payment.id))
    assert [r.id for r in refunds.refunds] == [refund.refund.id]


async def test_manual_capture_partial_then_cancel_is_refused(api: Api) -> None:
    customer_id, pm_id = await customer_with_card(api)
    auth = await api.billing.CreatePayment(
        pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(2000),
                                capture_method=pb.CAPTURE_METHOD_MANUAL)
    )  # fmt: skip
    assert auth.payment.status == pb.PAYMENT_STATUS_REQUIRES_CAPTURE
    assert auth.payment.amount_capturable.amount_minor == 2000
    with pytest.raises(grpc.aio.AioRpcError) as too_much:
        await api.billing.CapturePayment(
            pb.CapturePaymentRequest(request_id=rid(), payment_id=auth.payment.id, amount=usd(2001))
        )
    assert rich(too_much.value).reason == "CAPTURE_EXCEEDS_AUTHORIZED"
    captured = await api.billing.CapturePayment(
        pb.CapturePaymentRequest(request_id=rid(), payment_id=auth.payment.id, amount=usd(1200))
    )
    assert captured.payment.status == pb.PAYMENT_STATUS_SUCCEEDED
    assert captured.payment.amount_captured.amount_minor == 1200
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CancelPayment(pb.CancelPaymentRequest(request_id=rid(), payment_id=auth.payment.id))
    info = rich(err.value)
    assert info.code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "PAYMENT_NOT_CANCELABLE"
    assert info.domain == "billing.v1"
    assert info.error_infos == 1


async def test_capture_of_cancelled_payment_fails_precondition(api: Api) -> None:
    customer_id, pm_id = await customer_with_card(api)
    auth = await api.billing.CreatePayment(
        pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(900),
                                capture_method=pb.CAPTURE_METHOD_MANUAL)
    )  # fmt: skip
    canceled = await api.billing.CancelPayment(pb.CancelPaymentRequest(request_id=rid(), payment_id=auth.payment.id))
    assert canceled.payment.status == pb.PAYMENT_STATUS_CANCELED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CapturePayment(pb.CapturePaymentRequest(request_id=rid(), payment_id=auth.payment.id))
    assert rich(err.value).reason == "PAYMENT_NOT_CAPTURABLE"


async def test_decline_is_failed_precondition_and_the_payment_is_kept(api: Api) -> None:
    customer_id, pm_id = await customer_with_card(api, "pm_card_chargeDeclinedInsufficientFunds")
    request = pb.CreatePaymentRequest(
        request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(700)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreatePayment(request)
    info = rich(err.value)
    assert (info.code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_DECLINED")
    assert info.metadata["decline_code"] == "insufficient_funds"
    stored = await api.billing.GetPayment(pb.GetPaymentRequest(payment_id=info.metadata["payment_id"]))
    assert stored.payment.status == pb.PAYMENT_STATUS_FAILED
    assert stored.payment.failure.decline_code == "insufficient_funds"
    # The retry replays the same answer and charges nothing more.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await api.billing.CreatePayment(request)
    assert rich(again.value).metadata["payment_id"] == info.metadata["payment_id"]


async def test_requires_action_returns_client_secret(api: Api) -> None:
    customer_id, pm_id = await customer_with_card(api, "pm_card_authenticationRequired")
    created = await api.billing.CreatePayment(
        pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(700))
    )
    assert created.payment.status == pb.PAYMENT_STATUS_REQUIRES_ACTION
    assert created.payment.next_action.client_secret


async def test_same_request_id_twenty_times_concurrently_creates_one_payment(api: Api) -> None:
    customer_id, pm_id = await customer_with_card(api)
    request = pb.CreatePaymentRequest(
        request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(4200)
    )

    async def attempt() -> str:
        # A well-behaved client retries ABORTED/REQUEST_IN_PROGRESS with backoff.
        for _ in range(200):
            try:
                return (await api.billing.CreatePayment(request)).payment.id
            except grpc.aio.AioRpcError as err:
                if rich(err).reason != "REQUEST_IN_PROGRESS":
                    raise
                await asyncio.sleep(0.02)
        raise AssertionError("never completed")

    ids = await asyncio.gather(*(attempt() for _ in range(20)))
    assert len(set(ids)) == 1
    listed = await api.billing.ListPayments(pb.ListPaymentsRequest(customer_id=customer_id))
    assert len(listed.payments) == 1
    assert len(api.fake.charges_created) == 1


async def test_reused_request_id_with_other_parameters_is_refused(api: Api) -> None:
    customer_id, pm_id = await customer_with_card(api)
    key = rid()
    await api.billing.CreatePayment(
        pb.CreatePaymentRequest(request_id=key, customer_id=customer_id, payment_method_id=pm_id, amount=usd(100))
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(request_id=key, customer_id=customer_id, payment_method_id=pm_id, amount=usd(101))
        )
    info = rich(err.value)
    assert (info.code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED")
    listed = await api.billing.ListPayments(pb.ListPaymentsRequest(customer_id=customer_id))
    assert len(listed.payments) == 1


async def test_concurrent_refunds_cannot_exceed_captured(api: Api) -> None:
    customer_id, pm_id = await customer_with_card(api)
    payment = (
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(
                request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(1000)
            )
        )
    ).payment

    async def refund() -> str:
        try:
            await api.billing.CreateRefund(
                pb.CreateRefundRequest(request_id=rid(), payment_id=payment.id, amount=usd(300))
            )
            return "ok"
        except grpc.aio.AioRpcError as err:
            return rich(err).reason

    outcomes = await asyncio.gather(*(refund() for _ in range(10)))
    assert outcomes.count("ok") == 3
    assert set(outcomes) == {"ok", "REFUND_EXCEEDS_CAPTURED"}
    final = await api.billing.GetPayment(pb.GetPaymentRequest(payment_id=payment.id))
    assert final.payment.amount_refunded.amount_minor == 900
    stored = await api.runtime.store.get(Payment, payment.id)
    assert stored is not None and stored.amount_refund_pending == 0


async def test_audit_trail_lists_every_state_change_with_caller_and_request_id(api: Api) -> None:
    customer_id, pm_id = await customer_with_card(api)
    create_key, capture_key, refund_key = rid(), rid(), rid()
    auth = await api.billing.CreatePayment(
        pb.CreatePaymentRequest(request_id=create_key, customer_id=customer_id, payment_method_id=pm_id,
                                amount=usd(800), capture_method=pb.CAPTURE_METHOD_MANUAL)
    )  # fmt: skip
    await api.billing.CapturePayment(pb.CapturePaymentRequest(request_id=capture_key, payment_id=auth.payment.id))
    await api.billing.CreateRefund(pb.CreateRefundRequest(request_id=refund_key, payment_id=auth.payment.id))
    trail = await api.billing.ListAuditEvents(pb.ListAuditEventsRequest(resource_id=auth.payment.id))
    moves = [(e.action, e.before_status, e.after_status, e.request_id) for e in trail.audit_events]
    assert moves[0] == ("payment.created", "", "pending", create_key)
    assert ("payment.requires_capture", "pending", "requires_capture", create_key) in moves
    assert ("payment.captured", "requires_capture", "succeeded", capture_key) in moves
    assert any(m[0] == "payment.refund_reserved" and m[3] == refund_key for m in moves)
    assert all(e.caller == "anonymous" for e in trail.audit_events)


@pytest.mark.parametrize(
    ("mutate", "field", "code"),
    [
        (lambda r: r.ClearField("amount"), "amount", grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: setattr(r.amount, "currency", "XXY"), "amount.currency", grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: setattr(r.amount, "amount_minor", 0), "amount.amount_minor", grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: setattr(r.amount, "amount_minor", -5), "amount.amount_minor", grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: setattr(r, "request_id", ""), "request_id", grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: setattr(r, "customer_id", ""), "customer_id", grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.metadata.update({f"k{i}": "v" for i in range(51)}), "metadata", grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: setattr(r, "capture_method", 99), "capture_method", grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: setattr(r, "payment_method_id", "pm_nope"), "", grpc.StatusCode.NOT_FOUND),
        (lambda r: setattr(r, "customer_id", "cus_nope"), "", grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_bad_payment_input_is_refused_and_changes_nothing(api: Api, mutate, field, code) -> None:  # type: ignore[no-untyped-def]
    customer_id, pm_id = await customer_with_card(api)
    request = pb.CreatePaymentRequest(
        request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(10)
    )
    mutate(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreatePayment(request)
    info = rich(err.value)
    assert info.code == code
    if field:
        assert info.violations == [field]
    db = api.runtime.store.database
    assert await db["payments"].count_documents({}) == 0
    assert await db["audit_events"].count_documents({"resource_type": "payment"}) == 0


async def test_amount_the_currency_cannot_express_is_refused(api: Api) -> None:
    customer_id, pm_id = await customer_with_card(api)
    # JPY has no minor unit: its amounts are whole yen, so any integer is expressible, but an unknown code is not.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id,
                                    amount=common_pb2.Money(amount_minor=10**16, currency="USD"))
        )  # fmt: skip
    assert rich(err.value).violations == ["amount.amount_minor"]


async def test_customers_update_list_and_page_tokens(api: Api) -> None:
    ids = []
    for i in range(5):
        c = await api.billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), email=f"u{i}@example.com"))
        ids.append(c.customer.id)
    first = await api.billing.ListCustomers(pb.ListCustomersRequest(page_size=2))
    second = await api.billing.ListCustomers(pb.ListCustomersRequest(page_size=2, page_token=first.next_page_token))
    third = await api.billing.ListCustomers(pb.ListCustomersRequest(page_size=2, page_token=second.next_page_token))
    listed = [c.id for page in (first, second, third) for c in page.customers]
    assert listed == list(reversed(ids))
    assert third.next_page_token == ""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.ListCustomers(pb.ListCustomersRequest(page_token="bm90LW91cnM"))
    assert rich(err.value).violations == ["page_token"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.ListCustomers(pb.ListCustomersRequest(page_token=first.next_page_token, email="x@y.z"))
    assert rich(err.value).reason == "INVALID_PAGE_TOKEN"

    updated = await api.billing.UpdateCustomer(
        pb.UpdateCustomerRequest(request_id=rid(), customer=pb.Customer(id=ids[0], name="Grace", email="ignored@x.y"),
                                 update_mask=field_mask_pb2.FieldMask(paths=["name"]))
    )  # fmt: skip
    assert (updated.customer.name, updated.customer.email) == ("Grace", "u0@example.com")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.UpdateCustomer(
            pb.UpdateCustomerRequest(request_id=rid(), customer=pb.Customer(id=ids[0]),
                                     update_mask=field_mask_pb2.FieldMask(paths=["processor_refs"]))
        )  # fmt: skip
    assert rich(err.value).violations == ["update_mask"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.GetCustomer(pb.GetCustomerRequest(customer_id="cus_missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_detach_then_charge_is_refused(api: Api) -> None:
    customer_id, pm_id = await customer_with_card(api)
    detached = await api.billing.DetachPaymentMethod(
        pb.DetachPaymentMethodRequest(request_id=rid(), payment_method_id=pm_id)
    )
    assert detached.payment_method.status == pb.PAYMENT_METHOD_STATUS_DETACHED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreatePayment(
            pb.CreatePaymentRequest(request_id=rid(), customer_id=customer_id, payment_method_id=pm_id, amount=usd(10))
        )
    assert rich(err.value).reason == "PAYMENT_METHOD_DETACHED"


async def test_card_number_as_token_is_refused_and_nothing_stored(api: Api) -> None:
    customer = await api.billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid()))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.AttachPaymentMethod(
            pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.customer.id,
                                          processor_token="4242424242424242")
        )  # fmt: skip
    info = rich(err.value)
    assert (info.code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CARD_DATA_NOT_ALLOWED")
    assert await api.runtime.store.database["payment_methods"].count_documents({}) == 0


async def test_size_limits_are_enforced_and_nothing_is_stored(api: Api) -> None:
    # A request over the 1 MiB message limit never reaches a handler.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreateCustomer(
            pb.CreateCustomerRequest(request_id=rid(), description="x" * (2 * 1024 * 1024))
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for request, field in [
        (pb.CreateCustomerRequest(request_id=rid(), name="n" * 257), "name"),
        (pb.CreateCustomerRequest(request_id=rid(), description="d" * 1001), "description"),
        (pb.CreateCustomerRequest(request_id=rid(), metadata={"k" * 41: "v"}), "metadata"),
        (pb.CreateCustomerRequest(request_id=rid(), metadata={"k": "v" * 501}), "metadata[k]"),
        (pb.CreateCustomerRequest(request_id="r" * 256), "request_id"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.CreateCustomer(request)
        info = rich(err.value)
        assert info.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.violations[0].startswith(field.split("[")[0]), (field, info.violations)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.ListCustomers(pb.ListCustomersRequest(page_size=-1))
    assert rich(err.value).violations == ["page_size"]
    capped = await api.billing.ListCustomers(pb.ListCustomersRequest(page_size=10_000))
    assert capped.next_page_token == ""
    assert await api.runtime.store.database["customers"].count_documents({}) == 0


async def test_card_data_in_metadata_is_refused_without_echoing_it(api: Api) -> None:
    card = "4000056655665556"
    for metadata, field in [({card: "x"}, "metadata"), ({"note": f"card {card} exp 12/30"}, "metadata[note]")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), metadata=metadata))
        info = rich(err.value)
        assert (info.reason, info.violations) == ("CARD_DATA_NOT_ALLOWED", [field])
        assert card not in str(err.value.trailing_metadata()) + (err.value.details() or "")
    assert await api.runtime.store.database["customers"].count_documents({}) == 0
