"""``PayPalPaymentProcessor``: the PaymentProcessor port over PayPal's REST APIs.

Orders v2, Payments v2, Vault v3, Catalog and Subscriptions v1, through the official
SDK. One job per module: ``client`` (SDK client, threads, OAuth, retries, raw requests),
``payments`` (customers, methods, orders, refunds), ``lookups`` (by our id),
``subscriptions`` (plans, subscriptions, invoices), ``events`` (the event list); the pure
translations are ``wire`` (amounts, ids, links, times), ``mapping`` (resources) and
``errors``.

What PayPal cannot do, and how the adapter answers, is told in each verb module; the
``NOT_SUPPORTED_BY_PROCESSOR`` list is :data:`NOT_SUPPORTED`. Order request ids are kept
6 hours (``key_retention``), so an order create is never re-sent later than that.
"""

from __future__ import annotations

from datetime import timedelta

from billing_service.adapters.processors.paypal.events import PayPalEvents
from billing_service.adapters.processors.paypal.lookups import PayPalLookups
from billing_service.adapters.processors.paypal.payments import PayPalPayments
from billing_service.adapters.processors.paypal.subscriptions import PayPalSubscriptions
from billing_service.domain.common import Processor

NOT_SUPPORTED = (
    "cancel a subscription at period end (PayPal cancels immediately only)",
    "ALWAYS_INVOICE proration on plan or quantity changes (PayPal bills the new price from the next cycle)",
    "a per-subscription trial on a plan without a trial cycle (PayPal trials are plan billing cycles)",
    "currencies PayPal does not settle (e.g. KWD, BHD) and fractional HUF/TWD amounts"
    " (InvalidArgument, reason AMOUNT_NOT_SUPPORTED_BY_PROCESSOR)",
)


class PayPalPaymentProcessor(PayPalPayments, PayPalLookups, PayPalSubscriptions, PayPalEvents):
    """``PaymentProcessor`` over PayPal's REST APIs via the official SDK."""

    name = Processor.PAYPAL
    #: Orders v2 keeps PayPal-Request-Id values for 6 hours (72 on request to PayPal).
    key_retention = timedelta(hours=6)
