"""Stripe Billing: plans as a Product with a recurring Price, subscriptions and their invoices."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from functools import partial

import stripe

from billing_service.adapters.processors.retry import parsed
from billing_service.adapters.processors.stripe import mapping
from billing_service.adapters.processors.stripe.client import (
    StripeConnection,
    subscription_state,
    unsupported,
)
from billing_service.domain.errors import FailedPrecondition
from billing_service.domain.payments import PaymentFailure
from billing_service.domain.subscriptions import Plan, ProcessorInvoiceState, ProcessorSubscriptionState
from billing_service.service_layer.ports import (
    LookupOutcome,
    SubscriptionChange,
    SubscriptionLookup,
    SubscriptionLookupResult,
    SubscriptionRequest,
)

_PAGE_SIZE = 100
# Our record is written before the create is sent; allow for clocks that disagree.
_CLOCK_SLACK = timedelta(minutes=10)


class StripeSubscriptions(StripeConnection):
    """The plan and subscription verbs of ``StripePaymentProcessor``."""

    # --- plans --------------------------------------------------------------------------

    async def create_plan(self, plan: Plan, *, idempotency_key: str) -> dict[str, str]:
        """Mirrors the plan as a Product plus a recurring Price (Prices are immutable at Stripe).

        Returns:
            ``{"stripe": price_id, "stripe_product": product_id}``.
        """
        metadata = {**plan.metadata, "billing_plan_id": plan.id}
        product_params: stripe.params.ProductCreateParams = {"name": plan.name, "metadata": metadata}
        if plan.description:
            product_params["description"] = plan.description
        product = await self._call(
            "products.create",
            lambda: self._v1.products.create_async(product_params, self._key(idempotency_key, "product")),
        )
        price_params: stripe.params.PriceCreateParams = {
            "product": product.id,
            "unit_amount": mapping.to_stripe_amount(plan.price, "price"),
            "currency": plan.price.currency.lower(),
            "recurring": {"interval": plan.interval.value, "interval_count": plan.interval_count},
            "metadata": metadata,
        }
        price = await self._call(
            "prices.create", lambda: self._v1.prices.create_async(price_params, self._key(idempotency_key, "price"))
        )
        return {"stripe": price.id, "stripe_product": product.id}

    async def archive_plan(self, plan: Plan, *, idempotency_key: str) -> None:
        """Deactivates the Price and its Product so no new subscription can use them."""
        price_id = plan.processor_refs.get("stripe")
        product_id = plan.processor_refs.get("stripe_product")
        if price_id:
            await self._call(
                "prices.update",
                lambda: self._v1.prices.update_async(price_id, {"active": False}, self._key(idempotency_key, "price")),
            )
        if product_id:
            await self._call(
                "products.update",
                lambda: self._v1.products.update_async(
                    product_id, {"active": False}, self._key(idempotency_key, "product")
                ),
            )

    # --- subscriptions ------------------------------------------------------------------

    @staticmethod
    def _price_id(plan: Plan) -> str:
        price_id = plan.processor_refs.get("stripe")
        if not price_id:
            raise FailedPrecondition(
                f"plan {plan.id} has no Stripe price", reason="PLAN_NOT_AT_PROCESSOR", metadata={"plan_id": plan.id}
            )
        return price_id

    async def create_subscription(
        self, request: SubscriptionRequest, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Starts a subscription; without a trial the first invoice is charged now.

        ``allow_incomplete`` makes Stripe attempt the first payment immediately and return
        an ``incomplete`` subscription (rather than an error) when it fails or needs 3-D
        Secure, so the state is always known. Without a payment method of its own the
        subscription uses the customer's default (Stripe refuses an empty
        ``default_payment_method``, so none is sent); a trial then ends in Stripe's
        ``paused`` status if the customer still has none (resumed by ``resume_subscription``).
        """
        params: stripe.params.SubscriptionCreateParams = {
            "customer": request.processor_customer_id,
            "items": [{"price": self._price_id(request.plan), "quantity": request.quantity}],
            "payment_behavior": "allow_incomplete",
            "metadata": {**request.metadata, "billing_subscription_id": request.subscription_id},
        }
        if request.processor_payment_method_id:
            params["default_payment_method"] = request.processor_payment_method_id
        if request.trial_end is not None:
            params["trial_end"] = mapping.unix(request.trial_end)
            if not request.processor_payment_method_id:
                params["trial_settings"] = {"end_behavior": {"missing_payment_method": "pause"}}
        sub = await self._call(
            "subscriptions.create", lambda: self._v1.subscriptions.create_async(params, self._key(idempotency_key))
        )
        return subscription_state(sub)

    async def _retrieve_subscription(self, processor_subscription_id: str) -> stripe.Subscription:
        return await self._call(
            "subscriptions.retrieve", lambda: self._v1.subscriptions.retrieve_async(processor_subscription_id)
        )

    async def get_subscription(self, processor_subscription_id: str) -> ProcessorSubscriptionState:
        """Retrieves the Subscription."""
        return subscription_state(await self._retrieve_subscription(processor_subscription_id))

    async def find_subscription(self, lookup: SubscriptionLookup) -> SubscriptionLookupResult:
        """Lists the customer's subscriptions (every status) created since our record and matches our metadata id."""
        if not lookup.processor_customer_id:
            return SubscriptionLookupResult(LookupOutcome.ABSENT)  # no Stripe customer: nothing was created
        since = mapping.unix(lookup.created_at - _CLOCK_SLACK)

        def page(after: str | None) -> Awaitable[stripe.ListObject[stripe.Subscription]]:
            params: stripe.params.SubscriptionListParams = {
                "customer": lookup.processor_customer_id,
                "status": "all",  # without it Stripe leaves canceled subscriptions out
                "created": {"gte": since},
                "limit": _PAGE_SIZE,
            }
            if after:
                params["starting_after"] = after
            return self._v1.subscriptions.list_async(params)

        sub = await self._find_by_metadata(
            "subscriptions.list", page, "billing_subscription_id", lookup.subscription_id
        )
        return (
            SubscriptionLookupResult(LookupOutcome.ABSENT)
            if sub is None
            else SubscriptionLookupResult(LookupOutcome.FOUND, subscription_state(sub))
        )

    async def _update_subscription(
        self, processor_subscription_id: str, params: stripe.params.SubscriptionUpdateParams, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        sub = await self._call(
            "subscriptions.update",
            lambda: self._v1.subscriptions.update_async(processor_subscription_id, params, self._key(idempotency_key)),
        )
        return subscription_state(sub)

    async def update_subscription(
        self, processor_subscription_id: str, change: SubscriptionChange, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Changes the single item's price and/or quantity with the requested proration."""
        current = await self._retrieve_subscription(processor_subscription_id)
        if change.plan is None and change.quantity is None:
            return subscription_state(current)
        item = mapping.first_item(current)
        if item is None:
            unsupported(f"subscription {processor_subscription_id} has no item to change")
        item_params: stripe.params.SubscriptionUpdateParamsItem = {"id": item.id}
        if change.plan is not None:
            item_params["price"] = self._price_id(change.plan)
        if change.quantity is not None:
            item_params["quantity"] = change.quantity
        params: stripe.params.SubscriptionUpdateParams = {
            "items": [item_params],
            "proration_behavior": change.proration.value,
        }
        return await self._update_subscription(processor_subscription_id, params, idempotency_key)

    async def cancel_subscription(
        self, processor_subscription_id: str, *, at_period_end: bool, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Cancels now (DELETE) or flags ``cancel_at_period_end``."""
        if at_period_end:
            return await self._update_subscription(
                processor_subscription_id, {"cancel_at_period_end": True}, idempotency_key
            )
        sub = await self._call(
            "subscriptions.cancel",
            lambda: self._v1.subscriptions.cancel_async(processor_subscription_id, None, self._key(idempotency_key)),
        )
        return subscription_state(sub)

    async def pause_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Pauses collection; invoices made while paused are voided."""
        return await self._update_subscription(
            processor_subscription_id, {"pause_collection": {"behavior": "void"}}, idempotency_key
        )

    async def resume_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Resumes whichever pause Stripe holds.

        Stripe's own ``paused`` status (a trial that ended without a payment method) is left
        only through ``POST /v1/subscriptions/{id}/resume``, which starts a new period now and
        invoices it (active if paid, past_due if not). Collection paused by us
        (``pause_collection``) is resumed by clearing it (an empty string unsets a field).
        """
        current = await self._retrieve_subscription(processor_subscription_id)
        if mapping.field(current, "status") == "paused":
            sub = await self._call(
                "subscriptions.resume",
                lambda: self._v1.subscriptions.resume_async(processor_subscription_id, {}, self._key(idempotency_key)),
            )
            return subscription_state(sub)
        return await self._update_subscription(processor_subscription_id, {"pause_collection": ""}, idempotency_key)

    async def list_invoices(self, processor_subscription_id: str) -> list[ProcessorInvoiceState]:
        """Returns all the subscription's invoices, newest first (Stripe's list order)."""
        result: list[ProcessorInvoiceState] = []
        after: str | None = None
        while True:
            params: stripe.params.InvoiceListParams = {"subscription": processor_subscription_id, "limit": _PAGE_SIZE}
            if after:
                params["starting_after"] = after
            page = await self._call("invoices.list", partial(self._v1.invoices.list_async, params))
            for invoice in page.data:
                lines = await self._invoice_lines(invoice)
                failed = parsed("stripe", "an invoice", mapping.invoice_unpaid_after_attempts, invoice)
                failure = await self._latest_failure(invoice) if failed else None
                result.append(
                    parsed(
                        "stripe", "an invoice", mapping.invoice_state, invoice, processor_subscription_id, lines,
                        failure, ids={"processor_subscription_id": processor_subscription_id},
                    )
                )  # fmt: skip
            if not page.has_more or not page.data:
                return result
            after = page.data[-1].id

    async def _latest_failure(self, invoice: stripe.Invoice) -> PaymentFailure | None:
        """Why the latest attempt of an unpaid invoice failed: one read of its newest payment.

        Since API 2025-03-31 an invoice names no PaymentIntent; its InvoicePayments do, and the
        intent's ``last_payment_error`` holds the decline. Only invoices whose latest attempt
        failed are read, so a sync of a healthy subscription makes no extra call.
        """
        params: stripe.params.InvoicePaymentListParams = {
            "invoice": invoice.id or "",
            "limit": 1,
            "expand": ["data.payment.payment_intent"],
        }
        page = await self._call("invoice_payments.list", partial(self._v1.invoice_payments.list_async, params))
        newest = page.data[0] if page.data else None
        return parsed("stripe", "an invoice payment", mapping.invoice_payment_failure, newest)

    async def _invoice_lines(self, invoice: stripe.Invoice) -> list[stripe.InvoiceLineItem]:
        """The invoice's lines; the list embedded in an invoice holds only the first few."""
        embedded = invoice.lines
        lines = list(embedded.data)
        more = bool(embedded.has_more)
        invoice_id = invoice.id or ""
        while more and invoice_id:
            line_params: stripe.params.InvoiceLineItemListParams = {"limit": _PAGE_SIZE, "starting_after": lines[-1].id}
            page = await self._call(
                "invoices.line_items.list", partial(self._v1.invoices.line_items.list_async, invoice_id, line_params)
            )
            lines.extend(page.data)
            more = bool(page.has_more) and bool(page.data)
        return lines
