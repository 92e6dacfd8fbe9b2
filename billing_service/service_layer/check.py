"""``reconcile --check``: compare every record with its processor, changing nothing.

Unlike a reconciliation pass this visits the whole book (an operator's explicit request):
every payment, refund and subscription with a processor id is re-read, and every one
without (PENDING, or final after an attempt that may have reached the processor) is looked
up by our id. Nothing is written: differences are reported (and counted as drift found).

Known limits: invoices, disputes and refunds made outside the service are not compared
(reconciliation picks those up from the processors' events); PayPal's payment read
completes an order its buyer approved (the adapter's convergence rule), so on PayPal a
check can capture an approved order, which is what any read of it would do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from billing_service.domain.errors import BillingError
from billing_service.domain.payments import Payment, PaymentStatus, Refund, RefundStatus
from billing_service.domain.subscriptions import Subscription
from billing_service.service_layer.core import Deps, Drift, report_drift
from billing_service.service_layer.lookups import lookup_payment, lookup_refund
from billing_service.service_layer.ports import E, LookupOutcome

log = logging.getLogger(__name__)

# A PENDING record younger than this may still be in its request's hands: not drift yet.
_YOUNG = timedelta(minutes=2)


@dataclass
class CheckReport:
    """What a check compared and found.

    Attributes:
        drift: Records that differ from their processor (none was changed).
        unknown: (id, reason) of records the processor could not settle yet.
    """

    checked: dict[str, int] = field(default_factory=dict)
    drift: list[Drift] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)
    errors: int = 0


async def _all(deps: Deps, kind: type[E], filters: Mapping[str, Any]) -> AsyncIterator[E]:
    cursor: str | None = None
    while True:
        listed = await deps.store.list_page(kind, filters, limit=200, after=cursor)
        for item in listed.items:
            yield item
        if not listed.next_cursor:
            return
        cursor = listed.next_cursor


def _payment_view(status: PaymentStatus, captured: int, capturable: int) -> str:
    if status is PaymentStatus.REQUIRES_CAPTURE:
        return f"{status.value} (capturable {capturable})"
    return f"{status.value} (captured {captured})" if captured else status.value


class _Check:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.now = deps.clock.now()
        self.report = CheckReport()

    def differs(self, resource: str, resource_id: str, ours: str, theirs: str) -> None:
        drift = Drift(resource, resource_id, ours, theirs, repaired=False)
        self.report.drift.append(drift)
        report_drift(self.deps, drift)

    async def payment(self, payment: Payment) -> None:
        ours = _payment_view(payment.status, payment.amount_captured, payment.amount_capturable)
        if payment.processor_id:
            state = await self.deps.processor(payment.processor).get_payment(payment.processor_id)
            theirs = _payment_view(state.status, state.amount_captured, state.amount_capturable)
            if theirs != ours:
                self.differs("payment", payment.id, ours, theirs)
            return
        if payment.status is PaymentStatus.PENDING and self.now - payment.created_at < _YOUNG:
            return
        found = await lookup_payment(self.deps, payment, quiet_since=self.now)
        if found.outcome is LookupOutcome.UNKNOWN:
            self.report.unknown.append((payment.id, "the processor cannot tell yet"))
        elif found.outcome is LookupOutcome.FOUND and found.state is not None:
            if found.state.status is not payment.status:
                self.differs("payment", payment.id, f"{ours} (no processor id)", found.state.status.value)
        elif payment.status is PaymentStatus.PENDING:
            self.differs("payment", payment.id, ours, "absent")

    async def refund(self, refund: Refund) -> None:
        if refund.processor_id:
            state = await self.deps.processor(refund.processor).get_refund(refund.processor_id)
            if state.status is not refund.status:
                self.differs("refund", refund.id, refund.status.value, state.status.value)
            return
        if refund.status is RefundStatus.PENDING and self.now - refund.created_at < _YOUNG:
            return
        payment = await self.deps.store.get(Payment, refund.payment_id)
        if payment is None:
            return
        found = await lookup_refund(self.deps, refund, payment, quiet_since=self.now)
        if found.outcome is LookupOutcome.UNKNOWN:
            self.report.unknown.append((refund.id, "the processor cannot tell yet"))
        elif found.outcome is LookupOutcome.FOUND and found.state is not None:
            if found.state.status is not refund.status:
                theirs = found.state.status.value
                self.differs("refund", refund.id, f"{refund.status.value} (no processor id)", theirs)
        elif refund.status is RefundStatus.PENDING:
            self.differs("refund", refund.id, "pending", "absent")

    async def subscription(self, sub: Subscription) -> None:
        if not sub.processor_id:
            return
        state = await self.deps.processor(sub.processor).get_subscription(sub.processor_id)
        ours = (sub.status.value, sub.current_period_end, sub.cancel_at_period_end)
        theirs = (state.status.value, state.current_period_end, state.cancel_at_period_end)
        if ours != theirs:
            self.differs("subscription", sub.id, _subscription_view(*ours), _subscription_view(*theirs))

    async def visit(self, kind: str, item: Any, work: Any) -> None:
        self.report.checked[kind] = self.report.checked.get(kind, 0) + 1
        try:
            await work(item)
        except BillingError as exc:
            self.report.errors += 1
            log.warning("check failed", extra={"kind": kind, "resource_id": item.id, "reason": exc.reason})


def _subscription_view(status: str, period_end: Any, at_period_end: bool) -> str:
    end = period_end.isoformat() if period_end is not None else "-"
    return f"{status} until {end}" + (" (cancels at period end)" if at_period_end else "")


async def check_all(deps: Deps) -> CheckReport:
    """Compares every payment, refund and subscription with its processor; writes nothing."""
    check = _Check(deps)
    async for payment in _all(deps, Payment, {}):
        await check.visit("payment", payment, check.payment)
    async for refund in _all(deps, Refund, {}):
        await check.visit("refund", refund, check.refund)
    async for sub in _all(deps, Subscription, {}):
        await check.visit("subscription", sub, check.subscription)
    return check.report
