"""Stripe customers, payment methods, PaymentIntents and Refunds, and lookups by our id."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import Literal, cast

import stripe

from billing_service.adapters.processors.retry import parsed
from billing_service.adapters.processors.stripe import mapping
from billing_service.adapters.processors.stripe.client import (
    StripeConnection,
    object_id,
    payment_state,
    refund_state,
    unsupported,
)
from billing_service.domain.customers import Customer
from billing_service.domain.money import Money
from billing_service.domain.payments import CaptureMethod, ProcessorPaymentState, ProcessorRefundState, RefundReason
from billing_service.service_layer.ports import (
    AttachedPaymentMethod,
    LookupOutcome,
    PaymentLookup,
    PaymentLookupResult,
    PaymentRequest,
    RefundLookup,
    RefundLookupResult,
    RefundRequest,
)

_PAGE_SIZE = 100
# Our clock and Stripe's may disagree a little: list from a bit before our record's creation.
_CLOCK_SLACK = timedelta(minutes=10)


class StripePayments(StripeConnection):
    """The payment verbs of ``StripePaymentProcessor``."""

    # --- customers ----------------------------------------------------------------------

    async def create_customer(self, customer: Customer, *, idempotency_key: str) -> str:
        """Creates a Stripe Customer carrying our id in ``metadata[billing_customer_id]``."""
        params: stripe.params.CustomerCreateParams = {
            "metadata": {**customer.metadata, "billing_customer_id": customer.id}
        }
        if customer.email:
            params["email"] = customer.email
        if customer.name:
            params["name"] = customer.name
        if customer.description:
            params["description"] = customer.description
        created = await self._call(
            "customers.create", lambda: self._v1.customers.create_async(params, self._key(idempotency_key))
        )
        return created.id

    async def update_customer(self, processor_customer_id: str, customer: Customer, *, idempotency_key: str) -> None:
        """Copies name, email, description and metadata; metadata keys we dropped are unset."""
        current = await self._call(
            "customers.retrieve", lambda: self._v1.customers.retrieve_async(processor_customer_id)
        )
        metadata: dict[str, str] = {**customer.metadata, "billing_customer_id": customer.id}
        stale = mapping.field(current, "metadata")
        for key in stale.to_dict() if stale is not None else {}:
            metadata.setdefault(key, "")  # an empty value unsets the key at Stripe
        params: stripe.params.CustomerUpdateParams = {
            "email": customer.email,
            "name": customer.name,
            "description": customer.description,
            "metadata": metadata,
        }
        await self._call(
            "customers.update",
            lambda: self._v1.customers.update_async(processor_customer_id, params, self._key(idempotency_key)),
        )

    async def attach_payment_method(
        self, processor_customer_id: str, token: str, *, idempotency_key: str
    ) -> AttachedPaymentMethod:
        """Attaches a PaymentMethod (``pm_...``) to the customer and returns its display data."""
        pm = await self._call(
            "payment_methods.attach",
            lambda: self._v1.payment_methods.attach_async(
                token, {"customer": processor_customer_id}, self._key(idempotency_key)
            ),
        )
        kind = mapping.field(pm, "type")
        if kind not in ("card", "paypal"):
            unsupported(f"payment method type {kind!r} is not supported by billing")
        return parsed(
            "stripe", "a PaymentMethod", mapping.attached_method, pm, ids={"processor_payment_method_id": object_id(pm)}
        )

    async def detach_payment_method(self, processor_payment_method_id: str, *, idempotency_key: str) -> None:
        """Detaches the PaymentMethod from its customer."""
        await self._call(
            "payment_methods.detach",
            lambda: self._v1.payment_methods.detach_async(
                processor_payment_method_id, None, self._key(idempotency_key)
            ),
        )

    # --- payments -----------------------------------------------------------------------

    async def create_payment(self, request: PaymentRequest, *, idempotency_key: str) -> ProcessorPaymentState:
        """Creates and confirms a PaymentIntent in one call.

        Without a ``return_url`` redirect-based methods are excluded
        (``allow_redirects=never``) so confirmation can complete server-side; 3-D Secure then
        surfaces as REQUIRES_ACTION with the client secret for Stripe.js.
        """
        params: stripe.params.PaymentIntentCreateParams = {
            "amount": mapping.to_stripe_amount(request.amount),
            "currency": request.amount.currency.lower(),
            "customer": request.processor_customer_id,
            "payment_method": request.processor_payment_method_id,
            "confirm": True,
            "capture_method": "manual" if request.capture_method is CaptureMethod.MANUAL else "automatic",
            "metadata": {**request.metadata, "billing_payment_id": request.payment_id},
        }
        if request.description:
            params["description"] = request.description
        if request.off_session:
            params["off_session"] = True
        if request.return_url:
            params["return_url"] = request.return_url
        else:
            params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
        pi = await self._call(
            "payment_intents.create", lambda: self._v1.payment_intents.create_async(params, self._key(idempotency_key))
        )
        return payment_state(pi)

    async def get_payment(self, processor_payment_id: str) -> ProcessorPaymentState:
        """Retrieves the PaymentIntent."""
        pi = await self._call(
            "payment_intents.retrieve", lambda: self._v1.payment_intents.retrieve_async(processor_payment_id)
        )
        return payment_state(pi)

    async def capture_payment(
        self, processor_payment_id: str, amount: Money, *, idempotency_key: str
    ) -> ProcessorPaymentState:
        """Captures ``amount`` of an authorized PaymentIntent; Stripe releases the rest."""
        params: stripe.params.PaymentIntentCaptureParams = {"amount_to_capture": mapping.to_stripe_amount(amount)}
        pi = await self._call(
            "payment_intents.capture",
            lambda: self._v1.payment_intents.capture_async(processor_payment_id, params, self._key(idempotency_key)),
        )
        return payment_state(pi)

    async def cancel_payment(self, processor_payment_id: str, *, idempotency_key: str) -> ProcessorPaymentState:
        """Cancels an uncaptured PaymentIntent."""
        pi = await self._call(
            "payment_intents.cancel",
            lambda: self._v1.payment_intents.cancel_async(processor_payment_id, None, self._key(idempotency_key)),
        )
        return payment_state(pi)

    # --- refunds ------------------------------------------------------------------------

    async def create_refund(self, request: RefundRequest, *, idempotency_key: str) -> ProcessorRefundState:
        """Refunds (part of) a PaymentIntent."""
        params: stripe.params.RefundCreateParams = {
            "payment_intent": request.processor_payment_id,
            "amount": mapping.to_stripe_amount(request.amount),
            "metadata": {**request.metadata, "billing_refund_id": request.refund_id},
        }
        if request.reason is not RefundReason.UNSPECIFIED:
            params["reason"] = cast(Literal["duplicate", "fraudulent", "requested_by_customer"], request.reason.value)
        refund = await self._call(
            "refunds.create", lambda: self._v1.refunds.create_async(params, self._key(idempotency_key))
        )
        return refund_state(refund)

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefundState:
        """Retrieves the Refund."""
        refund = await self._call("refunds.retrieve", lambda: self._v1.refunds.retrieve_async(processor_refund_id))
        return refund_state(refund)

    # --- lookups by our id --------------------------------------------------------------
    #
    # List endpoints, not Search: Stripe's Search is eventually consistent ("don't use search
    # for read-after-write flows"; usually under a minute, longer during outages) while list
    # APIs read current data, so a lookup that finds nothing proves the object is absent.

    async def find_payment(self, lookup: PaymentLookup) -> PaymentLookupResult:
        """Lists the customer's PaymentIntents created since our record and matches our metadata id."""
        if not lookup.processor_customer_id:
            return PaymentLookupResult(LookupOutcome.ABSENT)  # no Stripe customer: nothing was charged
        since = mapping.unix(lookup.created_at - _CLOCK_SLACK)

        def page(after: str | None) -> Awaitable[stripe.ListObject[stripe.PaymentIntent]]:
            params: stripe.params.PaymentIntentListParams = {
                "customer": lookup.processor_customer_id,
                "created": {"gte": since},
                "limit": _PAGE_SIZE,
            }
            if after:
                params["starting_after"] = after
            return self._v1.payment_intents.list_async(params)

        pi = await self._find_by_metadata("payment_intents.list", page, "billing_payment_id", lookup.payment_id)
        return (
            PaymentLookupResult(LookupOutcome.ABSENT)
            if pi is None
            else PaymentLookupResult(LookupOutcome.FOUND, payment_state(pi))
        )

    async def find_refund(self, lookup: RefundLookup) -> RefundLookupResult:
        """Lists the PaymentIntent's refunds and matches our metadata id."""
        if not lookup.processor_payment_id:
            return RefundLookupResult(LookupOutcome.ABSENT)

        def page(after: str | None) -> Awaitable[stripe.ListObject[stripe.Refund]]:
            params: stripe.params.RefundListParams = {
                "payment_intent": lookup.processor_payment_id,
                "limit": _PAGE_SIZE,
            }
            if after:
                params["starting_after"] = after
            return self._v1.refunds.list_async(params)

        refund = await self._find_by_metadata("refunds.list", page, "billing_refund_id", lookup.refund_id)
        return (
            RefundLookupResult(LookupOutcome.ABSENT)
            if refund is None
            else RefundLookupResult(LookupOutcome.FOUND, refund_state(refund))
        )
