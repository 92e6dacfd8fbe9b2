"""SubscriptionService: plans, subscriptions and invoices."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from billing.v1 import subscription_service_pb2 as pb
from billing.v1 import subscription_service_pb2_grpc as pb_grpc

from billing_service.domain.errors import InvalidArgument
from billing_service.domain.subscriptions import Interval
from billing_service.entrypoints.grpc_api import convert as cv
from billing_service.entrypoints.grpc_api.base import Ctx, Servicer, require
from billing_service.service_layer import subscriptions as su
from billing_service.service_layer.idempotency import RequestContext

_SVC = "/billing.v1.SubscriptionService/"


class SubscriptionServicer(Servicer, pb_grpc.SubscriptionServiceServicer):
    """Implements billing.v1.SubscriptionService over the use cases."""

    async def CreatePlan(self, request: pb.CreatePlanRequest, context: Ctx) -> pb.CreatePlanResponse:
        """Creates a plan."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.CreatePlanResponse]]:
            if request.interval == pb.INTERVAL_UNSPECIFIED:
                raise InvalidArgument.field("interval", "is required")
            cv.enum_in(request.interval, cv.INTERVAL_FROM_PB, "interval")  # type: ignore[arg-type]
            if request.interval_count < 0:
                raise InvalidArgument.field("interval_count", "must not be negative")
            if request.trial_period_days < 0:
                raise InvalidArgument.field("trial_period_days", "must not be negative")
            price = cv.money_from_pb(request.price, "price", present=request.HasField("price"))
            assert price is not None
            interval: Interval = cv.INTERVAL_FROM_PB[request.interval]
            cmd = su.CreatePlan(
                name=request.name,
                description=request.description,
                price=price,
                interval=interval,
                interval_count=request.interval_count or 1,
                trial_period_days=request.trial_period_days,
                metadata=dict(request.metadata),
            )
            cmd.validate()

            async def run(ctx: RequestContext) -> pb.CreatePlanResponse:
                return pb.CreatePlanResponse(plan=cv.plan_pb(await su.create_plan(self.deps, ctx, cmd)))

            return run

        return await self._mutate(
            context, request, method=_SVC + "CreatePlan", resource_prefix="plan",
            response_type=pb.CreatePlanResponse, prepare=prepare,
        )  # fmt: skip

    async def GetPlan(self, request: pb.GetPlanRequest, context: Ctx) -> pb.GetPlanResponse:
        """Returns a plan."""

        async def run() -> pb.GetPlanResponse:
            return pb.GetPlanResponse(
                plan=cv.plan_pb(await su.get_plan(self.deps, require(request.plan_id, "plan_id")))
            )

        return await self._read(context, _SVC + "GetPlan", run)

    async def ListPlans(self, request: pb.ListPlansRequest, context: Ctx) -> pb.ListPlansResponse:
        """Lists plans."""

        async def run() -> pb.ListPlansResponse:
            items, token = await su.list_plans(
                self.deps,
                include_archived=request.include_archived,
                page_size=request.page_size,
                page_token=request.page_token,
            )
            return pb.ListPlansResponse(plans=[cv.plan_pb(p) for p in items], next_page_token=token)

        return await self._read(context, _SVC + "ListPlans", run)

    async def ArchivePlan(self, request: pb.ArchivePlanRequest, context: Ctx) -> pb.ArchivePlanResponse:
        """Archives a plan."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.ArchivePlanResponse]]:
            plan_id = require(request.plan_id, "plan_id")

            async def run(ctx: RequestContext) -> pb.ArchivePlanResponse:
                return pb.ArchivePlanResponse(plan=cv.plan_pb(await su.archive_plan(self.deps, ctx, plan_id)))

            return run

        return await self._mutate(
            context, request, method=_SVC + "ArchivePlan", resource_prefix="plan",
            response_type=pb.ArchivePlanResponse, prepare=prepare,
        )  # fmt: skip

    async def CreateSubscription(
        self, request: pb.CreateSubscriptionRequest, context: Ctx
    ) -> pb.CreateSubscriptionResponse:
        """Creates a subscription."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.CreateSubscriptionResponse]]:
            if request.quantity < 0:
                raise InvalidArgument.field("quantity", "must not be negative")
            cmd = su.CreateSubscription(
                customer_id=request.customer_id,
                plan_id=request.plan_id,
                payment_method_id=request.payment_method_id,
                quantity=request.quantity or 1,
                trial_period_days=request.trial_period_days if request.HasField("trial_period_days") else None,
                metadata=dict(request.metadata),
            )
            cmd.validate()

            async def run(ctx: RequestContext) -> pb.CreateSubscriptionResponse:
                sub = await su.create_subscription(self.deps, ctx, cmd)
                return pb.CreateSubscriptionResponse(subscription=cv.subscription_pb(sub))

            return run

        return await self._mutate(
            context, request, method=_SVC + "CreateSubscription", resource_prefix="sub",
            response_type=pb.CreateSubscriptionResponse, prepare=prepare,
        )  # fmt: skip

    async def GetSubscription(self, request: pb.GetSubscriptionRequest, context: Ctx) -> pb.GetSubscriptionResponse:
        """Returns a subscription."""

        async def run() -> pb.GetSubscriptionResponse:
            sub = await su.get_subscription(self.deps, require(request.subscription_id, "subscription_id"))
            return pb.GetSubscriptionResponse(subscription=cv.subscription_pb(sub))

        return await self._read(context, _SVC + "GetSubscription", run)

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: Ctx
    ) -> pb.ListSubscriptionsResponse:
        """Lists subscriptions."""

        async def run() -> pb.ListSubscriptionsResponse:
            status = None
            if request.status:
                cv.enum_in(request.status, cv.SUB_STATUS_FROM_PB, "status")  # type: ignore[arg-type]
                status = cv.SUB_STATUS_FROM_PB[request.status]
            items, token = await su.list_subscriptions(
                self.deps,
                customer_id=request.customer_id,
                status=status,
                page_size=request.page_size,
                page_token=request.page_token,
            )
            return pb.ListSubscriptionsResponse(
                subscriptions=[cv.subscription_pb(s) for s in items], next_page_token=token
            )

        return await self._read(context, _SVC + "ListSubscriptions", run)

    async def UpdateSubscription(
        self, request: pb.UpdateSubscriptionRequest, context: Ctx
    ) -> pb.UpdateSubscriptionResponse:
        """Changes plan and/or quantity."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.UpdateSubscriptionResponse]]:
            cv.enum_in(request.proration_behavior, cv.PRORATION_FROM_PB, "proration_behavior")  # type: ignore[arg-type]
            cmd = su.UpdateSubscription(
                subscription_id=request.subscription_id,
                plan_id=request.plan_id,
                quantity=request.quantity,
                proration=cv.PRORATION_FROM_PB[request.proration_behavior],
            )
            cmd.validate()

            async def run(ctx: RequestContext) -> pb.UpdateSubscriptionResponse:
                sub = await su.update_subscription(self.deps, ctx, cmd)
                return pb.UpdateSubscriptionResponse(subscription=cv.subscription_pb(sub))

            return run

        return await self._mutate(
            context, request, method=_SVC + "UpdateSubscription", resource_prefix="sub",
            response_type=pb.UpdateSubscriptionResponse, prepare=prepare,
        )  # fmt: skip

    async def CancelSubscription(
        self, request: pb.CancelSubscriptionRequest, context: Ctx
    ) -> pb.CancelSubscriptionResponse:
        """Cancels a subscription."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.CancelSubscriptionResponse]]:
            sub_id = require(request.subscription_id, "subscription_id")

            async def run(ctx: RequestContext) -> pb.CancelSubscriptionResponse:
                sub = await su.cancel_subscription(self.deps, ctx, sub_id, request.at_period_end)
                return pb.CancelSubscriptionResponse(subscription=cv.subscription_pb(sub))

            return run

        return await self._mutate(
            context, request, method=_SVC + "CancelSubscription", resource_prefix="sub",
            response_type=pb.CancelSubscriptionResponse, prepare=prepare,
        )  # fmt: skip

    async def PauseSubscription(
        self, request: pb.PauseSubscriptionRequest, context: Ctx
    ) -> pb.PauseSubscriptionResponse:
        """Pauses a subscription."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.PauseSubscriptionResponse]]:
            sub_id = require(request.subscription_id, "subscription_id")

            async def run(ctx: RequestContext) -> pb.PauseSubscriptionResponse:
                sub = await su.pause_subscription(self.deps, ctx, sub_id)
                return pb.PauseSubscriptionResponse(subscription=cv.subscription_pb(sub))

            return run

        return await self._mutate(
            context, request, method=_SVC + "PauseSubscription", resource_prefix="sub",
            response_type=pb.PauseSubscriptionResponse, prepare=prepare,
        )  # fmt: skip

    async def ResumeSubscription(
        self, request: pb.ResumeSubscriptionRequest, context: Ctx
    ) -> pb.ResumeSubscriptionResponse:
        """Resumes a paused subscription."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.ResumeSubscriptionResponse]]:
            sub_id = require(request.subscription_id, "subscription_id")

            async def run(ctx: RequestContext) -> pb.ResumeSubscriptionResponse:
                sub = await su.resume_subscription(self.deps, ctx, sub_id)
                return pb.ResumeSubscriptionResponse(subscription=cv.subscription_pb(sub))

            return run

        return await self._mutate(
            context, request, method=_SVC + "ResumeSubscription", resource_prefix="sub",
            response_type=pb.ResumeSubscriptionResponse, prepare=prepare,
        )  # fmt: skip

    async def GetInvoice(self, request: pb.GetInvoiceRequest, context: Ctx) -> pb.GetInvoiceResponse:
        """Returns an invoice."""

        async def run() -> pb.GetInvoiceResponse:
            invoice = await su.get_invoice(self.deps, require(request.invoice_id, "invoice_id"))
            return pb.GetInvoiceResponse(invoice=cv.invoice_pb(invoice))

        return await self._read(context, _SVC + "GetInvoice", run)

    async def ListInvoices(self, request: pb.ListInvoicesRequest, context: Ctx) -> pb.ListInvoicesResponse:
        """Lists invoices."""

        async def run() -> pb.ListInvoicesResponse:
            items, token = await su.list_invoices(
                self.deps,
                customer_id=request.customer_id,
                subscription_id=request.subscription_id,
                page_size=request.page_size,
                page_token=request.page_token,
            )
            return pb.ListInvoicesResponse(invoices=[cv.invoice_pb(i) for i in items], next_page_token=token)

        return await self._read(context, _SVC + "ListInvoices", run)
