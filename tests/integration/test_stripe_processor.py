"""StripePaymentProcessor through the real stripe-python SDK against the local imitation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_service.adapters.processors.retry import RetryPolicy
from billing_service.adapters.processors.stripe import StripePaymentProcessor, StripeSettings
from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer, PaymentMethodType
from billing_service.domain.errors import (
    InvalidArgument,
    NotSupportedByProcessor,
    PaymentDeclined,
    ProcessorConfigurationError,
    ProcessorError,
    ProcessorUnavailable,
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
from tests.imitations.stripe_api import StripeImitation, parse_form

# stripe-python's HTTPXClient posts the form body as a string (``data=``), which httpx deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

KEY = "sk_test_imitation_4eC39HqLyjWDarjtT1zdp7dc"
FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def imitation() -> Iterator[StripeImitation]:
    with StripeImitation(api_key=KEY, stall_seconds=2.0) as server:
        yield server


@pytest.fixture
def stripe_api(imitation: StripeImitation) -> StripeImitation:
    imitation.reset()
    return imitation


@pytest.fixture
async def processor(stripe_api: StripeImitation) -> AsyncIterator[StripePaymentProcessor]:
    settings = StripeSettings(secret_key=KEY, api_base=stripe_api.base_url, timeout_seconds=2)
    proc = StripePaymentProcessor(settings, retry_policy=FAST)
    yield proc
    await proc.aclose()


_keys = iter(range(1_000_000))


def key() -> str:
    return f"req-{next(_keys)}"


def customer(customer_id: str = "cus_local_1") -> Customer:
    return Customer(
        id=customer_id,
        email="ada@example.com",
        name="Ada",
        description="",
        metadata={"team": "core"},
        default_processor=Processor.STRIPE,
        created_at=NOW,
        updated_at=NOW,
    )


def plan(amount: int = 1500, plan_id: str = "plan_1") -> Plan:
    return Plan(
        id=plan_id,
        name="Pro",
        description="Pro plan",
        price=Money(amount, "USD"),
        interval=Interval.MONTH,
        interval_count=1,
        trial_period_days=0,
        status=PlanStatus.ACTIVE,
        metadata={},
        created_at=NOW,
        updated_at=NOW,
    )


async def setup_card(proc: StripePaymentProcessor, token: str = "pm_card_visa") -> tuple[str, str]:
    cus = await proc.create_customer(customer(), idempotency_key=key())
    pm = await proc.attach_payment_method(cus, token, idempotency_key=key())
    return cus, pm.processor_id


def payment(cus: str, pm: str, amount: int = 2000, **kw: object) -> PaymentRequest:
    defaults: dict[str, object] = {"capture_method": CaptureMethod.AUTOMATIC}
    return PaymentRequest(
        payment_id="pay_1",
        amount=Money(amount, "USD"),
        processor_customer_id=cus,
        processor_payment_method_id=pm,
        metadata={"order": "o-1"},
        **(defaults | kw),  # type: ignore[arg-type]
    )


# --- settings ---------------------------------------------------------------------------


def test_settings_mode_and_masking() -> None:
    assert StripeSettings("sk_test_abc").mode == "test"
    assert StripeSettings("rk_test_abc").mode == "test"
    assert StripeSettings("sk_live_abc").mode == "live"
    assert StripeSettings("rk_live_abc").mode == "live"
    with pytest.raises(ProcessorConfigurationError) as info:
        _ = StripeSettings("pk_live_secretpart").mode
    assert "secretpart" not in str(info.value)
    settings = StripeSettings("sk_live_supersecret123", webhook_secrets=("whsec_topsecret",))
    assert "supersecret123" not in repr(settings)
    assert "topsecret" not in repr(settings) and "topsecret" not in str(settings)
    assert "sk_live_***" in repr(settings)
    with pytest.raises(ProcessorConfigurationError):
        StripePaymentProcessor(StripeSettings("not-a-key"))


def test_form_parsing_follows_stripe_brackets() -> None:
    pairs = [("metadata[a]", "1"), ("items[0][price]", "p"), ("items[1][quantity]", "2"), ("expand[]", "x")]
    assert parse_form(pairs) == {"metadata": {"a": "1"}, "items": [{"price": "p"}, {"quantity": "2"}], "expand": ["x"]}


# --- customers and payment methods ---------------------------------------------------------


async def test_customer_create_update_and_card_attach_detach(
    processor: StripePaymentProcessor, stripe_api: StripeImitation
) -> None:
    cus = await processor.create_customer(customer(), idempotency_key="k-cus")
    [stored] = stripe_api.objects("customer")
    assert stored["id"] == cus and stored["metadata"] == {"team": "core", "billing_customer_id": "cus_local_1"}
    changed = customer()
    changed.name, changed.metadata = "Ada L.", {"tier": "gold"}
    await processor.update_customer(cus, changed, idempotency_key="k-cus-upd")
    [stored] = stripe_api.objects("customer")
    assert stored["name"] == "Ada L." and stored["metadata"] == {"tier": "gold", "billing_customer_id": "cus_local_1"}

    pm = await processor.attach_payment_method(cus, "pm_card_mastercard", idempotency_key="k-att")
    assert pm.processor_id.startswith("pm_") and pm.processor_id != "pm_card_mastercard"
    assert (pm.type, pm.brand, pm.last4, pm.exp_month) == (PaymentMethodType.CARD, "mastercard", "4444", 12)
    await processor.detach_payment_method(pm.processor_id, idempotency_key="k-det")
    assert stripe_api.objects("payment_method")[0]["customer"] is None
    # Every write carried its key; reads did not.
    assert [r.headers.get("idempotency-key") for r in stripe_api.requests] == [
        "k-cus",
        None,
        "k-cus-upd",
        "k-att",
        "k-det",
    ]


async def test_attach_unknown_payment_method_is_a_processor_error(processor: StripePaymentProcessor) -> None:
    cus = await processor.create_customer(customer(), idempotency_key=key())
    with pytest.raises(ProcessorError) as info:
        await processor.attach_payment_method(cus, "pm_nope", idempotency_key=key())
    assert info.value.reason == "RESOURCE_MISSING" and not info.value.retryable


# --- payments -----------------------------------------------------------------------------


async def test_automatic_payment_succeeds(processor: StripePaymentProcessor, stripe_api: StripeImitation) -> None:
    cus, pm = await setup_card(processor)
    state = await processor.create_payment(payment(cus, pm, description="Order 1"), idempotency_key="k-pay")
    assert state.status is PaymentStatus.SUCCEEDED and state.amount_captured == 2000
    [pi] = stripe_api.objects("payment_intent")
    assert pi["metadata"] == {"order": "o-1", "billing_payment_id": "pay_1"}
    assert pi["currency"] == "usd" and pi["capture_method"] == "automatic"
    [create] = stripe_api.requests_to("POST", "/v1/payment_intents")
    assert create.params["automatic_payment_methods"] == {"enabled": "true", "allow_redirects": "never"}
    assert (await processor.get_payment(state.processor_id)).status is PaymentStatus.SUCCEEDED


async def test_decline_maps_to_payment_declined(processor: StripePaymentProcessor, stripe_api: StripeImitation) -> None:
    cus, pm = await setup_card(processor, "pm_card_chargeDeclinedInsufficientFunds")
    with pytest.raises(PaymentDeclined) as info:
        await processor.create_payment(payment(cus, pm), idempotency_key=key())
    meta = info.value.metadata
    assert meta["decline_code"] == "insufficient_funds" and meta["code"] == "card_declined"
    [pi] = stripe_api.objects("payment_intent")
    assert meta["processor_payment_id"] == pi["id"]
    failed = await processor.get_payment(pi["id"])
    assert failed.status is PaymentStatus.FAILED
    assert failed.failure is not None and failed.failure.decline_code == "insufficient_funds"


async def test_generic_decline(processor: StripePaymentProcessor) -> None:
    cus, pm = await setup_card(processor, "pm_card_chargeDeclined")
    with pytest.raises(PaymentDeclined) as info:
        await processor.create_payment(payment(cus, pm), idempotency_key=key())
    assert info.value.metadata["decline_code"] == "generic_decline"


async def test_requires_action_returns_client_secret(processor: StripePaymentProcessor) -> None:
    cus, pm = await setup_card(processor, "pm_card_authenticationRequired")
    state = await processor.create_payment(payment(cus, pm), idempotency_key=key())
    assert state.status is PaymentStatus.REQUIRES_ACTION
    assert state.next_action is not None and state.next_action.client_secret.startswith(f"{state.processor_id}_secret_")
    redirected = await processor.create_payment(
        payment(cus, pm, return_url="https://shop.example/back"), idempotency_key=key()
    )
    assert redirected.next_action is not None and redirected.next_action.redirect_url.startswith("https://hooks.stripe")
    # Off-session, nobody can authenticate: Stripe declines with authentication_required.
    with pytest.raises(PaymentDeclined) as info:
        await processor.create_payment(payment(cus, pm, off_session=True), idempotency_key=key())
    assert info.value.metadata["code"] == "authentication_required"


async def test_manual_capture_partial_and_cancel(processor: StripePaymentProcessor) -> None:
    cus, pm = await setup_card(processor)
    auth = await processor.create_payment(payment(cus, pm, capture_method=CaptureMethod.MANUAL), idempotency_key=key())
    assert auth.status is PaymentStatus.REQUIRES_CAPTURE and auth.amount_capturable == 2000
    captured = await processor.capture_payment(auth.processor_id, Money(1200, "USD"), idempotency_key=key())
    assert captured.status is PaymentStatus.SUCCEEDED and captured.amount_captured == 1200
    assert captured.amount_capturable == 0

    other = await processor.create_payment(payment(cus, pm, capture_method=CaptureMethod.MANUAL), idempotency_key=key())
    canceled = await processor.cancel_payment(other.processor_id, idempotency_key=key())
    assert canceled.status is PaymentStatus.CANCELED
    with pytest.raises(ProcessorError) as info:
        await processor.cancel_payment(auth.processor_id, idempotency_key=key())
    assert info.value.reason == "PAYMENT_INTENT_UNEXPECTED_STATE" and not info.value.retryable


async def test_invalid_amount_is_invalid_argument(processor: StripePaymentProcessor) -> None:
    cus, pm = await setup_card(processor)
    with pytest.raises(InvalidArgument) as info:
        await processor.create_payment(payment(cus, pm, amount=10), idempotency_key=key())
    assert info.value.reason == "AMOUNT_TOO_SMALL" and info.value.violations[0].field == "amount"


async def test_currency_minor_units_follow_stripe(
    processor: StripePaymentProcessor, stripe_api: StripeImitation
) -> None:
    cus, pm = await setup_card(processor)
    with pytest.raises(InvalidArgument) as info:
        await processor.create_payment(_in(cus, pm, Money(1005, "KWD")), idempotency_key=key())
    assert info.value.reason == "AMOUNT_NOT_SUPPORTED_BY_PROCESSOR"
    assert stripe_api.requests_to("POST", "/v1/payment_intents") == []
    state = await processor.create_payment(_in(cus, pm, Money(1000, "KWD")), idempotency_key=key())
    assert state.amount_captured == 1000
    isk = await processor.create_payment(_in(cus, pm, Money(700, "ISK")), idempotency_key=key())
    assert isk.amount_captured == 700  # Stripe holds ISK with two decimals: 70000
    assert stripe_api.objects("payment_intent")[-1]["amount"] == 70000
    with pytest.raises(NotSupportedByProcessor):
        await processor.create_payment(_in(cus, pm, Money(10000, "CLF")), idempotency_key=key())


def _in(cus: str, pm: str, amount: Money) -> PaymentRequest:
    return PaymentRequest("pay_x", amount, CaptureMethod.AUTOMATIC, cus, pm)


# --- refunds ------------------------------------------------------------------------------


async def test_refunds_immediate_and_pending(processor: StripePaymentProcessor, stripe_api: StripeImitation) -> None:
    cus, pm = await setup_card(processor)
    paid = await processor.create_payment(payment(cus, pm), idempotency_key=key())
    req = RefundRequest("ref_1", paid.processor_id, Money(500, "USD"), RefundReason.REQUESTED_BY_CUSTOMER)
    done = await processor.create_refund(req, idempotency_key=key())
    assert done.status is RefundStatus.SUCCEEDED

    stripe_api.refund_mode = "pending"
    req2 = RefundRequest("ref_2", paid.processor_id, Money(700, "USD"), RefundReason.UNSPECIFIED)
    pending = await processor.create_refund(req2, idempotency_key=key())
    assert pending.status is RefundStatus.PENDING
    stripe_api.settle_refund(pending.processor_id, "succeeded")
    assert (await processor.get_refund(pending.processor_id)).status is RefundStatus.SUCCEEDED

    req3 = RefundRequest("ref_3", paid.processor_id, Money(300, "USD"), RefundReason.DUPLICATE)
    third = await processor.create_refund(req3, idempotency_key=key())
    stripe_api.settle_refund(third.processor_id, "failed", "expired_or_canceled_card")
    failed = await processor.get_refund(third.processor_id)
    assert failed.status is RefundStatus.FAILED and failed.failure_reason == "expired_or_canceled_card"
    refund = stripe_api.objects("refund")[0]
    assert refund["metadata"] == {"billing_refund_id": "ref_1"} and refund["reason"] == "requested_by_customer"

    too_much = RefundRequest("ref_4", paid.processor_id, Money(5000, "USD"), RefundReason.UNSPECIFIED)
    with pytest.raises(InvalidArgument) as info:
        await processor.create_refund(too_much, idempotency_key=key())
    assert info.value.reason == "AMOUNT_TOO_LARGE"


@pytest.mark.parametrize(
    ("ours", "at_stripe"),
    [
        (Money(700, "ISK"), 70000),  # ISO zero-decimal, two decimals at Stripe
        (Money(1500, "JPY"), 1500),  # zero-decimal both
        (Money(12340, "KWD"), 12340),  # three decimals, last digit 0
        (Money(150000, "HUF"), 150000),  # two decimals both (whole forint only for payouts)
        (Money(5000, "MGA"), 50),  # ISO two decimals, zero-decimal at Stripe
    ],
)
async def test_refund_amounts_come_back_through_the_currency_scale(
    processor: StripePaymentProcessor, stripe_api: StripeImitation, ours: Money, at_stripe: int
) -> None:
    """Every amount read back from Stripe goes through the conversion used to send it."""
    cus, pm = await setup_card(processor)
    paid = await processor.create_payment(_in(cus, pm, ours * 2), idempotency_key=key())
    assert paid.amount_captured == ours.amount_minor * 2
    refund = await processor.create_refund(
        RefundRequest("re_scale", paid.processor_id, ours, RefundReason.UNSPECIFIED), idempotency_key=key()
    )
    assert stripe_api.objects("refund")[-1]["amount"] == at_stripe
    assert (refund.amount_minor, refund.processor_payment_id) == (ours.amount_minor, paid.processor_id)
    again = await processor.get_refund(refund.processor_id)
    assert again.amount_minor == ours.amount_minor and again.refund_id == "re_scale"


async def test_stripe_refuses_fractional_isk_and_so_do_we(
    processor: StripePaymentProcessor, stripe_api: StripeImitation
) -> None:
    cus, pm = await setup_card(processor)
    form = {
        "amount": "70050",
        "currency": "isk",
        "customer": cus,
        "payment_method": pm,
        "confirm": "true",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
    }
    raw = await _raw_post(stripe_api, "/v1/payment_intents", **form)
    assert raw.status_code == 400
    assert raw.json()["error"]["code"] == "invalid_charge_amount_no_decimal_compatible"


async def _raw_post(api: StripeImitation, path: str, **form: str) -> Any:
    import httpx

    async with httpx.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        return await http.post(path, data=form, headers={"Idempotency-Key": key()})


async def test_an_answer_we_cannot_read_is_a_retryable_processor_fault_that_keeps_the_intent_id(
    processor: StripePaymentProcessor, stripe_api: StripeImitation
) -> None:
    cus, pm = await setup_card(processor)
    stripe_api.garble_next("/v1/payment_intents", lambda pi: {k: v for k, v in pi.items() if k != "currency"})
    with pytest.raises(ProcessorError) as info:
        await processor.create_payment(payment(cus, pm), idempotency_key="k-garbled")
    [intent] = stripe_api.objects("payment_intent")
    assert (info.value.reason, info.value.retryable) == ("PROCESSOR_BAD_RESPONSE", True)
    assert info.value.metadata["processor_payment_id"] == intent["id"]
    again = await processor.create_payment(payment(cus, pm), idempotency_key="k-garbled")
    assert (again.processor_id, again.status, stripe_api.charges_created) == (intent["id"], PaymentStatus.SUCCEEDED, 1)

    stripe_api.garble_next(f"/v1/payment_intents/{intent['id']}", lambda pi: pi | {"amount_received": "a lot"})
    with pytest.raises(ProcessorError) as unreadable:
        await processor.get_payment(intent["id"])
    assert (unreadable.value.reason, unreadable.value.retryable) == ("PROCESSOR_BAD_RESPONSE", True)


async def test_a_success_the_sdk_cannot_decode_is_retried_with_the_same_key(
    processor: StripePaymentProcessor, stripe_api: StripeImitation
) -> None:
    cus, pm = await setup_card(processor)
    stripe_api.garble_next("/v1/payment_intents", lambda pi: b"<html>an overloaded proxy</html>")
    state = await processor.create_payment(payment(cus, pm), idempotency_key="k-html")
    assert state.status is PaymentStatus.SUCCEEDED and stripe_api.charges_created == 1
    attempts = stripe_api.requests_to("POST", "/v1/payment_intents")
    assert [r.headers["idempotency-key"] for r in attempts] == ["k-html", "k-html"]


async def test_a_currency_we_do_not_know_in_an_invoice_is_the_processors_fault(
    processor: StripePaymentProcessor, stripe_api: StripeImitation
) -> None:
    cus, pm = await setup_card(processor)
    basic = plan()
    basic.processor_refs = await processor.create_plan(basic, idempotency_key=key())
    sub = await processor.create_subscription(
        SubscriptionRequest("sub_x", cus, pm, basic, quantity=1, trial_end=None), idempotency_key=key()
    )

    def unknown_currency(page: dict[str, Any]) -> dict[str, Any]:
        for invoice in page["data"]:
            invoice["currency"] = "xts"
            for line in invoice["lines"]["data"]:
                line["currency"] = "xts"
        return page

    stripe_api.garble_next("/v1/invoices", unknown_currency)
    with pytest.raises(ProcessorError) as info:
        await processor.list_invoices(sub.processor_id)
    assert (info.value.reason, info.value.retryable) == ("PROCESSOR_BAD_RESPONSE", True)


def test_amounts_read_back_must_be_exact_in_our_minor_units() -> None:
    from billing_service.adapters.processors.stripe import mapping as stripe_mapping

    assert stripe_mapping.from_stripe_amount(70000, "isk") == 700
    with pytest.raises(ProcessorError) as info:
        stripe_mapping.from_stripe_amount(70050, "isk")  # a fraction of a krona cannot be ours
    assert info.value.reason == "PROCESSOR_BAD_RESPONSE"


# --- retries, timeouts, idempotency, auth ---------------------------------------------------


async def test_rate_limit_then_success_reuses_the_key(
    processor: StripePaymentProcessor, stripe_api: StripeImitation
) -> None:
    cus, pm = await setup_card(processor)
    stripe_api.fail_next("/v1/payment_intents", status=429, error_type="invalid_request_error", code="rate_limit")
    state = await processor.create_payment(payment(cus, pm), idempotency_key="k-429")
    assert state.status is PaymentStatus.SUCCEEDED
    attempts = stripe_api.requests_to("POST", "/v1/payment_intents")
    assert [(r.status, r.headers["idempotency-key"]) for r in attempts] == [(429, "k-429"), (200, "k-429")]
    assert stripe_api.payment_intents_created == 1


async def test_server_errors_exhaust_retries(processor: StripePaymentProcessor, stripe_api: StripeImitation) -> None:
    cus, pm = await setup_card(processor)
    stripe_api.fail_next("/v1/payment_intents", status=500, times=3)
    with pytest.raises(ProcessorUnavailable) as info:
        await processor.create_payment(payment(cus, pm), idempotency_key="k-500")
    assert info.value.retryable and "3 attempts" in info.value.message
    assert len(stripe_api.requests_to("POST", "/v1/payment_intents")) == 3
    assert stripe_api.payment_intents_created == 0


async def test_timeout_after_charge_retry_replays(stripe_api: StripeImitation) -> None:
    settings = StripeSettings(secret_key=KEY, api_base=stripe_api.base_url, timeout_seconds=0.3)
    proc = StripePaymentProcessor(settings, retry_policy=FAST)
    try:
        cus, pm = await setup_card(proc)
        stripe_api.timeout_after_effect_next("/v1/payment_intents")
        state = await proc.create_payment(payment(cus, pm), idempotency_key="k-timeout")
    finally:
        await proc.aclose()
    assert state.status is PaymentStatus.SUCCEEDED
    assert stripe_api.payment_intents_created == 1 and stripe_api.charges_created == 1
    attempts = stripe_api.requests_to("POST", "/v1/payment_intents")
    assert len(attempts) == 2 and {r.headers["idempotency-key"] for r in attempts} == {"k-timeout"}


async def test_key_reuse_with_other_params_is_refused(processor: StripePaymentProcessor) -> None:
    cus, pm = await setup_card(processor)
    first = await processor.create_payment(payment(cus, pm), idempotency_key="k-same")
    again = await processor.create_payment(payment(cus, pm), idempotency_key="k-same")
    assert again.processor_id == first.processor_id  # replayed
    with pytest.raises(ProcessorError) as info:
        await processor.create_payment(payment(cus, pm, amount=3000), idempotency_key="k-same")
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED_AT_PROCESSOR" and not info.value.retryable


async def test_replay_header(processor: StripePaymentProcessor, stripe_api: StripeImitation) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=stripe_api.base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        body = {"email": "x@example.com", "metadata[a]": "1"}
        first = await http.post("/v1/customers", data=body, headers={"Idempotency-Key": "k-raw"})
        second = await http.post("/v1/customers", data=body, headers={"Idempotency-Key": "k-raw"})
        missing = await http.post("/v1/customers", data=body)
        unknown = await http.get("/v1/customers/cus_missing")
    assert first.json() == second.json() and second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "idempotency_key_missing"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "resource_missing"


async def test_bad_key_is_a_configuration_error(stripe_api: StripeImitation) -> None:
    wrong = "sk_test_wrongkey0123456789"
    proc = StripePaymentProcessor(StripeSettings(wrong, api_base=stripe_api.base_url), retry_policy=FAST)
    try:
        with pytest.raises(ProcessorConfigurationError) as info:
            await proc.create_customer(customer(), idempotency_key=key())
    finally:
        await proc.aclose()
    assert wrong not in str(info.value) and "0123456789" not in str(info.value)
    assert wrong not in repr(info.value) and wrong not in repr(proc)
    assert len(stripe_api.requests) == 1  # not retried


# --- plans, subscriptions, invoices ---------------------------------------------------------


async def test_plan_subscription_lifecycle(processor: StripePaymentProcessor, stripe_api: StripeImitation) -> None:
    cus, pm = await setup_card(processor)
    basic = plan()
    basic.processor_refs = await processor.create_plan(basic, idempotency_key="k-plan")
    assert basic.processor_refs["stripe"].startswith("price_") and basic.processor_refs["stripe_product"].startswith(
        "prod_"
    )
    [price] = stripe_api.objects("price")
    assert price["recurring"]["interval"] == "month" and price["unit_amount"] == 1500 and price["currency"] == "usd"
    assert {r.headers["idempotency-key"] for r in stripe_api.requests_to("POST", "/v1/pr")} == {
        "k-plan:product",
        "k-plan:price",
    }

    request = SubscriptionRequest("sub_local", cus, pm, basic, quantity=2, trial_end=None)
    sub = await processor.create_subscription(request, idempotency_key=key())
    assert sub.status is SubscriptionStatus.ACTIVE
    assert sub.current_period_start is not None and sub.current_period_end is not None
    assert 28 <= (sub.current_period_end - sub.current_period_start).days <= 31

    pro = plan(3000, "plan_2")
    pro.processor_refs = await processor.create_plan(pro, idempotency_key=key())
    change = SubscriptionChange(plan=pro, quantity=1, proration=ProrationBehavior.ALWAYS_INVOICE)
    updated = await processor.update_subscription(sub.processor_id, change, idempotency_key=key())
    assert updated.status is SubscriptionStatus.ACTIVE
    [update_req] = stripe_api.requests_to("POST", f"/v1/subscriptions/{sub.processor_id}")
    assert update_req.params["proration_behavior"] == "always_invoice"
    assert update_req.params["items"][0]["price"] == pro.processor_refs["stripe"]

    paused = await processor.pause_subscription(sub.processor_id, idempotency_key=key())
    assert paused.status is SubscriptionStatus.PAUSED
    resumed = await processor.resume_subscription(sub.processor_id, idempotency_key=key())
    assert resumed.status is SubscriptionStatus.ACTIVE
    assert stripe_api.requests_to("POST", f"/v1/subscriptions/{sub.processor_id}")[-1].params == {
        "pause_collection": ""
    }
    ending = await processor.cancel_subscription(sub.processor_id, at_period_end=True, idempotency_key=key())
    assert ending.cancel_at_period_end and ending.status is SubscriptionStatus.ACTIVE

    invoices = await processor.list_invoices(sub.processor_id)
    assert [i.status for i in invoices] == [InvoiceStatus.PAID, InvoiceStatus.PAID]
    proration, first = invoices
    assert first.amount_due == Money(3000, "USD") and first.lines[0].quantity == 2 and not first.lines[0].proration
    assert first.period_start == sub.current_period_start
    assert len(proration.lines) == 2 and all(line.proration for line in proration.lines)
    assert proration.lines[0].amount.amount_minor < 0 < proration.lines[1].amount.amount_minor

    canceled = await processor.cancel_subscription(sub.processor_id, at_period_end=False, idempotency_key=key())
    assert canceled.status is SubscriptionStatus.CANCELED and canceled.canceled_at is not None
    assert (await processor.get_subscription(sub.processor_id)).status is SubscriptionStatus.CANCELED

    await processor.archive_plan(basic, idempotency_key="k-archive")
    assert not stripe_api.objects("price")[0]["active"] and not stripe_api.objects("product")[0]["active"]
    with pytest.raises(InvalidArgument) as info:
        await processor.create_subscription(request, idempotency_key=key())
    assert info.value.violations[0].field == "items[0][price]"


async def test_trial_subscription_and_declined_first_invoice(processor: StripePaymentProcessor) -> None:
    cus, pm = await setup_card(processor)
    basic = plan()
    basic.processor_refs = await processor.create_plan(basic, idempotency_key=key())
    trial_end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=14)
    trial = await processor.create_subscription(
        SubscriptionRequest("sub_t", cus, pm, basic, quantity=1, trial_end=trial_end), idempotency_key=key()
    )
    assert trial.status is SubscriptionStatus.TRIALING and trial.trial_end == trial_end
    assert trial.current_period_end == trial_end
    [invoice] = await processor.list_invoices(trial.processor_id)
    assert invoice.status is InvoiceStatus.PAID and invoice.amount_due.is_zero()

    declined = await processor.attach_payment_method(cus, "pm_card_chargeDeclined", idempotency_key=key())
    sub = await processor.create_subscription(
        SubscriptionRequest("sub_d", cus, declined.processor_id, basic, quantity=1, trial_end=None),
        idempotency_key=key(),
    )
    assert sub.status is SubscriptionStatus.INCOMPLETE
    [open_invoice] = await processor.list_invoices(sub.processor_id)
    assert open_invoice.status is InvoiceStatus.OPEN and open_invoice.amount_paid.is_zero()


async def test_no_payment_method_is_omitted_not_sent_empty(
    processor: StripePaymentProcessor, stripe_api: StripeImitation
) -> None:
    """Stripe refuses an empty string for a field that cannot be unset (``default_payment_method``)."""
    cus, _ = await setup_card(processor)
    basic = plan()
    basic.processor_refs = await processor.create_plan(basic, idempotency_key=key())
    trial_end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    sub = await processor.create_subscription(
        SubscriptionRequest("sub_nopm", cus, "", basic, quantity=1, trial_end=trial_end), idempotency_key=key()
    )
    assert sub.status is SubscriptionStatus.TRIALING
    [sent] = stripe_api.requests_to("POST", "/v1/subscriptions")
    assert "default_payment_method" not in sent.params
    raw = await _raw_post(stripe_api, "/v1/subscriptions", customer=cus, default_payment_method="",
                          **{"items[0][price]": basic.processor_refs["stripe"], "trial_period_days": "3"})  # fmt: skip
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "default_payment_method"


async def test_a_trial_that_ended_without_a_payment_method_is_resumed_through_stripes_resume_endpoint(
    processor: StripePaymentProcessor, stripe_api: StripeImitation
) -> None:
    """Stripe's own ``paused`` status (not ``pause_collection``) is left only through
    ``POST /v1/subscriptions/{id}/resume``; clearing ``pause_collection`` leaves it paused."""
    cus, pm = await setup_card(processor)
    basic = plan()
    basic.processor_refs = await processor.create_plan(basic, idempotency_key=key())
    trial_end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    sub = await processor.create_subscription(
        SubscriptionRequest("sub_trial", cus, "", basic, quantity=2, trial_end=trial_end), idempotency_key=key()
    )
    [sent] = stripe_api.requests_to("POST", "/v1/subscriptions")
    assert sent.params["trial_settings"] == {"end_behavior": {"missing_payment_method": "pause"}}
    stripe_api.end_trial(sub.processor_id)
    paused = await processor.get_subscription(sub.processor_id)
    assert paused.status is SubscriptionStatus.PAUSED and stripe_api.objects("subscription")[-1]["status"] == "paused"

    await _raw_post(stripe_api, f"/v1/customers/{cus}", **{"invoice_settings[default_payment_method]": pm})
    resumed = await processor.resume_subscription(sub.processor_id, idempotency_key=key())
    assert resumed.status is SubscriptionStatus.ACTIVE
    assert stripe_api.requests_to("POST", f"/v1/subscriptions/{sub.processor_id}/resume")
    newest = (await processor.list_invoices(sub.processor_id))[0]
    assert newest.status is InvoiceStatus.PAID and newest.amount_paid == Money(3000, "USD")

    # Collection paused by us (pause_collection) is still resumed by clearing it.
    await processor.pause_subscription(sub.processor_id, idempotency_key=key())
    again = await processor.resume_subscription(sub.processor_id, idempotency_key=key())
    assert again.status is SubscriptionStatus.ACTIVE
    assert stripe_api.requests_to("POST", f"/v1/subscriptions/{sub.processor_id}")[-1].params == {
        "pause_collection": ""
    }


async def test_the_subscription_state_names_the_price_and_quantity(
    processor: StripePaymentProcessor, stripe_api: StripeImitation
) -> None:
    cus, pm = await setup_card(processor)
    basic = plan()
    basic.processor_refs = await processor.create_plan(basic, idempotency_key=key())
    sub = await processor.create_subscription(
        SubscriptionRequest("sub_q", cus, pm, basic, quantity=3, trial_end=None), idempotency_key=key()
    )
    assert (sub.processor_plan_id, sub.quantity) == (basic.processor_refs["stripe"], 3)


async def test_invoice_pagination(processor: StripePaymentProcessor, stripe_api: StripeImitation) -> None:
    cus, pm = await setup_card(processor)
    basic = plan()
    basic.processor_refs = await processor.create_plan(basic, idempotency_key=key())
    sub = await processor.create_subscription(
        SubscriptionRequest("sub_p", cus, pm, basic, quantity=1, trial_end=None), idempotency_key=key()
    )
    for quantity in range(2, 5):
        change = SubscriptionChange(plan=None, quantity=quantity, proration=ProrationBehavior.ALWAYS_INVOICE)
        await processor.update_subscription(sub.processor_id, change, idempotency_key=key())
    import billing_service.adapters.processors.stripe.subscriptions as adapter

    original = adapter._PAGE_SIZE
    adapter._PAGE_SIZE = 2
    try:
        invoices = await processor.list_invoices(sub.processor_id)
    finally:
        adapter._PAGE_SIZE = original
    assert len(invoices) == 4 and invoices[-1].lines[0].description.startswith("1 x")
    assert len(stripe_api.requests_to("GET", "/v1/invoices")) == 2
    events = stripe_api.objects("event")
    assert {"customer.subscription.created", "invoice.paid"} <= {e["type"] for e in events}


async def test_a_failed_renewal_and_its_retries_show_in_the_invoices_attempts(
    processor: StripePaymentProcessor, stripe_api: StripeImitation
) -> None:
    """attempt_count, the decline (from the invoice's PaymentIntent) and the next retry are read;
    a healthy invoice costs no extra call."""
    cus, pm = await setup_card(processor)
    basic = plan()
    basic.processor_refs = await processor.create_plan(basic, idempotency_key=key())
    sub = await processor.create_subscription(
        SubscriptionRequest("sub_renew", cus, pm, basic, quantity=1, trial_end=None), idempotency_key=key()
    )
    [first] = await processor.list_invoices(sub.processor_id)
    assert (first.status, first.attempt_count, first.last_failure, first.next_attempt_at) == (
        InvoiceStatus.PAID, 1, None, None,
    )  # fmt: skip
    assert not stripe_api.requests_to("GET", "/v1/invoice_payments")

    stripe_api.set_card_behaviour(pm, "decline:insufficient_funds")
    renewal = stripe_api.renew(sub.processor_id)
    assert (await processor.get_subscription(sub.processor_id)).status is SubscriptionStatus.PAST_DUE
    newest = (await processor.list_invoices(sub.processor_id))[0]
    assert (newest.processor_id, newest.status, newest.attempt_count) == (renewal["id"], InvoiceStatus.OPEN, 1)
    assert newest.last_failure is not None
    assert (newest.last_failure.code, newest.last_failure.decline_code) == ("card_declined", "insufficient_funds")
    assert newest.last_failure.message == "Your card has insufficient funds."
    assert newest.next_attempt_at is not None and newest.next_attempt_at > datetime.now(UTC)
    [read] = stripe_api.requests_to("GET", "/v1/invoice_payments")
    assert read.params["invoice"] == renewal["id"]

    stripe_api.retry_invoice(renewal["id"])
    assert (await processor.list_invoices(sub.processor_id))[0].attempt_count == 2
    stripe_api.set_card_behaviour(pm, "ok")
    stripe_api.retry_invoice(renewal["id"])
    paid = (await processor.list_invoices(sub.processor_id))[0]
    assert (paid.status, paid.attempt_count, paid.next_attempt_at) == (InvoiceStatus.PAID, 3, None)
    assert (await processor.get_subscription(sub.processor_id)).status is SubscriptionStatus.ACTIVE
    events = [e["type"] for e in stripe_api.objects("event") if e["data"]["object"]["id"] == renewal["id"]]
    assert events == ["invoice.created", "invoice.payment_failed", "invoice.payment_failed", "invoice.paid"]
