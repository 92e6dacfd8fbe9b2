"""Use cases for subscriptions and (mirrored) invoices (plans: ``plans``).

A subscription's status, period, plan and quantity are the processor's: they are written
only from what the processor reports (its answer to our call, a re-read, a webhook), never
from what a request asked for, so a change the processor has not confirmed (a PayPal
revision waiting for the buyer) or one made in its dashboard ends up in our record exactly
as the processor bills it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from billing_service.domain.common import AuditEvent, Processor, validate_metadata
from billing_service.domain.customers import Customer, PaymentMethod
from billing_service.domain.errors import BillingError, InvalidArgument, RequestInProgress
from billing_service.domain.subscriptions import (
    Invoice,
    InvoiceStatus,
    Plan,
    ProcessorSubscriptionState,
    ProrationBehavior,
    Subscription,
    SubscriptionStatus,
)
from billing_service.service_layer import invoice_mirror
from billing_service.service_layer.core import Deps, audit, commit, commit_with_retry, list_page, load
from billing_service.service_layer.customers import ensure_processor_customer
from billing_service.service_layer.executions import unwritten
from billing_service.service_layer.filtering import FilterField, FilterSpec, created, merge_filters
from billing_service.service_layer.idempotency import RequestContext, hold_request, is_final
from billing_service.service_layer.lookups import lookup_subscription, subscription_origin
from billing_service.service_layer.plans import ensure_processor_plan
from billing_service.service_layer.ports import (
    Change,
    Insert,
    LookupOutcome,
    SubscriptionChange,
    SubscriptionRequest,
    Update,
)

log = logging.getLogger(__name__)

MAX_QUANTITY = 10_000
# The request that creates subscriptions; its context is rebuilt to resume a creation.
CREATE_METHOD = "/billing.v1.SubscriptionService/CreateSubscription"
# A creation whose outcome is unknown is resumed (same processor key) once it is older than
# this, and never after PROCESSOR_KEY_WINDOW: processors forget idempotency keys after 24 h.
RESUME_AFTER = timedelta(minutes=2)
PROCESSOR_KEY_WINDOW = timedelta(hours=23)
# Processor statuses in which a subscription can bill (INCOMPLETE has not, CANCELED will not).
_LIVE_AT_PROCESSOR = frozenset(
    {SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE, SubscriptionStatus.PAUSED}
)


SUBSCRIPTION_FILTERS = FilterSpec(
    {
        "customer_id": FilterField("customer_id"),
        "plan_id": FilterField("plan_id"),
        "status": FilterField("status", enum=SubscriptionStatus, enum_prefix="SUBSCRIPTION_STATUS_"),
        "create_time": created(),
    }
)
INVOICE_FILTERS = FilterSpec(
    {
        "customer_id": FilterField("customer_id"),
        "subscription_id": FilterField("subscription_id"),
        "status": FilterField("status", enum=InvoiceStatus, enum_prefix="INVOICE_STATUS_"),
        "create_time": created(),
    }
)


@dataclass(frozen=True)
class CreateSubscription:
    """Command: subscribe a customer to a plan."""

    customer_id: str
    plan_id: str
    payment_method_id: str
    quantity: int
    trial_period_days: int | None
    metadata: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Raises InvalidArgument naming the first bad field."""
        if not self.customer_id:
            raise InvalidArgument.field("customer_id", "is required")
        if not self.plan_id:
            raise InvalidArgument.field("plan_id", "is required")
        if not 1 <= self.quantity <= MAX_QUANTITY:
            raise InvalidArgument.field("quantity", f"must be between 1 and {MAX_QUANTITY}")
        if self.trial_period_days is not None and not 0 <= self.trial_period_days <= 730:
            raise InvalidArgument.field("trial_period_days", "must be between 0 and 730")
        validate_metadata(self.metadata)


async def plan_for_processor_plan(
    deps: Deps, processor: Processor, processor_plan_id: str, *, known: Plan | None = None
) -> str:
    """Our plan that ``processor`` bills as ``processor_plan_id``, or "" when it is none of ours.

    A price made in a processor's dashboard mirrors no plan of ours: the subscription keeps
    its plan id (and a warning is logged) rather than point at a plan we do not have.
    ``known`` is a plan the request has at hand: when it is the one, nothing is read.
    """
    if not processor_plan_id:
        return ""
    if known is not None and known.processor_refs.get(processor.value) == processor_plan_id:
        return known.id
    plan = await deps.store.find_one(Plan, {f"processor_refs.{processor.value}": processor_plan_id})
    if plan is None:
        log.warning(
            "subscription billed at a price that mirrors none of our plans",
            extra={"processor": processor.value, "processor_plan_id": processor_plan_id},
        )
        return ""
    return plan.id


async def record_subscription_state(
    deps: Deps,
    ctx: RequestContext,
    subscription_id: str,
    state: ProcessorSubscriptionState,
    action: str,
    *,
    known: Subscription | None = None,
    plan: Plan | None = None,
    answers: bool = False,
) -> Subscription:
    """Applies a processor report to the stored subscription and audits the move.

    Never backwards (status or billing period); plan and quantity follow what the processor
    bills. A subscription we ended (refused, or canceled before its processor answered) that
    the processor turns out to hold live is canceled there too.

    Args:
        known: The subscription as this request last read or wrote it: the first attempt
            starts from it instead of reading it again (a stale copy loses the version
            check, and the next attempt reads it).
        plan: A plan the request has at hand (saves reading which plan the processor bills).
        answers: The recorded subscription is the request's answer (stored with the change).
    """
    current = known or await load(
        deps, Subscription, subscription_id, resource="subscription", field_path="subscription_id"
    )
    plan_id = await plan_for_processor_plan(deps, current.processor, state.processor_plan_id, known=plan)
    result: list[Subscription] = []
    first = [copy.deepcopy(current)]

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        sub = (
            first.pop()
            if first
            else await load(deps, Subscription, subscription_id, resource="subscription", field_path="subscription_id")
        )
        result[:] = [sub]
        before = sub.status.value
        processor_id_before = sub.processor_id
        changed = sub.apply_processor_state(state, deps.clock.now(), plan_id=plan_id)
        if not changed and processor_id_before == sub.processor_id:
            return None
        event = audit(
            deps, ctx, action, "subscription", sub.id, before, sub.status.value,
            cancel_at_period_end=sub.cancel_at_period_end, processor_id=sub.processor_id,
            plan_id=sub.plan_id, quantity=sub.quantity,
        )  # fmt: skip
        return [Update(sub)], [event]

    def ends_at_processor(sub: Subscription) -> bool:
        return (
            sub.status is SubscriptionStatus.CANCELED
            and bool(state.processor_id)
            and (state.status in _LIVE_AT_PROCESSOR)
        )

    # Ending it at the processor comes after this commit: then this is not the last word.
    def answer() -> Subscription | None:
        return result[0] if answers and not ends_at_processor(result[0]) else None

    await commit_with_retry(deps, attempt, answer=answer)
    sub = result[0]
    if ends_at_processor(sub):
        return await _end_at_processor(deps, ctx, sub, state.processor_id)
    return sub


async def _end_at_processor(deps: Deps, ctx: RequestContext, sub: Subscription, processor_id: str) -> Subscription:
    """Cancels at the processor a live subscription that our record already ended.

    It happens when a creation we had given up on (refused, or canceled while its outcome
    was unknown) did reach the processor. The processor is read again first, so a stale
    report cannot cancel twice; the key is derived from our id, so retries cancel once.
    """
    adapter = deps.processor(sub.processor)
    fresh = await adapter.get_subscription(processor_id)
    if fresh.status not in _LIVE_AT_PROCESSOR:
        return sub
    log.warning(
        "ending at the processor a subscription our record had already ended",
        extra={"subscription_id": sub.id, "processor_id": processor_id},
    )
    ended = await adapter.cancel_subscription(
        processor_id, at_period_end=False, idempotency_key=f"billing-subscription-{sub.id}-end-orphan"
    )
    return await record_subscription_state(deps, ctx, sub.id, ended, "subscription.canceled")


async def _end_unstarted(
    deps: Deps, ctx: RequestContext, subscription_id: str, action: str, **data: object
) -> Subscription:
    """Ends (CANCELED) a subscription its processor does not hold, with its audit event."""
    result: list[Subscription] = []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        sub = await load(deps, Subscription, subscription_id, resource="subscription", field_path="subscription_id")
        result[:] = [sub]
        if sub.status is SubscriptionStatus.CANCELED:
            return None
        before, after = sub.cancel_unstarted(deps.clock.now())
        return [Update(sub)], [audit(deps, ctx, action, "subscription", sub.id, before, after, **data)]

    await commit_with_retry(deps, attempt)
    return result[0]


# What creating a subscription has just read: its customer, plan and payment method.
_Loaded = tuple[Customer, Plan, PaymentMethod | None]


async def new_subscription(deps: Deps, cmd: CreateSubscription, subscription_id: str) -> tuple[Subscription, _Loaded]:
    """Loads and checks what a new subscription needs; builds it INCOMPLETE, writing nothing.

    ``create_subscription`` records what this returns, and its ``validate_only`` preview
    returns it, so the two cannot check different things.
    """
    customer = await load(deps, Customer, cmd.customer_id, resource="customer", field_path="customer_id")
    plan = await load(deps, Plan, cmd.plan_id, resource="plan", field_path="plan_id")
    plan.ensure_active()
    processor = customer.default_processor
    method: PaymentMethod | None = None
    if cmd.payment_method_id:
        method = await load(
            deps, PaymentMethod, cmd.payment_method_id, resource="payment_method", field_path="payment_method_id"
        )
        if method.customer_id != customer.id:
            raise InvalidArgument.field("payment_method_id", "does not belong to this customer")
        method.ensure_usable()
        processor = method.processor
    deps.processor(processor)  # fail before writing if it is not configured
    now = deps.clock.now()
    trial_days = plan.trial_period_days if cmd.trial_period_days is None else cmd.trial_period_days
    sub = Subscription(
        id=subscription_id,
        customer_id=customer.id,
        plan_id=plan.id,
        payment_method_id=cmd.payment_method_id,
        quantity=cmd.quantity,
        status=SubscriptionStatus.INCOMPLETE,
        processor=processor,
        metadata=dict(cmd.metadata),
        created_at=now,
        updated_at=now,
        trial_end=now + timedelta(days=trial_days) if trial_days else None,
    )
    return sub, (customer, plan, method)


async def create_subscription(deps: Deps, ctx: RequestContext, cmd: CreateSubscription) -> Subscription:
    """Creates the subscription at the payment method's processor and mirrors it."""
    # A fresh execution's resource id is stored nowhere yet: nothing to resume.
    sub = None if unwritten(ctx.resource_id) else await deps.store.get(Subscription, ctx.resource_id)
    loaded: _Loaded | None = None
    if sub is None:
        sub, loaded = await new_subscription(deps, cmd, ctx.resource_id)
        event = audit(
            deps, ctx, "subscription.created", "subscription", sub.id, "", sub.status.value,
            plan_id=sub.plan_id, quantity=sub.quantity, processor=sub.processor.value,
        )  # fmt: skip
        await commit(deps, [Insert(sub)], [event])
    if sub.processor_id or sub.status is SubscriptionStatus.CANCELED:
        return sub  # at the processor already, or ended (refused, canceled) before it got there
    return await _send_to_processor(deps, ctx, sub, loaded=loaded)


async def _send_to_processor(
    deps: Deps, ctx: RequestContext, sub: Subscription, *, loaded: _Loaded | None = None
) -> Subscription:
    """Creates a recorded subscription at its processor under the creating request's key.

    A final refusal ends the subscription (CANCELED, ``subscription.refused``): the processor
    holds nothing, so nothing can bill and no later call has an id to send. A retryable
    failure leaves it INCOMPLETE for the caller's retry (or reconciliation) to resume.
    ``loaded`` is the (customer, plan, method) the creating request has just read; None
    reads them.
    """
    if loaded is not None:
        customer, plan, method = loaded
    else:
        customer = await load(deps, Customer, sub.customer_id, resource="customer", field_path="customer_id")
        plan = await load(deps, Plan, sub.plan_id, resource="plan", field_path="plan_id")
        method = None
        if sub.payment_method_id:
            method = await load(
                deps, PaymentMethod, sub.payment_method_id, resource="payment_method", field_path="payment_method_id"
            )
    plan = await ensure_processor_plan(deps, plan, sub.processor, ctx=ctx)
    processor_customer = await ensure_processor_customer(deps, customer, sub.processor, ctx=ctx)
    method_ref = method.processor_id if method is not None else ""
    request = SubscriptionRequest(
        subscription_id=sub.id,
        processor_customer_id=processor_customer,
        processor_payment_method_id=method_ref,
        plan=plan,
        quantity=sub.quantity,
        trial_end=sub.trial_end,
        metadata=sub.metadata,
    )
    try:
        state = await deps.processor(sub.processor).create_subscription(
            request, idempotency_key=ctx.processor_key("subscription")
        )
    except BillingError as exc:
        if is_final(exc):
            await _end_unstarted(deps, ctx, sub.id, "subscription.refused", reason=exc.reason)
            exc.metadata["subscription_id"] = sub.id
        raise
    sub = await record_subscription_state(
        deps, ctx, sub.id, state, f"subscription.{state.status.value}", known=sub, plan=plan
    )
    await sync_invoices(deps, ctx, sub)
    return sub


async def get_subscription(deps: Deps, subscription_id: str) -> Subscription:
    """Returns one subscription."""
    return await load(deps, Subscription, subscription_id, resource="subscription", field_path="subscription_id")


async def list_subscriptions(
    deps: Deps,
    *,
    customer_id: str,
    status: SubscriptionStatus | None,
    page_size: int,
    page_token: str,
    filter_expr: str = "",
) -> tuple[list[Subscription], str]:
    """Lists subscriptions newest first, by customer and/or status and a filter (SUBSCRIPTION_FILTERS)."""
    filters: dict[str, object] = {}
    if customer_id:
        filters["customer_id"] = customer_id
    if status is not None:
        filters["status"] = status.value
    filters = merge_filters(filters, filter_expr, SUBSCRIPTION_FILTERS)
    return await list_page(deps, Subscription, filters, requested_size=page_size, token=page_token)


@dataclass(frozen=True)
class UpdateSubscription:
    """Command: change plan and/or quantity."""

    subscription_id: str
    plan_id: str
    quantity: int
    proration: ProrationBehavior

    def validate(self) -> None:
        """Raises InvalidArgument naming the first bad field."""
        if not self.subscription_id:
            raise InvalidArgument.field("subscription_id", "is required")
        if not self.plan_id and self.quantity == 0:
            raise InvalidArgument.field("plan_id", "a new plan_id or quantity is required")
        if self.quantity < 0 or self.quantity > MAX_QUANTITY:
            raise InvalidArgument.field("quantity", f"must be between 1 and {MAX_QUANTITY}")


async def update_subscription(deps: Deps, ctx: RequestContext, cmd: UpdateSubscription) -> Subscription:
    """Changes plan and/or quantity at the processor with the caller's proration choice."""
    sub = await get_subscription(deps, cmd.subscription_id)
    sub.ensure_updatable()
    new_plan: Plan | None = None
    if cmd.plan_id and cmd.plan_id != sub.plan_id:
        new_plan = await load(deps, Plan, cmd.plan_id, resource="plan", field_path="plan_id")
        new_plan.ensure_active()
        old_plan = await load(deps, Plan, sub.plan_id, resource="plan", field_path="plan_id")
        if new_plan.price.currency != old_plan.price.currency:
            raise InvalidArgument.field("plan_id", f"must be priced in {old_plan.price.currency} like the current plan")
        new_plan = await ensure_processor_plan(deps, new_plan, sub.processor, ctx=ctx)
    quantity = cmd.quantity if cmd.quantity and cmd.quantity != sub.quantity else None
    if new_plan is None and quantity is None:
        return sub  # nothing to change
    change = SubscriptionChange(plan=new_plan, quantity=quantity, proration=cmd.proration)
    state = await deps.processor(sub.processor).update_subscription(
        sub.processor_id, change, idempotency_key=ctx.processor_key("update")
    )
    # Plan and quantity are what the processor now bills: at once for Stripe and the fake; for
    # PayPal only after the buyer approved the revision (a webhook or a re-read brings it).
    plan_id = await plan_for_processor_plan(deps, sub.processor, state.processor_plan_id, known=new_plan)
    result: list[Subscription] = []

    first = [copy.deepcopy(sub)]  # the first attempt starts from the subscription as read above

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]]:
        fresh = first.pop() if first else await get_subscription(deps, cmd.subscription_id)
        before = fresh.status.value
        old_plan_id, old_quantity = fresh.plan_id, fresh.quantity
        fresh.apply_processor_state(state, deps.clock.now(), plan_id=plan_id)
        fresh.updated_at = deps.clock.now()
        result[:] = [fresh]
        event = audit(
            deps, ctx, "subscription.updated", "subscription", fresh.id, before, fresh.status.value,
            old_plan_id=old_plan_id, plan_id=fresh.plan_id, old_quantity=old_quantity, quantity=fresh.quantity,
            requested_plan_id=new_plan.id if new_plan else "", requested_quantity=quantity or 0,
            proration=cmd.proration.value, pending_approval=bool(fresh.approval_url),
        )  # fmt: skip
        return [Update(fresh)], [event]

    await commit_with_retry(deps, attempt)
    await sync_invoices(deps, ctx, result[0])
    return result[0]


async def cancel_subscription(
    deps: Deps, ctx: RequestContext, subscription_id: str, at_period_end: bool
) -> Subscription:
    """Cancels now or at the end of the current period."""
    sub = await get_subscription(deps, subscription_id)
    if ctx.attempt > 1 and (sub.status is SubscriptionStatus.CANCELED or (at_period_end and sub.cancel_at_period_end)):
        return sub
    sub.ensure_cancelable(at_period_end)
    if sub.at_processor:
        return await _cancel_at_processor(deps, ctx, sub, at_period_end)
    if sub.status is not SubscriptionStatus.INCOMPLETE:  # refused at creation: nothing there
        return await _end_unstarted(deps, ctx, sub.id, "subscription.canceled", at_period_end=at_period_end)
    return await _cancel_unknown_create(deps, ctx, sub, at_period_end)


async def _cancel_at_processor(deps: Deps, ctx: RequestContext, sub: Subscription, at_period_end: bool) -> Subscription:
    state = await deps.processor(sub.processor).cancel_subscription(
        sub.processor_id, at_period_end=at_period_end, idempotency_key=ctx.processor_key("cancel")
    )
    action = "subscription.cancel_scheduled" if at_period_end else "subscription.canceled"
    return await record_subscription_state(deps, ctx, sub.id, state, action, known=sub, answers=True)


async def _cancel_unknown_create(
    deps: Deps, ctx: RequestContext, sub: Subscription, at_period_end: bool
) -> Subscription:
    """Cancels a subscription whose creation has no processor answer (yet, or lost).

    The creating request's idempotency record is held, so no retry of the create can send
    it while we decide (a live create answers this cancel REQUEST_IN_PROGRESS), and the
    processor is asked for a subscription carrying our id. Found: linked, then canceled
    there like any other. Absent (or a processor that cannot list subscriptions: PayPal's
    wait for a buyer's approval and bill nothing meanwhile): ended here, still holding, so
    a later retry of the create finds it CANCELED and never sends it.

    Raises:
        RequestInProgress: The create is still executing.
    """
    origin = await subscription_origin(deps, sub)
    if origin is None:  # no trace of the creating request (cannot happen for records we wrote)
        return await _end_unstarted(deps, ctx, sub.id, "subscription.canceled", at_period_end=at_period_end)
    async with hold_request(deps.store, deps.clock, origin, lease_seconds=deps.lease_seconds) as hold:
        if not hold.quiet:
            raise RequestInProgress(
                f"subscription {sub.id} is still being created; retry the cancel shortly",
                metadata={"subscription_id": sub.id},
            )
        sub = await load(deps, Subscription, sub.id, resource="subscription", field_path="subscription_id")
        if sub.status is SubscriptionStatus.CANCELED:
            return sub
        if not sub.at_processor:
            found = await lookup_subscription(deps, sub, quiet_since=deps.clock.now())
            if found.outcome is not LookupOutcome.FOUND or found.state is None:
                return await _end_unstarted(deps, ctx, sub.id, "subscription.canceled", at_period_end=at_period_end)
            state = found.state
            sub = await record_subscription_state(deps, ctx, sub.id, state, f"subscription.{state.status.value}")
            if sub.status is SubscriptionStatus.CANCELED:
                return sub
        return await _cancel_at_processor(deps, ctx, sub, at_period_end)


async def pause_subscription(deps: Deps, ctx: RequestContext, subscription_id: str) -> Subscription:
    """Pauses collection; no invoices are charged while paused."""
    sub = await get_subscription(deps, subscription_id)
    if ctx.attempt > 1 and sub.status is SubscriptionStatus.PAUSED:
        return sub
    sub.ensure_pausable()
    state = await deps.processor(sub.processor).pause_subscription(
        sub.processor_id, idempotency_key=ctx.processor_key("pause")
    )
    return await record_subscription_state(deps, ctx, sub.id, state, "subscription.paused", known=sub, answers=True)


async def resume_subscription(deps: Deps, ctx: RequestContext, subscription_id: str) -> Subscription:
    """Resumes a paused subscription."""
    sub = await get_subscription(deps, subscription_id)
    if ctx.attempt > 1 and sub.status is not SubscriptionStatus.PAUSED:
        return sub
    sub.ensure_resumable()
    state = await deps.processor(sub.processor).resume_subscription(
        sub.processor_id, idempotency_key=ctx.processor_key("resume")
    )
    return await record_subscription_state(deps, ctx, sub.id, state, "subscription.resumed", known=sub, answers=True)


async def sync_invoices(deps: Deps, ctx: RequestContext, sub: Subscription) -> list[Invoice]:
    """Mirrors the processor's invoices of ``sub`` (see :mod:`invoice_mirror`)."""
    return await invoice_mirror.sync_invoices(deps, ctx, sub)


async def _creation_context(deps: Deps, sub: Subscription) -> RequestContext | None:
    """Rebuilds the context of the request that created ``sub`` from its audit trail."""
    trail = await deps.store.list_audit_events(sub.id, limit=1, after=None)
    created = next((e for e in trail.items if e.action == "subscription.created"), None)
    if created is None:
        return None
    return RequestContext(created.caller, CREATE_METHOD, created.request_id, sub.id)


async def sync_subscription(deps: Deps, ctx: RequestContext, subscription_id: str) -> Subscription:
    """Converges a subscription and its invoices on the processor's truth.

    A subscription that never got its processor id is not sent anywhere with an empty id:
    if its creation's outcome is unknown (the caller never retried), the creation is resumed
    with its original key, which the processor answers with what it did the first time.
    Past the processor's key window the creation is never re-sent: the processor is asked
    for a subscription carrying our id instead; found, it is linked; provably absent, ours
    is ended (nothing was created there); unknown (PayPal cannot list subscriptions), it
    waits.
    """
    sub = await get_subscription(deps, subscription_id)
    if not sub.processor_id:
        age = deps.clock.now() - sub.created_at
        if sub.status is not SubscriptionStatus.INCOMPLETE or age <= RESUME_AFTER:
            return sub
        if age >= PROCESSOR_KEY_WINDOW:
            return await _settle_past_window(deps, ctx, sub)
        origin = await _creation_context(deps, sub)
        return sub if origin is None else await _send_to_processor(deps, origin, sub)
    state = await deps.processor(sub.processor).get_subscription(sub.processor_id)
    sub = await record_subscription_state(deps, ctx, sub.id, state, f"subscription.{state.status.value}", known=sub)
    await sync_invoices(deps, ctx, sub)
    return sub


async def _settle_past_window(deps: Deps, ctx: RequestContext, sub: Subscription) -> Subscription:
    """Settles a subscription whose creation's outcome is unknown past the key window, by a lookup."""
    found = await lookup_subscription(deps, sub, quiet_since=deps.clock.now())
    if found.outcome is LookupOutcome.ABSENT:
        return await _end_unstarted(deps, ctx, sub.id, "subscription.canceled", failure_code="not_found_at_processor")
    if found.outcome is not LookupOutcome.FOUND or found.state is None:
        return sub
    state = found.state
    sub = await record_subscription_state(deps, ctx, sub.id, state, f"subscription.{state.status.value}", known=sub)
    await sync_invoices(deps, ctx, sub)
    return sub


async def get_invoice(deps: Deps, invoice_id: str) -> Invoice:
    """Returns one invoice."""
    return await load(deps, Invoice, invoice_id, resource="invoice", field_path="invoice_id")


async def list_invoices(
    deps: Deps, *, customer_id: str, subscription_id: str, page_size: int, page_token: str, filter_expr: str = ""
) -> tuple[list[Invoice], str]:
    """Lists invoices newest first, by customer and/or subscription and a filter (INVOICE_FILTERS)."""
    filters: dict[str, object] = {}
    if customer_id:
        filters["customer_id"] = customer_id
    if subscription_id:
        filters["subscription_id"] = subscription_id
    filters = merge_filters(filters, filter_expr, INVOICE_FILTERS)
    return await list_page(deps, Invoice, filters, requested_size=page_size, token=page_token)
