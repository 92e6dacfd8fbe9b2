"""The invoice mirror's attempt count: it only grows, and each rise of an unpaid invoice is
one failed attempt, whatever order reports of the same processor invoice arrive in."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from billing_service.domain.common import Processor
from billing_service.domain.money import Money
from billing_service.domain.payments import PaymentFailure
from billing_service.domain.subscriptions import Invoice, InvoiceStatus, ProcessorInvoiceState

T0 = datetime(2026, 3, 1, tzinfo=UTC)
St = InvoiceStatus
DECLINED = PaymentFailure("card_declined", "insufficient_funds", "Your card has insufficient funds.")


def report(status: InvoiceStatus, attempts: int, *, failure: PaymentFailure | None = None) -> ProcessorInvoiceState:
    paid = Money(1500 if status is St.PAID else 0, "USD")
    retry = None if status in (St.PAID, St.VOID) else T0 + timedelta(days=3 * attempts)
    return ProcessorInvoiceState(
        "in_1", "sub_1", status, Money(1500, "USD"), paid, T0, T0 + timedelta(days=30),
        attempt_count=attempts, last_failure=failure, next_attempt_at=retry,
    )  # fmt: skip


def mirror() -> Invoice:
    return Invoice(
        "in_ours", "sub_ours", "cus_1", Processor.STRIPE, "in_1", St.OPEN, Money(1500, "USD"), Money(0, "USD"),
        T0, T0 + timedelta(days=30), [], T0, T0,
    )  # fmt: skip


def apply(invoice: Invoice, state: ProcessorInvoiceState) -> bool:
    """What the mirror does with one report: True when it records a failed attempt."""
    failed = invoice.failed_attempt(state)
    invoice.apply_processor_state(state, T0)
    return failed


def test_each_rise_of_an_unpaid_invoices_count_is_one_failed_attempt_and_a_repeat_is_none() -> None:
    invoice = mirror()
    assert apply(invoice, report(St.OPEN, 1, failure=DECLINED))
    assert (invoice.attempt_count, invoice.last_failure, invoice.last_failure_time) == (1, DECLINED, T0)
    assert invoice.next_attempt_time == T0 + timedelta(days=3)
    assert not apply(invoice, report(St.OPEN, 1, failure=DECLINED))  # read again: nothing new
    assert apply(invoice, report(St.UNCOLLECTIBLE, 2))  # the last retry failed too
    assert (invoice.status, invoice.attempt_count) == (St.UNCOLLECTIBLE, 2)
    assert not apply(invoice, report(St.PAID, 3))  # the successful attempt is no failure
    assert (invoice.status, invoice.attempt_count) == (St.PAID, 3)
    assert invoice.next_attempt_time is None


def test_every_order_of_the_same_reports_records_each_failed_attempt_once_and_never_moves_back() -> None:
    reports = [report(St.OPEN, 1, failure=DECLINED), report(St.OPEN, 2, failure=DECLINED), report(St.OPEN, 2)]
    for order in itertools.permutations(reports * 2):  # each report delivered twice, in any order
        invoice = mirror()
        recorded = sum(apply(invoice, r) for r in order)
        assert invoice.attempt_count == 2
        # Each failed attempt seen is recorded once; one seen only after a later one is folded into it.
        first_two = [r.attempt_count for r in order]
        assert recorded == (2 if first_two.index(1) < first_two.index(2) else 1)
        assert invoice.last_failure == DECLINED


def test_a_stale_report_after_payment_changes_nothing() -> None:
    invoice = mirror()
    apply(invoice, report(St.PAID, 2))
    assert not apply(invoice, report(St.OPEN, 1, failure=DECLINED))
    assert (invoice.status, invoice.attempt_count, invoice.last_failure) == (St.PAID, 2, None)


def test_an_invoice_first_seen_with_a_failed_attempt_is_known_as_such() -> None:
    assert Invoice.first_seen_failed(report(St.OPEN, 1))
    assert not Invoice.first_seen_failed(report(St.OPEN, 0))
    assert not Invoice.first_seen_failed(report(St.PAID, 1))
