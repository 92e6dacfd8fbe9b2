"""PayPalPaymentProcessor through the real paypal-server-sdk against the local imitation."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from billing_service.adapters.processors.paypal import PayPalPaymentProcessor, PayPalSettings, mapping, wire
from billing_service.adapters.processors.retry import RetryPolicy
from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer, PaymentMethodType
from billing_service.domain.errors import (
    InvalidArgument,
    NotSupportedByProcessor,
    PaymentDeclined,
    ProcessorConfigurationError,
    ProcessorError,
    ProcessorUnavailable,
    RefundExceedsCaptured,
)
from billing_service.domain.money import Money
from billing_service.domain.payments import CaptureMethod, PaymentStatus, RefundReason, RefundStatus
from billing_service.domain.subscriptions import (
    Interval,
    InvoiceStatus,
    Plan,
    PlanStatus,
    ProrationBehavior,
    SubscriptionStatus,
)
from billing_service.service_layer.ports import PaymentRequest, RefundRequest, SubscriptionChange, SubscriptionRequest
from tests.imitations.paypal_api import PayPalImitation

FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
TIMEOUT = 0.5  # the imitation stalls 1 s on timeout_after_effect_next


@pytest.fixture(scope="module")
def imitation() -> Iterator[PayPalImitation]:
    with PayPalImitation(stall_seconds=2 * TIMEOUT) as server:
        yield server


@pytest.fixture
def paypal_api(imitation: PayPalImitation) -> PayPalImitation:
    imitation.reset()
    return imitation


def settings_for(api: PayPalImitation, **overrides: object) -> PayPalSettings:
    values: dict[str, object] = {
        "client_id": api.client_id,
        "client_secret": api.client_secret,
        "base_url": api.base_url,
        "timeout_seconds": TIMEOUT,
    }
    values.update(overrides)
    return PayPalSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def processor(paypal_api: PayPalImitation) -> AsyncIterator[PayPalPaymentProcessor]:
    proc = PayPalPaymentProcessor(settings_for(paypal_api), retry_policy=FAST)
    yield proc
    await proc.aclose()


async def vaulted(
    proc: PayPalPaymentProcessor, api: PayPalImitation, kind: str = "paypal", *, declined: bool = False
) -> str:
    setup = api.create_setup_token(kind, declined=declined)
    method = await proc.attach_payment_method("CUST1", setup, idempotency_key=f"attach-{setup}")
    return method.processor_id


def payment(
    pm: str,
    amount: Money,
    *,
    manual: bool = False,
    description: str = "",
    off_session: bool = False,
    return_url: str = "",
) -> PaymentRequest:
    return PaymentRequest(
        payment_id="pay_01",
        amount=amount,
        capture_method=CaptureMethod.MANUAL if manual else CaptureMethod.AUTOMATIC,
        processor_customer_id="CUST1",
        processor_payment_method_id=pm,
        description=description,
        off_session=off_session,
        return_url=return_url,
    )


def plan(*, trial_days: int = 0, price: Money | None = None, refs: dict[str, str] | None = None) -> Plan:
    return Plan(
        id="plan_01",
        name="Pro",
        description="Pro tier",
        price=price or Money(1500, "USD"),
        interval=Interval.MONTH,
        interval_count=1,
        trial_period_days=trial_days,
        status=PlanStatus.ACTIVE,
        metadata={},
        created_at=NOW,
        updated_at=NOW,
        processor_refs=dict(refs or {}),
    )


# --------------------------------------------------------------------------- amounts


def test_amounts_are_converted_exactly() -> None:
    assert wire.paypal_value(Money(1234, "USD")) == "12.34"
    assert wire.paypal_value(Money(5, "USD")) == "0.05"
    assert wire.paypal_value(Money(500, "JPY")) == "500"
    assert wire.paypal_value(Money(10**15, "USD")) == "10000000000000.00"
    assert wire.paypal_value(Money(15000, "HUF")) == "150"  # PayPal takes whole forint
    assert wire.minor_units("12.34", "USD") == 1234
    assert wire.minor_units("12.3", "USD") == 1230
    assert wire.minor_units("12", "USD") == 1200
    assert wire.minor_units("500", "JPY") == 500
    assert wire.minor_units("150", "HUF") == 15000
    assert wire.minor_units("0.10", "USD") == 10
    assert wire.minor_units("-1.50", "EUR") == -150
    with pytest.raises(ProcessorError):
        wire.minor_units("1.234", "USD")
    with pytest.raises(ProcessorError):
        wire.minor_units("1e3", "USD")
    with pytest.raises(InvalidArgument) as kwd:
        wire.paypal_value(Money(1234, "KWD"))
    assert kwd.value.reason == "AMOUNT_NOT_SUPPORTED_BY_PROCESSOR"
    with pytest.raises(InvalidArgument) as huf:
        wire.paypal_value(Money(15050, "HUF"))
    assert huf.value.reason == "AMOUNT_NOT_SUPPORTED_BY_PROCESSOR"


async def test_unsupported_currency_is_refused_before_any_request(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    before = len(paypal_api.requests)
    with pytest.raises(InvalidArgument) as err:
        await processor.create_payment(payment("", Money(1234, "KWD")), idempotency_key="k-kwd")
    assert err.value.reason == "AMOUNT_NOT_SUPPORTED_BY_PROCESSOR"
    assert len(paypal_api.requests) == before


async def test_jpy_payment_sends_whole_yen(processor: PayPalPaymentProcessor, paypal_api: PayPalImitation) -> None:
    pm = await vaulted(processor, paypal_api)
    state = await processor.create_payment(payment(pm, Money(500, "JPY")), idempotency_key="k-jpy")
    assert (state.status, state.amount_captured) == (PaymentStatus.SUCCEEDED, 500)
    sent = [r for r in paypal_api.posts() if r.path == "/v2/checkout/orders"][-1].body
    assert sent["purchase_units"][0]["amount"] == {"currency_code": "JPY", "value": "500"}


# --------------------------------------------------------------------------- customers and methods


async def test_customers_are_local_and_stable(processor: PayPalPaymentProcessor, paypal_api: PayPalImitation) -> None:
    customer = Customer("cus_01", "a@example.com", "Ada", "", {}, Processor.PAYPAL, NOW, NOW)
    first = await processor.create_customer(customer, idempotency_key="c1")
    assert first == await processor.create_customer(customer, idempotency_key="c2")
    assert len(first) == 22 and first.isalnum()
    await processor.update_customer(first, customer, idempotency_key="c3")
    assert paypal_api.requests == []  # no customer object at PayPal, no I/O


async def test_attach_card_and_paypal_then_detach(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    card = await processor.attach_payment_method("CUST1", paypal_api.create_setup_token("card"), idempotency_key="a1")
    assert (card.type, card.brand, card.last4, card.exp_month, card.exp_year) == (
        PaymentMethodType.CARD,
        "visa",
        "4242",
        7,
        2030,
    )
    wallet = await processor.attach_payment_method("CUST1", paypal_api.create_setup_token(), idempotency_key="a2")
    assert wallet.type is PaymentMethodType.PAYPAL and wallet.last4 == ""
    sent = paypal_api.posts()[0]
    assert sent.body["payment_source"]["token"]["type"] == "SETUP_TOKEN"
    assert sent.body["customer"] == {"id": "CUST1"}
    assert sent.request_id == "a1"

    await processor.detach_payment_method(card.processor_id, idempotency_key="d1")
    assert card.processor_id not in paypal_api.payment_tokens
    await processor.detach_payment_method(card.processor_id, idempotency_key="d1")  # already gone: fine


# --------------------------------------------------------------------------- payments


@pytest.mark.parametrize("kind", ["paypal", "card"])
async def test_vaulted_capture_succeeds_at_once(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation, kind: str
) -> None:
    pm = await vaulted(processor, paypal_api, kind)
    state = await processor.create_payment(
        payment(pm, Money(1234, "USD"), description="Order 42", off_session=True),
        idempotency_key="k-cap",
    )
    assert state.status is PaymentStatus.SUCCEEDED
    assert (state.amount_captured, state.amount_capturable) == (1234, 0)
    order = paypal_api.orders[state.processor_id]
    unit = order["purchase_units"][0]
    assert (unit["custom_id"], unit["amount"]["value"], order["intent"]) == ("pay_01", "12.34", "CAPTURE")
    assert paypal_api.captures_created == 1
    assert (await processor.get_payment(state.processor_id)).status is PaymentStatus.SUCCEEDED


async def test_authorize_then_partial_capture_releases_the_rest(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    pm = await vaulted(processor, paypal_api)
    state = await processor.create_payment(payment(pm, Money(1000, "USD"), manual=True), idempotency_key="k-auth")
    assert (state.status, state.amount_capturable, state.amount_captured) == (PaymentStatus.REQUIRES_CAPTURE, 1000, 0)

    captured = await processor.capture_payment(state.processor_id, Money(600, "USD"), idempotency_key="k-capture")
    assert (captured.status, captured.amount_captured, captured.amount_capturable) == (PaymentStatus.SUCCEEDED, 600, 0)
    capture_call = [r for r in paypal_api.posts() if r.path.endswith("/capture")][-1]
    assert capture_call.body == {"amount": {"currency_code": "USD", "value": "6.00"}, "final_capture": True}
    assert capture_call.request_id == "k-capture"
    auth = paypal_api.orders[state.processor_id]["purchase_units"][0]["payments"]["authorizations"][0]
    assert auth["status"] == "CAPTURED"
    # A retry of the same capture (e.g. after a crash) converges instead of failing.
    again = await processor.capture_payment(state.processor_id, Money(600, "USD"), idempotency_key="k-capture")
    assert again.status is PaymentStatus.SUCCEEDED and paypal_api.captures_created == 1


async def test_cancel_voids_the_authorization(processor: PayPalPaymentProcessor, paypal_api: PayPalImitation) -> None:
    pm = await vaulted(processor, paypal_api)
    state = await processor.create_payment(payment(pm, Money(1000, "EUR"), manual=True), idempotency_key="k-a")
    canceled = await processor.cancel_payment(state.processor_id, idempotency_key="k-void")
    assert canceled.status is PaymentStatus.CANCELED
    auth = paypal_api.orders[state.processor_id]["purchase_units"][0]["payments"]["authorizations"][0]
    assert auth["status"] == "VOIDED"
    assert [r.request_id for r in paypal_api.posts() if r.path.endswith("/void")] == ["k-void"]
    assert (await processor.get_payment(state.processor_id)).status is PaymentStatus.CANCELED


async def test_buyer_approval_flow(processor: PayPalPaymentProcessor, paypal_api: PayPalImitation) -> None:
    with_return = await processor.create_payment(
        payment("", Money(2500, "USD"), return_url="https://shop.example/return"), idempotency_key="k-approve"
    )
    assert with_return.status is PaymentStatus.REQUIRES_ACTION
    assert with_return.next_action is not None
    assert with_return.next_action.redirect_url.startswith("https://www.sandbox.paypal.com/checkoutnow?token=")
    experience = paypal_api.posts()[-1].body["payment_source"]["paypal"]["experience_context"]
    assert experience["return_url"] == "https://shop.example/return"

    bare = await processor.create_payment(payment("", Money(2500, "USD")), idempotency_key="k-approve-2")
    assert bare.next_action is not None and "token=" in bare.next_action.redirect_url  # the "approve" link

    # Not approved yet: reading changes nothing.
    assert (await processor.get_payment(with_return.processor_id)).status is PaymentStatus.REQUIRES_ACTION
    paypal_api.approve_order(with_return.processor_id)
    done = await processor.get_payment(with_return.processor_id)
    assert (done.status, done.amount_captured) == (PaymentStatus.SUCCEEDED, 2500)
    await processor.get_payment(with_return.processor_id)
    assert paypal_api.captures_created == 1


async def test_approved_authorize_order_becomes_capturable(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    state = await processor.create_payment(payment("", Money(900, "GBP"), manual=True), idempotency_key="k-aa")
    paypal_api.approve_order(state.processor_id)
    ready = await processor.get_payment(state.processor_id)
    assert (ready.status, ready.amount_capturable) == (PaymentStatus.REQUIRES_CAPTURE, 900)
    captured = await processor.capture_payment(state.processor_id, Money(900, "GBP"), idempotency_key="k-ac")
    assert (captured.status, captured.amount_captured) == (PaymentStatus.SUCCEEDED, 900)


async def test_canceled_unapproved_order_is_never_completed(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    state = await processor.create_payment(payment("", Money(700, "USD")), idempotency_key="k-c")
    canceled = await processor.cancel_payment(state.processor_id, idempotency_key="k-cancel")
    assert canceled.status is PaymentStatus.CANCELED
    assert paypal_api.orders[state.processor_id]["purchase_units"][0]["custom_id"] == "pay_01:canceled"
    paypal_api.approve_order(state.processor_id)  # the buyer approves anyway, late
    assert (await processor.get_payment(state.processor_id)).status is PaymentStatus.CANCELED
    assert paypal_api.captures_created == 0


async def test_declined_instrument_raises_payment_declined(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    pm = await vaulted(processor, paypal_api, declined=True)
    with pytest.raises(PaymentDeclined) as err:
        await processor.create_payment(payment(pm, Money(1000, "USD")), idempotency_key="k-decl")
    assert err.value.metadata["decline_code"] == "instrument_declined"
    assert err.value.metadata["processor"] == "paypal"
    assert err.value.metadata["debug_id"]


async def test_unknown_order_is_processor_not_found(processor: PayPalPaymentProcessor) -> None:
    with pytest.raises(ProcessorError) as err:
        await processor.get_payment("NOSUCHORDER")
    assert err.value.reason == "PROCESSOR_RESOURCE_NOT_FOUND" and not err.value.retryable


# --------------------------------------------------------------------------- refunds


async def test_partial_then_full_refund(processor: PayPalPaymentProcessor, paypal_api: PayPalImitation) -> None:
    pm = await vaulted(processor, paypal_api)
    paid = await processor.create_payment(payment(pm, Money(1000, "USD")), idempotency_key="k-r")

    def refund(refund_id: str, minor: int, reason: RefundReason = RefundReason.UNSPECIFIED) -> RefundRequest:
        return RefundRequest(refund_id, paid.processor_id, Money(minor, "USD"), reason)

    first = await processor.create_refund(refund("re_1", 300, RefundReason.REQUESTED_BY_CUSTOMER), idempotency_key="r1")
    assert first.status is RefundStatus.SUCCEEDED
    sent = paypal_api.posts()[-1]
    assert sent.path.endswith("/refund") and sent.request_id == "r1"
    assert sent.body == {
        "amount": {"currency_code": "USD", "value": "3.00"},
        "custom_id": "re_1",
        "note_to_payer": "Refund requested by you",
    }
    rest = await processor.create_refund(refund("re_2", 700), idempotency_key="r2")
    assert rest.status is RefundStatus.SUCCEEDED
    assert (await processor.get_refund(rest.processor_id)).status is RefundStatus.SUCCEEDED
    assert paypal_api.refunds_created == 2
    with pytest.raises(RefundExceedsCaptured):
        await processor.create_refund(refund("re_3", 1), idempotency_key="r3")
    # The same key replays PayPal's stored answer: no second refund.
    replay = await processor.create_refund(refund("re_2", 700), idempotency_key="r2")
    assert replay.processor_id == rest.processor_id and paypal_api.refunds_created == 2


async def test_refunds_name_their_order_amount_and_our_refund_id(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    """What mirroring a refund made outside the service needs: the order (through the capture,
    and for an authorization's capture through the authorization) and the exact amount."""
    pm = await vaulted(processor, paypal_api, "card")
    auth = await processor.create_payment(payment(pm, Money(2000, "JPY"), manual=True), idempotency_key="k-auth")
    await processor.capture_payment(auth.processor_id, Money(2000, "JPY"), idempotency_key="k-cap")
    capture = paypal_api.orders[auth.processor_id]["purchase_units"][0]["payments"]["captures"][0]
    capture.pop("supplementary_data")  # only the "up" link to the authorization is left to follow
    outside = paypal_api.dashboard_refund(capture["id"], "500")
    state = await processor.get_refund(outside["id"])
    assert (state.processor_payment_id, state.amount_minor, state.refund_id) == (auth.processor_id, 500, "")

    ours = await processor.create_refund(
        RefundRequest("re_ours", auth.processor_id, Money(300, "JPY"), RefundReason.UNSPECIFIED),
        idempotency_key="k-re",
    )
    assert (ours.processor_payment_id, ours.amount_minor, ours.refund_id) == (auth.processor_id, 300, "re_ours")
    again = await processor.get_refund(ours.processor_id)
    assert (again.processor_payment_id, again.amount_minor, again.refund_id) == (auth.processor_id, 300, "re_ours")


@pytest.mark.parametrize(
    ("paid", "refunded", "sent"),
    [
        (Money(150000, "HUF"), Money(15000, "HUF"), "150"),  # two ISO decimals, whole forint at PayPal
        (Money(2000, "JPY"), Money(700, "JPY"), "700"),
        (Money(2500, "USD"), Money(701, "USD"), "7.01"),
    ],
)
async def test_amounts_round_trip_through_payments_and_refunds(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation, paid: Money, refunded: Money, sent: str
) -> None:
    pm = await vaulted(processor, paypal_api, "card")
    state = await processor.create_payment(payment(pm, paid), idempotency_key=f"k-{paid.currency}")
    assert state.amount_captured == paid.amount_minor
    refund = await processor.create_refund(
        RefundRequest("re_rt", state.processor_id, refunded, RefundReason.UNSPECIFIED), idempotency_key="k-rt"
    )
    assert paypal_api.posts()[-1].body["amount"] == {"currency_code": paid.currency, "value": sent}
    assert (
        refund.amount_minor == (await processor.get_refund(refund.processor_id)).amount_minor == refunded.amount_minor
    )


def test_a_refund_custom_id_copied_from_the_capture_is_not_our_refund_id() -> None:
    refund = {"id": "R1", "status": "COMPLETED", "amount": {"currency_code": "USD", "value": "7.00"}}
    inherited = mapping.refund_state(
        refund | {"custom_id": "pay_1"}, processor_payment_id="O1", payment_custom_id="pay_1"
    )
    assert (inherited.refund_id, inherited.amount_minor, inherited.processor_payment_id) == ("", 700, "O1")
    assert mapping.refund_state(refund | {"custom_id": "re_1"}, payment_custom_id="pay_1").refund_id == "re_1"


# --------------------------------------------------------------------------- plans and subscriptions


async def test_plan_with_trial_and_subscription_lifecycle(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    refs = await processor.create_plan(plan(trial_days=14), idempotency_key="p1")
    assert set(refs) == {"paypal", "paypal_product"}
    cycles = paypal_api.plans[refs["paypal"]]["billing_cycles"]
    assert [c["tenure_type"] for c in cycles] == ["TRIAL", "REGULAR"]
    assert cycles[0]["frequency"] == {"interval_unit": "DAY", "interval_count": 14} and cycles[0]["total_cycles"] == 1
    assert "pricing_scheme" not in cycles[0]
    assert cycles[1]["pricing_scheme"]["fixed_price"] == {"currency_code": "USD", "value": "15.00"}
    assert {r.path: r.request_id for r in paypal_api.posts()} == {
        "/v1/catalogs/products": "p1:product",
        "/v1/billing/plans": "p1:plan",
    }
    assert refs["paypal_product"] == "billing-subscriptions" and refs["paypal_product"] in paypal_api.products

    request = SubscriptionRequest(
        "sub_01", "CUST1", "", plan(trial_days=14, refs=refs), 2, None, return_url="https://shop.example/sub"
    )
    created = await processor.create_subscription(request, idempotency_key="s1")
    assert created.status is SubscriptionStatus.INCOMPLETE
    assert created.approval_url.startswith("https://www.sandbox.paypal.com/webapps/billing/subscriptions")
    body = paypal_api.posts()[-1].body
    assert (body["plan_id"], body["quantity"], body["custom_id"]) == (refs["paypal"], "2", "sub_01")
    assert body["application_context"]["return_url"] == "https://shop.example/sub"

    paypal_api.approve_subscription(created.processor_id)
    trialing = await processor.get_subscription(created.processor_id)
    assert trialing.status is SubscriptionStatus.TRIALING
    assert trialing.trial_end is not None and trialing.trial_end == trialing.current_period_end
    assert trialing.approval_url == ""
    assert await processor.list_invoices(created.processor_id) == []

    paused = await processor.pause_subscription(created.processor_id, idempotency_key="s2")
    assert paused.status is SubscriptionStatus.PAUSED
    resumed = await processor.resume_subscription(created.processor_id, idempotency_key="s3")
    assert resumed.status is SubscriptionStatus.TRIALING
    canceled = await processor.cancel_subscription(created.processor_id, at_period_end=False, idempotency_key="s4")
    assert canceled.status is SubscriptionStatus.CANCELED and canceled.canceled_at is not None
    # A retried cancel with a new key finds it already canceled.
    again = await processor.cancel_subscription(created.processor_id, at_period_end=False, idempotency_key="s5")
    assert again.status is SubscriptionStatus.CANCELED

    archived = plan(refs=refs)
    await processor.archive_plan(archived, idempotency_key="p2")
    assert paypal_api.plans[refs["paypal"]]["status"] == "INACTIVE"
    await processor.archive_plan(archived, idempotency_key="p3")  # already inactive: fine


async def test_subscription_invoices_revise_and_unsupported(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    refs = await processor.create_plan(plan(), idempotency_key="p1")
    # Another replica (a fresh adapter) finds the product already there and reuses it.
    other = PayPalPaymentProcessor(settings_for(paypal_api), retry_policy=FAST)
    try:
        bigger = await other.create_plan(plan(price=Money(3000, "USD")), idempotency_key="p2")
    finally:
        await other.aclose()
    assert bigger["paypal_product"] == refs["paypal_product"] and len(paypal_api.products) == 1
    created = await processor.create_subscription(
        SubscriptionRequest("sub_02", "CUST1", "", plan(refs=refs), 1, None), idempotency_key="s1"
    )
    paypal_api.approve_subscription(created.processor_id)
    active = await processor.get_subscription(created.processor_id)
    assert active.status is SubscriptionStatus.ACTIVE
    assert active.current_period_start is not None and active.current_period_end is not None
    later = paypal_api.bill_subscription_cycle(created.processor_id)

    invoices = await processor.list_invoices(created.processor_id)
    assert [i.status for i in invoices] == [InvoiceStatus.PAID, InvoiceStatus.PAID]
    assert invoices[0].processor_id == later  # newest first
    assert invoices[0].amount_paid == Money(1500, "USD") == invoices[0].amount_due
    assert invoices[0].processor_subscription_id == created.processor_id

    with pytest.raises(NotSupportedByProcessor) as at_end:
        await processor.cancel_subscription(created.processor_id, at_period_end=True, idempotency_key="s2")
    assert at_end.value.metadata["processor"] == "paypal"
    assert at_end.value.reason == "NOT_SUPPORTED_BY_PROCESSOR"
    with pytest.raises(NotSupportedByProcessor):
        await processor.update_subscription(
            created.processor_id,
            SubscriptionChange(None, 3, ProrationBehavior.ALWAYS_INVOICE),
            idempotency_key="s3",
        )

    revised = await processor.update_subscription(
        created.processor_id,
        SubscriptionChange(plan(refs=bigger), 3, ProrationBehavior.NONE),
        idempotency_key="s4",
    )
    assert revised.status is SubscriptionStatus.ACTIVE
    assert revised.approval_url.startswith("https://www.sandbox.paypal.com/webapps/billing/subscriptions/update")
    sent = paypal_api.posts()[-1]
    assert sent.path.endswith("/revise") and sent.request_id == "s4"
    assert sent.body == {"plan_id": bigger["paypal"], "quantity": "3"}
    paypal_api.approve_revision(created.processor_id)
    paypal_api.bill_subscription_cycle(created.processor_id)
    newest = (await processor.list_invoices(created.processor_id))[0]
    assert newest.amount_paid == Money(9000, "USD")


async def test_trial_end_without_plan_trial_is_not_supported(processor: PayPalPaymentProcessor) -> None:
    request = SubscriptionRequest("sub_03", "CUST1", "", plan(refs={"paypal": "P-1"}), 1, NOW)
    with pytest.raises(NotSupportedByProcessor):
        await processor.create_subscription(request, idempotency_key="s1")


# --------------------------------------------------------------------------- idempotency, retries, auth


async def test_every_post_carries_the_request_id_and_retries_reuse_it(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    pm = await vaulted(processor, paypal_api)
    paypal_api.fail_next("/v2/checkout/orders", 503, "SERVICE_UNAVAILABLE", times=2)
    state = await processor.create_payment(payment(pm, Money(1000, "USD")), idempotency_key="k-retry")
    assert state.status is PaymentStatus.SUCCEEDED
    creates = [r for r in paypal_api.posts() if r.path == "/v2/checkout/orders"]
    assert [r.request_id for r in creates] == ["k-retry"] * 3
    assert paypal_api.captures_created == 1
    refs = await processor.create_plan(plan(), idempotency_key="p1")
    sub = await processor.create_subscription(
        SubscriptionRequest("sub_04", "CUST1", "", plan(refs=refs), 1, None), idempotency_key="s1"
    )
    paypal_api.approve_subscription(sub.processor_id)
    await processor.pause_subscription(sub.processor_id, idempotency_key="s2")
    await processor.resume_subscription(sub.processor_id, idempotency_key="s3")
    assert all(r.request_id for r in paypal_api.posts())
    assert len({r.path for r in paypal_api.posts()}) >= 7


async def test_persistent_503_becomes_processor_unavailable(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    paypal_api.fail_next("/v2/checkout/orders", 503, "SERVICE_UNAVAILABLE", times=5)
    with pytest.raises(ProcessorUnavailable) as err:
        await processor.create_payment(payment("", Money(1000, "USD")), idempotency_key="k-503")
    assert err.value.retryable
    assert len([r for r in paypal_api.posts() if r.path == "/v2/checkout/orders"]) == FAST.max_attempts


async def test_429_and_409_are_retried(processor: PayPalPaymentProcessor, paypal_api: PayPalImitation) -> None:
    paypal_api.fail_next("/v2/checkout/orders", 429, "RATE_LIMIT_REACHED")
    paypal_api.fail_next("/v2/checkout/orders", 409, "DUPLICATE_REQUEST_ID")
    state = await processor.create_payment(payment("", Money(1000, "USD")), idempotency_key="k-429")
    assert state.status is PaymentStatus.REQUIRES_ACTION
    assert len(paypal_api.orders) == 1


async def test_timeout_after_capture_then_retry_captures_once(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    pm = await vaulted(processor, paypal_api)
    state = await processor.create_payment(payment(pm, Money(1000, "USD"), manual=True), idempotency_key="k-t")
    paypal_api.timeout_after_effect_next("/v2/payments/authorizations/")
    captured = await processor.capture_payment(state.processor_id, Money(1000, "USD"), idempotency_key="k-t-cap")
    assert (captured.status, captured.amount_captured) == (PaymentStatus.SUCCEEDED, 1000)
    attempts = [r for r in paypal_api.posts() if r.path.endswith("/capture")]
    assert [r.request_id for r in attempts] == ["k-t-cap", "k-t-cap"]
    assert paypal_api.captures_created == 1


async def _raw_client(api: PayPalImitation) -> tuple[httpx.AsyncClient, dict[str, str]]:
    client = httpx.AsyncClient(base_url=api.base_url)
    token = await client.post(
        "/v1/oauth2/token", data={"grant_type": "client_credentials"}, auth=(api.client_id, api.client_secret)
    )
    return client, {"Authorization": f"Bearer {token.json()['access_token']}"}


async def test_an_order_is_completed_under_one_key_so_a_retry_after_the_webhook_converges(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    """create_payment's completion failed; a CHECKOUT.ORDER.APPROVED re-read completed the order;
    the caller's retry completes again. One key per order: PayPal replays, one capture."""
    paypal_api.complete_vaulted_orders = False
    pm = await vaulted(processor, paypal_api)
    paypal_api.fail_next("/v2/checkout/orders/", times=3)  # the capture call, never reached
    with pytest.raises(ProcessorUnavailable):
        await processor.create_payment(payment(pm, Money(1000, "USD")), idempotency_key="k-two")
    [order_id] = paypal_api.orders
    assert paypal_api.orders[order_id]["status"] == "APPROVED"
    by_webhook = await processor.get_payment(order_id)
    assert by_webhook.status is PaymentStatus.SUCCEEDED
    retried = await processor.create_payment(payment(pm, Money(1000, "USD")), idempotency_key="k-two")
    assert (retried.processor_id, retried.status, retried.amount_captured) == (order_id, PaymentStatus.SUCCEEDED, 1000)
    assert paypal_api.captures_created == 1
    completions = {r.request_id for r in paypal_api.posts() if r.path.endswith("/capture")}
    assert completions == {f"{order_id}:complete"}


@pytest.mark.parametrize("manual", [False, True])
async def test_an_order_completed_under_another_key_is_read_and_converged(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation, manual: bool
) -> None:
    """ORDER_ALREADY_CAPTURED / ORDER_ALREADY_AUTHORIZED is not a failure: read the order."""
    paypal_api.complete_vaulted_orders = False
    pm = await vaulted(processor, paypal_api)
    paypal_api.fail_next("/v2/checkout/orders/", times=3)
    with pytest.raises(ProcessorUnavailable):
        await processor.create_payment(payment(pm, Money(1000, "USD"), manual=manual), idempotency_key="k-other")
    [order_id] = paypal_api.orders
    client, headers = await _raw_client(paypal_api)
    try:
        verb = "authorize" if manual else "capture"
        done = await client.post(
            f"/v2/checkout/orders/{order_id}/{verb}", headers={**headers, "PayPal-Request-Id": "someone-else"}
        )
        assert done.status_code == 201
    finally:
        await client.aclose()
    state = await processor.create_payment(payment(pm, Money(1000, "USD"), manual=manual), idempotency_key="k-other")
    expected = PaymentStatus.REQUIRES_CAPTURE if manual else PaymentStatus.SUCCEEDED
    assert (state.processor_id, state.status) == (order_id, expected)
    assert paypal_api.captures_created == (0 if manual else 1)


def _unknown_capture_currency(order: dict[str, Any]) -> dict[str, Any]:
    order["purchase_units"][0]["payments"]["captures"][0]["amount"]["currency_code"] = "XTS"
    return order


async def test_an_answer_we_cannot_read_is_a_retryable_processor_fault_that_keeps_the_order_id(
    processor: PayPalPaymentProcessor, paypal_api: PayPalImitation
) -> None:
    """PayPal took the money but its answer does not parse: not the caller's fault
    (INVALID_ARGUMENT), a processor fault that names the order so it stays findable."""
    pm = await vaulted(processor, paypal_api, "card")
    paypal_api.garble_next("/v2/checkout/orders", _unknown_capture_currency)
    with pytest.raises(ProcessorError) as info:
        await processor.create_payment(payment(pm, Money(1000, "USD")), idempotency_key="k-garbled")
    [order_id] = paypal_api.orders
    assert (info.value.reason, info.value.retryable) == ("PROCESSOR_BAD_RESPONSE", True)
    assert info.value.metadata["processor_payment_id"] == order_id
    retried = await processor.create_payment(payment(pm, Money(1000, "USD")), idempotency_key="k-garbled")
    assert (retried.processor_id, retried.status, paypal_api.captures_created) == (order_id, PaymentStatus.SUCCEEDED, 1)

    paypal_api.garble_next(f"/v2/checkout/orders/{order_id}", lambda order: {"status": "COMPLETED"})
    with pytest.raises(ProcessorError) as no_id:
        await processor.get_payment(order_id)
    assert (no_id.value.reason, no_id.value.retryable) == ("PROCESSOR_BAD_RESPONSE", True)


def test_order_amounts_are_read_only_when_the_status_needs_them() -> None:
    garbage = {"status": "COMPLETED", "amount": {"currency_code": "XTS", "value": "1.00"}}
    for status, expected in (
        ("VOIDED", PaymentStatus.CANCELED),
        ("PAYER_ACTION_REQUIRED", PaymentStatus.REQUIRES_ACTION),
    ):
        order = {"id": "O1", "status": status, "purchase_units": [{"payments": {"captures": [garbage]}}]}
        assert mapping.payment_state(order).status is expected


async def test_oauth_token_is_fetched_once_and_reused(paypal_api: PayPalImitation) -> None:
    proc = PayPalPaymentProcessor(settings_for(paypal_api), retry_policy=FAST)
    try:
        pm = await vaulted(proc, paypal_api)
        paid = await proc.create_payment(payment(pm, Money(100, "USD")), idempotency_key="k-1")
        await asyncio.gather(*(proc.get_payment(paid.processor_id) for _ in range(20)))
        for _ in range(5):
            await proc.get_payment(paid.processor_id)
        assert paypal_api.token_requests == 1
        token_calls = [r for r in paypal_api.requests if r.path == "/v1/oauth2/token"]
        assert token_calls[0].body == "grant_type=client_credentials"
        # PayPal rotated its tokens: the adapter renews once and carries on.
        paypal_api.revoke_tokens()
        assert (await proc.get_payment(paid.processor_id)).status is PaymentStatus.SUCCEEDED
        assert paypal_api.token_requests == 2
    finally:
        await proc.aclose()


async def test_concurrent_first_calls_share_one_token(paypal_api: PayPalImitation) -> None:
    proc = PayPalPaymentProcessor(settings_for(paypal_api), retry_policy=FAST)
    try:
        results = await asyncio.gather(
            *(proc.create_payment(payment("", Money(100, "USD")), idempotency_key=f"k-{i}") for i in range(8))
        )
        assert all(r.status is PaymentStatus.REQUIRES_ACTION for r in results)
        assert paypal_api.token_requests == 1
    finally:
        await proc.aclose()


async def test_bad_credentials_are_a_configuration_error_without_the_secret(paypal_api: PayPalImitation) -> None:
    secret = "wrong-secret-DO-NOT-LEAK"
    settings = settings_for(paypal_api, client_secret=secret)
    assert secret not in repr(settings)
    proc = PayPalPaymentProcessor(settings, retry_policy=FAST)
    try:
        with pytest.raises(ProcessorConfigurationError) as err:
            await proc.get_payment("ANY")
        encoded = base64.b64encode(f"{paypal_api.client_id}:{secret}".encode()).decode()
        for text in (str(err.value), repr(err.value), str(err.value.metadata), str(err.value.__cause__), repr(proc)):
            assert secret not in text and encoded not in text
        assert err.value.reason == "PROCESSOR_MISCONFIGURED" and not err.value.retryable
        assert paypal_api.token_requests == 0
    finally:
        await proc.aclose()


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="environment"):
        PayPalSettings("id", "secret", environment="prod")
    with pytest.raises(ValueError):
        PayPalSettings("id", "")


async def test_imitation_requires_request_id_on_posts(paypal_api: PayPalImitation) -> None:
    async with httpx.AsyncClient(base_url=paypal_api.base_url) as client:
        token = await client.post(
            "/v1/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(paypal_api.client_id, paypal_api.client_secret),
        )
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        body = {"intent": "CAPTURE", "purchase_units": [{"amount": {"currency_code": "USD", "value": "1.00"}}]}
        missing = await client.post("/v2/checkout/orders", json=body, headers=headers)
        assert missing.status_code == 400 and missing.json()["details"][0]["issue"] == "MISSING_REQUEST_ID"
        bad_precision = await client.post(
            "/v2/checkout/orders",
            json={**body, "purchase_units": [{"amount": {"currency_code": "JPY", "value": "5.00"}}]},
            headers={**headers, "PayPal-Request-Id": "x1"},
        )
        assert bad_precision.status_code == 422
        assert bad_precision.json()["details"][0]["issue"] == "DECIMAL_PRECISION"
        unauthenticated = await client.get("/v2/checkout/orders/X", headers={"Authorization": "Bearer nope"})
        assert unauthenticated.status_code == 401 and unauthenticated.json()["name"] == "AUTHENTICATION_FAILURE"
