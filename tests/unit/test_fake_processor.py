"""The fake processor behaves like a small Stripe: tokens, idempotency, faults, refunds, billing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from billing_service.adapters.processors._fake_records import add_interval
from billing_service.adapters.processors.fake import FakePaymentProcessor
from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer, PaymentMethodType
from billing_service.domain.errors import NotSupportedByProcessor, PaymentDeclined, ProcessorError
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    CaptureMethod,
    PaymentStatus,
    ProcessorPaymentState,
    RefundReason,
    RefundStatus,
)
from billing_service.domain.subscriptions import (
    Interval,
    InvoiceStatus,
    Plan,
    PlanStatus,
    ProrationBehavior,
    SubscriptionStatus,
)
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.ports import (
    PaymentProcessor,
    PaymentRequest,
    RefundRequest,
    SubscriptionChange,
    SubscriptionRequest,
)

START = datetime(2026, 1, 1, 12, tzinfo=UTC)


def key() -> str:
    return str(uuid.uuid4())


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def customer(n: int = 1) -> Customer:
    return Customer(f"cus_{n}", f"c{n}@example.com", f"C {n}", "", {}, Processor.FAKE, START, START)


def plan(price: int = 1000, *, name: str = "Pro", interval: Interval = Interval.MONTH) -> Plan:
    return Plan(f"plan_{name}", name, "", usd(price), interval, 1, 0, PlanStatus.ACTIVE, {}, START, START)


async def new_customer(fake: FakePaymentProcessor, token: str = "pm_card_visa") -> tuple[str, str]:
    cus = await fake.create_customer(customer(), idempotency_key=key())
    pm = await fake.attach_payment_method(cus, token, idempotency_key=key())
    return cus, pm.processor_id


def payment_request(
    cus: str,
    pm: str,
    amount: int = 5000,
    capture: CaptureMethod = CaptureMethod.AUTOMATIC,
    *,
    off_session: bool = False,
) -> PaymentRequest:
    return PaymentRequest("pay_1", usd(amount), capture, cus, pm, off_session=off_session)


async def pay(
    fake: FakePaymentProcessor,
    token: str = "pm_card_visa",
    *,
    capture: CaptureMethod = CaptureMethod.AUTOMATIC,
    off_session: bool = False,
) -> ProcessorPaymentState:
    cus, pm = await new_customer(fake, token)
    request = payment_request(cus, pm, capture=capture, off_session=off_session)
    return await fake.create_payment(request, idempotency_key=key())


async def created_plan(fake: FakePaymentProcessor, price: int = 1000, name: str = "Pro") -> Plan:
    p = plan(price, name=name)
    p.processor_refs.update(await fake.create_plan(p, idempotency_key=key()))
    return p


async def subscribe(
    fake: FakePaymentProcessor, p: Plan, token: str = "pm_card_visa", *, trial_end: datetime | None = None, qty: int = 1
):
    cus, pm = await new_customer(fake, token)
    request = SubscriptionRequest("sub_1", cus, pm, p, qty, trial_end)
    return await fake.create_subscription(request, idempotency_key=key())


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def fake(clock: ManualClock) -> FakePaymentProcessor:
    return FakePaymentProcessor(clock)


def test_satisfies_the_port() -> None:
    processor: PaymentProcessor = FakePaymentProcessor()
    assert processor.name is Processor.FAKE


# -- customers and tokens ------------------------------------------------------------


async def test_customer_ids_count_up_and_unknown_customers_are_refused(fake: FakePaymentProcessor) -> None:
    assert await fake.create_customer(customer(1), idempotency_key=key()) == "cus_fake_1"
    assert await fake.create_customer(customer(2), idempotency_key=key()) == "cus_fake_2"
    await fake.update_customer("cus_fake_1", customer(1), idempotency_key=key())
    with pytest.raises(ProcessorError) as err:
        await fake.update_customer("cus_fake_9", customer(1), idempotency_key=key())
    assert err.value.reason == "RESOURCE_MISSING_AT_PROCESSOR"


@pytest.mark.parametrize(
    ("token", "kind", "brand", "last4"),
    [
        ("pm_card_visa", PaymentMethodType.CARD, "visa", "4242"),
        ("pm_card_mastercard", PaymentMethodType.CARD, "mastercard", "4444"),
        ("pm_card_amex", PaymentMethodType.CARD, "amex", "8431"),
        ("pm_paypal", PaymentMethodType.PAYPAL, "", ""),
    ],
)
async def test_attaching_a_token_returns_display_data(
    fake: FakePaymentProcessor, token: str, kind: PaymentMethodType, brand: str, last4: str
) -> None:
    cus = await fake.create_customer(customer(), idempotency_key=key())
    attached = await fake.attach_payment_method(cus, token, idempotency_key=key())
    assert attached.processor_id == "pm_fake_1"
    assert (attached.type, attached.brand, attached.last4) == (kind, brand, last4)
    expected_expiry = (12, 2034) if kind is PaymentMethodType.CARD else (0, 0)
    assert (attached.exp_month, attached.exp_year) == expected_expiry


@pytest.mark.parametrize(
    "token", ["pm_card_nope", "tok_visa", "4242424242424242", "4000 0566 5566 5556", "x4111-1111-1111-1111"]
)
async def test_unknown_tokens_and_card_numbers_are_refused(fake: FakePaymentProcessor, token: str) -> None:
    cus = await fake.create_customer(customer(), idempotency_key=key())
    k = key()
    with pytest.raises(ProcessorError) as err:
        await fake.attach_payment_method(cus, token, idempotency_key=k)
    assert err.value.reason == "INVALID_PAYMENT_METHOD_TOKEN"
    assert not err.value.retryable
    assert token not in err.value.message


async def test_a_card_number_is_never_kept_even_under_its_idempotency_key(fake: FakePaymentProcessor) -> None:
    cus = await fake.create_customer(customer(), idempotency_key=key())
    k = key()
    with pytest.raises(ProcessorError):
        await fake.attach_payment_method(cus, "4242424242424242", idempotency_key=k)
    # Nothing was stored for the key: a proper request with it goes through.
    assert (await fake.attach_payment_method(cus, "pm_card_visa", idempotency_key=k)).last4 == "4242"


async def test_detach(fake: FakePaymentProcessor) -> None:
    cus, pm = await new_customer(fake)
    with pytest.raises(ProcessorError) as err:
        await fake.detach_payment_method("pm_fake_404", idempotency_key=key())
    assert err.value.reason == "RESOURCE_MISSING_AT_PROCESSOR"
    await fake.detach_payment_method(pm, idempotency_key=key())
    with pytest.raises(ProcessorError) as err:
        await fake.create_payment(payment_request(cus, pm), idempotency_key=key())
    assert err.value.reason == "PAYMENT_METHOD_DETACHED"
    with pytest.raises(ProcessorError) as err:
        await fake.detach_payment_method(pm, idempotency_key=key())
    assert err.value.reason == "PAYMENT_METHOD_DETACHED"
    assert fake.charges_created == []


async def test_charging_another_customers_method_is_refused(fake: FakePaymentProcessor) -> None:
    _, pm = await new_customer(fake)
    other, _ = await new_customer(fake)
    with pytest.raises(ProcessorError) as err:
        await fake.create_payment(payment_request(other, pm), idempotency_key=key())
    assert err.value.reason == "INVALID_REQUEST_AT_PROCESSOR"


# -- payments ----------------------------------------------------------------------------


async def test_automatic_capture_succeeds(fake: FakePaymentProcessor) -> None:
    state = await pay(fake)
    assert (state.processor_id, state.status) == ("pi_fake_1", PaymentStatus.SUCCEEDED)
    assert (state.amount_captured, state.amount_capturable) == (5000, 0)
    assert await fake.get_payment(state.processor_id) == state
    [charge] = fake.charges_created
    assert (charge.processor_payment_id, charge.amount, charge.succeeded) == ("pi_fake_1", usd(5000), True)


async def test_partial_capture_releases_the_rest(fake: FakePaymentProcessor) -> None:
    state = await pay(fake, capture=CaptureMethod.MANUAL)
    assert (state.status, state.amount_capturable, state.amount_captured) == (PaymentStatus.REQUIRES_CAPTURE, 5000, 0)
    with pytest.raises(ProcessorError) as err:
        await fake.capture_payment(state.processor_id, usd(5001), idempotency_key=key())
    assert err.value.reason == "CAPTURE_EXCEEDS_CAPTURABLE_AT_PROCESSOR"
    captured = await fake.capture_payment(state.processor_id, usd(3000), idempotency_key=key())
    assert (captured.status, captured.amount_captured, captured.amount_capturable) == (PaymentStatus.SUCCEEDED, 3000, 0)
    with pytest.raises(ProcessorError) as err:
        await fake.capture_payment(state.processor_id, usd(1000), idempotency_key=key())
    assert err.value.reason == "PROCESSOR_STATE_CONFLICT"


async def test_cancel_an_authorization_but_not_a_captured_payment(fake: FakePaymentProcessor) -> None:
    held = await pay(fake, capture=CaptureMethod.MANUAL)
    canceled = await fake.cancel_payment(held.processor_id, idempotency_key=key())
    assert (canceled.status, canceled.amount_capturable) == (PaymentStatus.CANCELED, 0)
    done = await pay(fake)
    with pytest.raises(ProcessorError) as err:
        await fake.cancel_payment(done.processor_id, idempotency_key=key())
    assert err.value.reason == "PROCESSOR_STATE_CONFLICT"
    with pytest.raises(ProcessorError) as err:
        await fake.capture_payment(held.processor_id, usd(100), idempotency_key=key())
    assert err.value.reason == "PROCESSOR_STATE_CONFLICT"


@pytest.mark.parametrize(
    ("token", "decline_code"),
    [("pm_card_chargeDeclined", "generic_decline"), ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds")],
)
async def test_declines_raise_and_leave_a_failed_payment(
    fake: FakePaymentProcessor, token: str, decline_code: str
) -> None:
    cus, pm = await new_customer(fake, token)
    k = key()
    with pytest.raises(PaymentDeclined) as err:
        await fake.create_payment(payment_request(cus, pm), idempotency_key=k)
    assert err.value.metadata == {
        "code": "card_declined",
        "decline_code": decline_code,
        "processor_payment_id": "pi_fake_1",
    }
    state = await fake.get_payment("pi_fake_1")
    assert state.status is PaymentStatus.FAILED
    assert state.failure is not None and state.failure.decline_code == decline_code
    # The decline is the key's final result: a retry re-raises it without another attempt.
    with pytest.raises(PaymentDeclined) as again:
        await fake.create_payment(payment_request(cus, pm), idempotency_key=k)
    assert again.value.metadata == err.value.metadata
    assert [c.succeeded for c in fake.charges_created] == [False]


@pytest.mark.parametrize(
    ("capture", "after"),
    [(CaptureMethod.AUTOMATIC, PaymentStatus.SUCCEEDED), (CaptureMethod.MANUAL, PaymentStatus.REQUIRES_CAPTURE)],
)
async def test_authentication_required_then_completed(
    fake: FakePaymentProcessor, capture: CaptureMethod, after: PaymentStatus
) -> None:
    state = await pay(fake, "pm_card_authenticationRequired", capture=capture)
    assert state.status is PaymentStatus.REQUIRES_ACTION
    assert state.next_action is not None
    assert state.next_action.client_secret.startswith(f"{state.processor_id}_secret_")
    assert fake.charges_created == []
    done = await fake.complete_action(state.processor_id, succeed=True)
    assert done.status is after
    assert done.next_action is None
    assert len(fake.charges_created) == 1
    with pytest.raises(ProcessorError) as err:
        await fake.complete_action(state.processor_id)
    assert err.value.reason == "PROCESSOR_STATE_CONFLICT"


async def test_authentication_failed_or_abandoned(fake: FakePaymentProcessor) -> None:
    failed = await pay(fake, "pm_card_authenticationRequired")
    assert (await fake.complete_action(failed.processor_id, succeed=False)).status is PaymentStatus.FAILED
    abandoned = await pay(fake, "pm_card_authenticationRequired")
    assert (await fake.cancel_payment(abandoned.processor_id, idempotency_key=key())).status is PaymentStatus.CANCELED


async def test_authentication_required_off_session_is_declined(fake: FakePaymentProcessor) -> None:
    with pytest.raises(PaymentDeclined) as err:
        await pay(fake, "pm_card_authenticationRequired", off_session=True)
    assert err.value.metadata["code"] == "authentication_required"


# -- idempotency and faults -----------------------------------------------------------------


async def test_replay_returns_the_first_result_and_charges_once(fake: FakePaymentProcessor) -> None:
    cus, pm = await new_customer(fake)
    k = key()
    first = await fake.create_payment(payment_request(cus, pm), idempotency_key=k)
    second = await fake.create_payment(payment_request(cus, pm), idempotency_key=k)
    assert second == first
    assert len(fake.charges_created) == 1
    assert fake.effects["create_payment"] == 1


async def test_twenty_concurrent_calls_with_one_key_charge_once(fake: FakePaymentProcessor) -> None:
    cus, pm = await new_customer(fake)
    k = key()
    results = await asyncio.gather(
        *(fake.create_payment(payment_request(cus, pm), idempotency_key=k) for _ in range(20))
    )
    assert {r.processor_id for r in results} == {"pi_fake_1"}
    assert len(fake.charges_created) == 1
    assert fake.effects["create_payment"] == 1


async def test_replayed_results_are_copies(fake: FakePaymentProcessor) -> None:
    cus, pm = await new_customer(fake)
    k = key()
    first = await fake.create_payment(payment_request(cus, pm), idempotency_key=k)
    first.amount_captured = 1
    assert (await fake.create_payment(payment_request(cus, pm), idempotency_key=k)).amount_captured == 5000


async def test_reusing_a_key_for_other_parameters_or_another_verb_is_refused(fake: FakePaymentProcessor) -> None:
    cus, pm = await new_customer(fake)
    k = key()
    state = await fake.create_payment(payment_request(cus, pm, capture=CaptureMethod.MANUAL), idempotency_key=k)
    with pytest.raises(ProcessorError) as err:
        await fake.create_payment(payment_request(cus, pm, 4999, CaptureMethod.MANUAL), idempotency_key=k)
    assert err.value.reason == "IDEMPOTENCY_KEY_REUSED_AT_PROCESSOR"
    with pytest.raises(ProcessorError) as err:
        await fake.capture_payment(state.processor_id, usd(5000), idempotency_key=k)
    assert err.value.reason == "IDEMPOTENCY_KEY_REUSED_AT_PROCESSOR"
    assert len(fake.charges_created) == 1


async def test_a_fault_before_the_effect_changes_nothing(fake: FakePaymentProcessor) -> None:
    cus, pm = await new_customer(fake)
    k = key()
    fake.fail_next("create_payment", ProcessorError("connect timeout", reason="PROCESSOR_UNAVAILABLE", retryable=True))
    with pytest.raises(ProcessorError) as err:
        await fake.create_payment(payment_request(cus, pm), idempotency_key=k)
    assert err.value.retryable
    assert fake.charges_created == []
    assert (await fake.create_payment(payment_request(cus, pm), idempotency_key=k)).status is PaymentStatus.SUCCEEDED
    assert len(fake.charges_created) == 1


async def test_charged_then_connection_dropped_and_the_retry_gets_the_stored_result(fake: FakePaymentProcessor) -> None:
    cus, pm = await new_customer(fake)
    k = key()
    dropped = ProcessorError("connection reset", reason="PROCESSOR_UNAVAILABLE", retryable=True)
    fake.fail_next("create_payment", dropped, after_effect=True)
    with pytest.raises(ProcessorError) as err:
        await fake.create_payment(payment_request(cus, pm), idempotency_key=k)
    assert err.value is dropped
    assert len(fake.charges_created) == 1  # the money moved
    retried = await fake.create_payment(payment_request(cus, pm), idempotency_key=k)
    assert (retried.processor_id, retried.status) == ("pi_fake_1", PaymentStatus.SUCCEEDED)
    assert len(fake.charges_created) == 1


async def test_faults_on_reads_and_unknown_verbs(fake: FakePaymentProcessor) -> None:
    state = await pay(fake)
    fake.fail_next("get_payment", ProcessorError("boom", retryable=True))
    with pytest.raises(ProcessorError):
        await fake.get_payment(state.processor_id)
    assert (await fake.get_payment(state.processor_id)).status is PaymentStatus.SUCCEEDED
    with pytest.raises(ValueError, match="unknown processor verb"):
        fake.fail_next("create_paymnet", ProcessorError("typo"))


# -- refunds -----------------------------------------------------------------------------------


def refund_request(processor_payment_id: str, amount: int) -> RefundRequest:
    return RefundRequest("ref_1", processor_payment_id, usd(amount), RefundReason.REQUESTED_BY_CUSTOMER)


async def test_full_refund(fake: FakePaymentProcessor) -> None:
    state = await pay(fake)
    refund = await fake.create_refund(refund_request(state.processor_id, 5000), idempotency_key=key())
    assert (refund.processor_id, refund.status) == ("re_fake_1", RefundStatus.SUCCEEDED)
    assert await fake.get_refund("re_fake_1") == refund
    with pytest.raises(ProcessorError) as err:
        await fake.create_refund(refund_request(state.processor_id, 1), idempotency_key=key())
    assert err.value.reason == "REFUND_EXCEEDS_CAPTURED_AT_PROCESSOR"


async def test_partial_refunds_then_over_refund_refused(fake: FakePaymentProcessor) -> None:
    state = await pay(fake, capture=CaptureMethod.MANUAL)
    with pytest.raises(ProcessorError) as err:
        await fake.create_refund(refund_request(state.processor_id, 100), idempotency_key=key())
    assert err.value.reason == "PROCESSOR_STATE_CONFLICT"  # nothing captured yet
    await fake.capture_payment(state.processor_id, usd(4000), idempotency_key=key())
    k = key()
    first = await fake.create_refund(refund_request(state.processor_id, 1500), idempotency_key=k)
    assert await fake.create_refund(refund_request(state.processor_id, 1500), idempotency_key=k) == first
    await fake.create_refund(refund_request(state.processor_id, 2000), idempotency_key=key())
    with pytest.raises(ProcessorError) as err:
        await fake.create_refund(refund_request(state.processor_id, 501), idempotency_key=key())
    assert err.value.reason == "REFUND_EXCEEDS_CAPTURED_AT_PROCESSOR"
    last = await fake.create_refund(refund_request(state.processor_id, 500), idempotency_key=key())
    assert last.status is RefundStatus.SUCCEEDED


async def test_pending_refund_succeeds_on_settlement(fake: FakePaymentProcessor) -> None:
    state = await pay(fake, "pm_card_refundPending")
    refund = await fake.create_refund(refund_request(state.processor_id, 5000), idempotency_key=key())
    assert refund.status is RefundStatus.PENDING
    with pytest.raises(ProcessorError) as err:  # pending refunds hold their amount
        await fake.create_refund(refund_request(state.processor_id, 1), idempotency_key=key())
    assert err.value.reason == "REFUND_EXCEEDS_CAPTURED_AT_PROCESSOR"
    [settled] = await fake.settle_refunds()
    assert (settled.processor_id, settled.status) == (refund.processor_id, RefundStatus.SUCCEEDED)
    assert (await fake.get_refund(refund.processor_id)).status is RefundStatus.SUCCEEDED
    assert await fake.settle_refunds() == []


async def test_failing_refund_fails_on_settlement_and_releases_the_amount(fake: FakePaymentProcessor) -> None:
    state = await pay(fake, "pm_card_refundFail")
    refund = await fake.create_refund(refund_request(state.processor_id, 5000), idempotency_key=key())
    assert refund.status is RefundStatus.PENDING
    [settled] = await fake.settle_refunds()
    assert settled.status is RefundStatus.FAILED
    assert settled.failure_reason
    again = await fake.create_refund(refund_request(state.processor_id, 5000), idempotency_key=key())
    assert again.status is RefundStatus.PENDING


# -- plans ------------------------------------------------------------------------------------------


async def test_plans_are_mirrored_and_archived(fake: FakePaymentProcessor) -> None:
    p = plan()
    refs = await fake.create_plan(p, idempotency_key=key())
    assert refs == {"fake": "price_fake_1", "fake_product": "prod_fake_1"}
    p.processor_refs.update(refs)
    await fake.archive_plan(p, idempotency_key=key())
    with pytest.raises(ProcessorError) as err:
        await subscribe(fake, p)
    assert err.value.reason == "PROCESSOR_STATE_CONFLICT"
    with pytest.raises(ProcessorError) as err:
        await subscribe(fake, plan(name="Unmirrored"))
    assert err.value.reason == "PLAN_NOT_AT_PROCESSOR"


# -- calendar ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "interval", "count", "expected"),
    [
        (datetime(2026, 1, 31, tzinfo=UTC), Interval.MONTH, 1, datetime(2026, 2, 28, tzinfo=UTC)),
        (datetime(2028, 1, 31, tzinfo=UTC), Interval.MONTH, 1, datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2026, 1, 31, tzinfo=UTC), Interval.MONTH, 3, datetime(2026, 4, 30, tzinfo=UTC)),
        (datetime(2026, 11, 30, tzinfo=UTC), Interval.MONTH, 3, datetime(2027, 2, 28, tzinfo=UTC)),
        (datetime(2028, 2, 29, tzinfo=UTC), Interval.YEAR, 1, datetime(2029, 2, 28, tzinfo=UTC)),
        (datetime(2026, 1, 1, tzinfo=UTC), Interval.WEEK, 2, datetime(2026, 1, 15, tzinfo=UTC)),
        (datetime(2026, 12, 31, tzinfo=UTC), Interval.DAY, 1, datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_calendar_addition_clamps_month_ends(
    start: datetime, interval: Interval, count: int, expected: datetime
) -> None:
    assert add_interval(start, interval, count) == expected


# -- subscriptions ---------------------------------------------------------------------------------------


async def test_trial_becomes_active_with_an_invoice_at_renewal(fake: FakePaymentProcessor) -> None:
    p = await created_plan(fake)
    trial_end = START + timedelta(days=14)
    sub = await subscribe(fake, p, trial_end=trial_end)
    assert (sub.processor_id, sub.status) == ("sub_fake_1", SubscriptionStatus.TRIALING)
    assert (sub.current_period_start, sub.current_period_end, sub.trial_end) == (START, trial_end, trial_end)
    assert await fake.list_invoices(sub.processor_id) == []
    assert await fake.advance_clock_to(trial_end - timedelta(seconds=1)) == []
    [invoice] = await fake.advance_clock_to(trial_end)
    assert (invoice.processor_id, invoice.status, invoice.amount_due, invoice.amount_paid) == (
        "in_fake_1",
        InvoiceStatus.PAID,
        usd(1000),
        usd(1000),
    )
    assert (invoice.period_start, invoice.period_end) == (trial_end, datetime(2026, 2, 15, 12, tzinfo=UTC))
    after = await fake.get_subscription(sub.processor_id)
    assert (after.status, after.current_period_start, after.current_period_end) == (
        SubscriptionStatus.ACTIVE,
        invoice.period_start,
        invoice.period_end,
    )


async def test_monthly_renewals_from_jan_31_follow_the_calendar(clock: ManualClock) -> None:
    clock.advance(datetime(2026, 1, 31, 9, tzinfo=UTC) - clock.now())
    fake = FakePaymentProcessor(clock)
    p = await created_plan(fake, 1999)
    sub = await subscribe(fake, p, qty=2)
    assert sub.status is SubscriptionStatus.ACTIVE
    # The clock jumps three months at once: the fake catches up period by period.
    renewals = await fake.advance_clock_to(datetime(2026, 4, 30, 9, tzinfo=UTC))
    assert len(renewals) == 3
    invoices = await fake.list_invoices(sub.processor_id)
    assert [i.processor_id for i in invoices] == ["in_fake_4", "in_fake_3", "in_fake_2", "in_fake_1"]
    periods = [(i.period_start.date().isoformat(), i.period_end.date().isoformat()) for i in reversed(invoices)]  # type: ignore[union-attr]
    assert periods == [
        ("2026-01-31", "2026-02-28"),
        ("2026-02-28", "2026-03-31"),
        ("2026-03-31", "2026-04-30"),
        ("2026-04-30", "2026-05-31"),
    ]
    assert all(i.status is InvoiceStatus.PAID and i.amount_due == usd(3998) for i in invoices)
    assert [i.created_at for i in renewals] == [i.period_start for i in renewals]
    assert len(fake.charges_created) == 4


async def test_creating_a_subscription_twice_with_one_key_bills_once(fake: FakePaymentProcessor) -> None:
    p = await created_plan(fake)
    cus, pm = await new_customer(fake)
    request = SubscriptionRequest("sub_1", cus, pm, p, 1, None)
    k = key()
    first = await fake.create_subscription(request, idempotency_key=k)
    assert await fake.create_subscription(request, idempotency_key=k) == first
    assert len(await fake.list_invoices(first.processor_id)) == 1


# Period 2026-04-01 .. 2026-05-01 is exactly 30 days; the change happens 15 days in.
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)
HALFWAY = datetime(2026, 4, 16, tzinfo=UTC)
MAY_1 = datetime(2026, 5, 1, tzinfo=UTC)


async def _halfway_change(proration: ProrationBehavior, *, new_price: int | None, qty: int | None = None):
    clock = ManualClock(APRIL_1)
    fake = FakePaymentProcessor(clock)
    basic = await created_plan(fake, 999, "Basic")
    premium = await created_plan(fake, new_price, "Premium") if new_price is not None else None
    sub = await subscribe(fake, basic)
    assert sub.current_period_end == MAY_1
    await fake.advance_clock_to(HALFWAY)
    change = SubscriptionChange(premium, qty, proration)
    await fake.update_subscription(sub.processor_id, change, idempotency_key=key())
    return fake, sub.processor_id


async def test_upgrade_halfway_creates_exact_prorations_on_the_next_invoice() -> None:
    fake, sub_id = await _halfway_change(ProrationBehavior.CREATE_PRORATIONS, new_price=2999)
    assert len(await fake.list_invoices(sub_id)) == 1  # nothing billed yet
    [renewal] = await fake.advance_clock_to(MAY_1)
    amounts = [(line.amount.amount_minor, line.proration) for line in renewal.lines]
    # Unused half of 999 floors to 499 credit; remaining half of 2999 floors to 1499.
    assert amounts == [(2999, False), (-499, True), (1499, True)]
    assert renewal.amount_due == usd(2999 - 499 + 1499)


async def test_quantity_increase_halfway_prorates_by_seconds_with_floor_division() -> None:
    fake, _ = await _halfway_change(ProrationBehavior.CREATE_PRORATIONS, new_price=None, qty=3)
    [renewal] = await fake.advance_clock_to(MAY_1)
    assert [line.amount.amount_minor for line in renewal.lines] == [2997, -499, 1498]  # 2997 / 2 = 1498.5


async def test_always_invoice_bills_the_proration_now() -> None:
    fake, sub_id = await _halfway_change(ProrationBehavior.ALWAYS_INVOICE, new_price=2999)
    newest, _ = await fake.list_invoices(sub_id)
    assert [line.amount.amount_minor for line in newest.lines] == [-499, 1499]
    assert (newest.status, newest.amount_paid, newest.created_at) == (InvoiceStatus.PAID, usd(1000), HALFWAY)
    [renewal] = await fake.advance_clock_to(MAY_1)
    assert [line.amount.amount_minor for line in renewal.lines] == [2999]


async def test_no_proration_changes_the_price_from_the_next_period() -> None:
    fake, _ = await _halfway_change(ProrationBehavior.NONE, new_price=2999)
    [renewal] = await fake.advance_clock_to(MAY_1)
    assert [line.amount.amount_minor for line in renewal.lines] == [2999]


async def test_downgrade_credit_larger_than_the_invoice_is_carried_forward() -> None:
    clock = ManualClock(APRIL_1)
    fake = FakePaymentProcessor(clock)
    big, small = await created_plan(fake, 10_000, "Big"), await created_plan(fake, 100, "Small")
    sub = await subscribe(fake, big)
    await fake.advance_clock_to(datetime(2026, 4, 2, tzinfo=UTC))  # 29 of 30 days unused
    change = SubscriptionChange(small, None, ProrationBehavior.ALWAYS_INVOICE)
    await fake.update_subscription(sub.processor_id, change, idempotency_key=key())
    newest = (await fake.list_invoices(sub.processor_id))[0]
    assert (newest.amount_due, newest.status) == (usd(0), InvoiceStatus.PAID)
    assert sum(line.amount.amount_minor for line in newest.lines) == 0
    [renewal] = await fake.advance_clock_to(MAY_1)
    carried = -(10_000 * 29 // 30) + 100 * 29 // 30
    assert renewal.amount_due == usd(max(0, 100 + carried))


async def test_changing_the_interval_is_not_supported(fake: FakePaymentProcessor) -> None:
    monthly = await created_plan(fake)
    yearly = plan(10_000, name="Yearly", interval=Interval.YEAR)
    yearly.processor_refs.update(await fake.create_plan(yearly, idempotency_key=key()))
    sub = await subscribe(fake, monthly)
    with pytest.raises(NotSupportedByProcessor):
        change = SubscriptionChange(yearly, None, ProrationBehavior.CREATE_PRORATIONS)
        await fake.update_subscription(sub.processor_id, change, idempotency_key=key())


async def test_pause_skips_invoices_until_resumed(fake: FakePaymentProcessor) -> None:
    p = await created_plan(fake)
    sub = await subscribe(fake, p)
    paused = await fake.pause_subscription(sub.processor_id, idempotency_key=key())
    assert paused.status is SubscriptionStatus.PAUSED
    assert await fake.advance_clock_to(datetime(2026, 3, 15, tzinfo=UTC)) == []
    state = await fake.get_subscription(sub.processor_id)
    assert (state.status, state.current_period_start) == (
        SubscriptionStatus.PAUSED,
        datetime(2026, 3, 1, 12, tzinfo=UTC),
    )
    assert len(await fake.list_invoices(sub.processor_id)) == 1
    resumed = await fake.resume_subscription(sub.processor_id, idempotency_key=key())
    assert resumed.status is SubscriptionStatus.ACTIVE
    with pytest.raises(ProcessorError) as err:
        await fake.resume_subscription(sub.processor_id, idempotency_key=key())
    assert err.value.reason == "PROCESSOR_STATE_CONFLICT"
    [invoice] = await fake.advance_clock_to(datetime(2026, 4, 1, 12, tzinfo=UTC))
    assert invoice.period_start == datetime(2026, 4, 1, 12, tzinfo=UTC)


async def test_cancel_at_period_end_cancels_at_renewal(fake: FakePaymentProcessor) -> None:
    p = await created_plan(fake)
    sub = await subscribe(fake, p)
    flagged = await fake.cancel_subscription(sub.processor_id, at_period_end=True, idempotency_key=key())
    assert (flagged.status, flagged.cancel_at_period_end) == (SubscriptionStatus.ACTIVE, True)
    assert await fake.advance_clock_to(datetime(2026, 6, 1, tzinfo=UTC)) == []
    state = await fake.get_subscription(sub.processor_id)
    assert (state.status, state.canceled_at) == (SubscriptionStatus.CANCELED, sub.current_period_end)
    assert len(await fake.list_invoices(sub.processor_id)) == 1


async def test_cancel_now(fake: FakePaymentProcessor, clock: ManualClock) -> None:
    p = await created_plan(fake)
    sub = await subscribe(fake, p)
    now = clock.advance(timedelta(days=3))
    canceled = await fake.cancel_subscription(sub.processor_id, at_period_end=False, idempotency_key=key())
    assert (canceled.status, canceled.canceled_at) == (SubscriptionStatus.CANCELED, now)
    with pytest.raises(ProcessorError) as err:
        await fake.cancel_subscription(sub.processor_id, at_period_end=False, idempotency_key=key())
    assert err.value.reason == "PROCESSOR_STATE_CONFLICT"
    assert await fake.advance_clock_to(datetime(2026, 3, 1, tzinfo=UTC)) == []


async def test_a_declined_renewal_makes_the_subscription_past_due(fake: FakePaymentProcessor) -> None:
    p = await created_plan(fake)
    trial_end = START + timedelta(days=7)
    sub = await subscribe(fake, p, "pm_card_chargeDeclinedInsufficientFunds", trial_end=trial_end)
    [invoice] = await fake.advance_clock_to(trial_end)
    assert (invoice.status, invoice.amount_due, invoice.amount_paid) == (InvoiceStatus.OPEN, usd(1000), usd(0))
    assert (await fake.get_subscription(sub.processor_id)).status is SubscriptionStatus.PAST_DUE
    assert invoice.attempt_count == 1 and invoice.last_failure is not None
    assert invoice.last_failure.decline_code == "insufficient_funds"
    [charge] = fake.charges_created
    assert not charge.succeeded


async def test_a_declined_first_invoice_leaves_the_subscription_incomplete(fake: FakePaymentProcessor) -> None:
    p = await created_plan(fake)
    sub = await subscribe(fake, p, "pm_card_chargeDeclined")
    assert sub.status is SubscriptionStatus.INCOMPLETE
    [invoice] = await fake.list_invoices(sub.processor_id)
    assert invoice.status is InvoiceStatus.OPEN
    with pytest.raises(ProcessorError) as err:
        await fake.pause_subscription(sub.processor_id, idempotency_key=key())
    assert err.value.reason == "PROCESSOR_STATE_CONFLICT"


async def test_advancing_needs_a_manual_clock() -> None:
    with pytest.raises(TypeError):
        await FakePaymentProcessor().advance_clock_to(datetime(2030, 1, 1, tzinfo=UTC))


async def test_reads_bill_due_renewals_without_process_renewals(fake: FakePaymentProcessor, clock: ManualClock) -> None:
    sub = await subscribe(fake, await created_plan(fake, 1000))
    assert len(await fake.list_invoices(sub.processor_id)) == 1
    clock.advance(timedelta(days=65))  # two monthly renewals are due; nobody called process_renewals
    renewed = await fake.get_subscription(sub.processor_id)
    assert renewed.current_period_end is not None and renewed.current_period_end > clock.now()
    assert len(await fake.list_invoices(sub.processor_id)) == 3
    assert await fake.process_renewals() == []  # nothing left to bill
