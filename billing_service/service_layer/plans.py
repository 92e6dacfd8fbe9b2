"""Use cases for plans: recurring prices, mirrored at a processor when first subscribed there."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

from billing_service.domain.common import AuditEvent, Processor, validate_metadata, validate_text
from billing_service.domain.money import Money
from billing_service.domain.subscriptions import Interval, Plan, PlanStatus
from billing_service.service_layer.core import Deps, audit, commit, commit_with_retry, list_page, load
from billing_service.service_layer.customers import MAX_DESCRIPTION, MAX_NAME
from billing_service.service_layer.executions import unwritten
from billing_service.service_layer.filtering import FilterSpec, created, merge_filters
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import Change, Insert, Update


@dataclass(frozen=True)
class CreatePlan:
    """Command: define a recurring price."""

    name: str
    description: str
    price: Money
    interval: Interval
    interval_count: int
    trial_period_days: int
    metadata: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Raises InvalidArgument naming the first bad field."""
        validate_text(self.name, "name", max_len=MAX_NAME, required=True)
        validate_text(self.description, "description", max_len=MAX_DESCRIPTION)
        Plan.validate_schedule(self.interval, self.interval_count, self.trial_period_days)
        validate_metadata(self.metadata)


def new_plan(deps: Deps, cmd: CreatePlan, plan_id: str) -> Plan:
    """The ACTIVE plan ``create_plan`` stores (also its ``validate_only`` preview)."""
    now = deps.clock.now()
    return Plan(
        id=plan_id,
        name=cmd.name,
        description=cmd.description,
        price=cmd.price,
        interval=cmd.interval,
        interval_count=cmd.interval_count,
        trial_period_days=cmd.trial_period_days,
        status=PlanStatus.ACTIVE,
        metadata=dict(cmd.metadata),
        created_at=now,
        updated_at=now,
    )


async def create_plan(deps: Deps, ctx: RequestContext, cmd: CreatePlan) -> Plan:
    """Stores a plan; it is mirrored at a processor when first subscribed there."""
    # A fresh execution's resource id is stored nowhere yet: nothing to resume.
    existing = None if unwritten(ctx.resource_id) else await deps.store.get(Plan, ctx.resource_id)
    if existing is not None:
        return existing
    plan = new_plan(deps, cmd, ctx.resource_id)
    event = audit(
        deps, ctx, "plan.created", "plan", plan.id, "", plan.status.value,
        amount_minor=plan.price.amount_minor, currency=plan.price.currency,
    )  # fmt: skip
    await commit(deps, [Insert(plan)], [event], answer=plan)
    return plan


async def get_plan(deps: Deps, plan_id: str) -> Plan:
    """Returns one plan."""
    return await load(deps, Plan, plan_id, resource="plan", field_path="plan_id")


PLAN_FILTERS = FilterSpec({"create_time": created()})


async def list_plans(
    deps: Deps, *, include_archived: bool, page_size: int, page_token: str, filter_expr: str = ""
) -> tuple[list[Plan], str]:
    """Lists plans newest first (active only unless asked), optionally filtered (PLAN_FILTERS)."""
    filters = {} if include_archived else {"status": PlanStatus.ACTIVE.value}
    filters = merge_filters(filters, filter_expr, PLAN_FILTERS)
    return await list_page(deps, Plan, filters, requested_size=page_size, token=page_token)


async def archive_plan(deps: Deps, ctx: RequestContext, plan_id: str) -> Plan:
    """Archives a plan here and at every processor that mirrors it."""
    plan = await load(deps, Plan, plan_id, resource="plan", field_path="plan_id")
    if ctx.attempt > 1 and plan.status is PlanStatus.ARCHIVED:
        return plan
    first = [copy.deepcopy(plan)]  # the first attempt starts from the plan as read
    plan.archive(deps.clock.now())  # validates before touching processors
    for processor in [p for p in Processor if p.value in plan.processor_refs]:
        await deps.processor(processor).archive_plan(
            plan, idempotency_key=ctx.processor_key(f"archive-{processor.value}")
        )
    result: list[Plan] = []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]]:
        fresh = first.pop() if first else await load(deps, Plan, plan_id, resource="plan", field_path="plan_id")
        before, after = fresh.archive(deps.clock.now())
        result[:] = [fresh]
        return [Update(fresh)], [audit(deps, ctx, "plan.archived", "plan", fresh.id, before, after)]

    await commit_with_retry(deps, attempt, answer=lambda: result[0])
    return result[0]


async def ensure_processor_plan(deps: Deps, plan: Plan, processor: Processor, *, ctx: RequestContext) -> Plan:
    """Mirrors the plan at ``processor`` on first use; returns it with the refs set (audited as ``ctx``)."""
    if plan.processor_refs.get(processor.value):
        return plan
    refs = await deps.processor(processor).create_plan(
        plan, idempotency_key=f"billing-plan-{plan.id}-{processor.value}"
    )
    result: list[Plan] = []
    first = [copy.deepcopy(plan)]  # the first attempt starts from the plan as the caller read it

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        fresh = first.pop() if first else await load(deps, Plan, plan.id, resource="plan", field_path="plan_id")
        result[:] = [fresh]
        if fresh.processor_refs.get(processor.value):
            return None
        fresh.processor_refs.update(refs)
        fresh.updated_at = deps.clock.now()
        status = fresh.status.value
        linked = audit(deps, ctx, "plan.processor_linked", "plan", fresh.id, status, status, processor=processor.value)
        return [Update(fresh)], [linked]

    await commit_with_retry(deps, attempt)
    return result[0]
