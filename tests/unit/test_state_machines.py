"""State machines refuse illegal moves with precise reasons and never move backwards."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_service.domain.common import Processor
from billing_service.domain.errors import (
    CaptureExceedsAuthorized,
    IllegalTransition,
    RefundExceedsCaptured,
)
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    CaptureMethod,
    Payment,
    PaymentStatus,
    ProcessorPaymentState,
    RefundStatus,
)
from billing_service.domain.subscriptions import (
    ProcessorSubscriptionState,
    Subscription,
    SubscriptionStatus,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def payment(status: PaymentStatus = PaymentStatus.PENDING, **kw: Any) -> Payment:
    return Payment(
        id="pay_1", customer_id="cus_1", payment_method_id="pm_1", processor=Processor.FAKE,
        amount=Money(1000, "USD"), capture_method=CaptureMethod.MANUAL, status=status, description="",
        metadata={}, created_at=NOW, updated_at=NOW, **kw,
    )  # fmt: skip


def test_capture_of_cancelled_payment_is_refused_with_precise_reason() -> None:
    p = payment(PaymentStatus.CANCELED)
    with pytest.raises(IllegalTransition) as info:
        p.ensure_capturable(None)
    assert info.value.reason == "PAYMENT_NOT_CAPTURABLE"


def test_capture_more_than_authorized_is_refused() -> None:
    p = payment(PaymentStatus.REQUIRES_CAPTURE, amount_capturable=1000)
    with pytest.raises(CaptureExceedsAuthorized):
        p.ensure_capturable(Money(1001, "USD"))
    assert p.ensure_capturable(Money(400, "USD")) == Money(400, "USD")
    assert p.ensure_capturable(None) == Money(1000, "USD")


def test_refunds_never_exceed_captured() -> None:
    p = payment(PaymentStatus.SUCCEEDED, amount_captured=1000)
    p.reserve_refund(Money(600, "USD"))
    with pytest.raises(RefundExceedsCaptured) as info:
        p.reserve_refund(Money(401, "USD"))
    assert info.value.reason == "REFUND_EXCEEDS_CAPTURED"
    assert p.reserve_refund(None) == Money(400, "USD")
    with pytest.raises(RefundExceedsCaptured):
        p.reserve_refund(None)


def test_failed_refund_releases_its_reservation() -> None:
    p = payment(PaymentStatus.SUCCEEDED, amount_captured=1000)
    p.reserve_refund(Money(1000, "USD"))
    p.settle_refund(1000, before=RefundStatus.PENDING, after=RefundStatus.FAILED, now=NOW)
    assert p.refundable_minor == 1000
    p.reserve_refund(Money(300, "USD"))
    p.settle_refund(300, before=RefundStatus.PENDING, after=RefundStatus.SUCCEEDED, now=NOW)
    assert (p.amount_refunded, p.amount_refund_pending, p.refundable_minor) == (300, 0, 700)
    # A refund that bounces after succeeding gives the money back to refundable.
    p.settle_refund(300, before=RefundStatus.SUCCEEDED, after=RefundStatus.FAILED, now=NOW)
    assert (p.amount_refunded, p.refundable_minor) == (0, 1000)


def test_refund_of_uncaptured_payment_is_refused() -> None:
    with pytest.raises(IllegalTransition) as info:
        payment(PaymentStatus.REQUIRES_CAPTURE, amount_capturable=1000).reserve_refund(None)
    assert info.value.reason == "PAYMENT_NOT_REFUNDABLE"


def test_cancel_after_success_is_refused() -> None:
    with pytest.raises(IllegalTransition) as info:
        payment(PaymentStatus.SUCCEEDED).ensure_cancelable()
    assert info.value.reason == "PAYMENT_NOT_CANCELABLE"


@given(st.lists(st.sampled_from(list(PaymentStatus)), min_size=1, max_size=12))
def test_processor_reports_never_move_a_payment_backwards(reports: list[PaymentStatus]) -> None:
    order = [PaymentStatus.PENDING, PaymentStatus.REQUIRES_ACTION, PaymentStatus.PROCESSING,
             PaymentStatus.REQUIRES_CAPTURE]  # fmt: skip
    p = payment()
    seen_final = None
    for status in reports:
        before = p.status
        p.apply_processor_state(ProcessorPaymentState(processor_id="pi_1", status=status), NOW)
        if before in order and p.status in order:
            assert order.index(p.status) >= order.index(before)
        if seen_final is not None:
            assert p.status is seen_final  # a final status is never left
        if p.is_final:
            seen_final = p.status


def subscription(status: SubscriptionStatus) -> Subscription:
    return Subscription(
        id="sub_1", customer_id="cus_1", plan_id="plan_1", payment_method_id="pm_1", quantity=1, status=status,
        processor=Processor.FAKE, metadata={}, created_at=NOW, updated_at=NOW,
    )  # fmt: skip


def test_resume_of_active_subscription_is_refused() -> None:
    with pytest.raises(IllegalTransition) as info:
        subscription(SubscriptionStatus.ACTIVE).ensure_resumable()
    assert info.value.reason == "SUBSCRIPTION_NOT_PAUSED"


def test_canceled_subscription_is_final() -> None:
    s = subscription(SubscriptionStatus.CANCELED)
    assert not s.apply_processor_state(ProcessorSubscriptionState("sub_x", SubscriptionStatus.ACTIVE), NOW)
    assert s.status is SubscriptionStatus.CANCELED
    with pytest.raises(IllegalTransition):
        s.ensure_cancelable(at_period_end=False)
    with pytest.raises(IllegalTransition):
        s.ensure_pausable()
