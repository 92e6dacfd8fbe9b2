"""Reconciliation: converge every resource that may still change on its processor's truth.

It covers webhooks that never arrived and requests whose caller never retried: payments,
refunds and subscriptions that are not final are re-read from their processor; a PENDING
payment that never reached its processor is resumed with the very idempotency key of the
request that created it. Each repair is an audit event (caller ``reconciler``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from billing_service.domain.errors import BillingError
from billing_service.domain.payments import FINAL_PAYMENT_STATUSES, Payment, PaymentStatus, Refund, RefundStatus
from billing_service.domain.subscriptions import Subscription, SubscriptionStatus
from billing_service.service_layer import payments as pay
from billing_service.service_layer import subscriptions as su
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import E

log = logging.getLogger(__name__)

LEASE_NAME = "reconciler"
CALLER = "reconciler"


class Leases(Protocol):
    """A named lease so one replica at a time reconciles."""

    async def acquire(self, name: str, owner: str, *, now: Any, ttl_seconds: float) -> bool:
        """Takes or renews the lease; False while another owner holds it."""
        ...

    async def release(self, name: str, owner: str) -> None:
        """Gives the lease up."""
        ...


@dataclass
class ReconcileReport:
    """What one pass looked at and repaired."""

    checked: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    skipped: bool = False

    def count(self, table: dict[str, int], kind: str) -> None:
        """Adds one to ``table[kind]``."""
        table[kind] = table.get(kind, 0) + 1


async def _all(deps: Deps, kind: type[E], filters: Mapping[str, Any], *, page: int = 200) -> AsyncIterator[E]:
    cursor: str | None = None
    while True:
        listed = await deps.store.list_page(kind, filters, limit=page, after=cursor)
        for item in listed.items:
            yield item
        if not listed.next_cursor:
            return
        cursor = listed.next_cursor


async def _creation_context(deps: Deps, payment: Payment) -> RequestContext | None:
    """Rebuilds the context of the request that created ``payment`` from its audit trail."""
    trail = await deps.store.list_audit_events(payment.id, limit=1, after=None)
    created = next((e for e in trail.items if e.action == "payment.created"), None)
    if created is None:
        return None
    return RequestContext(created.caller, "/billing.v1.BillingService/CreatePayment", created.request_id, payment.id)


async def reconcile_once(
    deps: Deps,
    *,
    stale_after: timedelta = timedelta(minutes=2),
    on_error: Callable[[str, BaseException], None] | None = None,
) -> ReconcileReport:
    """Runs one reconciliation pass over everything not final.

    Args:
        deps: Ports.
        stale_after: A PENDING payment younger than this may still be in its request's hands.
        on_error: Called for each resource that could not be reconciled (the pass goes on).
    """
    report = ReconcileReport()
    run = f"reconcile-{deps.clock.now():%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
    ctx = RequestContext(CALLER, "reconcile", run, "")

    async def attempt(kind: str, resource_id: str, work: Any) -> None:
        report.count(report.checked, kind)
        try:
            if await work:
                report.count(report.repaired, kind)
        except BillingError as exc:
            report.errors += 1
            log.warning("reconcile failed", extra={"kind": kind, "resource_id": resource_id, "reason": exc.reason})
            if on_error:
                on_error(resource_id, exc)

    async def payment_work(payment: Payment) -> bool:
        before = (payment.status, payment.amount_captured, payment.amount_capturable)
        if payment.processor_id:
            after = await pay.refresh_payment(deps, ctx, payment.id)
        else:
            if deps.clock.now() - payment.updated_at < stale_after:
                return False
            origin = await _creation_context(deps, payment)
            if origin is None:
                return False
            after = await pay.resume_payment(deps, origin, payment.id)
        return (after.status, after.amount_captured, after.amount_capturable) != before

    for status in PaymentStatus:
        if status in FINAL_PAYMENT_STATUSES:
            continue
        async for payment in _all(deps, Payment, {"status": status.value}):
            await attempt("payment", payment.id, payment_work(payment))

    async def refund_work(refund: Refund) -> bool:
        after = await pay.refresh_refund(deps, ctx, refund.id)
        return after.status is not RefundStatus.PENDING

    async for refund in _all(deps, Refund, {"status": RefundStatus.PENDING.value}):
        await attempt("refund", refund.id, refund_work(refund))

    async def subscription_work(sub: Subscription) -> bool:
        before = (sub.status, sub.current_period_end, sub.cancel_at_period_end)
        after = await su.sync_subscription(deps, ctx, sub.id)
        return (after.status, after.current_period_end, after.cancel_at_period_end) != before

    for sub_status in SubscriptionStatus:
        if sub_status is SubscriptionStatus.CANCELED:
            continue
        async for sub in _all(deps, Subscription, {"status": sub_status.value}):
            await attempt("subscription", sub.id, subscription_work(sub))
    return report


async def reconcile_with_lease(
    deps: Deps,
    leases: Leases,
    *,
    owner: str,
    lease_seconds: float = 300.0,
    stale_after: timedelta = timedelta(minutes=2),
) -> ReconcileReport:
    """Runs one pass if this replica holds the reconciler lease; otherwise reports skipped."""
    if not await leases.acquire(LEASE_NAME, owner, now=deps.clock.now(), ttl_seconds=lease_seconds):
        return ReconcileReport(skipped=True)
    return await reconcile_once(deps, stale_after=stale_after)
