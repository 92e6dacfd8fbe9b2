"""The PayPal adapter (see ``processor``)."""

from billing_service.adapters.processors.paypal.client import PayPalSettings
from billing_service.adapters.processors.paypal.payments import paypal_customer_id
from billing_service.adapters.processors.paypal.processor import NOT_SUPPORTED, PayPalPaymentProcessor

__all__ = ["NOT_SUPPORTED", "PayPalPaymentProcessor", "PayPalSettings", "paypal_customer_id"]
