"""SubscriptionService: plans, subscriptions and invoices.

One entry per RPC (see :mod:`.runner`); required fields are enforced from the schema's
annotations, so the decoders only convert and run the commands' own validation.
"""

from __future__ import annotations

from collections.abc import Callable

from billing.v1 import subscription_service_pb2

from billing_service.domain.errors import InvalidArgument
from billing_service.entrypoints.grpc_api import convert
from billing_service.entrypoints.grpc_api.runner import Read, Runner, Service, Write
from billing_service.service_layer import plans, previews, subscriptions
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import Idempotency

# -- decoders: request -> validated command ------------------------------------------


def _create_plan(r: subscription_service_pb2.CreatePlanRequest) -> plans.CreatePlan:
    convert.enum_in(r.interval, convert.INTERVAL_FROM_PB, "interval")  # type: ignore[arg-type]
    if r.interval_count < 0:
        raise InvalidArgument.field("interval_count", "must not be negative")
    if r.trial_period_days < 0:
        raise InvalidArgument.field("trial_period_days", "must not be negative")
    price = convert.money_from_pb(r.price, "price", present=r.HasField("price"))
    assert price is not None
    cmd = plans.CreatePlan(
        name=r.name,
        description=r.description,
        price=price,
        interval=convert.INTERVAL_FROM_PB[r.interval],
        interval_count=r.interval_count or 1,
        trial_period_days=r.trial_period_days,
        metadata=dict(r.metadata),
    )
    cmd.validate()
    return cmd


def _create_subscription(r: subscription_service_pb2.CreateSubscriptionRequest) -> subscriptions.CreateSubscription:
    if r.quantity < 0:
        raise InvalidArgument.field("quantity", "must not be negative")
    cmd = subscriptions.CreateSubscription(
        customer_id=r.customer_id,
        plan_id=r.plan_id,
        payment_method_id=r.payment_method_id,
        quantity=r.quantity or 1,
        trial_period_days=r.trial_period_days if r.HasField("trial_period_days") else None,
        metadata=dict(r.metadata),
    )
    cmd.validate()
    return cmd


def _update_subscription(r: subscription_service_pb2.UpdateSubscriptionRequest) -> subscriptions.UpdateSubscription:
    convert.enum_in(r.proration_behavior, convert.PRORATION_FROM_PB, "proration_behavior")  # type: ignore[arg-type]
    cmd = subscriptions.UpdateSubscription(
        subscription_id=r.subscription_id,
        plan_id=r.plan_id,
        quantity=r.quantity,
        proration=convert.PRORATION_FROM_PB[r.proration_behavior],
    )
    cmd.validate()
    return cmd


# -- the RPCs -------------------------------------------------------------------------

SUBSCRIPTIONS = Service(
    subscription_service_pb2.DESCRIPTOR.services_by_name["SubscriptionService"],
    [
        Write(
            "CreatePlan", subscription_service_pb2.CreatePlanRequest, "plans:write", "plan",
            _create_plan, plans.create_plan,
            lambda p: subscription_service_pb2.CreatePlanResponse(plan=convert.plan_pb(p)),
            preview=previews.preview_plan,
        ),
        Read(
            "GetPlan", subscription_service_pb2.GetPlanRequest, "subscriptions:read",
            lambda deps, r: plans.get_plan(deps, r.plan_id),
            lambda p: subscription_service_pb2.GetPlanResponse(plan=convert.plan_pb(p)),
        ),
        Read(
            "ListPlans", subscription_service_pb2.ListPlansRequest, "subscriptions:read",
            lambda deps, r: plans.list_plans(
                deps, include_archived=r.include_archived, page_size=r.page_size, page_token=r.page_token,
                filter_expr=r.filter,
            ),
            lambda page: subscription_service_pb2.ListPlansResponse(
                plans=map(convert.plan_pb, page[0]), next_page_token=page[1]
            ),
        ),
        Write(
            "ArchivePlan", subscription_service_pb2.ArchivePlanRequest, "plans:write", "plan",
            lambda r: r.plan_id, plans.archive_plan,
            lambda p: subscription_service_pb2.ArchivePlanResponse(plan=convert.plan_pb(p)),
        ),
        Write(
            "CreateSubscription", subscription_service_pb2.CreateSubscriptionRequest, "subscriptions:write", "sub",
            _create_subscription, subscriptions.create_subscription,
            lambda s: subscription_service_pb2.CreateSubscriptionResponse(subscription=convert.subscription_pb(s)),
            preview=previews.preview_subscription,
        ),
        Read(
            "GetSubscription", subscription_service_pb2.GetSubscriptionRequest, "subscriptions:read",
            lambda deps, r: subscriptions.get_subscription(deps, r.subscription_id),
            lambda s: subscription_service_pb2.GetSubscriptionResponse(subscription=convert.subscription_pb(s)),
        ),
        Read(
            "ListSubscriptions", subscription_service_pb2.ListSubscriptionsRequest, "subscriptions:read",
            lambda deps, r: subscriptions.list_subscriptions(
                deps, customer_id=r.customer_id, status=convert.subscription_status_filter(r.status),
                page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter,
            ),
            lambda page: subscription_service_pb2.ListSubscriptionsResponse(
                subscriptions=map(convert.subscription_pb, page[0]), next_page_token=page[1]
            ),
        ),
        Write(
            "UpdateSubscription", subscription_service_pb2.UpdateSubscriptionRequest, "subscriptions:write", "sub",
            _update_subscription, subscriptions.update_subscription,
            lambda s: subscription_service_pb2.UpdateSubscriptionResponse(subscription=convert.subscription_pb(s)),
        ),
        Write(
            "CancelSubscription", subscription_service_pb2.CancelSubscriptionRequest, "subscriptions:write", "sub",
            lambda r: (r.subscription_id, r.at_period_end),
            lambda deps, ctx, c: subscriptions.cancel_subscription(deps, ctx, *c),
            lambda s: subscription_service_pb2.CancelSubscriptionResponse(subscription=convert.subscription_pb(s)),
        ),
        Write(
            "PauseSubscription", subscription_service_pb2.PauseSubscriptionRequest, "subscriptions:write", "sub",
            lambda r: r.subscription_id, subscriptions.pause_subscription,
            lambda s: subscription_service_pb2.PauseSubscriptionResponse(subscription=convert.subscription_pb(s)),
        ),
        Write(
            "ResumeSubscription", subscription_service_pb2.ResumeSubscriptionRequest, "subscriptions:write", "sub",
            lambda r: r.subscription_id, subscriptions.resume_subscription,
            lambda s: subscription_service_pb2.ResumeSubscriptionResponse(subscription=convert.subscription_pb(s)),
        ),
        Read(
            "GetInvoice", subscription_service_pb2.GetInvoiceRequest, "subscriptions:read",
            lambda deps, r: subscriptions.get_invoice(deps, r.invoice_id),
            lambda i: subscription_service_pb2.GetInvoiceResponse(invoice=convert.invoice_pb(i)),
        ),
        Read(
            "ListInvoices", subscription_service_pb2.ListInvoicesRequest, "subscriptions:read",
            lambda deps, r: subscriptions.list_invoices(
                deps, customer_id=r.customer_id, subscription_id=r.subscription_id,
                page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter,
            ),
            lambda page: subscription_service_pb2.ListInvoicesResponse(
                invoices=map(convert.invoice_pb, page[0]), next_page_token=page[1]
            ),
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
