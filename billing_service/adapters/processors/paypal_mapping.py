"""Pure translation between PayPal REST JSON and our domain types.

Kept apart from ``paypal.py`` (which owns the SDK client, threads and retries) so every
rule about amounts, statuses and error bodies can be read, and unit-tested, without a
network. Everything here works on PayPal's documented wire shapes (plain dicts), which
have been stable for years, rather than on the SDK's generated models, which were
renamed between SDK majors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from billing_service.adapters.processors.retry import bad_response
from billing_service.domain.customers import PaymentMethodType
from billing_service.domain.errors import (
    BillingError,
    CaptureExceedsAuthorized,
    FieldViolation,
    InvalidArgument,
    PaymentDeclined,
    ProcessorConfigurationError,
    ProcessorError,
    RefundExceedsCaptured,
)
from billing_service.domain.money import Money, currency_exponent
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

Json = dict[str, Any]

# PayPal's supported currencies and how many decimals PayPal accepts for each. HUF and
# TWD have two ISO 4217 decimals but PayPal takes whole units only; JPY has none anyway.
# https://developer.paypal.com/reference/currency-codes/
PAYPAL_CURRENCY_DECIMALS: dict[str, int] = {
    "AUD": 2, "BRL": 2, "CAD": 2, "CNY": 2, "CZK": 2, "DKK": 2, "EUR": 2, "HKD": 2,
    "HUF": 0, "ILS": 2, "JPY": 0, "MYR": 2, "MXN": 2, "TWD": 0, "NZD": 2, "NOK": 2,
    "PHP": 2, "PLN": 2, "GBP": 2, "SGD": 2, "SEK": 2, "CHF": 2, "THB": 2, "USD": 2,
}  # fmt: skip

AMOUNT_NOT_SUPPORTED = "AMOUNT_NOT_SUPPORTED_BY_PROCESSOR"


# ---------------------------------------------------------------------------
# Amounts
# ---------------------------------------------------------------------------


def paypal_value(money: Money, *, field_path: str = "amount") -> str:
    """Formats ``money`` as PayPal's decimal string, exactly (1234 USD -> ``"12.34"``).

    Raises:
        InvalidArgument: PayPal does not support the currency, or cannot express the
            amount in it (e.g. 150 minor units of HUF, which PayPal takes in whole forint).
    """
    decimals = PAYPAL_CURRENCY_DECIMALS.get(money.currency)
    if decimals is None:
        raise InvalidArgument.field(
            f"{field_path}.currency", f"PayPal does not support {money.currency}", reason=AMOUNT_NOT_SUPPORTED
        )
    if money.amount_minor < 0:
        raise InvalidArgument.field(f"{field_path}.amount_minor", "must not be negative")
    drop = money.exponent - decimals  # ISO minor digits PayPal cannot carry
    units, rest = divmod(money.amount_minor, 10**drop)
    if rest:
        raise InvalidArgument.field(
            f"{field_path}.amount_minor",
            f"PayPal accepts {money.currency} in whole units only",
            reason=AMOUNT_NOT_SUPPORTED,
        )
    if decimals == 0:
        return str(units)
    major, minor = divmod(units, 10**decimals)
    return f"{major}.{minor:0{decimals}d}"


def paypal_amount(money: Money, *, field_path: str = "amount") -> Json:
    """PayPal's ``{"currency_code", "value"}`` object for ``money``."""
    return {"currency_code": money.currency, "value": paypal_value(money, field_path=field_path)}


def minor_units(value: str, currency: str) -> int:
    """Parses a PayPal decimal string into minor units of ``currency``, exactly.

    Raises:
        ProcessorError: ``PROCESSOR_BAD_RESPONSE`` (retryable): the string is not a plain
            decimal, or has more decimals than the currency's minor unit (PayPal never sends
            that; refuse rather than round).
        InvalidArgument: ``currency`` is not an ISO 4217 code we know (readers of PayPal
            answers turn it into ``PROCESSOR_BAD_RESPONSE``).
    """
    exponent = currency_exponent(currency)
    text = value.strip()
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("+-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise bad_response("paypal", f"an amount {value!r}")
    extra = frac[exponent:]
    if extra.strip("0"):
        raise bad_response("paypal", f"{value!r} {currency}, with more decimals than {currency} has")
    scale: int = 10**exponent
    fraction = int(frac[:exponent].ljust(exponent, "0")) if exponent else 0
    return sign * (int(whole) * scale + fraction)


def money_from(amount: Mapping[str, Any]) -> Money:
    """Parses PayPal's ``{"currency_code", "value"}`` into Money."""
    currency = str(amount["currency_code"])
    return Money(minor_units(str(amount["value"]), currency), currency)


# ---------------------------------------------------------------------------
# Small JSON helpers
# ---------------------------------------------------------------------------


def text_id(resource: Any) -> str:
    """The resource's ``id`` when it is a non-empty string, else "" (for error metadata)."""
    value = resource.get("id") if isinstance(resource, Mapping) else None
    return value if isinstance(value, str) else ""


def required_id(resource: Mapping[str, Any]) -> str:
    """The resource's ``id``.

    Raises:
        ValueError: It has none (the caller reports an unreadable answer).
    """
    value = text_id(resource)
    if not value:
        raise ValueError("a resource without an id")
    return value


def link(resource: Mapping[str, Any], *rels: str) -> str:
    """The ``href`` of the first HATEOAS link whose ``rel`` is one of ``rels`` (in order)."""
    links = {str(item.get("rel")): str(item.get("href", "")) for item in resource.get("links") or []}
    for rel in rels:
        if links.get(rel):
            return links[rel]
    return ""


def link_query(href: str) -> dict[str, str]:
    """The query of a HATEOAS link, to follow it on our configured host (never the link's own)."""
    return dict(parse_qsl(urlsplit(href).query, keep_blank_values=True))


def parse_time(value: Any) -> datetime | None:
    """Parses PayPal's RFC 3339 timestamps (``2024-05-01T10:00:00Z``)."""
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def body(response: Any) -> Json:
    """The JSON body of an SDK ``ApiResponse`` as a dict (empty for 204)."""
    text = getattr(response, "text", "") or ""
    if not text.strip():
        return {}
    decoded = json.loads(text)
    return decoded if isinstance(decoded, dict) else {}


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
    return sum(money_from(c["amount"]).amount_minor for c in captures if c.get("status") in _MONEY_TAKEN)


def _decline_code(resource: Mapping[str, Any], default: str) -> str:
    reason = (resource.get("status_details") or {}).get("reason") or default
    return str(reason).lower()


def payment_state(order: Mapping[str, Any]) -> ProcessorPaymentState:
    """Translates an Orders v2 order into our payment view.

    The processor id is the order id; captures and authorizations are always re-read
    from the order, so nothing else needs to be stored on our side.
    """
    order_id = required_id(order)
    status = order.get("status")
    _, captures, auths = purchase_payments(order)

    # Amounts are read only for the statuses that report them: an order still waiting for
    # its payer (or voided) says nothing about money, whatever its payments list holds.
    if status in ("CREATED", "PAYER_ACTION_REQUIRED"):
        url = link(order, "payer-action", "approve")
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
            capturable = money_from(auth["amount"]).amount_minor - taken
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
        amount_minor=money_from(amount).amount_minor if isinstance(amount, Mapping) else 0,
        refund_id="" if custom_id == payment_custom_id else custom_id,
    )


def resource_id(href: str, collection: str) -> str:
    """The id in a HATEOAS link to ``.../<collection>/<id>``, or "" if it links elsewhere."""
    parts = urlsplit(href).path.rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == collection else ""


def related_order_id(resource: Mapping[str, Any]) -> str:
    """The order a capture or authorization belongs to, from ``supplementary_data`` or its ``up`` link."""
    related = (resource.get("supplementary_data") or {}).get("related_ids") or {}
    return str(related.get("order_id") or "") or resource_id(link(resource, "up"), "orders")


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
            "pricing_scheme": {"fixed_price": paypal_amount(plan.price, field_path="price")},
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
    next_billing = parse_time(info.get("next_billing_time"))
    last_payment = parse_time((info.get("last_payment") or {}).get("time"))
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
    canceled_at = parse_time(sub.get("status_update_time")) if status is SubscriptionStatus.CANCELED else None
    approval = link(sub, "approve") if status is SubscriptionStatus.INCOMPLETE else ""
    quantity = str(sub.get("quantity") or "")
    return ProcessorSubscriptionState(
        processor_id=required_id(sub),
        status=status,
        current_period_start=last_payment or parse_time(sub.get("start_time")),
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
        gross = money_from((tx.get("amount_with_breakdown") or {})["gross_amount"])
        at = parse_time(tx.get("time"))
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


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

# Issues that mean "the buyer's instrument said no": the caller should ask for another.
DECLINE_ISSUES = frozenset(
    {
        "INSTRUMENT_DECLINED",
        "TRANSACTION_REFUSED",
        "PAYER_CANNOT_PAY",
        "CARD_EXPIRED",
        "CARD_CLOSED",
        "PAYER_ACTION_REQUIRED",
        "REDIRECT_PAYER_FOR_ALTERNATE_FUNDING",
        "TRANSACTION_BLOCKED_BY_PAYEE",
        "PAYEE_BLOCKED_TRANSACTION",
    }
)
_REFUND_TOO_LARGE = frozenset(
    {"REFUND_AMOUNT_EXCEEDED", "CAPTURE_FULLY_REFUNDED", "REFUND_EXCEEDED_TRANSACTION_AMOUNT"}
)
_CAPTURE_TOO_LARGE = frozenset({"MAX_CAPTURE_AMOUNT_EXCEEDED", "AMOUNT_GREATER_THAN_AUTHORIZED"})


class PayPalApiError:
    """PayPal's error body ``{"name", "message", "debug_id", "details": [...]}``.

    The OAuth endpoint answers ``{"error", "error_description"}`` instead; both are read.
    """

    def __init__(self, status: int, payload: Mapping[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.name = str(payload.get("name") or payload.get("error") or "")
        self.message = str(payload.get("message") or payload.get("error_description") or "")
        self.debug_id = str(payload.get("debug_id") or "")
        self.details: list[Json] = [dict(d) for d in payload.get("details") or [] if isinstance(d, Mapping)]
        self.retry_after = retry_after

    @property
    def issue(self) -> str:
        """The first detail's issue, or the error name."""
        for detail in self.details:
            if detail.get("issue"):
                return str(detail["issue"])
        return self.name

    def metadata(self) -> dict[str, str]:
        """Facts safe to return to callers (no credentials, no card data)."""
        meta = {"processor": "paypal", "http_status": str(self.status)}
        if self.issue:
            meta["issue"] = self.issue
        if self.debug_id:
            meta["debug_id"] = self.debug_id
        return meta

    def text(self) -> str:
        """A one-line description for messages and logs."""
        detail = next((str(d.get("description")) for d in self.details if d.get("description")), "")
        parts = [p for p in (self.name, self.issue if self.issue != self.name else "", self.message, detail) if p]
        return f"PayPal {self.status}: " + "; ".join(parts) + (f" (debug_id {self.debug_id})" if self.debug_id else "")


def translate_api_error(err: PayPalApiError, *, retryable: bool) -> BillingError:
    """Maps one PayPal HTTP error to the domain error the port promises.

    Args:
        err: The parsed error body.
        retryable: The verdict of ``retry.is_retryable_http_status`` for the status.
    """
    meta = err.metadata()
    issue = err.issue
    if retryable:
        reason = "PROCESSOR_RATE_LIMITED" if err.status == 429 else "PROCESSOR_UNAVAILABLE"
        return ProcessorError(
            err.text(), reason=reason, retryable=True, retry_after_seconds=err.retry_after or 1.0, metadata=meta
        )
    if err.status in (401, 403):
        return ProcessorConfigurationError(
            f"PayPal rejected our credentials or permissions: {err.text()}", metadata=meta
        )
    if issue in DECLINE_ISSUES:
        return PaymentDeclined(
            f"PayPal declined the payment: {err.text()}", metadata=meta | {"decline_code": issue.lower()}
        )
    if issue in _REFUND_TOO_LARGE:
        return RefundExceedsCaptured(err.text(), metadata=meta)
    if issue in _CAPTURE_TOO_LARGE:
        return CaptureExceedsAuthorized(err.text(), metadata=meta)
    if err.status == 404 or err.name == "RESOURCE_NOT_FOUND":
        return ProcessorError(err.text(), reason="PROCESSOR_RESOURCE_NOT_FOUND", metadata=meta)
    if err.status == 400 or err.name == "INVALID_REQUEST":
        violations = [
            FieldViolation(str(d.get("field", "")), str(d.get("description") or d.get("issue", "")))
            for d in err.details
        ]
        return InvalidArgument(err.text(), violations=violations, metadata=meta)
    return ProcessorError(err.text(), reason=issue or "PROCESSOR_ERROR", metadata=meta)
