"""Payment and refund rules: create, capture, cancel, refund (each plain, duplicated, held
at the processor before or after its effect, or with the processor's answer lost), and
what an operator does in the processor's dashboard.
"""

from __future__ import annotations

from typing import Any

from billing.v1 import billing_service_pb2 as bpb
from billing.v1 import common_pb2
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from billing_service.domain.errors import ProcessorError
from billing_service.domain.payments import PaymentStatus, RefundStatus
from tests.helpers import rid
from tests.model.machine import ModelBase, counted
from tests.model.processors import StripeApiError
from tests.model.truth import STRIPE_SCALE
from tests.model.world import BILLING

MODES = st.sampled_from(["plain", "plain", "dup", "before", "after", "lost"])
PORTIONS = st.sampled_from([None, 2, 3])  # None: the whole rest; n: 1/n of it


class PaymentRules(ModelBase):
    """Rules about payments and refunds (mixed into the per-processor machines)."""

    currencies: tuple[tuple[str, int], ...] = (("USD", 2500), ("JPY", 3000))
    tokens: dict[str, str] = {"ok": "pm_card_visa", "declined": "pm_card_chargeDeclined"}

    @initialize(refunds_pending=st.booleans())
    def customer(self, refunds_pending: bool) -> None:
        """One customer with one payment method per behaviour (Stripe: refunds pending or not)."""
        if self.world.stripe_api is not None and refunds_pending:
            self.world.stripe_api.refund_mode = "pending"  # until settle_refunds

        created = self.world.run(
            self.world.call(
                self.world.billing.CreateCustomer,
                bpb.CreateCustomerRequest(request_id=rid(), email="model@example.com", name="Model"),
            )
        )
        assert created.ok, created
        self.customer_id = created.response.customer.id  # type: ignore[union-attr]
        self.methods: dict[str, str] = {}
        for behaviour, token in self.tokens.items():
            attached = self.world.run(
                self.world.call(
                    self.world.billing.AttachPaymentMethod,
                    bpb.AttachPaymentMethodRequest(
                        request_id=rid(), customer_id=self.customer_id, processor_token=token
                    ),
                )
            )
            assert attached.ok, attached
            self.methods[behaviour] = attached.response.payment_method.id  # type: ignore[union-attr]

    # -- our API -------------------------------------------------------------------------------

    @rule(
        behaviour=st.sampled_from(["ok", "ok", "ok", "declined", "refunds_pending"]),
        manual=st.booleans(),
        currency=st.integers(0, 100),
        mode=MODES,
    )
    @counted
    def create_payment(self, behaviour: str, manual: bool, currency: int, mode: str) -> None:
        """CreatePayment, automatic or manual capture."""
        code, amount = self.currencies[currency % len(self.currencies)]
        method = self.methods.get(behaviour, self.methods["ok"])
        request = bpb.CreatePaymentRequest(
            request_id=rid(), customer_id=self.customer_id, payment_method_id=method,
            amount=common_pb2.Money(amount_minor=amount, currency=code),
            capture_method=bpb.CAPTURE_METHOD_MANUAL if manual else bpb.CAPTURE_METHOD_AUTOMATIC,
        )  # fmt: skip
        req = self.new_req("CreatePayment", BILLING + "CreatePayment", self.world.billing.CreatePayment, request,
                           "create_payment", "payment")  # fmt: skip
        self.dispatch(req, mode, "/v1/payment_intents")

    def legal(self, allows: Any) -> list[Any]:
        """The payments a move is legal for (all of them when there is none: then it is refused)."""
        return [p for p in self.payments if allows(p)] or self.payments

    def _payment_req(self, label: str, verb: str, step: str, request: Any) -> Any:
        rpc = getattr(self.world.billing, label)
        return self.new_req(label, BILLING + label, rpc, request, verb, step)

    @precondition(lambda self: self.payments)
    @rule(i=st.integers(0, 10_000), partial=st.booleans(), mode=MODES)
    @counted
    def capture(self, i: int, partial: bool, mode: str) -> None:
        """CapturePayment (all, or part, of what is authorized)."""
        payment = self.pick(self.legal(lambda p: p.status is PaymentStatus.REQUIRES_CAPTURE), i)
        request = bpb.CapturePaymentRequest(request_id=rid(), payment_id=payment.id)
        if partial and payment.amount_capturable > 1:
            request.amount.CopyFrom(
                common_pb2.Money(amount_minor=payment.amount_capturable // 2, currency=payment.currency)
            )
        req = self._payment_req("CapturePayment", "capture_payment", "capture", request)
        self.dispatch(req, mode, f"/v1/payment_intents/{payment.processor_id}/capture")

    @precondition(lambda self: self.payments)
    @rule(i=st.integers(0, 10_000), mode=MODES)
    @counted
    def cancel(self, i: int, mode: str) -> None:
        """CancelPayment."""
        payment = self.pick(self.legal(lambda p: not p.is_final), i)
        request = bpb.CancelPaymentRequest(request_id=rid(), payment_id=payment.id)
        req = self._payment_req("CancelPayment", "cancel_payment", "cancel", request)
        self.dispatch(req, mode, f"/v1/payment_intents/{payment.processor_id}/cancel")

    @precondition(lambda self: self.payments)
    @rule(i=st.integers(0, 10_000), portion=PORTIONS, mode=MODES)
    @counted
    def refund(self, i: int, portion: int | None, mode: str) -> None:
        """CreateRefund, full (no amount) or partial."""
        payment = self.pick(self.legal(lambda p: p.refundable_minor > 0), i)
        request = bpb.CreateRefundRequest(request_id=rid(), payment_id=payment.id)
        rest = payment.amount_captured - payment.amount_refunded - payment.amount_refund_pending
        if portion is not None and rest // portion > 0:
            request.amount.CopyFrom(common_pb2.Money(amount_minor=rest // portion, currency=payment.currency))
        req = self._payment_req("CreateRefund", "create_refund", "refund", request)
        self.dispatch(req, mode, "/v1/refunds")

    # -- the processor's dashboard ------------------------------------------------------------------

    def processor_payments(self) -> list[str]:
        if self.world.fake is not None:
            return list(self.world.fake.ledger.payments)
        return [pi["id"] for pi in self.stripe_api.objects("payment_intent")]

    @precondition(lambda self: self.processor_payments())
    @rule(i=st.integers(0, 10_000), action=st.sampled_from(["refund", "capture", "cancel", "settle"]), portion=PORTIONS)
    @counted
    def dashboard_payment(self, i: int, action: str, portion: int | None) -> None:
        """What happens at the processor without us: an operator refunds (part of), captures or voids a
        payment in the dashboard, or pending refunds settle (``settle``: the fake's settle as their
        card dictates; at Stripe one settles as ``portion`` says, None: failed)."""
        processor_id = self.pick(self.processor_payments(), i)
        try:
            if self.world.fake is not None:
                self.world.run(self._fake_dashboard(processor_id, action, portion))
            else:
                self._stripe_dashboard(processor_id, action, portion, i)
        except (ProcessorError, StripeApiError):
            pass  # the processor refused: nothing captured, nothing left, wrong state

    async def _fake_dashboard(self, processor_id: str, action: str, portion: int | None) -> None:
        fake = self.world.fake
        assert fake is not None
        if action == "refund":
            refundable = fake.ledger.payments[processor_id].refundable
            amount = None if portion is None else refundable // portion
            if amount != 0:
                await fake.dashboard_refund(processor_id, amount)
        elif action == "capture":
            await fake.dashboard_capture(processor_id, None)
        elif action == "cancel":
            await fake.dashboard_cancel(processor_id)
        else:
            await fake.settle_refunds()

    def _stripe_dashboard(self, processor_id: str, action: str, portion: int | None, i: int) -> None:
        api = self.stripe_api
        if action == "refund":
            pi = api.raw(processor_id)
            scale = STRIPE_SCALE.get(pi["currency"], 1)
            rest = pi["amount_received"] - pi["amount_refunded"]
            amount = None if portion is None else rest // portion // scale * scale
            if amount != 0:
                api.dashboard_refund(processor_id, amount)
        elif action == "capture":
            api.dashboard_capture(processor_id)
        elif action == "cancel":
            api.dashboard_cancel(processor_id)
        else:
            pending = [r["id"] for r in api.objects("refund") if r["status"] == "pending"]
            if pending:
                api.settle_refund(self.pick(pending, i), "failed" if portion is None else "succeeded")


__all__ = ["PaymentRules", "RefundStatus"]
