"""Conversions between billing.v1 messages and domain objects.

Parsing functions raise ``InvalidArgument`` naming the offending request field, before
anything is written.
"""

from __future__ import annotations

from datetime import datetime

from billing.v1 import billing_service_pb2, common_pb2, subscription_service_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.customers import Customer, PaymentMethod, PaymentMethodStatus, PaymentMethodType
from billing_service.domain.disputes import Dispute, DisputeStatus
from billing_service.domain.errors import InvalidArgument
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    CaptureMethod,
    NextAction,
    Payment,
    PaymentFailure,
    PaymentStatus,
    Refund,
    RefundReason,
    RefundStatus,
)
from billing_service.domain.subscriptions import (
    Interval,
    Invoice,
    InvoiceStatus,
    Plan,
    PlanStatus,
    ProrationBehavior,
    Subscription,
    SubscriptionStatus,
)
from billing_service.service_layer.previews import PaymentMethodPreview

PROCESSOR_TO_PB = {
    Processor.STRIPE: common_pb2.PROCESSOR_STRIPE,
    Processor.PAYPAL: common_pb2.PROCESSOR_PAYPAL,
    Processor.FAKE: common_pb2.PROCESSOR_FAKE,
}
PROCESSOR_FROM_PB = {v: k for k, v in PROCESSOR_TO_PB.items()}
PAYMENT_STATUS_TO_PB = {s: billing_service_pb2.PaymentStatus.Value(f"PAYMENT_STATUS_{s.name}") for s in PaymentStatus}
PAYMENT_STATUS_FROM_PB = {v: k for k, v in PAYMENT_STATUS_TO_PB.items()}
REFUND_STATUS_TO_PB = {s: billing_service_pb2.RefundStatus.Value(f"REFUND_STATUS_{s.name}") for s in RefundStatus}
REFUND_REASON_TO_PB = {
    r: billing_service_pb2.RefundReason.Value(f"REFUND_REASON_{r.name}")
    for r in RefundReason
    if r is not RefundReason.UNSPECIFIED
} | {RefundReason.UNSPECIFIED: billing_service_pb2.REFUND_REASON_UNSPECIFIED}
REFUND_REASON_FROM_PB = {v: k for k, v in REFUND_REASON_TO_PB.items()}
CAPTURE_TO_PB = {
    CaptureMethod.AUTOMATIC: billing_service_pb2.CAPTURE_METHOD_AUTOMATIC,
    CaptureMethod.MANUAL: billing_service_pb2.CAPTURE_METHOD_MANUAL,
}
CAPTURE_FROM_PB = {v: k for k, v in CAPTURE_TO_PB.items()} | {
    billing_service_pb2.CAPTURE_METHOD_UNSPECIFIED: CaptureMethod.AUTOMATIC
}
PM_TYPE_TO_PB = {
    t: billing_service_pb2.PaymentMethodType.Value(f"PAYMENT_METHOD_TYPE_{t.name}") for t in PaymentMethodType
}
PM_STATUS_TO_PB = {
    s: billing_service_pb2.PaymentMethodStatus.Value(f"PAYMENT_METHOD_STATUS_{s.name}") for s in PaymentMethodStatus
}
INTERVAL_TO_PB = {i: subscription_service_pb2.Interval.Value(f"INTERVAL_{i.name}") for i in Interval}
INTERVAL_FROM_PB = {v: k for k, v in INTERVAL_TO_PB.items()}
PLAN_STATUS_TO_PB = {s: subscription_service_pb2.PlanStatus.Value(f"PLAN_STATUS_{s.name}") for s in PlanStatus}
SUB_STATUS_TO_PB = {
    s: subscription_service_pb2.SubscriptionStatus.Value(f"SUBSCRIPTION_STATUS_{s.name}") for s in SubscriptionStatus
}
SUB_STATUS_FROM_PB = {v: k for k, v in SUB_STATUS_TO_PB.items()}
PRORATION_FROM_PB = {
    subscription_service_pb2.PRORATION_BEHAVIOR_UNSPECIFIED: ProrationBehavior.CREATE_PRORATIONS,
    subscription_service_pb2.PRORATION_BEHAVIOR_CREATE_PRORATIONS: ProrationBehavior.CREATE_PRORATIONS,
    subscription_service_pb2.PRORATION_BEHAVIOR_NONE: ProrationBehavior.NONE,
    subscription_service_pb2.PRORATION_BEHAVIOR_ALWAYS_INVOICE: ProrationBehavior.ALWAYS_INVOICE,
}
INVOICE_STATUS_TO_PB = {
    s: subscription_service_pb2.InvoiceStatus.Value(f"INVOICE_STATUS_{s.name}") for s in InvoiceStatus
}
DISPUTE_STATUS_TO_PB = {s: billing_service_pb2.DisputeStatus.Value(f"DISPUTE_STATUS_{s.name}") for s in DisputeStatus}


# ---------------------------------------------------------------------------
# request parsing
# ---------------------------------------------------------------------------


def enum_in(value: int, table: dict[int, object], field_path: str) -> None:
    """Refuses enum numbers the contract does not define."""
    if value not in table:
        raise InvalidArgument.field(field_path, f"unknown value {value}")


def payment_status_filter(value: int, field_path: str = "status") -> PaymentStatus | None:
    """Parses a list's optional PaymentStatus filter (UNSPECIFIED: any status)."""
    if not value:
        return None
    enum_in(value, PAYMENT_STATUS_FROM_PB, field_path)  # type: ignore[arg-type]
    return PAYMENT_STATUS_FROM_PB[value]  # type: ignore[index]


def subscription_status_filter(value: int, field_path: str = "status") -> SubscriptionStatus | None:
    """Parses a list's optional SubscriptionStatus filter (UNSPECIFIED: any status)."""
    if not value:
        return None
    enum_in(value, SUB_STATUS_FROM_PB, field_path)  # type: ignore[arg-type]
    return SUB_STATUS_FROM_PB[value]  # type: ignore[index]


def processor_from_pb(value: int, field_path: str, *, required: bool = False) -> Processor | None:
    """Parses an optional Processor enum."""
    if value == common_pb2.PROCESSOR_UNSPECIFIED:
        if required:
            raise InvalidArgument.field(field_path, "is required")
        return None
    enum_in(value, PROCESSOR_FROM_PB, field_path)  # type: ignore[arg-type]
    return PROCESSOR_FROM_PB[value]  # type: ignore[index]


def money_from_pb(msg: common_pb2.Money, field_path: str, *, present: bool, required: bool = True) -> Money | None:
    """Parses a positive Money; ``present`` is the parent's HasField result."""
    if not present:
        if required:
            raise InvalidArgument.field(field_path, "is required")
        return None
    return Money.parse(msg.amount_minor, msg.currency, field_path=field_path)


def ts(value: datetime | None) -> Timestamp | None:
    """Converts an aware datetime to a Timestamp (None stays unset)."""
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value)
    return out


def money_pb(value: Money) -> common_pb2.Money:
    """Converts Money to its message."""
    return common_pb2.Money(amount_minor=value.amount_minor, currency=value.currency)


def _refs(refs: dict[str, str]) -> list[common_pb2.ProcessorReference]:
    out = []
    for name, ref in sorted(refs.items()):
        if name in {p.value for p in Processor}:
            out.append(common_pb2.ProcessorReference(processor=PROCESSOR_TO_PB[Processor(name)], id=ref))
    return out


# ---------------------------------------------------------------------------
# domain -> messages
# ---------------------------------------------------------------------------


def customer_pb(c: Customer) -> billing_service_pb2.Customer:
    """Customer message."""
    return billing_service_pb2.Customer(
        id=c.id,
        email=c.email,
        name=c.name,
        description=c.description,
        metadata=c.metadata,
        default_processor=PROCESSOR_TO_PB[c.default_processor],
        processor_refs=_refs(c.processor_refs),
        create_time=ts(c.created_at),
        update_time=ts(c.updated_at),
    )


def payment_method_pb(m: PaymentMethod) -> billing_service_pb2.PaymentMethod:
    """PaymentMethod message (display data only)."""
    card = (
        billing_service_pb2.CardDetails(brand=m.brand, last4=m.last4, exp_month=m.exp_month, exp_year=m.exp_year)
        if m.type is PaymentMethodType.CARD
        else None
    )
    return billing_service_pb2.PaymentMethod(
        id=m.id,
        customer_id=m.customer_id,
        processor=PROCESSOR_TO_PB[m.processor],
        processor_id=m.processor_id,
        type=PM_TYPE_TO_PB[m.type],
        card=card,
        status=PM_STATUS_TO_PB[m.status],
        create_time=ts(m.created_at),
        update_time=ts(m.updated_at),
    )


def payment_method_preview_pb(m: PaymentMethodPreview) -> billing_service_pb2.PaymentMethod:
    """A validate_only preview of an attach: no id, and no type or card until the processor answers."""
    return billing_service_pb2.PaymentMethod(
        customer_id=m.customer_id,
        processor=PROCESSOR_TO_PB[m.processor],
        status=billing_service_pb2.PAYMENT_METHOD_STATUS_ATTACHED,
    )


def _next_action(n: NextAction | None) -> common_pb2.NextAction | None:
    if n is None:
        return None
    return common_pb2.NextAction(client_secret=n.client_secret, redirect_url=n.redirect_url)


def _failure_pb(f: PaymentFailure | None) -> billing_service_pb2.PaymentFailure | None:
    if f is None:
        return None
    return billing_service_pb2.PaymentFailure(code=f.code, decline_code=f.decline_code, message=f.message)


def payment_pb(p: Payment) -> billing_service_pb2.Payment:
    """Payment message."""
    failure = _failure_pb(p.failure)
    return billing_service_pb2.Payment(
        id=p.id,
        customer_id=p.customer_id,
        payment_method_id=p.payment_method_id,
        processor=PROCESSOR_TO_PB[p.processor],
        processor_id=p.processor_id,
        amount=money_pb(p.amount),
        amount_capturable=money_pb(p.money(p.amount_capturable)),
        amount_captured=money_pb(p.money(p.amount_captured)),
        amount_refunded=money_pb(p.money(p.amount_refunded)),
        amount_refund_pending=money_pb(p.money(p.amount_refund_pending)),
        capture_method=CAPTURE_TO_PB[p.capture_method],
        status=PAYMENT_STATUS_TO_PB[p.status],
        description=p.description,
        metadata=p.metadata,
        next_action=_next_action(p.next_action),
        failure=failure,
        create_time=ts(p.created_at),
        update_time=ts(p.updated_at),
        dispute_ids=p.dispute_ids,
    )


def refund_pb(r: Refund) -> billing_service_pb2.Refund:
    """Refund message."""
    return billing_service_pb2.Refund(
        id=r.id,
        payment_id=r.payment_id,
        processor=PROCESSOR_TO_PB[r.processor],
        processor_id=r.processor_id,
        amount=money_pb(r.amount),
        reason=REFUND_REASON_TO_PB[r.reason],
        status=REFUND_STATUS_TO_PB[r.status],
        failure_reason=r.failure_reason,
        metadata=r.metadata,
        create_time=ts(r.created_at),
        update_time=ts(r.updated_at),
    )


def dispute_pb(d: Dispute) -> billing_service_pb2.Dispute:
    """Dispute message, with the time from opening to resolution once closed."""
    resolution = None
    if d.time_to_resolution is not None:
        resolution = Duration()
        resolution.FromTimedelta(d.time_to_resolution)
    return billing_service_pb2.Dispute(
        id=d.id,
        payment_id=d.payment_id,
        processor=PROCESSOR_TO_PB[d.processor],
        processor_id=d.processor_id,
        amount=money_pb(d.amount),
        reason=d.reason,
        status=DISPUTE_STATUS_TO_PB[d.status],
        open_time=ts(d.opened_at),
        close_time=ts(d.closed_at),
        time_to_resolution=resolution,
        create_time=ts(d.created_at),
        update_time=ts(d.updated_at),
    )


def audit_event_pb(e: AuditEvent) -> common_pb2.AuditEvent:
    """AuditEvent message."""
    return common_pb2.AuditEvent(
        id=e.id,
        caller=e.caller,
        request_id=e.request_id,
        action=e.action,
        resource_type=e.resource_type,
        resource_id=e.resource_id,
        before_status=e.before_status,
        after_status=e.after_status,
        create_time=ts(e.at),
        data=e.data,
    )


def plan_pb(p: Plan) -> subscription_service_pb2.Plan:
    """Plan message."""
    return subscription_service_pb2.Plan(
        id=p.id,
        name=p.name,
        description=p.description,
        price=money_pb(p.price),
        interval=INTERVAL_TO_PB[p.interval],
        interval_count=p.interval_count,
        trial_period_days=p.trial_period_days,
        status=PLAN_STATUS_TO_PB[p.status],
        metadata=p.metadata,
        processor_refs=_refs(p.processor_refs),
        create_time=ts(p.created_at),
        update_time=ts(p.updated_at),
    )


def subscription_pb(s: Subscription) -> subscription_service_pb2.Subscription:
    """Subscription message."""
    return subscription_service_pb2.Subscription(
        id=s.id,
        customer_id=s.customer_id,
        plan_id=s.plan_id,
        payment_method_id=s.payment_method_id,
        quantity=s.quantity,
        status=SUB_STATUS_TO_PB[s.status],
        processor=PROCESSOR_TO_PB[s.processor],
        processor_id=s.processor_id,
        trial_end=ts(s.trial_end),
        current_period_start=ts(s.current_period_start),
        current_period_end=ts(s.current_period_end),
        cancel_at_period_end=s.cancel_at_period_end,
        cancel_time=ts(s.canceled_at),
        pause_time=ts(s.paused_at),
        metadata=s.metadata,
        next_action=common_pb2.NextAction(redirect_url=s.approval_url) if s.approval_url else None,
        create_time=ts(s.created_at),
        update_time=ts(s.updated_at),
    )


def invoice_pb(i: Invoice) -> subscription_service_pb2.Invoice:
    """Invoice message."""
    return subscription_service_pb2.Invoice(
        id=i.id,
        subscription_id=i.subscription_id,
        customer_id=i.customer_id,
        processor=PROCESSOR_TO_PB[i.processor],
        processor_id=i.processor_id,
        status=INVOICE_STATUS_TO_PB[i.status],
        amount_due=money_pb(i.amount_due),
        amount_paid=money_pb(i.amount_paid),
        period_start=ts(i.period_start),
        period_end=ts(i.period_end),
        lines=[
            subscription_service_pb2.InvoiceLine(
                description=line.description,
                amount=money_pb(line.amount),
                quantity=line.quantity,
                proration=line.proration,
            )
            for line in i.lines
        ],
        create_time=ts(i.created_at),
        update_time=ts(i.updated_at),
        attempt_count=i.attempt_count,
        last_payment_failure=_failure_pb(i.last_failure),
        last_payment_failure_time=ts(i.last_failure_time),
        next_payment_attempt_time=ts(i.next_attempt_time),
    )
