"""A complete in-memory payment processor, for running the product locally and for tests.

``FakePaymentProcessor`` offers the same verbs as the Stripe and PayPal adapters and keeps
Stripe's semantics where they matter to our use cases: idempotency keys (a repeat returns
the first result, a reused key with other parameters is refused, a key is forgotten after
24 hours), Stripe's test tokens
(``pm_card_visa``, ``pm_card_chargeDeclined``...), manual capture, refunds that settle
later, and subscriptions billed on the injected clock, like Stripe test clocks.

Beyond the port it has a few test handles: ``complete_action`` (the buyer finishes 3-D
Secure), ``settle_refunds``, ``process_renewals`` / ``advance_clock_to``, ``fail_next``
(fault injection) and the effect records ``charges_created`` and ``effects``.

It sends no events, so its event verbs say so: ``verify_webhook`` refuses every delivery
(``SignatureError``: nothing can be signed by it), ``parse_event`` acts on no type, and
``list_events`` raises ``NotSupportedByProcessor`` (backfill and reconciliation skip it).
Its use cases converge on its truth through the same re-reads as the real processors'.

Built with a ``state`` store (as ``bootstrap`` does for the running service), it keeps its
records, id counters and idempotency keys there, like a processor: ids are never handed
out twice and nothing is forgotten across restarts, and processes on one store share it.
Without one (unit tests) it lives in memory only.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

from billing_service.adapters.processors._fake_machinery import FakeMachinery
from billing_service.adapters.processors._fake_records import (
    TEST_TOKENS,
    CustomerRecord,
    FakeCharge,
    PaymentMethodRecord,
    PriceRecord,
    conflict,
    processor_error,
)
from billing_service.domain.card_data import contains_card_number
from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer
from billing_service.domain.errors import NotSupportedByProcessor, PaymentDeclined
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    PaymentStatus,
    ProcessorPaymentState,
    ProcessorRefundState,
)
from billing_service.domain.processor_events import ProcessorEvent, SignatureError, VerifiedEvent
from billing_service.domain.subscriptions import (
    Plan,
    ProcessorInvoiceState,
    ProcessorSubscriptionState,
    SubscriptionStatus,
)
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.ports import (
    AttachedPaymentMethod,
    LookupOutcome,
    PaymentLookup,
    PaymentLookupResult,
    PaymentRequest,
    RefundLookup,
    RefundLookupResult,
    RefundRequest,
    SubscriptionChange,
    SubscriptionLookup,
    SubscriptionLookupResult,
    SubscriptionRequest,
)

__all__ = ["FakeCharge", "FakePaymentProcessor"]

_S = SubscriptionStatus
PRICE_REF = Processor.FAKE.value
PRODUCT_REF = f"{Processor.FAKE.value}_product"


def _price_ref(plan: Plan) -> str:
    return plan.processor_refs.get(PRICE_REF, "")


class FakePaymentProcessor(FakeMachinery):
    """An in-memory ``PaymentProcessor`` with Stripe-like behaviour.

    Attributes:
        charges_created: Every attempt to move money (declines included, see
            ``FakeCharge.succeeded``), in order. Replays never add to it.
        effects: How many times each write verb actually executed; replays of a stored
            idempotency key and faults injected before the effect are not counted.

    Args:
        clock: Time source for subscriptions and timestamps; a ``ManualClock`` makes
            renewals controllable with ``advance_clock_to``.
        state: Where records, id counters and idempotency keys are kept (None: memory).
    """

    name: Processor = Processor.FAKE
    verifies_webhooks = False  # it sends no webhooks

    @property
    def charges_created(self) -> list[FakeCharge]:
        """Every attempt to move money, in order (see the class docstring)."""
        return self._ledger.charges

    def _price(self, plan: Plan) -> PriceRecord:
        # Same reason as the Stripe and PayPal adapters: the plan was never mirrored here.
        if (price := self._ledger.prices.get(_price_ref(plan))) is None:
            raise processor_error("PLAN_NOT_AT_PROCESSOR", f"plan {plan.id} has no fake price", plan_id=plan.id)
        return price

    # -- customers and payment methods --------------------------------------

    async def create_customer(self, customer: Customer, *, idempotency_key: str) -> str:
        """Creates a ``cus_fake_<n>`` customer."""
        params = (customer.id, customer.email, customer.name, customer.description, customer.metadata)

        def effect() -> str:
            record = CustomerRecord(
                self._ledger.new_id("cus"), customer.email, customer.name, customer.description, dict(customer.metadata)
            )
            self._ledger.customers[record.id] = record
            return record.id

        return await self._write("create_customer", idempotency_key, params, effect)

    async def update_customer(self, processor_customer_id: str, customer: Customer, *, idempotency_key: str) -> None:
        """Copies name, email, description and metadata to the fake customer."""
        params = (processor_customer_id, customer.email, customer.name, customer.description, customer.metadata)

        def effect() -> None:
            record = self._ledger.customer(processor_customer_id)
            record.email, record.name, record.description = customer.email, customer.name, customer.description
            record.metadata = dict(customer.metadata)

        await self._write("update_customer", idempotency_key, params, effect)

    async def attach_payment_method(
        self, processor_customer_id: str, token: str, *, idempotency_key: str
    ) -> AttachedPaymentMethod:
        """Attaches one of the test tokens (``pm_card_visa``...) as a new ``pm_fake_<n>``.

        Raises:
            ProcessorError: INVALID_PAYMENT_METHOD_TOKEN for an unknown token or anything
                that looks like a raw card number (refused before it is kept anywhere).
        """
        if contains_card_number(token):
            raise processor_error("INVALID_PAYMENT_METHOD_TOKEN", "payment method token looks like a raw card number")

        def effect() -> AttachedPaymentMethod:
            self._ledger.customer(processor_customer_id)
            if (profile := TEST_TOKENS.get(token)) is None:
                raise processor_error("INVALID_PAYMENT_METHOD_TOKEN", "unknown payment method token")
            method = PaymentMethodRecord(self._ledger.new_id("pm"), processor_customer_id, profile)
            self._ledger.payment_methods[method.id] = method
            return AttachedPaymentMethod(
                method.id, profile.type, profile.brand, profile.last4, profile.exp_month, profile.exp_year
            )

        return await self._write("attach_payment_method", idempotency_key, (processor_customer_id, token), effect)

    async def detach_payment_method(self, processor_payment_method_id: str, *, idempotency_key: str) -> None:
        """Detaches the instrument; later charges fail with PAYMENT_METHOD_DETACHED."""

        def effect() -> None:
            method = self._ledger.payment_method(processor_payment_method_id)
            if not method.attached:
                raise processor_error("PAYMENT_METHOD_DETACHED", "payment method is already detached")
            method.attached = False

        await self._write("detach_payment_method", idempotency_key, processor_payment_method_id, effect)

    # -- payments -------------------------------------------------------------

    async def create_payment(self, request: PaymentRequest, *, idempotency_key: str) -> ProcessorPaymentState:
        """Creates and confirms a ``pi_fake_<n>`` payment.

        Raises:
            PaymentDeclined: The token declines; the payment is kept as FAILED and its id is
                in ``metadata["processor_payment_id"]``.
            ProcessorError: Unknown or detached method, or a malformed request.
        """

        def effect() -> ProcessorPaymentState:
            method = self._ledger.chargeable_method(request.processor_customer_id, request.processor_payment_method_id)
            payment = self._ledger.charge(
                method, request.amount, request.capture_method, off_session=request.off_session,
                key=idempotency_key, our_id=request.payment_id,
            )  # fmt: skip
            if payment.status is PaymentStatus.FAILED and payment.failure is not None:
                raise PaymentDeclined(
                    payment.failure.message,
                    metadata={
                        "code": payment.failure.code,
                        "decline_code": payment.failure.decline_code,
                        "processor_payment_id": payment.id,
                    },
                )
            return payment.state()

        return await self._write("create_payment", idempotency_key, request, effect)

    async def get_payment(self, processor_payment_id: str) -> ProcessorPaymentState:
        """Returns the payment's current state."""
        return await self._read("get_payment", lambda: self._ledger.payment(processor_payment_id).state())

    async def capture_payment(
        self, processor_payment_id: str, amount: Money, *, idempotency_key: str
    ) -> ProcessorPaymentState:
        """Captures up to the authorized amount; the rest is released, as Stripe does."""

        def effect() -> ProcessorPaymentState:
            payment = self._ledger.payment(processor_payment_id)
            self._ledger.capture(payment, amount)
            return payment.state()

        params = (processor_payment_id, amount)
        return await self._write("capture_payment", idempotency_key, params, effect)

    async def cancel_payment(self, processor_payment_id: str, *, idempotency_key: str) -> ProcessorPaymentState:
        """Voids a payment awaiting capture or buyer action."""

        def effect() -> ProcessorPaymentState:
            payment = self._ledger.payment(processor_payment_id)
            self._ledger.cancel(payment)
            return payment.state()

        return await self._write("cancel_payment", idempotency_key, processor_payment_id, effect)

    async def complete_action(self, processor_payment_id: str, *, succeed: bool = True) -> ProcessorPaymentState:
        """Test helper: the buyer finishes (or fails) 3-D Secure on a REQUIRES_ACTION payment.

        Returns:
            The new state: REQUIRES_CAPTURE or SUCCEEDED per capture method, or FAILED.
        """

        def step() -> ProcessorPaymentState:
            payment = self._ledger.payment(processor_payment_id)
            self._ledger.complete_action(payment, succeed=succeed)
            return copy.deepcopy(payment.state())

        return await self._transact(step)

    # -- refunds ----------------------------------------------------------------

    async def create_refund(self, request: RefundRequest, *, idempotency_key: str) -> ProcessorRefundState:
        """Refunds part of a captured payment as ``re_fake_<n>``.

        Refunds succeed at once, except for ``pm_card_refundPending`` / ``pm_card_refundFail``
        payments whose refunds stay PENDING until ``settle_refunds()``.

        Raises:
            ProcessorError: REFUND_EXCEEDS_CAPTURED_AT_PROCESSOR beyond captured minus
                refunded (pending refunds count), PROCESSOR_STATE_CONFLICT if nothing was captured.
        """

        def effect() -> ProcessorRefundState:
            payment = self._ledger.payment(request.processor_payment_id)
            return self._ledger.refund_payment(payment, request.amount, our_id=request.refund_id).state()

        return await self._write("create_refund", idempotency_key, request, effect)

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefundState:
        """Returns the refund's current state."""
        return await self._read("get_refund", lambda: self._ledger.refund(processor_refund_id).state())

    async def find_payment(self, lookup: PaymentLookup) -> PaymentLookupResult:
        """Finds the payment created for our id; the fake's records are always current."""

        def read() -> PaymentLookupResult:
            for payment in self._ledger.payments.values():
                if payment.our_id == lookup.payment_id:
                    return PaymentLookupResult(LookupOutcome.FOUND, payment.state())
            return PaymentLookupResult(LookupOutcome.ABSENT)

        return await self._read("find_payment", read)

    async def find_refund(self, lookup: RefundLookup) -> RefundLookupResult:
        """Finds the refund created for our id on the named payment."""

        def read() -> RefundLookupResult:
            for refund in self._ledger.refunds.values():
                if refund.our_id == lookup.refund_id and refund.payment_id == lookup.processor_payment_id:
                    return RefundLookupResult(LookupOutcome.FOUND, refund.state())
            return RefundLookupResult(LookupOutcome.ABSENT)

        return await self._read("find_refund", read)

    async def settle_refunds(self) -> list[ProcessorRefundState]:
        """Test helper: settles every PENDING refund as its token dictates.

        ``pm_card_refundPending`` refunds become SUCCEEDED, ``pm_card_refundFail`` refunds
        FAILED (their amount becomes refundable again).

        Returns:
            The refunds that changed, in creation order.
        """
        return await self._transact(lambda: [refund.state() for refund in copy.deepcopy(self._ledger.settle_refunds())])

    # -- plans ----------------------------------------------------------------------

    async def create_plan(self, plan: Plan, *, idempotency_key: str) -> dict[str, str]:
        """Creates a product and a recurring price; returns ``{"fake": price, "fake_product": product}``."""
        params = (plan.id, plan.name, plan.price, plan.interval, plan.interval_count)

        def effect() -> dict[str, str]:
            new_id = self._ledger.new_id
            price = PriceRecord(
                new_id("price"), new_id("prod"), plan.name, plan.price, plan.interval, plan.interval_count
            )
            self._ledger.prices[price.id] = price
            return {PRICE_REF: price.id, PRODUCT_REF: price.product_id}

        return await self._write("create_plan", idempotency_key, params, effect)

    async def archive_plan(self, plan: Plan, *, idempotency_key: str) -> None:
        """Deactivates the price: existing subscriptions keep it, new ones are refused."""

        def effect() -> None:
            self._price(plan).active = False

        await self._write("archive_plan", idempotency_key, _price_ref(plan), effect)

    # -- subscriptions ---------------------------------------------------------------

    async def create_subscription(
        self, request: SubscriptionRequest, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Starts a ``sub_fake_<n>``: TRIALING until ``trial_end``, else ACTIVE and charged now.

        The plan must have been created here (``plan.processor_refs["fake"]``). A first
        charge that fails leaves the subscription INCOMPLETE with an OPEN invoice and raises
        nothing, like Stripe's ``payment_behavior=allow_incomplete``.
        """
        params = (
            request.subscription_id, request.processor_customer_id, request.processor_payment_method_id,
            _price_ref(request.plan), request.quantity, request.trial_end, request.metadata,
        )  # fmt: skip

        def effect() -> ProcessorSubscriptionState:
            method = self._ledger.chargeable_method(request.processor_customer_id, request.processor_payment_method_id)
            price = self._price(request.plan)
            return self._ledger.start_subscription(
                method, price, request.quantity, request.trial_end, our_id=request.subscription_id
            ).state()

        return await self._write("create_subscription", idempotency_key, params, effect)

    async def find_subscription(self, lookup: SubscriptionLookup) -> SubscriptionLookupResult:
        """Finds the subscription created for our id; the fake's records are always current."""

        def read() -> SubscriptionLookupResult:
            for sub in self._ledger.subscriptions.values():
                if sub.our_id == lookup.subscription_id:
                    return SubscriptionLookupResult(LookupOutcome.FOUND, sub.state())
            return SubscriptionLookupResult(LookupOutcome.ABSENT)

        return await self._read("find_subscription", read)

    async def get_subscription(self, processor_subscription_id: str) -> ProcessorSubscriptionState:
        """Returns the subscription's current state (after billing any period that has ended).

        Like a real processor, the fake bills on time whether or not anyone is looking: each
        read first catches up renewals due by the clock, so ``make run`` on the system clock
        renews subscriptions without a test calling ``process_renewals``.
        """

        def read() -> ProcessorSubscriptionState:
            self._ledger.renew_due()
            return self._ledger.subscription(processor_subscription_id).state()

        return await self._read("get_subscription", read)

    async def update_subscription(
        self, processor_subscription_id: str, change: SubscriptionChange, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Changes price and/or quantity.

        CREATE_PRORATIONS adds proration lines to the next invoice; ALWAYS_INVOICE bills
        them now; NONE only changes what the next period costs. Trials are not prorated.

        Raises:
            NotSupportedByProcessor: The new price has another billing interval.
        """
        plan_ref = None if change.plan is None else _price_ref(change.plan)
        params = (processor_subscription_id, plan_ref, change.quantity, change.proration)

        def effect() -> ProcessorSubscriptionState:
            sub = self._ledger.subscription(processor_subscription_id)
            price = sub.price if change.plan is None else self._price(change.plan)
            quantity = sub.quantity if change.quantity is None else change.quantity
            self._ledger.change_subscription(sub, price, quantity, change.proration)
            return sub.state()

        return await self._write("update_subscription", idempotency_key, params, effect)

    async def cancel_subscription(
        self, processor_subscription_id: str, *, at_period_end: bool, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Cancels now (CANCELED, ``canceled_at`` = now) or flags cancel at period end."""

        def effect() -> ProcessorSubscriptionState:
            sub = self._ledger.subscription(processor_subscription_id)
            if sub.status is _S.CANCELED:
                raise conflict("subscription is already canceled", sub.id)
            if at_period_end:
                sub.cancel_at_period_end = True
            else:
                sub.status, sub.canceled_at, sub.cancel_at_period_end = _S.CANCELED, self._clock.now(), False
                sub.pending_lines = []
            return sub.state()

        params = (processor_subscription_id, at_period_end)
        return await self._write("cancel_subscription", idempotency_key, params, effect)

    async def pause_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Pauses collection: periods keep rolling, no invoices are issued."""

        def effect() -> ProcessorSubscriptionState:
            sub = self._ledger.subscription(processor_subscription_id)
            if sub.status not in (_S.ACTIVE, _S.TRIALING, _S.PAST_DUE):
                raise conflict(f"subscription is {sub.status.value} and cannot be paused", sub.id)
            sub.status = _S.PAUSED
            return sub.state()

        return await self._write("pause_subscription", idempotency_key, processor_subscription_id, effect)

    async def resume_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Resumes a paused subscription (back to TRIALING if its trial has not ended)."""

        def effect() -> ProcessorSubscriptionState:
            sub = self._ledger.subscription(processor_subscription_id)
            if sub.status is not _S.PAUSED:
                raise conflict(f"subscription is {sub.status.value}, not paused", sub.id)
            sub.status = _S.TRIALING if sub.cycle < 0 else _S.ACTIVE
            return sub.state()

        return await self._write("resume_subscription", idempotency_key, processor_subscription_id, effect)

    async def list_invoices(self, processor_subscription_id: str) -> list[ProcessorInvoiceState]:
        """Returns the subscription's invoices, newest first."""

        def read() -> list[ProcessorInvoiceState]:
            self._ledger.renew_due()  # bills on time, as in get_subscription
            self._ledger.subscription(processor_subscription_id)
            invoices = [i for i in self._ledger.invoices.values() if i.subscription_id == processor_subscription_id]
            return [i.state() for i in sorted(invoices, key=lambda i: i.seq, reverse=True)]

        return await self._read("list_invoices", read)

    async def process_renewals(self) -> list[ProcessorInvoiceState]:
        """Test helper: bills every subscription whose period ended by ``clock.now()``.

        Catches up several periods at once if the clock jumped. Per due period: a
        subscription set to cancel at period end is CANCELED; a paused one just rolls; a
        trial ends (ACTIVE); otherwise the new period is invoiced and charged (PAID and
        ACTIVE, or OPEN and PAST_DUE on a decline).

        Returns:
            The invoices created, oldest first.
        """
        return await self._transact(lambda: [invoice.state() for invoice in copy.deepcopy(self._ledger.renew_due())])

    async def advance_clock_to(self, when: datetime) -> list[ProcessorInvoiceState]:
        """Test helper: moves a ``ManualClock`` to ``when``, then runs ``process_renewals``.

        Raises:
            TypeError: The processor was not built with a ``ManualClock``.
            ValueError: ``when`` is in the past.
        """
        if not isinstance(self._clock, ManualClock):
            raise TypeError("advance_clock_to needs a FakePaymentProcessor built with a ManualClock")
        if when < self._clock.now():
            raise ValueError("the clock only moves forward")
        self._clock.advance(when - self._clock.now())
        return await self.process_renewals()

    # -- events: the fake sends none --------------------------------------------------------

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> VerifiedEvent:
        """Refuses every delivery: the fake processor sends no webhooks."""
        raise SignatureError("the fake processor sends no webhooks")

    def parse_event(self, event_type: str, payload: Mapping[str, Any]) -> ProcessorEvent | None:
        """None: the fake sends no events, so no type means anything to it."""
        return None

    async def list_events(self, since: datetime, *, page_size: int = 100) -> AsyncIterator[VerifiedEvent]:
        """Raises ``NotSupportedByProcessor``: the fake keeps no event list."""
        raise NotSupportedByProcessor(
            "the fake processor keeps no event list", metadata={"processor": Processor.FAKE.value}
        )
        yield  # never reached: it only makes this an async generator, like the other adapters'

    # -- lifecycle ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Nothing to release."""
