"""Lookups by our id (``find_payment``, ``find_refund``, ``find_subscription``) through the real SDKs.

A create whose answer was lost leaves us without the processor's id; these verbs find the
processor object by the id we sent with it, never create anything, and say ABSENT only
when the processor's data proves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from billing_service.adapters.processors.fake import FakePaymentProcessor
from billing_service.adapters.processors.paypal import PayPalPaymentProcessor
from billing_service.adapters.processors.stripe import StripePaymentProcessor, StripeSettings
from billing_service.domain.money import Money
from billing_service.domain.payments import CaptureMethod, PaymentStatus, RefundReason, RefundStatus
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.ports import (
    LookupOutcome,
    PaymentLookup,
    PaymentRequest,
    RefundLookup,
    RefundRequest,
    SubscriptionLookup,
    SubscriptionRequest,
)
from tests.imitations.paypal_api import PayPalImitation
from tests.imitations.stripe_api import StripeImitation
from tests.integration.test_paypal_processor import FAST, settings_for, vaulted
from tests.integration.test_stripe_processor import KEY, customer, key, plan

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def lookup(payment_id: str, customer_id: str, amount: Money, *, quiet_since: datetime | None = None) -> PaymentLookup:
    now = datetime.now(UTC)
    return PaymentLookup(payment_id, customer_id, amount, now - timedelta(minutes=1), quiet_since or now)


def refund_lookup(refund_id: str, processor_payment_id: str, amount: Money) -> RefundLookup:
    now = datetime.now(UTC)
    return RefundLookup(refund_id, processor_payment_id, amount, now - timedelta(minutes=1), now)


def request(payment_id: str, customer_id: str, method: str, amount: Money, manual: bool = False) -> PaymentRequest:
    capture = CaptureMethod.MANUAL if manual else CaptureMethod.AUTOMATIC
    return PaymentRequest(payment_id, amount, capture, customer_id, method)


# --------------------------------------------------------------------------- Stripe


@pytest.fixture(scope="module")
def stripe_imitation() -> Iterator[StripeImitation]:
    with StripeImitation(api_key=KEY) as server:
        yield server


@pytest.fixture
async def stripe(stripe_imitation: StripeImitation) -> AsyncIterator[StripePaymentProcessor]:
    stripe_imitation.reset()
    proc = StripePaymentProcessor(StripeSettings(secret_key=KEY, api_base=stripe_imitation.base_url), retry_policy=FAST)
    yield proc
    await proc.aclose()


async def test_stripe_finds_a_payment_by_our_id_by_listing_the_customers_intents(
    stripe: StripePaymentProcessor, stripe_imitation: StripeImitation
) -> None:
    cus = await stripe.create_customer(customer(), idempotency_key=key())
    pm = (await stripe.attach_payment_method(cus, "pm_card_visa", idempotency_key=key())).processor_id
    usd = Money(2500, "USD")
    for n in range(3):  # other payments of the same customer, the wanted one in the middle
        state = await stripe.create_payment(request(f"pay_{n}", cus, pm, usd, manual=n == 1), idempotency_key=key())
        if n == 1:
            wanted = state
    found = await stripe.find_payment(lookup("pay_1", cus, usd))
    assert found.outcome is LookupOutcome.FOUND and found.state is not None
    assert (found.state.processor_id, found.state.status) == (wanted.processor_id, PaymentStatus.REQUIRES_CAPTURE)
    assert (await stripe.find_payment(lookup("pay_never_sent", cus, usd))).outcome is LookupOutcome.ABSENT
    assert (await stripe.find_payment(lookup("pay_1", "", usd))).outcome is LookupOutcome.ABSENT
    listing = stripe_imitation.requests_to("GET", "/v1/payment_intents")
    assert listing and all(r.params["customer"] == cus and "gte" in r.params["created"] for r in listing)
    assert not stripe_imitation.requests_to("GET", "/v1/payment_intents/search")  # lists, never Search
    assert not stripe_imitation.requests_to("POST", "/v1/payment_intents")[3:]  # a lookup creates nothing


async def test_stripe_lookup_pages_through_many_intents(stripe: StripePaymentProcessor) -> None:
    cus = await stripe.create_customer(customer(), idempotency_key=key())
    pm = (await stripe.attach_payment_method(cus, "pm_card_visa", idempotency_key=key())).processor_id
    usd = Money(700, "USD")
    await stripe.create_payment(request("pay_oldest", cus, pm, usd), idempotency_key=key())
    for n in range(105):
        await stripe.create_payment(request(f"pay_n{n}", cus, pm, usd), idempotency_key=key())
    found = await stripe.find_payment(lookup("pay_oldest", cus, usd))
    assert found.outcome is LookupOutcome.FOUND


def sub_lookup(subscription_id: str, customer_id: str) -> SubscriptionLookup:
    now = datetime.now(UTC)
    return SubscriptionLookup(subscription_id, customer_id, now - timedelta(minutes=1), now)


async def test_stripe_finds_a_subscription_by_our_id_canceled_ones_included(
    stripe: StripePaymentProcessor, stripe_imitation: StripeImitation
) -> None:
    cus = await stripe.create_customer(customer(), idempotency_key=key())
    pm = (await stripe.attach_payment_method(cus, "pm_card_visa", idempotency_key=key())).processor_id
    basic = plan()
    basic.processor_refs = await stripe.create_plan(basic, idempotency_key=key())
    made = {}
    for n in range(3):
        req = SubscriptionRequest(f"sub_{n}", cus, pm, basic, quantity=1, trial_end=None)
        made[n] = await stripe.create_subscription(req, idempotency_key=key())
    await stripe.cancel_subscription(made[1].processor_id, at_period_end=False, idempotency_key=key())
    found = await stripe.find_subscription(sub_lookup("sub_1", cus))  # canceled: Stripe lists it only with status=all
    assert found.outcome is LookupOutcome.FOUND and found.state is not None
    assert found.state.processor_id == made[1].processor_id
    assert (await stripe.find_subscription(sub_lookup("sub_never_sent", cus))).outcome is LookupOutcome.ABSENT
    assert (await stripe.find_subscription(sub_lookup("sub_1", ""))).outcome is LookupOutcome.ABSENT
    listing = stripe_imitation.requests_to("GET", "/v1/subscriptions")
    assert listing and all(r.params["customer"] == cus and r.params["status"] == "all" for r in listing)
    assert len(stripe_imitation.requests_to("POST", "/v1/subscriptions")) == 3  # a lookup creates nothing


async def test_stripe_finds_a_refund_by_our_id(stripe: StripePaymentProcessor) -> None:
    cus = await stripe.create_customer(customer(), idempotency_key=key())
    pm = (await stripe.attach_payment_method(cus, "pm_card_visa", idempotency_key=key())).processor_id
    usd = Money(3000, "USD")
    paid = await stripe.create_payment(request("pay_r", cus, pm, usd), idempotency_key=key())
    refund = RefundRequest("re_ours", paid.processor_id, Money(1000, "USD"), RefundReason.UNSPECIFIED)
    made = await stripe.create_refund(refund, idempotency_key=key())
    found = await stripe.find_refund(refund_lookup("re_ours", paid.processor_id, Money(1000, "USD")))
    assert found.outcome is LookupOutcome.FOUND and found.state is not None
    assert (found.state.processor_id, found.state.status, found.state.refund_id) == (
        made.processor_id, RefundStatus.SUCCEEDED, "re_ours",
    )  # fmt: skip
    assert (await stripe.find_refund(refund_lookup("re_other", paid.processor_id, usd))).outcome is LookupOutcome.ABSENT


# --------------------------------------------------------------------------- PayPal


@pytest.fixture(scope="module")
def paypal_imitation() -> Iterator[PayPalImitation]:
    with PayPalImitation(stall_seconds=1.0) as server:
        yield server


@pytest.fixture
async def paypal(paypal_imitation: PayPalImitation) -> AsyncIterator[PayPalPaymentProcessor]:
    paypal_imitation.reset()
    proc = PayPalPaymentProcessor(settings_for(paypal_imitation), retry_policy=FAST)
    yield proc
    await proc.aclose()


async def test_paypal_finds_a_captured_order_through_transaction_search(
    paypal: PayPalPaymentProcessor, paypal_imitation: PayPalImitation
) -> None:
    usd = Money(1999, "USD")
    vault = await vaulted(paypal, paypal_imitation)
    other = await paypal.create_payment(request("pay_other", "CUST1", vault, usd), idempotency_key=key())
    made = await paypal.create_payment(request("pay_pp", "CUST1", vault, usd), idempotency_key=key())
    assert other.processor_id != made.processor_id
    found = await paypal.find_payment(lookup("pay_pp", "CUST1", usd))
    assert found.outcome is LookupOutcome.FOUND and found.state is not None
    assert (found.state.processor_id, found.state.status) == (made.processor_id, PaymentStatus.SUCCEEDED)
    search = [r for r in paypal_imitation.requests if r.path == "/v1/reporting/transactions"]
    assert search and search[0].query["transaction_amount"] == "[1999 TO 1999]"
    assert search[0].query["balance_affecting_records_only"] == "N"


async def test_paypal_finds_an_authorization_and_its_order(
    paypal: PayPalPaymentProcessor, paypal_imitation: PayPalImitation
) -> None:
    usd = Money(4200, "USD")
    vault = await vaulted(paypal, paypal_imitation)
    made = await paypal.create_payment(request("pay_auth", "CUST1", vault, usd, manual=True), idempotency_key=key())
    found = await paypal.find_payment(lookup("pay_auth", "CUST1", usd))
    assert found.outcome is LookupOutcome.FOUND and found.state is not None
    assert (found.state.processor_id, found.state.status) == (made.processor_id, PaymentStatus.REQUIRES_CAPTURE)


async def test_paypal_absence_is_proven_only_once_the_search_data_is_fresh(
    paypal: PayPalPaymentProcessor, paypal_imitation: PayPalImitation
) -> None:
    usd = Money(1500, "USD")
    now = datetime.now(UTC)
    paypal_imitation.reporting_lag = timedelta(hours=3)  # PayPal's documented worst case
    lagging = await paypal.find_payment(lookup("pay_none", "CUST1", usd, quiet_since=now))
    assert lagging.outcome is LookupOutcome.UNKNOWN
    assert lagging.retry_after is not None and lagging.retry_after >= now + timedelta(hours=3)
    paypal_imitation.reporting_lag = timedelta(0)
    paypal_imitation.reporting_refreshed_at = now + timedelta(seconds=5)
    fresh = await paypal.find_payment(lookup("pay_none", "CUST1", usd, quiet_since=now))
    assert fresh.outcome is LookupOutcome.ABSENT
    # A capture made before the last refresh is seen; one after it is not (yet).
    vault = await vaulted(paypal, paypal_imitation)
    paypal_imitation.reporting_refreshed_at = now - timedelta(minutes=1)
    await paypal.create_payment(request("pay_late", "CUST1", vault, usd), idempotency_key=key())
    late = await paypal.find_payment(lookup("pay_late", "CUST1", usd, quiet_since=datetime.now(UTC)))
    assert late.outcome is LookupOutcome.UNKNOWN


async def test_paypal_finds_a_refund_in_its_order(
    paypal: PayPalPaymentProcessor, paypal_imitation: PayPalImitation
) -> None:
    usd = Money(5000, "USD")
    vault = await vaulted(paypal, paypal_imitation)
    paid = await paypal.create_payment(request("pay_rf", "CUST1", vault, usd), idempotency_key=key())
    made = await paypal.create_refund(
        RefundRequest("re_pp", paid.processor_id, Money(1200, "USD"), RefundReason.UNSPECIFIED), idempotency_key=key()
    )
    found = await paypal.find_refund(refund_lookup("re_pp", paid.processor_id, Money(1200, "USD")))
    assert found.outcome is LookupOutcome.FOUND and found.state is not None
    assert (found.state.processor_id, found.state.refund_id) == (made.processor_id, "re_pp")
    assert (await paypal.find_refund(refund_lookup("re_x", paid.processor_id, usd))).outcome is LookupOutcome.ABSENT


# --------------------------------------------------------------------------- fake


async def test_the_fake_finds_a_subscription_by_our_id() -> None:
    fake = FakePaymentProcessor(ManualClock())
    cus = await fake.create_customer(customer(), idempotency_key="c")
    pm = (await fake.attach_payment_method(cus, "pm_card_visa", idempotency_key="a")).processor_id
    basic = plan()
    basic.processor_refs = await fake.create_plan(basic, idempotency_key="p")
    made = await fake.create_subscription(SubscriptionRequest("sub_f", cus, pm, basic, 1, None), idempotency_key="s")
    found = await fake.find_subscription(sub_lookup("sub_f", cus))
    assert found.outcome is LookupOutcome.FOUND and found.state is not None
    assert found.state.processor_id == made.processor_id
    assert (await fake.find_subscription(sub_lookup("sub_g", cus))).outcome is LookupOutcome.ABSENT


async def test_the_fake_finds_by_our_id_and_forgets_keys_after_a_day() -> None:
    clock = ManualClock()
    fake = FakePaymentProcessor(clock)
    cus = await fake.create_customer(customer(), idempotency_key="c")
    pm = (await fake.attach_payment_method(cus, "pm_card_visa", idempotency_key="a")).processor_id
    usd = Money(1000, "USD")
    made = await fake.create_payment(request("pay_f", cus, pm, usd), idempotency_key="k")
    found = await fake.find_payment(lookup("pay_f", cus, usd))
    assert found.outcome is LookupOutcome.FOUND and found.state is not None
    assert found.state.processor_id == made.processor_id
    assert (await fake.find_payment(lookup("pay_g", cus, usd))).outcome is LookupOutcome.ABSENT
    assert (await fake.create_payment(request("pay_f", cus, pm, usd), idempotency_key="k")) == made  # replayed
    clock.advance(timedelta(hours=25))
    again = await fake.create_payment(request("pay_f", cus, pm, usd), idempotency_key="k")
    assert again.processor_id != made.processor_id  # like Stripe: a key older than 24 h is forgotten
