"""Subscription rules: create, change plan or quantity, cancel (now or at period end), pause,
resume, and the same changes made in the processor's dashboard.
"""

from __future__ import annotations

from billing.v1 import common_pb2
from billing.v1 import subscription_service_pb2 as spb
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from billing_service.domain.errors import ProcessorError
from billing_service.domain.subscriptions import Plan
from billing_service.service_layer import plans
from billing_service.service_layer.idempotency import RequestContext
from tests.helpers import rid
from tests.model.machine import ModelBase, counted
from tests.model.processors import StripeApiError
from tests.model.world import SUBSCRIPTIONS

SUB_MODES = st.sampled_from(["plain", "plain", "dup", "after", "lost"])
PRORATIONS = st.sampled_from(
    [spb.PRORATION_BEHAVIOR_CREATE_PRORATIONS, spb.PRORATION_BEHAVIOR_NONE, spb.PRORATION_BEHAVIOR_ALWAYS_INVOICE]
)


class SubscriptionRules(ModelBase):
    """Rules about subscriptions (mixed into the per-processor machines)."""

    customer_id: str  # set by PaymentRules.customer
    methods: dict[str, str]

    @initialize()
    def plans(self) -> None:
        """Two monthly USD plans, both already mirrored at the processor (so the dashboard can use them)."""
        self.plan_ids: list[str] = []
        for name, price in (("Basic", 1000), ("Pro", 2500)):
            created = self.world.run(
                self.world.call(
                    self.world.subs.CreatePlan,
                    spb.CreatePlanRequest(
                        request_id=rid(), name=name, price=common_pb2.Money(amount_minor=price, currency="USD"),
                        interval=spb.INTERVAL_MONTH, interval_count=1,
                    ),
                )
            )  # fmt: skip
            assert created.ok, created
            plan_id = created.response.plan.id  # type: ignore[union-attr]
            plan = self.world.run(plans.get_plan(self.world.deps, plan_id))
            ctx = RequestContext("model", "model.plans", plan_id, plan_id)
            self.world.run(plans.ensure_processor_plan(self.world.deps, plan, self.processor, ctx=ctx))
            self.plan_ids.append(plan_id)

    def price_of(self, plan_id: str) -> str:
        plan: Plan = self.world.run(plans.get_plan(self.world.deps, plan_id))
        return plan.processor_refs[self.processor.value]

    @precondition(lambda self: hasattr(self, "methods"))
    @rule(plan=st.integers(0, 1), quantity=st.integers(1, 3), trial=st.booleans(), mode=SUB_MODES)
    @counted
    def create_subscription(self, plan: int, quantity: int, trial: bool, mode: str) -> None:
        """CreateSubscription (with or without a trial)."""
        request = spb.CreateSubscriptionRequest(
            request_id=rid(), customer_id=self.customer_id, plan_id=self.plan_ids[plan],
            payment_method_id=self.methods["ok"], quantity=quantity,
        )  # fmt: skip
        if trial:
            request.trial_period_days = 14
        name = "CreateSubscription"
        rpc = self.world.subs.CreateSubscription
        req = self.new_req(name, SUBSCRIPTIONS + name, rpc, request, "create_subscription", "subscription")
        self.dispatch(req, mode, "/v1/subscriptions")

    @precondition(lambda self: self.subscriptions)
    @rule(i=st.integers(0, 10_000), plan=st.integers(0, 1), quantity=st.integers(1, 3), proration=PRORATIONS,
          mode=SUB_MODES)  # fmt: skip
    @counted
    def update_subscription(self, i: int, plan: int, quantity: int, proration: int, mode: str) -> None:
        """UpdateSubscription: another plan and/or quantity."""
        sub = self.pick(self.subscriptions, i)
        request = spb.UpdateSubscriptionRequest(
            request_id=rid(), subscription_id=sub.id, plan_id=self.plan_ids[plan], quantity=quantity,
            proration_behavior=proration,  # type: ignore[arg-type]
        )  # fmt: skip
        req = self.new_req("UpdateSubscription", SUBSCRIPTIONS + "UpdateSubscription",
                           self.world.subs.UpdateSubscription, request, "update_subscription", "update")  # fmt: skip
        self.dispatch(req, mode, f"/v1/subscriptions/{sub.processor_id}")

    @precondition(lambda self: self.subscriptions)
    @rule(i=st.integers(0, 10_000), action=st.sampled_from(["cancel", "cancel_at_period_end", "pause", "resume"]),
          mode=SUB_MODES)  # fmt: skip
    @counted
    def subscription_lifecycle(self, i: int, action: str, mode: str) -> None:
        """CancelSubscription (now or at period end), PauseSubscription, ResumeSubscription."""
        sub = self.pick(self.subscriptions, i)
        if action.startswith("cancel"):
            request = spb.CancelSubscriptionRequest(
                request_id=rid(), subscription_id=sub.id, at_period_end=action == "cancel_at_period_end"
            )
            rpc = self.world.subs.CancelSubscription
            req = self.new_req("CancelSubscription", SUBSCRIPTIONS + "CancelSubscription", rpc, request,
                               "cancel_subscription", "cancel")  # fmt: skip
            self.dispatch(req, mode if mode != "lost" else "plain", f"/v1/subscriptions/{sub.processor_id}")
            return
        name = "PauseSubscription" if action == "pause" else "ResumeSubscription"
        message = spb.PauseSubscriptionRequest if action == "pause" else spb.ResumeSubscriptionRequest
        req = self.new_req(name, SUBSCRIPTIONS + name, getattr(self.world.subs, name),
                           message(request_id=rid(), subscription_id=sub.id), "", "")  # fmt: skip
        self.dispatch(req, "dup" if mode == "dup" else "plain")

    # -- the processor's dashboard ------------------------------------------------------------------

    def processor_subscriptions(self) -> list[str]:
        if self.world.fake is not None:
            return list(self.world.fake.ledger.subscriptions)
        return [s["id"] for s in self.stripe_api.objects("subscription")]

    @precondition(lambda self: self.processor_subscriptions())
    @rule(i=st.integers(0, 10_000), action=st.sampled_from(["change", "cancel", "cancel_at_period_end"]),
          plan=st.integers(0, 1), quantity=st.integers(1, 3))  # fmt: skip
    @counted
    def dashboard_subscription(self, i: int, action: str, plan: int, quantity: int) -> None:
        """An operator switches a subscription's plan or quantity, or cancels it, at the processor."""
        processor_id = self.pick(self.processor_subscriptions(), i)
        try:
            if action == "change":
                price = self.price_of(self.plan_ids[plan])
                if self.world.fake is not None:
                    self.world.run(self.world.fake.dashboard_update_subscription(processor_id, price, quantity))
                else:
                    self.stripe_api.dashboard_update_subscription(processor_id, price, quantity)
            elif self.world.fake is not None:
                at_end = action == "cancel_at_period_end"
                self.world.run(self.world.fake.dashboard_cancel_subscription(processor_id, at_period_end=at_end))
            else:
                self.stripe_api.dashboard_cancel_subscription(processor_id, at_period_end=action != "cancel")
        except (ProcessorError, StripeApiError):
            pass


__all__ = ["SubscriptionRules"]
