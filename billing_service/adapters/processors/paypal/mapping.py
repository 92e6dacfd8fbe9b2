"""What PayPal's orders, refunds, payment tokens, plans and subscriptions mean to us.

Pure translation from PayPal's documented JSON to our domain types (and the few request
bodies built from ours), kept apart from the verbs so every rule about statuses can be
read, and unit-tested, without a network. Amounts and other wire formats are ``wire``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from billing_service.adapters.processors.paypal import wire
from billing_service.adapters.processors.paypal.wire import Json
from billing_service.domain.customers import PaymentMethodType
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    NextAction,
    PaymentFailure,
    PaymentStatus,
    ProcessorPaymentState,
    ProcessorRefundState,
    RefundStatus,
)
from billing_service.domain.subscriptions import (
    Interval,
    InvoiceLine,
    InvoiceStatus,
    Plan,
    ProcessorInvoiceState,
    ProcessorSubscriptionState,
    SubscriptionStatus,
)
from billing_service.service_layer.ports import AttachedPaymentMethod

# PayPal cannot cancel an order: cancelling one its buyer has not paid appends this mark to
# its custom_id (our payment id), so nothing ever completes it later.
CANCELED_MARK = ":canceled"
CUSTOM_ID_MAX = 127  # PayPal's custom_id length


def canceled_custom_id(custom_id: str) -> str:
    """``custom_id`` with the canceled mark, within PayPal's length limit."""
    return custom_id[: CUSTOM_ID_MAX - len(CANCELED_MARK)] + CANCELED_MARK


def is_canceled(custom_id: str) -> bool:
    """True when the order carrying ``custom_id`` was canceled by us."""
    return custom_id.endswith(CANCELED_MARK)


def our_payment_id(custom_id: str) -> str:
    """Our payment id from an order's (or capture's) ``custom_id``, without the canceled mark."""
    return custom_id.removesuffix(CANCELED_MARK)


# ---------------------------------------------------------------------------
# Orders -> payments
# ---------------------------------------------------------------------------

_MONEY_TAKEN = frozenset({"COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"})
_CAPTURE_FAILED = frozenset({"DECLINED", "FAILED"})


def purchase_payments(order: Mapping[str, Any]) -> tuple[Json, list[Json], list[Json]]:
    """Returns (purchase unit, captures, authorizations) of the order's only purchase unit."""
    units = order.get("purchase_units") or [{}]
    unit: Json = dict(units[0])
    payments = unit.get("payments") or {}
    return unit, list(payments.get("captures") or []), list(payments.get("authorizations") or [])


def open_authorization(order: Mapping[str, Any]) -> Json | None:
    """The authorization that can still be captured or voided, if any."""
    _, _, auths = purchase_payments(order)
    for auth in auths:
        if auth.get("status") in ("CREATED", "PARTIALLY_CAPTURED", "PENDING"):
            return auth
    return None


def first_capture(order: Mapping[str, Any]) -> Json | None:
    """The capture that refunds go against (we capture at most once per order)."""
    _, captures, _ = purchase_payments(order)
    for capture in captures:
        if capture.get("status") in _MONEY_TAKEN:
            return capture
    return captures[0] if captures else None


def declined_capture(order: Mapping[str, Any]) -> Json | None:
    """A capture PayPal created but declined, when nothing else succeeded."""
    _, captures, _ = purchase_payments(order)
    if captures and all(c.get("status") in _CAPTURE_FAILED for c in captures):
        return captures[-1]
    return None


def _sum_taken(captures: Sequence[Mapping[str, Any]]) -> int:
    return sum(wire.money_from(c["amount"]).amount_minor for c in captures if c.get("status") in _MONEY_TAKEN)


def _decline_code(resource: Mapping[str, Any], default: str) -> str:
    reason = (resource.get("status_details") or {}).get("reason") or default
    return str(reason).lower()


def payment_state(order: Mapping[str, Any]) -> ProcessorPaymentState:
    """Translates an Orders v2 order into our payment view.

    The processor id is the order id; captures and authorizations are always re-read
    from the order, so nothing else needs to be stored on our side.
    """
    order_id = wire.required_id(order)
    status = order.get("status")
    _, captures, auths = purchase_payments(order)

    # Amounts are read only for the statuses that report them: an order still waiting for
    # its payer (or voided) says nothing about money, whatever its payments list holds.
    if status in ("CREATED", "PAYER_ACTION_REQUIRED"):
        url = wire.link(order, "payer-action", "approve")
        return ProcessorPaymentState(order_id, PaymentStatus.REQUIRES_ACTION, next_action=NextAction(redirect_url=url))
    if status == "VOIDED":
        return ProcessorPaymentState(order_id, PaymentStatus.CANCELED)
    if status != "COMPLETED":  # APPROVED (being completed) or SAVED
        return ProcessorPaymentState(order_id, PaymentStatus.PROCESSING)
    taken = _sum_taken(captures)
    pending_capture = any(c.get("status") == "PENDING" for c in captures)

    if auths:
        auth = auths[0]
        auth_status = auth.get("status")
        if auth_status in ("CREATED", "PARTIALLY_CAPTURED"):
            # PayPal only allows more captures up to the authorized amount.
            capturable = wire.money_from(auth["amount"]).amount_minor - taken
            return ProcessorPaymentState(
                order_id, PaymentStatus.REQUIRES_CAPTURE, amount_capturable=max(capturable, 0), amount_captured=taken
            )
        if auth_status == "DENIED":
            failure = PaymentFailure(code="authorization_denied", decline_code=_decline_code(auth, "denied"))
            return ProcessorPaymentState(order_id, PaymentStatus.FAILED, failure=failure)
        if auth_status == "PENDING" or pending_capture:
            return ProcessorPaymentState(order_id, PaymentStatus.PROCESSING, amount_captured=taken)
        if taken:
            return ProcessorPaymentState(order_id, PaymentStatus.SUCCEEDED, amount_captured=taken)
        return ProcessorPaymentState(order_id, PaymentStatus.CANCELED)  # VOIDED or EXPIRED, nothing taken

    if taken:
        return ProcessorPaymentState(order_id, PaymentStatus.SUCCEEDED, amount_captured=taken)
    declined = declined_capture(order)
    if declined is not None:
        failure = PaymentFailure(
            code="card_declined",
            decline_code=_decline_code(declined, "declined"),
            message="PayPal declined the capture",
        )
        return ProcessorPaymentState(order_id, PaymentStatus.FAILED, failure=failure)
    return ProcessorPaymentState(order_id, PaymentStatus.PROCESSING)


# ---------------------------------------------------------------------------
# Refunds, payment tokens
# ---------------------------------------------------------------------------

_REFUND_STATUS = {
    "COMPLETED": RefundStatus.SUCCEEDED,
    "PENDING": RefundStatus.PENDING,
    "FAILED": RefundStatus.FAILED,
    "CANCELLED": RefundStatus.CANCELED,
}


def refund_state(
    refund: Mapping[str, Any], *, processor_payment_id: str = "", payment_custom_id: str = ""
) -> ProcessorRefundState:
    """Translates a Payments v2 refund (ours, one made in PayPal's dashboard, or a reversal).

    Args:
        refund: The refund as PayPal shows it.
        processor_payment_id: The order the refunded capture belongs to (the refund itself
            names only its capture, in its ``up`` link).
        payment_custom_id: The capture's ``custom_id`` (our payment id). A refund that shows
            the same value did not get it from us: only our own refunds carry our refund id.
    """
    status = _REFUND_STATUS.get(str(refund.get("status")), RefundStatus.PENDING)
    failure = ""
    if status in (RefundStatus.FAILED, RefundStatus.CANCELED):
        failure = _decline_code(refund, str(refund.get("status", "")))
    amount = refund.get("amount")
    custom_id = str(refund.get("custom_id") or "")
    return ProcessorRefundState(
        str(refund["id"]),
        status,
        failure_reason=failure,
        processor_payment_id=processor_payment_id,
        amount_minor=wire.money_from(amount).amount_minor if isinstance(amount, Mapping) else 0,
        refund_id="" if custom_id == payment_custom_id else custom_id,
    )


def resource_id(href: str, collection: str) -> str:
    """The id in a HATEOAS link to ``.../<collection>/<id>``, or "" if it links elsewhere."""
    parts = urlsplit(href).path.rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == collection else ""


def related_order_id(resource: Mapping[str, Any]) -> str:
    """The order a capture or authorization belongs to, from ``supplementary_data`` or its ``up`` link."""
    related = (resource.get("supplementary_data") or {}).get("related_ids") or {}
    return str(related.get("order_id") or "") or resource_id(wire.link(resource, "up"), "orders")


def attached_method(token: Mapping[str, Any]) -> AttachedPaymentMethod:
    """Display data of a Vault v3 payment token (never more than DESIGN.md allows)."""
    source = token.get("payment_source") or {}
    card = source.get("card")
    if card:
        year, _, month = str(card.get("expiry", "")).partition("-")  # "YYYY-MM"
        return AttachedPaymentMethod(
            processor_id=str(token["id"]),
            type=PaymentMethodType.CARD,
            brand=str(card.get("brand", "")).lower(),
            last4=str(card.get("last_digits", "")),
            exp_month=int(month) if month.isdigit() else 0,
            exp_year=int(year) if year.isdigit() else 0,
        )
    return AttachedPaymentMethod(processor_id=str(token["id"]), type=PaymentMethodType.PAYPAL)


def token_source_kind(token: Mapping[str, Any]) -> str:
    """``card``, ``paypal`` or ``venmo``: the ``payment_source`` key to pay the token with."""
    source = token.get("payment_source") or {}
    for kind in ("card", "paypal", "venmo", "apple_pay"):
        if kind in source:
            return kind
    return "paypal"


# ---------------------------------------------------------------------------
# Plans, subscriptions, transactions
# ---------------------------------------------------------------------------

_INTERVAL_UNIT = {Interval.DAY: "DAY", Interval.WEEK: "WEEK", Interval.MONTH: "MONTH", Interval.YEAR: "YEAR"}
MAX_DAY_INTERVAL = 365  # PayPal's largest DAY interval_count


def product_body(product_id: str) -> Json:
    """The one catalog product all our plans belong to.

    PayPal only revises a subscription between plans of the same product, so one product
    per plan would make every plan change impossible.
    """
    return {
        "id": product_id,
        "name": "Subscriptions",
        "description": "Recurring plans billed by the billing service",
        "type": "SERVICE",
    }


def plan_body(plan: Plan, product_id: str) -> Json:
    """A billing plan: an optional free TRIAL cycle, then one infinite REGULAR cycle."""
    cycles: list[Json] = []
    if plan.trial_period_days > 0:
        days = plan.trial_period_days
        # One DAY x n cycle when PayPal allows it, else n one-day cycles (<= 730 < 999).
        count, total = (days, 1) if days <= MAX_DAY_INTERVAL else (1, days)
        cycles.append(
            {
                "frequency": {"interval_unit": "DAY", "interval_count": count},
                "tenure_type": "TRIAL",
                "sequence": 1,
                "total_cycles": total,
            }
        )
    cycles.append(
        {
            "frequency": {"interval_unit": _INTERVAL_UNIT[plan.interval], "interval_count": plan.interval_count},
            "tenure_type": "REGULAR",
            "sequence": len(cycles) + 1,
            "total_cycles": 0,  # until canceled
            "pricing_scheme": {"fixed_price": wire.paypal_amount(plan.price, field_path="price")},
        }
    )
    result: Json = {
        "product_id": product_id,
        "name": plan.name[:127],
        "status": "ACTIVE",
        "billing_cycles": cycles,
        "payment_preferences": {"auto_bill_outstanding": True, "payment_failure_threshold": 3},
        "quantity_supported": True,
    }
    if plan.description:
        result["description"] = plan.description[:127]
    return result


_SUBSCRIPTION_STATUS = {
    "APPROVAL_PENDING": SubscriptionStatus.INCOMPLETE,
    "APPROVED": SubscriptionStatus.INCOMPLETE,
    "ACTIVE": SubscriptionStatus.ACTIVE,
    "SUSPENDED": SubscriptionStatus.PAUSED,
    "CANCELLED": SubscriptionStatus.CANCELED,
    "EXPIRED": SubscriptionStatus.CANCELED,
}


def subscription_state(sub: Mapping[str, Any]) -> ProcessorSubscriptionState:
    """Translates a Subscriptions v1 subscription.

    ACTIVE becomes TRIALING while no REGULAR cycle has been billed yet and the plan has a
    TRIAL cycle, and PAST_DUE while PayPal reports failed payments it keeps retrying. The
    plan and quantity are those PayPal bills: a revision shows only once the buyer approved it.
    """
    status = _SUBSCRIPTION_STATUS.get(str(sub.get("status")), SubscriptionStatus.INCOMPLETE)
    info = sub.get("billing_info") or {}
    cycles = list(info.get("cycle_executions") or [])
    next_billing = wire.parse_time(info.get("next_billing_time"))
    last_payment = wire.parse_time((info.get("last_payment") or {}).get("time"))
    trial_end = None
    if status is SubscriptionStatus.ACTIVE:
        has_trial = any(c.get("tenure_type") == "TRIAL" for c in cycles)
        regular_billed = any(
            c.get("tenure_type") == "REGULAR" and int(c.get("cycles_completed", 0)) > 0 for c in cycles
        )
        if has_trial and not regular_billed:
            status, trial_end = SubscriptionStatus.TRIALING, next_billing
        elif int(info.get("failed_payments_count", 0) or 0) > 0:
            status = SubscriptionStatus.PAST_DUE
    canceled_at = wire.parse_time(sub.get("status_update_time")) if status is SubscriptionStatus.CANCELED else None
    approval = wire.link(sub, "approve") if status is SubscriptionStatus.INCOMPLETE else ""
    quantity = str(sub.get("quantity") or "")
    return ProcessorSubscriptionState(
        processor_id=wire.required_id(sub),
        status=status,
        current_period_start=last_payment or wire.parse_time(sub.get("start_time")),
        current_period_end=next_billing,
        trial_end=trial_end,
        canceled_at=canceled_at,
        approval_url=approval,
        processor_plan_id=str(sub.get("plan_id") or ""),
        quantity=int(quantity) if quantity.isdigit() and int(quantity) > 0 else 0,
    )


_TRANSACTION_INVOICE = {
    "COMPLETED": InvoiceStatus.PAID,
    "PARTIALLY_REFUNDED": InvoiceStatus.PAID,
    "REFUNDED": InvoiceStatus.PAID,
    "PENDING": InvoiceStatus.OPEN,
}


def transaction_invoices(
    subscription_id: str, transactions: Sequence[Mapping[str, Any]]
) -> list[ProcessorInvoiceState]:
    """Maps subscription transactions to invoices, newest first.

    PayPal has no invoice object for subscriptions; each collected payment is one PAID
    invoice (PENDING ones OPEN). DECLINED attempts are retries of the same period and are
    not invoices; they surface as the subscription's PAST_DUE status instead.
    """
    invoices: list[ProcessorInvoiceState] = []
    for tx in transactions:
        status = _TRANSACTION_INVOICE.get(str(tx.get("status")))
        if status is None:
            continue
        gross = wire.money_from((tx.get("amount_with_breakdown") or {})["gross_amount"])
        at = wire.parse_time(tx.get("time"))
        invoices.append(
            ProcessorInvoiceState(
                processor_id=str(tx["id"]),
                processor_subscription_id=subscription_id,
                status=status,
                amount_due=gross,
                amount_paid=gross if status is InvoiceStatus.PAID else Money.zero(gross.currency),
                period_start=at,
                period_end=None,
                lines=[InvoiceLine(description="PayPal subscription payment", amount=gross, quantity=1)],
                created_at=at,
            )
        )
    invoices.sort(key=lambda inv: inv.created_at.timestamp() if inv.created_at else 0.0, reverse=True)
    return invoices
