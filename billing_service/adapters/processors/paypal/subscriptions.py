"""PayPal plans and subscriptions (Catalog Products and Subscriptions v1).

Every plan belongs to one catalog product of ours (PayPal revises a subscription only
between plans of one product). PayPal has no invoice object for subscriptions:
``list_invoices`` maps the subscription's transactions to invoices. What PayPal cannot do
(cancel at period end, immediate proration, per-subscription trials) is refused with
``NotSupportedByProcessor``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from billing_service.adapters.processors.paypal import mapping, wire
from billing_service.adapters.processors.paypal.client import REPRESENTATION, PayPalConnection, read_answer
from billing_service.adapters.processors.paypal.wire import Json
from billing_service.domain.errors import FailedPrecondition, NotSupportedByProcessor, ProcessorError
from billing_service.domain.subscriptions import (
    Plan,
    ProcessorInvoiceState,
    ProcessorSubscriptionState,
    ProrationBehavior,
    SubscriptionStatus,
)
from billing_service.service_layer.ports import (
    LookupOutcome,
    SubscriptionChange,
    SubscriptionLookup,
    SubscriptionLookupResult,
    SubscriptionRequest,
)


class PayPalSubscriptions(PayPalConnection):
    """The plan and subscription verbs of ``PayPalPaymentProcessor``."""

    # ------------------------------------------------------------------ plans

    async def _ensure_product(self, idempotency_key: str) -> str:
        product_id = self._settings.catalog_product_id
        if not self._product_ready:
            try:
                await self._call(
                    "catalogs.create_product",
                    lambda: self._raw(
                        "POST",
                        "/v1/catalogs/products",
                        request_id=f"{idempotency_key}:product",
                        body=mapping.product_body(product_id),
                    ),
                )
            except ProcessorError as err:
                if err.reason != "DUPLICATE_RESOURCE_IDENTIFIER":  # made by an earlier plan
                    raise
            self._product_ready = True
        return product_id

    async def create_plan(self, plan: Plan, *, idempotency_key: str) -> dict[str, str]:
        """Creates a billing plan (under our one catalog product); returns both ids."""
        wire.paypal_value(plan.price, field_path="price")  # refuse before creating anything
        product_id = await self._ensure_product(idempotency_key)
        plan_request = mapping.plan_body(plan, product_id)
        subscriptions = self._client.subscriptions
        created = await self._json(
            "billing.create_plan",
            lambda: subscriptions.create_billing_plan(
                {"body": plan_request, "paypal_request_id": f"{idempotency_key}:plan", "prefer": REPRESENTATION}
            ),
        )
        return {"paypal": read_answer("a billing plan", wire.required_id, created), "paypal_product": product_id}

    async def archive_plan(self, plan: Plan, *, idempotency_key: str) -> None:
        """Deactivates the billing plan; existing subscriptions keep it."""
        plan_id = plan.processor_refs.get("paypal")
        if not plan_id:
            return
        try:
            await self._call(
                "billing.deactivate_plan",
                lambda: self._raw("POST", "/v1/billing/plans/{id}/deactivate", request_id=idempotency_key, id=plan_id),
            )
        except ProcessorError as err:
            if err.reason != "PLAN_STATUS_INVALID":  # already inactive
                raise

    # ------------------------------------------------------------------ subscriptions

    async def _get_subscription_json(self, subscription_id: str) -> Json:
        subscriptions = self._client.subscriptions
        return await self._json("subscriptions.get", lambda: subscriptions.get_subscription({"id": subscription_id}))

    async def _subscription_action(
        self, subscription_id: str, action: str, reason: str, idempotency_key: str, done: set[SubscriptionStatus]
    ) -> ProcessorSubscriptionState:
        try:
            await self._call(
                f"subscriptions.{action}",
                lambda: self._raw(
                    "POST",
                    f"/v1/billing/subscriptions/{{id}}/{action}",
                    request_id=idempotency_key,
                    body={"reason": reason},
                    id=subscription_id,
                ),
            )
        except ProcessorError as err:
            if err.reason != "SUBSCRIPTION_STATUS_INVALID":
                raise
            state = await self.get_subscription(subscription_id)
            if state.status not in done:
                raise
            return state  # already there (a retry, or a webhook beat us)
        return await self.get_subscription(subscription_id)

    async def create_subscription(
        self, request: SubscriptionRequest, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Creates a subscription the buyer must approve (status INCOMPLETE, approval_url set)."""
        plan_id = request.plan.processor_refs.get("paypal")
        if not plan_id:
            raise FailedPrecondition(
                f"plan {request.plan.id} has not been created at PayPal",
                reason="PLAN_NOT_AT_PROCESSOR",
                metadata={"processor": "paypal", "plan_id": request.plan.id},
            )
        if request.trial_end is not None and request.plan.trial_period_days == 0:
            raise NotSupportedByProcessor(
                "PayPal trials come from the plan's trial cycle; this plan has none",
                metadata={"processor": "paypal", "feature": "subscription_trial_end"},
            )
        body: Json = {"plan_id": plan_id, "quantity": str(request.quantity), "custom_id": request.subscription_id}
        context: Json = {"user_action": "SUBSCRIBE_NOW", "shipping_preference": "NO_SHIPPING"}
        if request.return_url:
            context |= {"return_url": request.return_url, "cancel_url": request.return_url}
        body["application_context"] = context
        subscriptions = self._client.subscriptions
        created = await self._json(
            "subscriptions.create",
            lambda: subscriptions.create_subscription(
                {"body": body, "paypal_request_id": idempotency_key, "prefer": REPRESENTATION}
            ),
        )
        return read_answer(
            "a subscription",
            mapping.subscription_state,
            created,
            ids={"processor_subscription_id": wire.text_id(created)},
        )

    async def find_subscription(self, lookup: SubscriptionLookup) -> SubscriptionLookupResult:
        """PayPal cannot list or search subscriptions, so a lost create cannot be looked up: UNKNOWN.

        A subscription created through the API waits in APPROVAL_PENDING until the buyer
        approves it at the link in the create's answer, so one whose answer was lost bills
        nothing (see docs/RELIABILITY.md, Known limits).
        """
        return SubscriptionLookupResult(LookupOutcome.UNKNOWN)

    async def get_subscription(self, processor_subscription_id: str) -> ProcessorSubscriptionState:
        """Reads a subscription."""
        sub = await self._get_subscription_json(processor_subscription_id)
        return read_answer(
            "a subscription",
            mapping.subscription_state,
            sub,
            ids={"processor_subscription_id": processor_subscription_id},
        )

    async def update_subscription(
        self, processor_subscription_id: str, change: SubscriptionChange, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Revises plan and/or quantity; PayPal applies the new price from the next cycle.

        PayPal never prorates, which is ``NONE``. ``CREATE_PRORATIONS`` is accepted because
        the API's unset value arrives as it (see the report on ``ProrationBehavior``);
        ``ALWAYS_INVOICE`` is refused. A PayPal-wallet buyer must re-consent through the
        returned ``approval_url``; until then PayPal keeps billing the old plan.
        """
        if change.proration is ProrationBehavior.ALWAYS_INVOICE:
            raise NotSupportedByProcessor(
                "PayPal cannot invoice a plan or quantity change immediately;"
                " it bills the new price from the next cycle",
                metadata={"processor": "paypal", "feature": "proration_always_invoice"},
            )
        revision: Json = {}
        if change.plan is not None:
            plan_id = change.plan.processor_refs.get("paypal")
            if not plan_id:
                raise FailedPrecondition(
                    f"plan {change.plan.id} has not been created at PayPal",
                    reason="PLAN_NOT_AT_PROCESSOR",
                    metadata={"processor": "paypal", "plan_id": change.plan.id},
                )
            revision["plan_id"] = plan_id
        if change.quantity is not None:
            revision["quantity"] = str(change.quantity)
        if not revision:
            return await self.get_subscription(processor_subscription_id)
        revised = await self._json(
            "subscriptions.revise",
            lambda: self._raw(
                "POST",
                "/v1/billing/subscriptions/{id}/revise",
                request_id=idempotency_key,
                body=revision,
                id=processor_subscription_id,
            ),
        )
        state = await self.get_subscription(processor_subscription_id)
        state.approval_url = read_answer("a revision", wire.link, revised, "approve") or state.approval_url
        return state

    async def cancel_subscription(
        self, processor_subscription_id: str, *, at_period_end: bool, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Cancels now; PayPal has no cancel-at-period-end."""
        if at_period_end:
            raise NotSupportedByProcessor(
                "PayPal cannot cancel a subscription at period end; cancel it now instead",
                metadata={"processor": "paypal", "feature": "cancel_at_period_end"},
            )
        return await self._subscription_action(
            processor_subscription_id,
            "cancel",
            "Canceled by the merchant",
            idempotency_key,
            {SubscriptionStatus.CANCELED},
        )

    async def pause_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Suspends billing."""
        return await self._subscription_action(
            processor_subscription_id, "suspend", "Paused by the merchant", idempotency_key, {SubscriptionStatus.PAUSED}
        )

    async def resume_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Reactivates a suspended subscription."""
        return await self._subscription_action(
            processor_subscription_id,
            "activate",
            "Resumed by the merchant",
            idempotency_key,
            {SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING, SubscriptionStatus.PAST_DUE},
        )

    async def list_invoices(self, processor_subscription_id: str) -> list[ProcessorInvoiceState]:
        """Maps the subscription's transactions (since it was created) to invoices, newest first."""
        sub = await self._get_subscription_json(processor_subscription_id)
        ids = {"processor_subscription_id": processor_subscription_id}
        created = read_answer(
            "a subscription", wire.parse_time, sub.get("create_time") or sub.get("start_time"), ids=ids
        )
        start = created or datetime(2000, 1, 1, tzinfo=UTC)
        options = {
            "id": processor_subscription_id,
            "start_time": wire.iso_time(start),
            "end_time": wire.iso_time(datetime.now(UTC)),
        }
        subscriptions = self._client.subscriptions
        listed = await self._json(
            "subscriptions.transactions", lambda: subscriptions.list_subscription_transactions(options)
        )
        transactions = listed.get("transactions") or []
        return read_answer(
            "subscription transactions", mapping.transaction_invoices, processor_subscription_id, transactions, ids=ids
        )
