"""SubscriptionService: plans, subscriptions and invoices.

One entry per RPC (see :mod:`.runner`); required fields are enforced from the schema's
annotations, so the decoders only convert and run the commands' own validation.
"""

from __future__ import annotations

from collections.abc import Callable

from billing.v1 import subscription_service_pb2 as pb

from billing_service.domain.errors import InvalidArgument
from billing_service.entrypoints.grpc_api import convert as cv
from billing_service.entrypoints.grpc_api.runner import Read, Runner, Service, Write
from billing_service.service_layer import previews
from billing_service.service_layer import subscriptions as su
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import Idempotency

# -- decoders: request -> validated command ------------------------------------------


def _create_plan(r: pb.CreatePlanRequest) -> su.CreatePlan:
    cv.enum_in(r.interval, cv.INTERVAL_FROM_PB, "interval")  # type: ignore[arg-type]
    if r.interval_count < 0:
        raise InvalidArgument.field("interval_count", "must not be negative")
    if r.trial_period_days < 0:
        raise InvalidArgument.field("trial_period_days", "must not be negative")
    price = cv.money_from_pb(r.price, "price", present=r.HasField("price"))
    assert price is not None
    cmd = su.CreatePlan(
        name=r.name,
        description=r.description,
        price=price,
        interval=cv.INTERVAL_FROM_PB[r.interval],
        interval_count=r.interval_count or 1,
        trial_period_days=r.trial_period_days,
        metadata=dict(r.metadata),
    )
    cmd.validate()
    return cmd


def _create_subscription(r: pb.CreateSubscriptionRequest) -> su.CreateSubscription:
    if r.quantity < 0:
        raise InvalidArgument.field("quantity", "must not be negative")
    cmd = su.CreateSubscription(
        customer_id=r.customer_id,
        plan_id=r.plan_id,
        payment_method_id=r.payment_method_id,
        quantity=r.quantity or 1,
        trial_period_days=r.trial_period_days if r.HasField("trial_period_days") else None,
        metadata=dict(r.metadata),
    )
    cmd.validate()
    return cmd


def _update_subscription(r: pb.UpdateSubscriptionRequest) -> su.UpdateSubscription:
    cv.enum_in(r.proration_behavior, cv.PRORATION_FROM_PB, "proration_behavior")  # type: ignore[arg-type]
    cmd = su.UpdateSubscription(
        subscription_id=r.subscription_id,
        plan_id=r.plan_id,
        quantity=r.quantity,
        proration=cv.PRORATION_FROM_PB[r.proration_behavior],
    )
    cmd.validate()
    return cmd


# -- the RPCs -------------------------------------------------------------------------

SUBSCRIPTIONS = Service(
    pb.DESCRIPTOR.services_by_name["SubscriptionService"],
    [
        Write(
            "CreatePlan", pb.CreatePlanRequest, "plans:write", "plan",
            _create_plan, su.create_plan, lambda p: pb.CreatePlanResponse(plan=cv.plan_pb(p)),
            preview=previews.preview_plan,
        ),
        Read(
            "GetPlan", pb.GetPlanRequest, "subscriptions:read",
            lambda deps, r: su.get_plan(deps, r.plan_id), lambda p: pb.GetPlanResponse(plan=cv.plan_pb(p)),
        ),
        Read(
            "ListPlans", pb.ListPlansRequest, "subscriptions:read",
            lambda deps, r: su.list_plans(
                deps, include_archived=r.include_archived, page_size=r.page_size, page_token=r.page_token,
                filter_expr=r.filter,
            ),
            lambda page: pb.ListPlansResponse(plans=map(cv.plan_pb, page[0]), next_page_token=page[1]),
        ),
        Write(
            "ArchivePlan", pb.ArchivePlanRequest, "plans:write", "plan",
            lambda r: r.plan_id, su.archive_plan, lambda p: pb.ArchivePlanResponse(plan=cv.plan_pb(p)),
        ),
        Write(
            "CreateSubscription", pb.CreateSubscriptionRequest, "subscriptions:write", "sub",
            _create_subscription, su.create_subscription,
            lambda s: pb.CreateSubscriptionResponse(subscription=cv.subscription_pb(s)),
            preview=previews.preview_subscription,
        ),
        Read(
            "GetSubscription", pb.GetSubscriptionRequest, "subscriptions:read",
            lambda deps, r: su.get_subscription(deps, r.subscription_id),
            lambda s: pb.GetSubscriptionResponse(subscription=cv.subscription_pb(s)),
        ),
        Read(
            "ListSubscriptions", pb.ListSubscriptionsRequest, "subscriptions:read",
            lambda deps, r: su.list_subscriptions(
                deps, customer_id=r.customer_id, status=cv.subscription_status_filter(r.status),
                page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter,
            ),
            lambda page: pb.ListSubscriptionsResponse(
                subscriptions=map(cv.subscription_pb, page[0]), next_page_token=page[1]
            ),
        ),
        Write(
            "UpdateSubscription", pb.UpdateSubscriptionRequest, "subscriptions:write", "sub",
            _update_subscription, su.update_subscription,
            lambda s: pb.UpdateSubscriptionResponse(subscription=cv.subscription_pb(s)),
        ),
        Write(
            "CancelSubscription", pb.CancelSubscriptionRequest, "subscriptions:write", "sub",
            lambda r: (r.subscription_id, r.at_period_end),
            lambda deps, ctx, c: su.cancel_subscription(deps, ctx, *c),
            lambda s: pb.CancelSubscriptionResponse(subscription=cv.subscription_pb(s)),
        ),
        Write(
            "PauseSubscription", pb.PauseSubscriptionRequest, "subscriptions:write", "sub",
            lambda r: r.subscription_id, su.pause_subscription,
            lambda s: pb.PauseSubscriptionResponse(subscription=cv.subscription_pb(s)),
        ),
        Write(
            "ResumeSubscription", pb.ResumeSubscriptionRequest, "subscriptions:write", "sub",
            lambda r: r.subscription_id, su.resume_subscription,
            lambda s: pb.ResumeSubscriptionResponse(subscription=cv.subscription_pb(s)),
        ),
        Read(
            "GetInvoice", pb.GetInvoiceRequest, "subscriptions:read",
            lambda deps, r: su.get_invoice(deps, r.invoice_id),
            lambda i: pb.GetInvoiceResponse(invoice=cv.invoice_pb(i)),
        ),
        Read(
            "ListInvoices", pb.ListInvoicesRequest, "subscriptions:read",
            lambda deps, r: su.list_invoices(
                deps, customer_id=r.customer_id, subscription_id=r.subscription_id,
                page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter,
            ),
            lambda page: pb.ListInvoicesResponse(invoices=map(cv.invoice_pb, page[0]), next_page_token=page[1]),
        ),
    ],
)  # fmt: skip


class SubscriptionServicer:
    """Implements billing.v1.SubscriptionService: one handler per entry of :data:`SUBSCRIPTIONS`.

    Args:
        deps: Ports for the use cases.
        idempotency: Runs mutating requests at most once per request_id.
        store_serving: False while health finds the store down (calls then fail at once).
    """

    def __init__(self, deps: Deps, idempotency: Idempotency, store_serving: Callable[[], bool] = lambda: True) -> None:
        Runner(deps, idempotency, store_serving).bind(self, SUBSCRIPTIONS)
