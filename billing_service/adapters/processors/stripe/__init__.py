"""The Stripe adapter (see ``processor``)."""

from billing_service.adapters.processors.stripe.client import StripeSettings
from billing_service.adapters.processors.stripe.processor import StripePaymentProcessor

__all__ = ["StripePaymentProcessor", "StripeSettings"]
