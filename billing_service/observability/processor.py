"""``InstrumentedProcessor``: a ``PaymentProcessor`` that measures every call it delegates.

Each call is counted in ``billing_processor_calls_total{processor,operation,outcome}``,
timed in ``billing_processor_call_duration_seconds`` and, when tracing is on, wrapped in a
``processor.<operation>`` span. The event verbs (webhook verification and translation,
event lists) pass through unmeasured, and attributes outside the port (the fake's test
handles) are forwarded to the wrapped adapter unchanged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer
from billing_service.domain.errors import NotSupportedByProcessor, PaymentDeclined, ProcessorError
from billing_service.domain.money import Money
from billing_service.domain.payments import ProcessorPaymentState, ProcessorRefundState
from billing_service.domain.processor_events import ProcessorEvent, VerifiedEvent
from billing_service.domain.subscriptions import Plan, ProcessorInvoiceState, ProcessorSubscriptionState
from billing_service.observability.metrics.processor_calls import ProcessorCallMetrics
from billing_service.observability.tracing import processor_span
from billing_service.service_layer.ports import (
    AttachedPaymentMethod,
    PaymentLookup,
    PaymentLookupResult,
    PaymentProcessor,
    PaymentRequest,
    RefundLookup,
    RefundLookupResult,
    RefundRequest,
    SubscriptionChange,
    SubscriptionLookup,
    SubscriptionLookupResult,
    SubscriptionRequest,
)

__all__ = ["InstrumentedProcessor", "outcome_of"]

T = TypeVar("T")


def outcome_of(exc: BaseException) -> str:
    """The ``outcome`` label of a failed call."""
    if isinstance(exc, PaymentDeclined):
        return "declined"
    if isinstance(exc, NotSupportedByProcessor):
        return "not_supported"
    if isinstance(exc, ProcessorError):
        return "unavailable" if exc.retryable else "error"
    return "exception"


class InstrumentedProcessor:
    """Wraps ``inner`` and records metrics (and spans) for each verb.

    Args:
        inner: The adapter doing the work.
        metrics: Where the processor call metrics live (``BillingMetrics`` is one).
    """

    def __init__(self, inner: PaymentProcessor, metrics: ProcessorCallMetrics) -> None:
        self.inner = inner
        self.name: Processor = inner.name
        self.key_retention: timedelta = inner.key_retention
        self._metrics = metrics
        self._label = inner.name.value

    def __getattr__(self, item: str) -> Any:
        # Only reached for attributes this class lacks: non-port extras of the adapter.
        return getattr(self.inner, item)

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        start = time.perf_counter()
        outcome = "ok"
        try:
            with processor_span(self._label, operation):
                return await call()
        except BaseException as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            self._metrics.processor_duration.labels(self._label, operation).observe(time.perf_counter() - start)
            self._metrics.processor_calls.labels(self._label, operation, outcome).inc()

    async def create_customer(self, customer: Customer, *, idempotency_key: str) -> str:
        """See ``PaymentProcessor``."""
        return await self._call(
            "create_customer", lambda: self.inner.create_customer(customer, idempotency_key=idempotency_key)
        )

    async def update_customer(self, processor_customer_id: str, customer: Customer, *, idempotency_key: str) -> None:
        """See ``PaymentProcessor``."""
        await self._call(
            "update_customer",
            lambda: self.inner.update_customer(processor_customer_id, customer, idempotency_key=idempotency_key),
        )

    async def attach_payment_method(
        self, processor_customer_id: str, token: str, *, idempotency_key: str
    ) -> AttachedPaymentMethod:
        """See ``PaymentProcessor``."""
        return await self._call(
            "attach_payment_method",
            lambda: self.inner.attach_payment_method(processor_customer_id, token, idempotency_key=idempotency_key),
        )

    async def detach_payment_method(self, processor_payment_method_id: str, *, idempotency_key: str) -> None:
        """See ``PaymentProcessor``."""
        await self._call(
            "detach_payment_method",
            lambda: self.inner.detach_payment_method(processor_payment_method_id, idempotency_key=idempotency_key),
        )

    async def create_payment(self, request: PaymentRequest, *, idempotency_key: str) -> ProcessorPaymentState:
        """See ``PaymentProcessor``."""
        return await self._call(
            "create_payment", lambda: self.inner.create_payment(request, idempotency_key=idempotency_key)
        )

    async def get_payment(self, processor_payment_id: str) -> ProcessorPaymentState:
        """See ``PaymentProcessor``."""
        return await self._call("get_payment", lambda: self.inner.get_payment(processor_payment_id))

    async def capture_payment(
        self, processor_payment_id: str, amount: Money, *, idempotency_key: str
    ) -> ProcessorPaymentState:
        """See ``PaymentProcessor``."""
        return await self._call(
            "capture_payment",
            lambda: self.inner.capture_payment(processor_payment_id, amount, idempotency_key=idempotency_key),
        )

    async def cancel_payment(self, processor_payment_id: str, *, idempotency_key: str) -> ProcessorPaymentState:
        """See ``PaymentProcessor``."""
        return await self._call(
            "cancel_payment", lambda: self.inner.cancel_payment(processor_payment_id, idempotency_key=idempotency_key)
        )

    async def create_refund(self, request: RefundRequest, *, idempotency_key: str) -> ProcessorRefundState:
        """See ``PaymentProcessor``."""
        return await self._call(
            "create_refund", lambda: self.inner.create_refund(request, idempotency_key=idempotency_key)
        )

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefundState:
        """See ``PaymentProcessor``."""
        return await self._call("get_refund", lambda: self.inner.get_refund(processor_refund_id))

    async def find_payment(self, lookup: PaymentLookup) -> PaymentLookupResult:
        """See ``PaymentProcessor``."""
        return await self._call("find_payment", lambda: self.inner.find_payment(lookup))

    async def find_refund(self, lookup: RefundLookup) -> RefundLookupResult:
        """See ``PaymentProcessor``."""
        return await self._call("find_refund", lambda: self.inner.find_refund(lookup))

    async def find_subscription(self, lookup: SubscriptionLookup) -> SubscriptionLookupResult:
        """See ``PaymentProcessor``."""
        return await self._call("find_subscription", lambda: self.inner.find_subscription(lookup))

    async def create_plan(self, plan: Plan, *, idempotency_key: str) -> dict[str, str]:
        """See ``PaymentProcessor``."""
        return await self._call("create_plan", lambda: self.inner.create_plan(plan, idempotency_key=idempotency_key))

    async def archive_plan(self, plan: Plan, *, idempotency_key: str) -> None:
        """See ``PaymentProcessor``."""
        await self._call("archive_plan", lambda: self.inner.archive_plan(plan, idempotency_key=idempotency_key))

    async def create_subscription(
        self, request: SubscriptionRequest, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """See ``PaymentProcessor``."""
        return await self._call(
            "create_subscription", lambda: self.inner.create_subscription(request, idempotency_key=idempotency_key)
        )

    async def get_subscription(self, processor_subscription_id: str) -> ProcessorSubscriptionState:
        """See ``PaymentProcessor``."""
        return await self._call("get_subscription", lambda: self.inner.get_subscription(processor_subscription_id))

    async def update_subscription(
        self, processor_subscription_id: str, change: SubscriptionChange, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """See ``PaymentProcessor``."""
        return await self._call(
            "update_subscription",
            lambda: self.inner.update_subscription(processor_subscription_id, change, idempotency_key=idempotency_key),
        )

    async def cancel_subscription(
        self, processor_subscription_id: str, *, at_period_end: bool, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """See ``PaymentProcessor``."""
        return await self._call(
            "cancel_subscription",
            lambda: self.inner.cancel_subscription(
                processor_subscription_id, at_period_end=at_period_end, idempotency_key=idempotency_key
            ),
        )

    async def pause_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """See ``PaymentProcessor``."""
        return await self._call(
            "pause_subscription",
            lambda: self.inner.pause_subscription(processor_subscription_id, idempotency_key=idempotency_key),
        )

    async def resume_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """See ``PaymentProcessor``."""
        return await self._call(
            "resume_subscription",
            lambda: self.inner.resume_subscription(processor_subscription_id, idempotency_key=idempotency_key),
        )

    async def list_invoices(self, processor_subscription_id: str) -> list[ProcessorInvoiceState]:
        """See ``PaymentProcessor``."""
        return await self._call("list_invoices", lambda: self.inner.list_invoices(processor_subscription_id))

    @property
    def verifies_webhooks(self) -> bool:
        """See ``PaymentProcessor``."""
        return self.inner.verifies_webhooks

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> VerifiedEvent:
        """See ``PaymentProcessor`` (unmeasured: the sidecar counts deliveries itself)."""
        return await self.inner.verify_webhook(headers, body)

    def parse_event(self, event_type: str, payload: Mapping[str, Any]) -> ProcessorEvent | None:
        """See ``PaymentProcessor`` (no I/O)."""
        return self.inner.parse_event(event_type, payload)

    def list_events(self, since: datetime, *, page_size: int = 100) -> AsyncIterator[VerifiedEvent]:
        """See ``PaymentProcessor`` (unmeasured, as backfill always was)."""
        return self.inner.list_events(since, page_size=page_size)

    async def aclose(self) -> None:
        """Closes the wrapped adapter."""
        await self.inner.aclose()
