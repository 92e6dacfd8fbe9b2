"""Translation between Stripe API objects and domain types for ``StripePaymentProcessor``.

Kept apart from the adapter so the verbs read as calls and this module as the table of
what each Stripe field means to us. Nothing here performs I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import stripe

from billing_service.adapters.processors.retry import bad_response, is_retryable_http_status
from billing_service.domain.card_data import mask_card_numbers
from billing_service.domain.customers import PaymentMethodType
from billing_service.domain.errors import (
    FieldViolation,
    InvalidArgument,
    NotSupportedByProcessor,
    PaymentDeclined,
    ProcessorConfigurationError,
    ProcessorError,
)
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
    InvoiceLine,
    InvoiceStatus,
    ProcessorInvoiceState,
    ProcessorSubscriptionState,
    SubscriptionStatus,
)
from billing_service.service_layer.ports import AttachedPaymentMethod

# Where Stripe's minor unit differs from ISO 4217's, the factor from our minor units to
# Stripe's (docs.stripe.com/currencies, "special cases"): ISK is zero-decimal in ISO but
# Stripe keeps a two-decimal representation for backwards compatibility; MGA is
# two-decimal in ISO but zero-decimal at Stripe.
_SCALE_UP = {"ISK": 100}
_SCALE_DOWN = {"MGA": 100}
# Stripe accepts three-decimal currencies only when the last digit is 0.
_THREE_DECIMAL_STEP = 10


def to_stripe_amount(money: Money, field_path: str = "amount") -> int:
    """Returns ``money`` in Stripe's minor units.

    Raises:
        InvalidArgument: Stripe cannot express the amount (reason AMOUNT_NOT_SUPPORTED_BY_PROCESSOR).
        NotSupportedByProcessor: Stripe has no representation for the currency's exponent.
    """
    currency, amount = money.currency, money.amount_minor
    if money.exponent > 3:
        raise NotSupportedByProcessor(
            f"Stripe does not support {currency}", metadata={"processor": "stripe", "currency": currency}
        )
    if currency in _SCALE_UP:
        return amount * _SCALE_UP[currency]
    step = _SCALE_DOWN.get(currency) or (_THREE_DECIMAL_STEP if money.exponent == 3 else 1)
    if amount % step:
        raise InvalidArgument.field(
            f"{field_path}.amount_minor",
            f"Stripe accepts {currency} amounts only in multiples of {step} minor units",
            reason="AMOUNT_NOT_SUPPORTED_BY_PROCESSOR",
        )
    return amount // _SCALE_DOWN.get(currency, 1)


def from_stripe_amount(amount: int | None, currency: str) -> int:
    """Converts a Stripe amount in ``currency`` (any case) to our minor units, exactly.

    The inverse of ``to_stripe_amount``: every amount read back from Stripe goes through it.

    Raises:
        ProcessorError: ``PROCESSOR_BAD_RESPONSE`` (retryable) for an amount that is not an
            integer, or that our minor units cannot hold exactly (a fraction of a krona).
    """
    code = currency.upper()
    value = 0 if amount is None else amount
    if type(value) is not int:
        raise bad_response("stripe", f"an amount {value!r}")
    if code in _SCALE_UP:
        units, rest = divmod(value, _SCALE_UP[code])
        if rest:
            raise bad_response("stripe", f"{value} {code}, which is not a whole number of {code} minor units")
        return units
    return value * _SCALE_DOWN.get(code, 1)


def stripe_money(amount: int | None, currency: str) -> Money:
    """Builds a Money from a Stripe amount and currency."""
    return Money(from_stripe_amount(amount, currency), currency.upper())


def timestamp(value: int | None) -> datetime | None:
    """Unix seconds to an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def unix(value: datetime) -> int:
    """An aware datetime to unix seconds (naive values are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def field(obj: object, name: str, default: Any = None) -> Any:
    """Reads a field that the SDK's types do not declare (older or newer API versions).

    ``StripeObject`` raises AttributeError for absent fields, so this also serves fields the
    API omits.
    """
    return getattr(obj, name, default) if obj is not None else default


def raw_list_items(page: stripe.ListObject[Any]) -> list[dict[str, Any]]:
    """The items of a list page as Stripe's JSON sent them (no ``Decimal``, no SDK objects).

    Falls back to the SDK's JSON-safe dump (decimals as their exact strings) when the page
    carries no raw response.
    """
    response = page.last_response
    raw = getattr(response, "data", None)
    items = raw.get("data") if isinstance(raw, dict) else None
    if isinstance(items, list) and len(items) == len(page.data):
        return [dict(item) for item in items]
    return [item.to_dict(for_json=True) for item in page.data]


def attached_method(pm: stripe.PaymentMethod) -> AttachedPaymentMethod:
    """Display data of a card or PayPal PaymentMethod (never more than DESIGN.md allows)."""
    if pm.type == "paypal":
        return AttachedPaymentMethod(processor_id=pm.id, type=PaymentMethodType.PAYPAL)
    card = pm.card
    if card is None:
        raise ValueError("a card PaymentMethod without card details")
    return AttachedPaymentMethod(
        processor_id=pm.id,
        type=PaymentMethodType.CARD,
        brand=card.brand,
        last4=card.last4,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
    )


# --- payments ---------------------------------------------------------------------------

_PAYMENT_STATUS = {
    "requires_payment_method": PaymentStatus.FAILED,
    "requires_confirmation": PaymentStatus.PENDING,
    "requires_action": PaymentStatus.REQUIRES_ACTION,
    "processing": PaymentStatus.PROCESSING,
    "requires_capture": PaymentStatus.REQUIRES_CAPTURE,
    "succeeded": PaymentStatus.SUCCEEDED,
    "canceled": PaymentStatus.CANCELED,
}


def payment_state(pi: stripe.PaymentIntent) -> ProcessorPaymentState:
    """Translates a PaymentIntent.

    ``requires_payment_method`` after a confirmation means the attempt failed: we always
    confirm with a payment method, so Stripe only returns to that state on a failure.
    """
    status = _PAYMENT_STATUS.get(pi.status, PaymentStatus.PENDING)
    currency = pi.currency
    state = ProcessorPaymentState(processor_id=pi.id, status=status)
    if status is PaymentStatus.REQUIRES_CAPTURE:
        state.amount_capturable = from_stripe_amount(pi.amount_capturable, currency)
    state.amount_captured = from_stripe_amount(pi.amount_received, currency)
    if status is PaymentStatus.REQUIRES_ACTION:
        redirect = field(field(pi.next_action, "redirect_to_url"), "url") or ""
        state.next_action = NextAction(client_secret=pi.client_secret or "", redirect_url=redirect)
    error = pi.last_payment_error
    if error is not None and status in (PaymentStatus.FAILED, PaymentStatus.CANCELED):
        state.failure = PaymentFailure(
            code=field(error, "code") or "",
            decline_code=field(error, "decline_code") or "",
            message=field(error, "message") or "",
        )
    return state


_REFUND_STATUS = {
    "pending": RefundStatus.PENDING,
    "requires_action": RefundStatus.PENDING,
    "succeeded": RefundStatus.SUCCEEDED,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.CANCELED,
}


def refund_state(refund: stripe.Refund) -> ProcessorRefundState:
    """Translates a Refund."""
    status = _REFUND_STATUS.get(refund.status or "", RefundStatus.PENDING)
    failure = (field(refund, "failure_reason") or "") if status is RefundStatus.FAILED else ""
    intent = field(refund, "payment_intent")
    return ProcessorRefundState(
        processor_id=refund.id,
        status=status,
        failure_reason=failure,
        processor_payment_id=(intent if isinstance(intent, str) else getattr(intent, "id", "")) or "",
        amount_minor=from_stripe_amount(refund.amount, refund.currency),
        refund_id=str(field(field(refund, "metadata"), "billing_refund_id", "") or ""),
    )


# --- subscriptions ----------------------------------------------------------------------

_SUBSCRIPTION_STATUS = {
    "incomplete": SubscriptionStatus.INCOMPLETE,
    "incomplete_expired": SubscriptionStatus.CANCELED,
    "trialing": SubscriptionStatus.TRIALING,
    "active": SubscriptionStatus.ACTIVE,
    "past_due": SubscriptionStatus.PAST_DUE,
    "unpaid": SubscriptionStatus.PAST_DUE,
    "canceled": SubscriptionStatus.CANCELED,
    "paused": SubscriptionStatus.PAUSED,
}


def first_item(sub: stripe.Subscription) -> stripe.SubscriptionItem | None:
    """The subscription's first item (we create one item per subscription)."""
    items = field(sub, "items")
    data = field(items, "data") or []
    return data[0] if data else None


def subscription_state(sub: stripe.Subscription) -> ProcessorSubscriptionState:
    """Translates a Subscription.

    Stripe keeps ``status`` (usually ``active``) while collection is paused; we report that
    as PAUSED, like Stripe's own ``paused`` status (a trial that ended without a payment
    method). Since API 2025-03-31 the current period lives on each subscription item;
    older versions carry it on the subscription, so both places are read. The price and
    quantity billed are the first item's (we create one item per subscription).
    """
    status = _SUBSCRIPTION_STATUS.get(sub.status, SubscriptionStatus.INCOMPLETE)
    if field(sub, "pause_collection") is not None and status is not SubscriptionStatus.CANCELED:
        status = SubscriptionStatus.PAUSED
    item = first_item(sub)
    start = field(item, "current_period_start") or field(sub, "current_period_start")
    end = field(item, "current_period_end") or field(sub, "current_period_end")
    price = field(item, "price")
    quantity = field(item, "quantity")
    return ProcessorSubscriptionState(
        processor_id=sub.id,
        status=status,
        current_period_start=timestamp(start),
        current_period_end=timestamp(end),
        trial_end=timestamp(field(sub, "trial_end")) if status is SubscriptionStatus.TRIALING else None,
        cancel_at_period_end=bool(field(sub, "cancel_at_period_end")),
        canceled_at=timestamp(field(sub, "canceled_at")),
        processor_plan_id=(price if isinstance(price, str) else field(price, "id")) or "",
        quantity=quantity if type(quantity) is int and quantity > 0 else 0,
    )


_INVOICE_STATUS = {
    "draft": InvoiceStatus.DRAFT,
    "open": InvoiceStatus.OPEN,
    "paid": InvoiceStatus.PAID,
    "void": InvoiceStatus.VOID,
    "uncollectible": InvoiceStatus.UNCOLLECTIBLE,
}


def invoice_line(line: stripe.InvoiceLineItem, currency: str) -> InvoiceLine:
    """Translates one invoice line; the proration flag moved under ``parent`` in API 2025-03-31."""
    details = field(field(line, "parent"), "subscription_item_details")
    proration = field(details, "proration")
    if proration is None:
        proration = field(line, "proration", False)
    return InvoiceLine(
        description=field(line, "description") or "",
        amount=stripe_money(line.amount, field(line, "currency") or currency),
        quantity=field(line, "quantity") or 1,
        proration=bool(proration),
    )


def invoice_state(
    invoice: stripe.Invoice,
    processor_subscription_id: str,
    lines: list[stripe.InvoiceLineItem],
    failure: PaymentFailure | None = None,
) -> ProcessorInvoiceState:
    """Translates an Invoice with all its lines (fetched by the caller when paginated) and, for
    an invoice whose latest attempt failed, the reason (see :func:`invoice_payment_failure`)."""
    currency = invoice.currency
    return ProcessorInvoiceState(
        processor_id=invoice.id or "",
        processor_subscription_id=processor_subscription_id,
        status=_INVOICE_STATUS.get(invoice.status or "", InvoiceStatus.DRAFT),
        amount_due=stripe_money(invoice.amount_due, currency),
        amount_paid=stripe_money(invoice.amount_paid, currency),
        period_start=timestamp(field(invoice, "period_start")),
        period_end=timestamp(field(invoice, "period_end")),
        lines=[invoice_line(line, currency) for line in lines],
        created_at=timestamp(field(invoice, "created")),
        attempt_count=max(0, int(field(invoice, "attempt_count") or 0)),
        last_failure=failure,
        next_attempt_at=timestamp(field(invoice, "next_payment_attempt")),
    )


def invoice_unpaid_after_attempts(invoice: stripe.Invoice) -> bool:
    """True when an invoice's payment was tried and it is still unpaid: its latest attempt failed."""
    return invoice.status in ("open", "uncollectible") and int(field(invoice, "attempt_count") or 0) > 0


def invoice_payment_failure(payment: stripe.InvoicePayment | None) -> PaymentFailure | None:
    """Why an invoice's latest attempt failed: its PaymentIntent's ``last_payment_error``.

    ``payment`` is the invoice's newest InvoicePayment with ``payment.payment_intent``
    expanded. Only the codes and the message are kept (the error also embeds the payment
    method, which we never store); a card-number-like run in the message is masked.
    """
    intent = field(field(payment, "payment"), "payment_intent")
    error = None if intent is None or isinstance(intent, str) else field(intent, "last_payment_error")
    if error is None:
        return None
    return PaymentFailure(
        code=field(error, "code") or "",
        decline_code=field(error, "decline_code") or "",
        message=mask_card_numbers(field(error, "message") or ""),
    )


# --- errors -----------------------------------------------------------------------------


def _err_field(exc: stripe.StripeError, name: str) -> str:
    value = field(exc.error, name)
    return value if isinstance(value, str) else ""


def classify_stripe_error(exc: Exception) -> ProcessorError:
    """Maps an SDK exception to a domain error; the one table for Stripe failures.

    Declines and bad input are not processor failures, so they are raised here directly
    (``PaymentDeclined``, ``InvalidArgument``) rather than returned: ``call_with_retries``
    then propagates them untouched. Anything that is not a Stripe error is a bug and is
    re-raised as is.

    Returns:
        A ``ProcessorError`` whose ``retryable`` drives ``call_with_retries``.
    """
    if not isinstance(exc, stripe.StripeError):
        raise exc
    status = exc.http_status
    meta = {"processor": "stripe"}
    if exc.request_id:
        meta["stripe_request_id"] = exc.request_id
    code = exc.code or _err_field(exc, "code")
    if code:
        meta["stripe_code"] = code
    message = exc.user_message or type(exc).__name__

    if isinstance(exc, stripe.CardError):
        meta |= {"code": code, "decline_code": _err_field(exc, "decline_code") or code}
        intent_id = field(field(exc.error, "payment_intent"), "id")
        if intent_id:
            meta["processor_payment_id"] = intent_id
        raise PaymentDeclined(f"Stripe declined the payment: {message}", metadata=meta) from exc
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        # Stripe's message for a bad key quotes part of it: never pass it on.
        what = "rejected the API key" if isinstance(exc, stripe.AuthenticationError) else "denied the API key access"
        return ProcessorConfigurationError(f"Stripe {what} (HTTP {status})", metadata=meta)
    if isinstance(exc, stripe.IdempotencyError):
        return ProcessorError(
            f"Stripe refused a reused idempotency key: {message}",
            reason="IDEMPOTENCY_KEY_REUSED_AT_PROCESSOR",
            metadata=meta,
        )
    if isinstance(exc, stripe.RateLimitError):
        return ProcessorError(
            f"Stripe rate limit: {message}", reason="PROCESSOR_RATE_LIMITED", retryable=True, metadata=meta
        )
    if isinstance(exc, stripe.APIError) and status is not None and 200 <= status < 300:
        # The SDK could not decode a successful answer: the effect happened; the same key replays it.
        return bad_response("stripe", "a request", ids=meta)
    if isinstance(exc, stripe.APIConnectionError):
        return ProcessorError(
            "Stripe could not be reached", reason="PROCESSOR_UNREACHABLE", retryable=True, metadata=meta
        )
    if isinstance(exc, stripe.InvalidRequestError) and not is_retryable_http_status(status):
        param = exc.param or _err_field(exc, "param")
        if param and code != "resource_missing":
            meta["stripe_param"] = param
            raise InvalidArgument(
                f"Stripe refused {param}: {message}",
                violations=[FieldViolation(param, message)],
                metadata=meta,
                reason=code.upper() if code else None,
            ) from exc
        return ProcessorError(
            f"Stripe refused the request: {message}", reason=(code or "invalid_request").upper(), metadata=meta
        )
    retryable = is_retryable_http_status(status)
    return ProcessorError(f"Stripe failed (HTTP {status}): {message}", retryable=retryable, metadata=meta)
