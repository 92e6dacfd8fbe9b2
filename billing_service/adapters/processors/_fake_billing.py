"""The money rules of the fake processor: charges, captures, refunds and subscription billing.

``FakeLedger`` owns every record and applies Stripe's rules to them. It neither locks nor
deduplicates: ``FakePaymentProcessor`` calls it under its lock, once per idempotency key.
Refusals are raised as ``ProcessorError`` before anything is changed.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from billing_service.adapters.processors._fake_records import (
    SECOND,
    CustomerRecord,
    FakeCharge,
    InvoiceRecord,
    PaymentMethodRecord,
    PaymentRecord,
    PriceRecord,
    RefundRecord,
    SubscriptionRecord,
    conflict,
    invalid,
    missing,
    period_bounds,
    processor_error,
    prorate,
)
from billing_service.adapters.processors._fake_state import Table
from billing_service.domain.errors import NotSupportedByProcessor
from billing_service.domain.money import Money
from billing_service.domain.payments import CaptureMethod, NextAction, PaymentFailure, PaymentStatus, RefundStatus
from billing_service.domain.subscriptions import InvoiceLine, InvoiceStatus, ProrationBehavior, SubscriptionStatus
from billing_service.service_layer.ports import Clock

_S = SubscriptionStatus


class FakeLedger:
    """All of the fake processor's records, plus the rules that move money.

    Attributes:
        charges: Every attempt to move money, declines included, in order.
        counters: The last number handed out per id prefix; kept with the state, so a
            restarted fake never hands out an id twice.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.counters: dict[str, int] = {}
        # Tables remember the rows an operation touched, so only those are persisted.
        self.customers: Table[CustomerRecord] = Table()
        self.payment_methods: Table[PaymentMethodRecord] = Table()
        self.payments: Table[PaymentRecord] = Table()
        self.refunds: Table[RefundRecord] = Table()
        self.prices: Table[PriceRecord] = Table()
        self.subscriptions: Table[SubscriptionRecord] = Table()
        self.invoices: Table[InvoiceRecord] = Table()
        self.charges: list[FakeCharge] = []

    def next_number(self, counter: str) -> int:
        """Returns 1, 2, 3... per counter name."""
        self.counters[counter] = self.counters.get(counter, 0) + 1
        return self.counters[counter]

    def new_id(self, prefix: str) -> str:
        """Returns ``<prefix>_fake_<n>``, counting per prefix."""
        return f"{prefix}_fake_{self.next_number(prefix)}"

    # -- lookups (each raises RESOURCE_MISSING_AT_PROCESSOR) ----------------------

    def customer(self, processor_id: str) -> CustomerRecord:
        """Looks up a customer."""
        if (customer := self.customers.get(processor_id)) is None:
            raise missing("customer", processor_id)
        return customer

    def payment_method(self, processor_id: str) -> PaymentMethodRecord:
        """Looks up a payment method, attached or not."""
        if (method := self.payment_methods.get(processor_id)) is None:
            raise missing("payment method", processor_id)
        return method

    def payment(self, processor_id: str) -> PaymentRecord:
        """Looks up a payment."""
        if (payment := self.payments.get(processor_id)) is None:
            raise missing("payment", processor_id)
        return payment

    def refund(self, processor_id: str) -> RefundRecord:
        """Looks up a refund."""
        if (refund := self.refunds.get(processor_id)) is None:
            raise missing("refund", processor_id)
        return refund

    def subscription(self, processor_id: str) -> SubscriptionRecord:
        """Looks up a subscription."""
        if (sub := self.subscriptions.get(processor_id)) is None:
            raise missing("subscription", processor_id)
        return sub

    def chargeable_method(self, customer_id: str, method_id: str) -> PaymentMethodRecord:
        """The customer's attached instrument, or the processor's refusal."""
        self.customer(customer_id)
        method = self.payment_method(method_id)
        if not method.attached:
            raise processor_error(
                "PAYMENT_METHOD_DETACHED", f"payment method {method_id} is detached", processor_id=method_id
            )
        if method.customer_id != customer_id:
            raise invalid(f"payment method {method_id} belongs to another customer")
        return method

    # -- payments ---------------------------------------------------------------

    def charge(
        self,
        method: PaymentMethodRecord,
        amount: Money,
        capture: CaptureMethod,
        *,
        off_session: bool,
        key: str,
        our_id: str = "",
    ) -> PaymentRecord:
        """Creates and confirms a payment intent; a decline leaves it FAILED (no raise)."""
        if amount.amount_minor <= 0:
            raise invalid("amount must be positive")
        payment = PaymentRecord(
            self.new_id("pi"), method.customer_id, method.id, amount, capture, method.profile, our_id=our_id
        )
        self.payments[payment.id] = payment
        profile = method.profile
        if profile.decline_code:
            self._fail(payment, "card_declined", profile.decline_code, key)
        elif profile.requires_action and off_session:
            # Nobody is there to authenticate: Stripe fails the off-session attempt.
            self._fail(payment, "authentication_required", "authentication_required", key)
        elif profile.requires_action:
            payment.status = PaymentStatus.REQUIRES_ACTION
            payment.next_action = NextAction(client_secret=f"{payment.id}_secret_{secrets.token_hex(12)}")
        else:
            self._authorize(payment, key)
        return payment

    def _fail(self, payment: PaymentRecord, code: str, decline_code: str, key: str) -> None:
        payment.status, payment.next_action = PaymentStatus.FAILED, None
        payment.failure = PaymentFailure(code, decline_code, f"The payment was declined ({decline_code}).")
        self.charges.append(FakeCharge(payment.id, payment.payment_method_id, payment.amount, False, key))

    def _authorize(self, payment: PaymentRecord, key: str) -> None:
        if payment.capture_method is CaptureMethod.MANUAL:
            payment.status, payment.amount_capturable = PaymentStatus.REQUIRES_CAPTURE, payment.amount.amount_minor
        else:
            payment.status, payment.amount_captured = PaymentStatus.SUCCEEDED, payment.amount.amount_minor
        payment.next_action = None
        self.charges.append(FakeCharge(payment.id, payment.payment_method_id, payment.amount, True, key))

    def complete_action(self, payment: PaymentRecord, *, succeed: bool) -> None:
        """The buyer finished (or failed) authentication of a REQUIRES_ACTION payment."""
        if payment.status is not PaymentStatus.REQUIRES_ACTION:
            raise conflict(f"payment is {payment.status.value}, not requires_action", payment.id)
        if succeed:
            self._authorize(payment, key="")
        else:
            self._fail(payment, "payment_intent_authentication_failure", "authentication_failed", key="")

    def capture(self, payment: PaymentRecord, amount: Money) -> None:
        """Captures up to the capturable amount; like Stripe, the rest is released."""
        if payment.status is not PaymentStatus.REQUIRES_CAPTURE:
            raise conflict(f"payment is {payment.status.value}, not requires_capture", payment.id)
        self._check_amount(payment, amount)
        if amount.amount_minor > payment.amount_capturable:
            raise processor_error(
                "CAPTURE_EXCEEDS_CAPTURABLE_AT_PROCESSOR",
                f"cannot capture {amount}: only {payment.amount_capturable} minor units are capturable",
                processor_id=payment.id,
            )
        payment.status, payment.amount_captured, payment.amount_capturable = (
            PaymentStatus.SUCCEEDED,
            amount.amount_minor,
            0,
        )

    def cancel(self, payment: PaymentRecord) -> None:
        """Voids a payment that awaits capture or buyer action."""
        if payment.status not in (PaymentStatus.REQUIRES_CAPTURE, PaymentStatus.REQUIRES_ACTION):
            raise conflict(f"payment is {payment.status.value} and cannot be canceled", payment.id)
        payment.status, payment.amount_capturable, payment.next_action = PaymentStatus.CANCELED, 0, None

    @staticmethod
    def _check_amount(payment: PaymentRecord, amount: Money) -> None:
        if amount.currency != payment.amount.currency or amount.amount_minor <= 0:
            raise invalid(f"amount must be a positive {payment.amount.currency} amount")

    # -- refunds ------------------------------------------------------------------

    def refund_payment(self, payment: PaymentRecord, amount: Money, our_id: str = "") -> RefundRecord:
        """Refunds part of what was captured; PENDING if the token settles refunds later."""
        if payment.status is not PaymentStatus.SUCCEEDED or payment.amount_captured == 0:
            raise conflict(f"payment is {payment.status.value}; nothing captured to refund", payment.id)
        self._check_amount(payment, amount)
        if amount.amount_minor > payment.refundable:
            raise processor_error(
                "REFUND_EXCEEDS_CAPTURED_AT_PROCESSOR",
                f"cannot refund {amount}: only {payment.refundable} minor units are refundable",
                processor_id=payment.id,
            )
        outcome = payment.profile.refund_outcome
        status = RefundStatus.SUCCEEDED if outcome is None else RefundStatus.PENDING
        refund = RefundRecord(self.new_id("re"), payment.id, amount, status, settles_to=outcome, our_id=our_id)
        self.refunds[refund.id] = refund
        if status is RefundStatus.SUCCEEDED:
            payment.amount_refunded += amount.amount_minor
        else:
            # Held like Stripe does, so two pending refunds cannot together exceed the capture.
            payment.amount_refund_pending += amount.amount_minor
        return refund

    def settle_refunds(self) -> list[RefundRecord]:
        """Moves every PENDING refund to its token's outcome; returns those that moved."""
        settled: list[RefundRecord] = []
        for refund in self.refunds.values():
            if refund.status is not RefundStatus.PENDING or refund.settles_to is None:
                continue
            payment = self.payments[refund.payment_id]
            payment.amount_refund_pending -= refund.amount.amount_minor
            if refund.settles_to is RefundStatus.SUCCEEDED:
                payment.amount_refunded += refund.amount.amount_minor
            else:
                refund.failure_reason = "declined"  # the money never left: it is refundable again
            refund.status = refund.settles_to
            settled.append(refund)
        return settled

    # -- subscriptions --------------------------------------------------------------

    def start_subscription(
        self,
        method: PaymentMethodRecord,
        price: PriceRecord,
        quantity: int,
        trial_end: datetime | None,
        our_id: str = "",
    ) -> SubscriptionRecord:
        """Starts a subscription: TRIALING until ``trial_end``, else charged for period 0 now."""
        if not price.active:
            raise conflict("price is archived", price.id)
        if quantity < 1:
            raise invalid("quantity must be at least 1")
        now = self.clock.now()
        if trial_end is not None and trial_end <= now:
            raise invalid("trial_end must be in the future")
        start, end = period_bounds(now, price.interval, price.interval_count, 0)
        sub = SubscriptionRecord(
            self.new_id("sub"), method.customer_id, method.id, price, quantity, _S.ACTIVE,
            anchor=now, cycle=0, period_start=start, period_end=end, our_id=our_id,
        )  # fmt: skip
        self.subscriptions[sub.id] = sub
        if trial_end is not None:
            # As at Stripe, the billing cycle is anchored at the trial end; the trial is period -1.
            sub.status, sub.trial_end, sub.anchor, sub.cycle, sub.period_end = (
                _S.TRIALING, trial_end, trial_end, -1, trial_end,
            )  # fmt: skip
        elif self._period_invoice(sub).status is not InvoiceStatus.PAID:
            sub.status = _S.INCOMPLETE
        return sub

    def change_subscription(
        self, sub: SubscriptionRecord, price: PriceRecord, quantity: int, proration: ProrationBehavior
    ) -> None:
        """Switches price and/or quantity, prorating per ``proration``.

        CREATE_PRORATIONS queues proration lines for the next invoice; ALWAYS_INVOICE bills
        them now (while paused they are queued instead: paused subscriptions are never
        invoiced); NONE only changes what the next period costs. Trials are not prorated.
        """
        if sub.status in (_S.CANCELED, _S.INCOMPLETE):
            raise conflict(f"subscription is {sub.status.value} and cannot be changed", sub.id)
        if quantity < 1:
            raise invalid("quantity must be at least 1")
        if price.id != sub.price.id and not price.active:
            raise conflict("price is archived", price.id)
        if price.amount.currency != sub.price.amount.currency:
            raise invalid("the new price must use the subscription's currency")
        if (price.interval, price.interval_count) != (sub.price.interval, sub.price.interval_count):
            # Stripe would reset the billing anchor; nothing needs that from the fake yet.
            raise NotSupportedByProcessor("the fake processor cannot change a subscription's billing interval")
        if (price.id, quantity) == (sub.price.id, sub.quantity):
            return
        prorating = proration is not ProrationBehavior.NONE and sub.status is not _S.TRIALING
        lines = self._proration_lines(sub, price, quantity) if prorating else []
        sub.price, sub.quantity = price, quantity
        if proration is ProrationBehavior.ALWAYS_INVOICE and lines and sub.status is not _S.PAUSED:
            lines, sub.pending_lines = [*sub.pending_lines, *lines], []
            now = self.clock.now()
            if self._issue_invoice(sub, lines, now, sub.period_end, now).status is not InvoiceStatus.PAID:
                sub.status = _S.PAST_DUE
        else:
            sub.pending_lines.extend(lines)

    def _proration_lines(self, sub: SubscriptionRecord, price: PriceRecord, quantity: int) -> list[InvoiceLine]:
        """Credit for the unused time of the current price, charge for the rest on the new one.

        Both are floored shares, in whole minor units, by seconds left in the period.
        """
        now = self.clock.now()
        total_s = (sub.period_end - sub.period_start) // SECOND
        remaining_s = max(0, (sub.period_end - now) // SECOND)
        currency = price.amount.currency
        credit = prorate(sub.price.amount.amount_minor * sub.quantity, remaining_s, total_s)
        charge = prorate(price.amount.amount_minor * quantity, remaining_s, total_s)
        return [
            InvoiceLine(
                f"Unused time on {sub.quantity} x {sub.price.name} after {now:%Y-%m-%d}",
                Money(-credit, currency),
                sub.quantity,
                proration=True,
            ),
            InvoiceLine(
                f"Remaining time on {quantity} x {price.name} after {now:%Y-%m-%d}",
                Money(charge, currency),
                quantity,
                proration=True,
            ),
        ]

    def _issue_invoice(
        self, sub: SubscriptionRecord, lines: list[InvoiceLine], start: datetime, end: datetime, created: datetime
    ) -> InvoiceRecord:
        """Issues an invoice for ``lines`` and collects it off-session from the subscription's method."""
        currency = sub.price.amount.currency
        total = sum(line.amount.amount_minor for line in lines)
        if total < 0:
            # Stripe keeps a negative total as customer balance; we carry it to the next invoice.
            lines = [*lines, InvoiceLine("Credit carried to the next invoice", Money(-total, currency), 1)]
            sub.pending_lines.append(InvoiceLine("Credit from a previous invoice", Money(total, currency), 1))
            total = 0
        invoice = InvoiceRecord(
            self.new_id("in"), self.next_number("invoice_seq"), sub.id, InvoiceStatus.OPEN,
            Money(total, currency), Money.zero(currency), start, end, lines, created,
        )  # fmt: skip
        self.invoices[invoice.id] = invoice
        method = self.payment_methods[sub.payment_method_id]
        paid = total == 0
        if total > 0 and method.attached:  # a detached method leaves the invoice OPEN
            payment = self.charge(method, invoice.amount_due, CaptureMethod.AUTOMATIC, off_session=True, key=invoice.id)
            invoice.payment_id, paid = payment.id, payment.status is PaymentStatus.SUCCEEDED
            invoice.attempt_count += 1  # one attempt; the fake does not retry (Stripe's schedule would)
            invoice.last_failure = None if paid else payment.failure
        if paid:
            invoice.status, invoice.amount_paid = InvoiceStatus.PAID, invoice.amount_due
        return invoice

    def _period_invoice(self, sub: SubscriptionRecord) -> InvoiceRecord:
        """Invoices the current period: the price times quantity plus queued lines."""
        price = sub.price
        line = InvoiceLine(
            f"{sub.quantity} x {price.name} ({sub.period_start:%Y-%m-%d} - {sub.period_end:%Y-%m-%d})",
            price.amount * sub.quantity,
            sub.quantity,
        )
        lines, sub.pending_lines = [line, *sub.pending_lines], []
        return self._issue_invoice(sub, lines, sub.period_start, sub.period_end, sub.period_start)

    def renew_due(self) -> list[InvoiceRecord]:
        """Bills every period that ended by now, catching up several if the clock jumped."""
        created: list[InvoiceRecord] = []
        now = self.clock.now()
        for sub in self.subscriptions.values():
            while sub.status not in (_S.CANCELED, _S.INCOMPLETE) and sub.period_end <= now:
                if sub.cancel_at_period_end:
                    sub.status, sub.canceled_at = _S.CANCELED, sub.period_end
                    break
                sub.roll()
                if sub.status is _S.PAUSED:
                    continue  # paused: the schedule moves on, nothing is billed
                invoice = self._period_invoice(sub)
                sub.status = _S.ACTIVE if invoice.status is InvoiceStatus.PAID else _S.PAST_DUE
                created.append(invoice)
        return created
