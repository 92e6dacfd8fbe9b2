"""Finding what a processor did for one of our payments, refunds or subscriptions, by our id.

A create whose answer was lost leaves a record without a processor id. While the
processor still remembers the request's idempotency key, re-sending the create with that
key is safe and is how such a record is resumed. After that only a lookup by our id (the
processor keeps it in metadata / ``custom_id``) can tell what happened, and the record is
settled on its answer: found (converge), provably absent (nothing was charged), or not
yet known (ask again later).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from billing_service.domain.common import RequestOrigin
from billing_service.domain.customers import Customer
from billing_service.domain.payments import Payment, Refund
from billing_service.domain.subscriptions import Subscription
from billing_service.service_layer.core import Deps
from billing_service.service_layer.ports import (
    PaymentLookup,
    PaymentLookupResult,
    PaymentProcessor,
    RefundLookup,
    RefundLookupResult,
    SubscriptionLookup,
    SubscriptionLookupResult,
)

CREATE_PAYMENT = "/billing.v1.BillingService/CreatePayment"
CREATE_REFUND = "/billing.v1.BillingService/CreateRefund"
CREATE_SUBSCRIPTION = "/billing.v1.SubscriptionService/CreateSubscription"

# A write is never re-sent later than the processor's key retention minus this margin: an
# attempt could take that long to land, and the processor must still recognise the key.
KEY_MARGIN = timedelta(hours=1)

# Once the resend deadline has passed, an attempt that was already on its way lands within
# its executor's lease and call budget; a lookup covering this much later sees it.
QUIET_SLACK = timedelta(minutes=10)


def resend_deadline(adapter: PaymentProcessor, created_at: datetime) -> datetime:
    """The last moment a write first attempted for a record created at ``created_at`` may be re-sent."""
    return created_at + adapter.key_retention - KEY_MARGIN


def quiet_after_deadline(adapter: PaymentProcessor, created_at: datetime) -> datetime:
    """After this instant no attempt of that write can still reach the processor."""
    return resend_deadline(adapter, created_at) + QUIET_SLACK


async def _origin_from_audit(deps: Deps, resource_id: str, action: str, method: str) -> RequestOrigin | None:
    # Records written before origins were stored: the creating event is the first one.
    trail = await deps.store.list_audit_events(resource_id, limit=1, after=None)
    created = next((e for e in trail.items if e.action == action), None)
    return None if created is None else RequestOrigin(created.caller, method, created.request_id)


async def payment_origin(deps: Deps, payment: Payment) -> RequestOrigin | None:
    """The request that created ``payment`` (None only for a record with no trace of it)."""
    if payment.origin is not None:
        return payment.origin
    return await _origin_from_audit(deps, payment.id, "payment.created", CREATE_PAYMENT)


async def refund_origin(deps: Deps, refund: Refund) -> RequestOrigin | None:
    """The request that created ``refund`` (None for a refund mirrored from the processor)."""
    if refund.origin is not None:
        return refund.origin
    return await _origin_from_audit(deps, refund.id, "refund.created", CREATE_REFUND)


async def lookup_payment(deps: Deps, payment: Payment, *, quiet_since: datetime) -> PaymentLookupResult:
    """Asks the payment's processor for the payment it created under our id (read-only)."""
    customer = await deps.store.get(Customer, payment.customer_id)
    processor_customer = customer.processor_refs.get(payment.processor.value, "") if customer else ""
    lookup = PaymentLookup(
        payment_id=payment.id,
        processor_customer_id=processor_customer,
        amount=payment.amount,
        created_at=payment.created_at,
        quiet_since=quiet_since,
    )
    return await deps.processor(payment.processor).find_payment(lookup)


async def lookup_refund(deps: Deps, refund: Refund, payment: Payment, *, quiet_since: datetime) -> RefundLookupResult:
    """Asks the refund's processor for the refund it created under our id (read-only)."""
    lookup = RefundLookup(
        refund_id=refund.id,
        processor_payment_id=payment.processor_id,
        amount=refund.amount,
        created_at=refund.created_at,
        quiet_since=quiet_since,
    )
    return await deps.processor(refund.processor).find_refund(lookup)


async def subscription_origin(deps: Deps, sub: Subscription) -> RequestOrigin | None:
    """The request that created ``sub`` (from its ``subscription.created`` audit event)."""
    return await _origin_from_audit(deps, sub.id, "subscription.created", CREATE_SUBSCRIPTION)


async def lookup_subscription(deps: Deps, sub: Subscription, *, quiet_since: datetime) -> SubscriptionLookupResult:
    """Asks the subscription's processor for the subscription it created under our id (read-only)."""
    customer = await deps.store.get(Customer, sub.customer_id)
    processor_customer = customer.processor_refs.get(sub.processor.value, "") if customer else ""
    lookup = SubscriptionLookup(
        subscription_id=sub.id,
        processor_customer_id=processor_customer,
        created_at=sub.created_at,
        quiet_since=quiet_since,
    )
    return await deps.processor(sub.processor).find_subscription(lookup)
