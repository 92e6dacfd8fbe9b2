"""``StripePaymentProcessor``: the PaymentProcessor port over Stripe's API (stripe-python).

One job per module: ``client`` (settings, the SDK client, retries, idempotency keys),
``payments`` (customers, methods, PaymentIntents, Refunds, lookups by our id),
``subscriptions`` (plans, subscriptions, invoices), ``events`` (the Events API); ``mapping``
is the pure translation of Stripe's objects and errors into ours.
"""

from __future__ import annotations

from datetime import timedelta

from billing_service.adapters.processors.stripe.events import StripeEvents
from billing_service.adapters.processors.stripe.payments import StripePayments
from billing_service.adapters.processors.stripe.subscriptions import StripeSubscriptions
from billing_service.domain.common import Processor


class StripePaymentProcessor(StripePayments, StripeSubscriptions, StripeEvents):
    """The PaymentProcessor port over Stripe (PaymentIntents, Refunds, Billing)."""

    name = Processor.STRIPE
    #: Stripe keeps idempotency keys for at least 24 hours.
    key_retention = timedelta(hours=24)
