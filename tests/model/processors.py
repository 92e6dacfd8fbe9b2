"""The processor side of the model test: a gate that holds calls, and dashboard handles.

``GatedProcessor`` wraps a real adapter (the fake, or the Stripe adapter on the real SDK)
and can hold one write call, recognised by its idempotency key, either *before* it reaches
the processor or *after* the processor acted but before the answer comes back. A rule
then lets other things happen while the call sits there (a cancel, a webhook, a duplicate,
reconciliation, a crash) and releases it later, or never.

``DashboardFake`` and ``DashboardStripe`` add what an operator can do in the processor's
dashboard (refund, capture, cancel, change or cancel a subscription) to the fake processor
and to the Stripe imitation, without touching either file: subclasses, so that the helpers
who edit those files in parallel never conflict with this test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from billing_service.adapters.processors.fake import FakePaymentProcessor
from billing_service.domain.common import Processor
from billing_service.domain.errors import ProcessorError
from billing_service.domain.money import Money
from billing_service.domain.payments import ProcessorPaymentState, ProcessorRefundState
from billing_service.domain.subscriptions import ProrationBehavior, SubscriptionStatus
from billing_service.service_layer.ports import (
    Clock,
    PaymentRequest,
    RefundRequest,
    SubscriptionChange,
    SubscriptionRequest,
)
from tests.imitations.stripe_api import Obj, RecordedRequest, StripeApiError, StripeImitation

T = TypeVar("T")


@dataclass
class Hold:
    """One armed hold: the next call of ``verb`` with ``key`` stops at ``phase``.

    Attributes:
        phase: ``before`` (the processor has not seen the call) or ``after`` (the processor
            acted; its answer is on the way back).
        arrived: Set when the call reached the gate.
        released: Set by the test to let the call go on.
    """

    verb: str
    key: str
    phase: str
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # the call left the gate, one way or another
    taken: bool = False
    # Set by the model once the clock passed the adapter's timeouts while the call was held:
    # no call stays at the processor longer, so on release it fails as a timeout (before the
    # effect: nothing reached the processor; after it: the answer is lost).
    timed_out: bool = False

    def release(self) -> None:
        """Lets the held call go on."""
        self.released.set()


def _timeout() -> ProcessorError:
    return ProcessorError(
        "the processor call timed out (held by the model)", reason="PROCESSOR_UNREACHABLE", retryable=True
    )


class GatedProcessor:
    """A ``PaymentProcessor`` that delegates to ``inner`` and can hold write calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name: Processor = inner.name
        self.holds: list[Hold] = []

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def arm(self, verb: str, key: str, phase: str) -> Hold:
        """Holds the next ``verb`` call carrying ``key`` at ``phase``."""
        hold = Hold(verb, key, phase)
        self.holds.append(hold)
        return hold

    def disarm(self, hold: Hold) -> None:
        """Forgets a hold no call took."""
        with contextlib.suppress(ValueError):
            self.holds.remove(hold)

    async def _gated(self, verb: str, key: str, call: Callable[[], Awaitable[T]]) -> T:
        hold = next((h for h in self.holds if h.verb == verb and h.key == key and not h.taken), None)
        if hold is None:
            return await call()
        hold.taken = True
        self.holds.remove(hold)
        try:
            if hold.phase == "before":
                await self._wait(hold)
                if hold.timed_out:
                    raise _timeout()
                return await call()
            try:
                result = await call()
            except Exception:
                await self._wait(hold)
                raise
            await self._wait(hold)
            if hold.timed_out:
                raise _timeout()
            return result
        finally:
            hold.finished.set()

    @staticmethod
    async def _wait(hold: Hold) -> None:
        hold.arrived.set()
        await hold.released.wait()

    # The write verbs the model holds; everything else passes through __getattr__.

    async def create_payment(self, request: PaymentRequest, *, idempotency_key: str) -> ProcessorPaymentState:
        return await self._gated(
            "create_payment",
            idempotency_key,
            lambda: self.inner.create_payment(request, idempotency_key=idempotency_key),
        )

    async def capture_payment(
        self, processor_payment_id: str, amount: Money, *, idempotency_key: str
    ) -> ProcessorPaymentState:
        return await self._gated(
            "capture_payment",
            idempotency_key,
            lambda: self.inner.capture_payment(processor_payment_id, amount, idempotency_key=idempotency_key),
        )

    async def cancel_payment(self, processor_payment_id: str, *, idempotency_key: str) -> ProcessorPaymentState:
        return await self._gated(
            "cancel_payment",
            idempotency_key,
            lambda: self.inner.cancel_payment(processor_payment_id, idempotency_key=idempotency_key),
        )

    async def create_refund(self, request: RefundRequest, *, idempotency_key: str) -> ProcessorRefundState:
        return await self._gated(
            "create_refund", idempotency_key, lambda: self.inner.create_refund(request, idempotency_key=idempotency_key)
        )

    async def create_subscription(self, request: SubscriptionRequest, *, idempotency_key: str) -> Any:
        return await self._gated(
            "create_subscription",
            idempotency_key,
            lambda: self.inner.create_subscription(request, idempotency_key=idempotency_key),
        )

    async def update_subscription(
        self, processor_subscription_id: str, change: SubscriptionChange, *, idempotency_key: str
    ) -> Any:
        return await self._gated(
            "update_subscription",
            idempotency_key,
            lambda: self.inner.update_subscription(processor_subscription_id, change, idempotency_key=idempotency_key),
        )

    async def cancel_subscription(
        self, processor_subscription_id: str, *, at_period_end: bool, idempotency_key: str
    ) -> Any:
        return await self._gated(
            "cancel_subscription",
            idempotency_key,
            lambda: self.inner.cancel_subscription(
                processor_subscription_id, at_period_end=at_period_end, idempotency_key=idempotency_key
            ),
        )


# --------------------------------------------------------------------------- the fake's dashboard


class DashboardFake(FakePaymentProcessor):
    """The fake processor plus what an operator can do in its dashboard.

    Dashboard moves carry no idempotency key, run under the fake's lock and raise the same
    ``ProcessorError`` the port's verb would when the processor refuses them.
    """

    @property
    def ledger(self) -> Any:
        """The fake's records: the processor's truth (read only)."""
        return self._ledger

    def clear_faults(self) -> None:
        """Forgets faults queued by ``fail_next`` that no call consumed."""
        self._faults.clear()

    async def dashboard_refund(self, processor_payment_id: str, amount_minor: int | None) -> ProcessorRefundState:
        """Refunds ``amount_minor`` (None: all that is refundable) of a payment."""
        async with self._lock:
            payment = self._ledger.payment(processor_payment_id)
            amount = payment.refundable if amount_minor is None else amount_minor
            return self._ledger.refund_payment(payment, Money(amount, payment.amount.currency)).state()

    async def dashboard_capture(self, processor_payment_id: str, amount_minor: int | None) -> ProcessorPaymentState:
        """Captures ``amount_minor`` (None: all that is capturable) of an authorization."""
        async with self._lock:
            payment = self._ledger.payment(processor_payment_id)
            amount = payment.amount_capturable if amount_minor is None else amount_minor
            self._ledger.capture(payment, Money(amount, payment.amount.currency))
            return payment.state()

    async def dashboard_cancel(self, processor_payment_id: str) -> ProcessorPaymentState:
        """Voids an authorization."""
        async with self._lock:
            payment = self._ledger.payment(processor_payment_id)
            self._ledger.cancel(payment)
            return payment.state()

    async def dashboard_update_subscription(self, processor_subscription_id: str, price_id: str, quantity: int) -> None:
        """Switches a subscription's price and quantity (prorated), as an operator would."""
        async with self._lock:
            sub = self._ledger.subscription(processor_subscription_id)
            price = self._ledger.prices[price_id]
            self._ledger.change_subscription(sub, price, quantity, ProrationBehavior.CREATE_PRORATIONS)

    async def dashboard_cancel_subscription(self, processor_subscription_id: str, *, at_period_end: bool) -> None:
        """Cancels a subscription now or at its period end."""
        async with self._lock:
            sub = self._ledger.subscription(processor_subscription_id)
            if sub.status is SubscriptionStatus.CANCELED:
                return
            if at_period_end:
                sub.cancel_at_period_end = True
            else:
                sub.status, sub.canceled_at, sub.cancel_at_period_end = (
                    SubscriptionStatus.CANCELED,
                    self._clock.now(),
                    False,
                )
                sub.pending_lines = []


# --------------------------------------------------------------------------- Stripe's dashboard


@dataclass
class _LostResponses:
    path_prefix: str
    times: int


class DashboardStripe(StripeImitation):
    """The Stripe imitation plus dashboard moves and a "lost response" fault.

    ``lose_responses_next`` lets a request take effect (its idempotent result is stored as
    Stripe would) and then replaces the answer with a 502 from the edge: the connection
    dropped after the charge. A retry with the same key gets the stored result.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lost: list[_LostResponses] = []
        self.clock: Clock | None = None

    def _now(self) -> int:
        # Stripe's clock and ours agree: objects and events are stamped with the model's manual
        # clock (lookups by creation time and the reconciler's event cursor compare the two).
        return int(self.clock.now().timestamp()) if self.clock is not None else super()._now()

    def lose_responses_next(self, path_prefix: str, times: int = 1) -> None:
        """The next ``times`` requests under ``path_prefix`` act, then answer 502."""
        with self._lock:
            self._lost.append(_LostResponses(path_prefix, times))

    def clear_faults(self) -> None:
        """Forgets every armed fault (``fail_next``, stalls, lost responses)."""
        with self._lock:
            self._faults.clear()
            self._lost.clear()

    def _handle(self, req: RecordedRequest) -> tuple[int, bytes, dict[str, str], bool]:
        status, payload, headers, stall = super()._handle(req)
        lost = next((f for f in self._lost if req.path.startswith(f.path_prefix)), None)
        if lost is None:
            return status, payload, headers, stall
        lost.times -= 1
        if lost.times <= 0:
            self._lost.remove(lost)
        body = {"error": {"type": "api_error", "message": "Bad gateway (injected after the effect)."}}
        return 502, json.dumps(body).encode(), {}, False

    def _dashboard(self, method: str, path: str, params: Obj) -> Obj:
        """Runs one API request as the dashboard does (no idempotency key); emits its events."""
        with self._lock:
            result: Obj = self._route(RecordedRequest(method, path, params, {}), None)
            return result

    def dashboard_refund(self, intent_id: str, amount: int | None) -> Obj:
        """Refunds ``amount`` (Stripe's units; None: the rest) of a PaymentIntent."""
        params: Obj = {"payment_intent": intent_id}
        if amount is not None:
            params["amount"] = str(amount)
        return self._dashboard("POST", "/v1/refunds", params)

    def dashboard_capture(self, intent_id: str) -> Obj:
        """Captures an authorized PaymentIntent in full."""
        return self._dashboard("POST", f"/v1/payment_intents/{intent_id}/capture", {})

    def dashboard_cancel(self, intent_id: str) -> Obj:
        """Cancels an uncaptured PaymentIntent."""
        return self._dashboard("POST", f"/v1/payment_intents/{intent_id}/cancel", {})

    def dashboard_update_subscription(self, subscription_id: str, price_id: str, quantity: int) -> Obj:
        """Switches the subscription's one item to ``price_id`` x ``quantity`` (prorated)."""
        with self._lock:
            item_id = self._get("subscription", obj_id=subscription_id)["_items"][0]
        items = [{"id": item_id, "price": price_id, "quantity": str(quantity)}]
        return self._dashboard("POST", f"/v1/subscriptions/{subscription_id}", {"items": items})

    def dashboard_cancel_subscription(self, subscription_id: str, *, at_period_end: bool) -> Obj:
        """Cancels now, or flags cancel at period end."""
        if at_period_end:
            return self._dashboard("POST", f"/v1/subscriptions/{subscription_id}", {"cancel_at_period_end": "true"})
        return self._dashboard("DELETE", f"/v1/subscriptions/{subscription_id}", {})

    def raw(self, object_id: str) -> Obj:
        """A stored object with its private fields (the model's view of Stripe's truth)."""
        with self._lock:
            return dict(self._store.objects[object_id])

    def events_since(self, seq: int) -> list[Obj]:
        """Events created after sequence number ``seq``, oldest first."""
        with self._lock:
            found = [o for o in self._store.objects.values() if o["object"] == "event" and o["_seq"] > seq]
        return [{k: v for k, v in e.items() if not k.startswith("_")} | {"_seq": e["_seq"]} for e in found]


__all__ = ["DashboardFake", "DashboardStripe", "GatedProcessor", "Hold", "StripeApiError"]
