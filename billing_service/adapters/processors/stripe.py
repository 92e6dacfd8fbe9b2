"""``StripePaymentProcessor``: the PaymentProcessor port over Stripe's API (stripe-python).

The adapter owns one ``stripe.StripeClient`` with an async HTTPX transport; it never
touches the SDK's global configuration. The SDK's own retries are off
(``max_network_retries=0``): ``retry.call_with_retries`` is the one retry decision, and it
reuses the caller's idempotency key on every attempt. Stripe exceptions stop here: they
are translated into domain errors by ``stripe_mapping.classify_stripe_error``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal, NoReturn, TypeVar, cast

import stripe

from billing_service.adapters.processors import stripe_mapping as m
from billing_service.adapters.processors.retry import RetryPolicy, call_with_retries, parsed
from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer
from billing_service.domain.errors import (
    FailedPrecondition,
    NotSupportedByProcessor,
    ProcessorConfigurationError,
)
from billing_service.domain.money import Money
from billing_service.domain.payments import CaptureMethod, ProcessorPaymentState, ProcessorRefundState, RefundReason
from billing_service.domain.subscriptions import Plan, ProcessorInvoiceState, ProcessorSubscriptionState
from billing_service.service_layer.ports import (
    AttachedPaymentMethod,
    LookupOutcome,
    PaymentLookup,
    PaymentLookupResult,
    PaymentRequest,
    RefundLookup,
    RefundLookupResult,
    RefundRequest,
    SubscriptionChange,
    SubscriptionRequest,
)

T = TypeVar("T")

_KEY_MODES = {"sk_test_": "test", "rk_test_": "test", "sk_live_": "live", "rk_live_": "live"}
_PAGE_SIZE = 100
# Our clock and Stripe's may disagree a little: list from a bit before our record's creation.
_CLOCK_SLACK = timedelta(minutes=10)


def _mask(secret: str) -> str:
    """Keeps a recognisable prefix (``sk_test_``, ``whsec_``) and hides the rest."""
    for prefix in (*_KEY_MODES, "whsec_"):
        if secret.startswith(prefix):
            return f"{prefix}***"
    return "***"


@dataclass(frozen=True, repr=False)
class StripeSettings:
    """How to reach Stripe.

    Attributes:
        secret_key: Secret (``sk_``) or restricted (``rk_``) API key. Never printed.
        api_base: Base URL of the API; tests point it at a local imitation.
        max_attempts: Attempts per call, including the first (retry policy default).
        timeout_seconds: Per-request HTTP timeout.
        webhook_secrets: Endpoint signing secrets (``whsec_...``); several during rotation.
    """

    secret_key: str
    api_base: str = "https://api.stripe.com"
    max_attempts: int = 3
    timeout_seconds: float = 20
    webhook_secrets: tuple[str, ...] = ()

    @property
    def mode(self) -> Literal["test", "live"]:
        """``test`` or ``live``, from the key's prefix.

        Raises:
            ProcessorConfigurationError: The key is not a Stripe secret or restricted key.
        """
        for prefix, mode in _KEY_MODES.items():
            if self.secret_key.startswith(prefix):
                return cast(Literal["test", "live"], mode)
        raise ProcessorConfigurationError(
            "STRIPE secret key must start with sk_test_, rk_test_, sk_live_ or rk_live_",
            metadata={"processor": "stripe"},
        )

    def __repr__(self) -> str:
        secrets = ", ".join(_mask(s) for s in self.webhook_secrets)
        return (
            f"StripeSettings(secret_key={_mask(self.secret_key)!r}, api_base={self.api_base!r}, "
            f"max_attempts={self.max_attempts}, timeout_seconds={self.timeout_seconds}, "
            f"webhook_secrets=({secrets}))"
        )

    __str__ = __repr__


def _id(obj: object) -> str:
    value = m.field(obj, "id", "")
    return value if isinstance(value, str) else ""


# Every answer is read through ``parsed``: one we cannot read is Stripe's fault (retryable
# PROCESSOR_BAD_RESPONSE naming the object), never the caller's INVALID_ARGUMENT.
def _payment(pi: stripe.PaymentIntent) -> ProcessorPaymentState:
    return parsed("stripe", "a PaymentIntent", m.payment_state, pi, ids={"processor_payment_id": _id(pi)})


def _refund(refund: stripe.Refund) -> ProcessorRefundState:
    return parsed("stripe", "a Refund", m.refund_state, refund, ids={"processor_refund_id": _id(refund)})


def _subscription(sub: stripe.Subscription) -> ProcessorSubscriptionState:
    return parsed("stripe", "a Subscription", m.subscription_state, sub, ids={"processor_subscription_id": _id(sub)})


def _metadata_id(obj: object, key: str) -> str:
    return str(m.field(m.field(obj, "metadata"), key, "") or "")


def _unsupported(what: str) -> NoReturn:
    raise NotSupportedByProcessor(f"Stripe: {what}", metadata={"processor": "stripe"})


class StripePaymentProcessor:
    """The PaymentProcessor port over Stripe (PaymentIntents, Refunds, Billing)."""

    name = Processor.STRIPE
    #: Stripe keeps idempotency keys for at least 24 hours.
    key_retention = timedelta(hours=24)

    def __init__(self, settings: StripeSettings, *, retry_policy: RetryPolicy | None = None) -> None:
        """Builds the client; no I/O happens until the first call.

        Raises:
            ProcessorConfigurationError: The secret key is not a Stripe key.
        """
        self.mode = settings.mode
        self._settings = settings
        self._policy = retry_policy or RetryPolicy(max_attempts=settings.max_attempts)
        self._http = stripe.HTTPXClient(timeout=settings.timeout_seconds, allow_sync_methods=False)
        self._client = stripe.StripeClient(
            settings.secret_key,
            base_addresses={"api": settings.api_base},
            http_client=self._http,
            max_network_retries=0,
        )
        self._v1 = self._client.v1

    def __repr__(self) -> str:
        return f"StripePaymentProcessor({self._settings!r})"

    async def aclose(self) -> None:
        """Closes the HTTP connection pool."""
        # stripe-python leaves close_async unannotated.
        close = cast(Callable[[], Awaitable[None]], self._http.close_async)
        await close()

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call_with_retries(f"stripe.{operation}", call, m.classify_stripe_error, policy=self._policy)

    @staticmethod
    def _key(idempotency_key: str, suffix: str = "") -> stripe.RequestOptions:
        # A verb that makes several writes derives one key per write: Stripe refuses a key
        # reused for a different request.
        return {"idempotency_key": f"{idempotency_key}:{suffix}" if suffix else idempotency_key}

    # --- events (webhook backfill) ------------------------------------------------------

    async def iter_events(self, since: datetime, *, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Yields Stripe Events created at or after ``since`` (newest first), exactly as Stripe sent them.

        For backfilling the webhook inbox after the sidecar was down (Stripe keeps events 30 days).
        Each event is the page's raw JSON, not the SDK's object: the SDK turns decimal strings
        (``unit_amount_decimal``...) into ``Decimal``, which neither JSON nor our handlers take,
        and the inbox must hold what a webhook delivery would have carried.
        """
        after: str | None = None
        while True:
            params: dict[str, Any] = {"created": {"gte": int(since.timestamp())}, "limit": page_size}
            if after:
                params["starting_after"] = after
            page = await self._call("events.list", partial(self._client.v1.events.list_async, cast(Any, params)))
            for event in m.raw_list_items(page):
                yield event
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id

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
        stale = m.field(current, "metadata")
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
        kind = m.field(pm, "type")
        if kind not in ("card", "paypal"):
            _unsupported(f"payment method type {kind!r} is not supported by billing")
        return parsed("stripe", "a PaymentMethod", m.attached_method, pm, ids={"processor_payment_method_id": _id(pm)})

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
            "amount": m.to_stripe_amount(request.amount),
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
        return _payment(pi)

    async def get_payment(self, processor_payment_id: str) -> ProcessorPaymentState:
        """Retrieves the PaymentIntent."""
        pi = await self._call(
            "payment_intents.retrieve", lambda: self._v1.payment_intents.retrieve_async(processor_payment_id)
        )
        return _payment(pi)

    async def capture_payment(
        self, processor_payment_id: str, amount: Money, *, idempotency_key: str
    ) -> ProcessorPaymentState:
        """Captures ``amount`` of an authorized PaymentIntent; Stripe releases the rest."""
        params: stripe.params.PaymentIntentCaptureParams = {"amount_to_capture": m.to_stripe_amount(amount)}
        pi = await self._call(
            "payment_intents.capture",
            lambda: self._v1.payment_intents.capture_async(processor_payment_id, params, self._key(idempotency_key)),
        )
        return _payment(pi)

    async def cancel_payment(self, processor_payment_id: str, *, idempotency_key: str) -> ProcessorPaymentState:
        """Cancels an uncaptured PaymentIntent."""
        pi = await self._call(
            "payment_intents.cancel",
            lambda: self._v1.payment_intents.cancel_async(processor_payment_id, None, self._key(idempotency_key)),
        )
        return _payment(pi)

    # --- refunds ------------------------------------------------------------------------

    async def create_refund(self, request: RefundRequest, *, idempotency_key: str) -> ProcessorRefundState:
        """Refunds (part of) a PaymentIntent."""
        params: stripe.params.RefundCreateParams = {
            "payment_intent": request.processor_payment_id,
            "amount": m.to_stripe_amount(request.amount),
            "metadata": {**request.metadata, "billing_refund_id": request.refund_id},
        }
        if request.reason is not RefundReason.UNSPECIFIED:
            params["reason"] = cast(Literal["duplicate", "fraudulent", "requested_by_customer"], request.reason.value)
        refund = await self._call(
            "refunds.create", lambda: self._v1.refunds.create_async(params, self._key(idempotency_key))
        )
        return _refund(refund)

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefundState:
        """Retrieves the Refund."""
        refund = await self._call("refunds.retrieve", lambda: self._v1.refunds.retrieve_async(processor_refund_id))
        return _refund(refund)

    # --- lookups by our id --------------------------------------------------------------
    #
    # List endpoints, not Search: Stripe's Search is eventually consistent ("don't use search
    # for read-after-write flows"; usually under a minute, longer during outages) while list
    # APIs read current data, so a lookup that finds nothing proves the object is absent.

    async def find_payment(self, lookup: PaymentLookup) -> PaymentLookupResult:
        """Lists the customer's PaymentIntents created since our record and matches our metadata id."""
        if not lookup.processor_customer_id:
            return PaymentLookupResult(LookupOutcome.ABSENT)  # no Stripe customer: nothing was charged
        after: str | None = None
        since = m.unix(lookup.created_at - _CLOCK_SLACK)
        while True:
            params: stripe.params.PaymentIntentListParams = {
                "customer": lookup.processor_customer_id,
                "created": {"gte": since},
                "limit": _PAGE_SIZE,
            }
            if after:
                params["starting_after"] = after
            page = await self._call("payment_intents.list", partial(self._v1.payment_intents.list_async, params))
            for pi in page.data:
                if _metadata_id(pi, "billing_payment_id") == lookup.payment_id:
                    return PaymentLookupResult(LookupOutcome.FOUND, _payment(pi))
            if not page.has_more or not page.data:
                return PaymentLookupResult(LookupOutcome.ABSENT)
            after = page.data[-1].id

    async def find_refund(self, lookup: RefundLookup) -> RefundLookupResult:
        """Lists the PaymentIntent's refunds and matches our metadata id."""
        if not lookup.processor_payment_id:
            return RefundLookupResult(LookupOutcome.ABSENT)
        after: str | None = None
        while True:
            params: stripe.params.RefundListParams = {
                "payment_intent": lookup.processor_payment_id,
                "limit": _PAGE_SIZE,
            }
            if after:
                params["starting_after"] = after
            page = await self._call("refunds.list", partial(self._v1.refunds.list_async, params))
            for refund in page.data:
                if _metadata_id(refund, "billing_refund_id") == lookup.refund_id:
                    return RefundLookupResult(LookupOutcome.FOUND, _refund(refund))
            if not page.has_more or not page.data:
                return RefundLookupResult(LookupOutcome.ABSENT)
            after = page.data[-1].id

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
            "unit_amount": m.to_stripe_amount(plan.price, "price"),
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
            params["trial_end"] = m.unix(request.trial_end)
            if not request.processor_payment_method_id:
                params["trial_settings"] = {"end_behavior": {"missing_payment_method": "pause"}}
        sub = await self._call(
            "subscriptions.create", lambda: self._v1.subscriptions.create_async(params, self._key(idempotency_key))
        )
        return _subscription(sub)

    async def _retrieve_subscription(self, processor_subscription_id: str) -> stripe.Subscription:
        return await self._call(
            "subscriptions.retrieve", lambda: self._v1.subscriptions.retrieve_async(processor_subscription_id)
        )

    async def get_subscription(self, processor_subscription_id: str) -> ProcessorSubscriptionState:
        """Retrieves the Subscription."""
        return _subscription(await self._retrieve_subscription(processor_subscription_id))

    async def _update_subscription(
        self, processor_subscription_id: str, params: stripe.params.SubscriptionUpdateParams, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        sub = await self._call(
            "subscriptions.update",
            lambda: self._v1.subscriptions.update_async(processor_subscription_id, params, self._key(idempotency_key)),
        )
        return _subscription(sub)

    async def update_subscription(
        self, processor_subscription_id: str, change: SubscriptionChange, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Changes the single item's price and/or quantity with the requested proration."""
        current = await self._retrieve_subscription(processor_subscription_id)
        if change.plan is None and change.quantity is None:
            return _subscription(current)
        item = m.first_item(current)
        if item is None:
            _unsupported(f"subscription {processor_subscription_id} has no item to change")
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
        return _subscription(sub)

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
        if m.field(current, "status") == "paused":
            sub = await self._call(
                "subscriptions.resume",
                lambda: self._v1.subscriptions.resume_async(processor_subscription_id, {}, self._key(idempotency_key)),
            )
            return _subscription(sub)
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
                result.append(
                    parsed(
                        "stripe", "an invoice", m.invoice_state, invoice, processor_subscription_id, lines,
                        ids={"processor_subscription_id": processor_subscription_id},
                    )
                )  # fmt: skip
            if not page.has_more or not page.data:
                return result
            after = page.data[-1].id

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
