"""Reconciliation: converge what may still change on its processor's truth, a bounded slice per pass.

It covers webhooks that never arrived and requests whose caller never retried. A pass
works through sweeps, each an indexed query resumed from a cursor kept between passes
and cut off after ``budget`` records, so its cost does not grow with the book:

* payments not final: re-read by processor id; a PENDING one without a processor id
  (older than ``stale_after``) is resumed with its creating request's keys while the
  processor still remembers them, and settled by a lookup by our id after that, always
  while holding that request's idempotency record so no retry of it can run meanwhile;
* refunds PENDING: the same;
* payments and refunds due for a lookup (``lookup_after``): final records without a
  processor id whose attempt may have reached the processor (a refusal we could not
  trust, a cancel that raced its create) are looked up once by our id;
* subscriptions: those whose period has ended first (a renewal is due), then a rotating
  slice of the others;
* processor events since the last pass (``event_feed``: the event lists of the processors
  the composition root chose, through their adapters' ``list_events``, into the webhook
  inbox, deduplicated by event id), which is how disputes and refunds made in a processor
  dashboard reach us when their webhooks were lost; its cost follows the processors'
  activity since the last pass.

Every record found to differ from its processor is reported as drift (``core.report_drift``,
counted in ``billing_drift_total``); each repair is an audit event by caller ``reconciler``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from billing_service.domain.common import AuditEvent, RequestOrigin
from billing_service.domain.errors import BillingError
from billing_service.domain.payments import FINAL_PAYMENT_STATUSES, Payment, PaymentStatus, Refund, RefundStatus
from billing_service.domain.subscriptions import Subscription, SubscriptionStatus
from billing_service.service_layer import payments, subscriptions
from billing_service.service_layer.core import Deps, Drift, commit_with_retry, load, report_drift
from billing_service.service_layer.idempotency import Hold, RequestContext, context_of, hold_request, is_final
from billing_service.service_layer.lookups import (
    lookup_payment,
    lookup_refund,
    payment_origin,
    quiet_after_deadline,
    refund_origin,
    resend_deadline,
)
from billing_service.service_layer.payment_state import record_payment_state
from billing_service.service_layer.ports import Change, E, Leases, LookupOutcome, Update

log = logging.getLogger(__name__)

LEASE_NAME = "reconciler"
CALLER = "reconciler"
#: Records looked at per sweep and pass (None: everything, as the one-off command does).
DEFAULT_BUDGET = 200
#: The first events sweep looks back this far; later ones start where the last pass began.
FIRST_EVENTS_LOOKBACK = timedelta(days=1)
EVENTS_OVERLAP = timedelta(minutes=5)
_PAGE = 100

EventFeed = Callable[[datetime], Awaitable[int]]


@dataclass
class ReconcileReport:
    """What one pass looked at, repaired, and left for later.

    Attributes:
        waiting: Records left for a later pass: their request is still executing, or the
            processor cannot prove absence yet.
        drift: Records found to differ from their processor (repaired or not).
        cursors: Where each sweep stopped; the next pass resumes there.
        more: Some sweep stopped at its budget.
    """

    checked: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    drift: list[Drift] = field(default_factory=list)
    errors: int = 0
    events: int = 0
    skipped: bool = False
    more: bool = False
    cursors: dict[str, str] = field(default_factory=dict)

    def count(self, table: dict[str, int], kind: str) -> None:
        """Adds one to ``table[kind]``."""
        table[kind] = table.get(kind, 0) + 1


class _Pass:
    """One reconciliation pass (see the module docstring)."""

    def __init__(
        self,
        deps: Deps,
        *,
        budget: int | None,
        stale_after: timedelta,
        cursors: Mapping[str, str],
        on_error: Callable[[str, BaseException], None] | None,
    ) -> None:
        self.deps = deps
        self.budget = budget
        self.stale_after = stale_after
        self.on_error = on_error
        self.now = deps.clock.now()
        run = f"reconcile-{self.now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
        self.ctx = RequestContext(CALLER, "reconcile", run, "")
        self.report = ReconcileReport(cursors=dict(cursors))

    # -- plumbing ---------------------------------------------------------------------

    async def sweep(
        self, name: str, kind: type[E], filters: Mapping[str, Any], work: Callable[[E], Awaitable[str]]
    ) -> None:
        """Runs ``work`` on up to ``budget`` records from the sweep's cursor, wrapping around."""
        cursor: str | None = self.report.cursors.get(name) or None
        done = 0
        while self.budget is None or done < self.budget:
            limit = _PAGE if self.budget is None else max(1, min(_PAGE, self.budget - done))
            page = await self.deps.store.list_page(kind, filters, limit=limit, after=cursor)
            for item in page.items:
                await self.attempt(kind.__name__.lower(), item, work)
                done += 1
            cursor = page.next_cursor or None
            if cursor is None:
                break
        self.report.cursors[name] = cursor or ""
        self.report.more = self.report.more or cursor is not None

    async def attempt(self, kind: str, item: Any, work: Callable[[Any], Awaitable[str]]) -> None:
        """Runs one record's work; outcomes: "", "repaired", "resumed", "waiting"."""
        self.report.count(self.report.checked, kind)
        try:
            outcome = await work(item)
        except Exception as exc:  # one bad record must not stop the pass
            self.report.errors += 1
            reason = getattr(exc, "reason", type(exc).__name__)
            log.warning("reconcile failed", extra={"kind": kind, "resource_id": item.id, "reason": reason})
            if self.on_error:
                self.on_error(item.id, exc)
            return
        if outcome in ("repaired", "resumed"):
            self.report.count(self.report.repaired, kind)
        elif outcome == "waiting":
            self.report.count(self.report.waiting, kind)

    def hold(self, origin: RequestOrigin) -> AbstractAsyncContextManager[Hold]:
        """Holds a creating request's idempotency record (see ``idempotency.hold_request``)."""
        return hold_request(self.deps.store, self.deps.clock, origin, lease_seconds=self.deps.lease_seconds)

    async def settled_by_refusal(self, kind: type[Payment] | type[Refund], entity_id: str, exc: BillingError) -> bool:
        """True when ``exc`` is a final refusal already recorded on the resumed record.

        Resuming a payment or refund records a final refusal (a decline, a refund the processor
        refuses) as FAILED, then raises it as the creating request's answer: for the pass the
        record is settled, not a failure.
        """
        if not is_final(exc):
            return False
        entity = await self.deps.store.get(kind, entity_id)  # type: ignore[type-var]
        return entity is not None and entity.status.value != "pending"

    def drift(self, resource: str, resource_id: str, ours: str, theirs: str, *, reported: bool = False) -> str:
        """Records a repaired drift (and reports it unless the use case already did)."""
        found = Drift(resource, resource_id, ours, theirs, repaired=True)
        self.report.drift.append(found)
        if not reported:
            report_drift(self.deps, found)
        return "repaired"

    # -- payments -----------------------------------------------------------------------

    async def payment(self, payment: Payment) -> str:
        before = (payment.status, payment.amount_captured, payment.amount_capturable, payment.processor_id)
        if payment.processor_id:
            after = await payments.refresh_payment(self.deps, self.ctx, payment.id)
            now = (after.status, after.amount_captured, after.amount_capturable, after.processor_id)
            return self.drift("payment", payment.id, before[0].value, after.status.value) if now != before else ""
        if self.now - payment.updated_at < self.stale_after:
            return ""  # its request may still be running or retried by its caller
        origin = await payment_origin(self.deps, payment)
        if origin is None:
            return "waiting"
        async with hold_request(
            self.deps.store, self.deps.clock, origin, lease_seconds=self.deps.lease_seconds
        ) as hold:
            if not hold.quiet:
                return "waiting"  # its request is executing right now
            payment = await load(self.deps, Payment, payment.id, resource="payment", field_path="payment_id")
            if payment.status is not PaymentStatus.PENDING or payment.processor_id:
                return ""
            adapter = self.deps.processor(payment.processor)
            if self.now <= resend_deadline(adapter, payment.created_at):
                try:
                    after = await payments.resume_payment(self.deps, context_of(origin, payment.id), payment.id)
                except BillingError as exc:
                    if not await self.settled_by_refusal(Payment, payment.id, exc):
                        raise
                    return "resumed"
                return "resumed" if after.status is not PaymentStatus.PENDING else ""
            quiet = quiet_after_deadline(adapter, payment.created_at)
            if self.now < quiet:
                return "waiting"
            outcome, after = await payments.settle_unsent_payment(self.deps, self.ctx, payment, quiet_since=quiet)
            if outcome is LookupOutcome.UNKNOWN:
                return "waiting"
            theirs = after.status.value if outcome is LookupOutcome.FOUND else "absent"
            return self.drift("payment", payment.id, "pending", theirs)

    async def payment_lookup_due(self, payment: Payment) -> str:
        """A record with ``lookup_after`` due: verify once what the processor did."""
        before = (payment.status, payment.processor_id)
        if payment.processor_id:
            state = await self.deps.processor(payment.processor).get_payment(payment.processor_id)
        else:
            assert payment.lookup_after is not None
            found = await lookup_payment(self.deps, payment, quiet_since=payment.lookup_after)
            if found.outcome is not LookupOutcome.FOUND or found.state is None:
                return await self._not_found(Payment, payment.id, found.outcome, found.retry_after)
            state = found.state
        action = f"payment.{state.status.value}"
        after = await record_payment_state(self.deps, self.ctx, payment.id, state, action)
        if after.status != before[0]:
            # record_payment_state reported the contradiction itself.
            return self.drift("payment", payment.id, before[0].value, after.status.value, reported=True)
        return ""

    async def _not_found(
        self, kind: type[Payment] | type[Refund], entity_id: str, outcome: LookupOutcome, retry_after: datetime | None
    ) -> str:
        """Clears ``lookup_after`` (absence proven) or moves it later (not known yet)."""
        when = None
        if outcome is LookupOutcome.UNKNOWN:
            when = retry_after or self.now + timedelta(hours=1)

        async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
            entity: Payment | Refund | None = await self.deps.store.get(kind, entity_id)  # type: ignore[type-var]
            if entity is None or entity.lookup_after == when:
                return None
            entity.lookup_after = when
            return [Update(entity, bookkeeping=True)], []

        await commit_with_retry(self.deps, attempt)
        return "waiting" if when is not None else ""

    # -- refunds ------------------------------------------------------------------------

    async def refund(self, refund: Refund) -> str:
        if refund.processor_id:
            after = await payments.refresh_refund(self.deps, self.ctx, refund.id)
            if after.status is refund.status:
                return ""
            return self.drift("refund", refund.id, refund.status.value, after.status.value)
        if self.now - refund.updated_at < self.stale_after:
            return ""
        origin = await refund_origin(self.deps, refund)
        if origin is None:
            return "waiting"
        async with hold_request(
            self.deps.store, self.deps.clock, origin, lease_seconds=self.deps.lease_seconds
        ) as hold:
            if not hold.quiet:
                return "waiting"
            refund = await load(self.deps, Refund, refund.id, resource="refund", field_path="refund_id")
            if refund.status is not RefundStatus.PENDING or refund.processor_id:
                return ""
            adapter = self.deps.processor(refund.processor)
            if self.now <= resend_deadline(adapter, refund.created_at):
                try:
                    after = await payments.send_refund(self.deps, context_of(origin, refund.id), refund)
                except BillingError as exc:
                    if not await self.settled_by_refusal(Refund, refund.id, exc):
                        raise
                    return "resumed"
                return "resumed" if after.processor_id or after.status is not RefundStatus.PENDING else ""
            quiet = quiet_after_deadline(adapter, refund.created_at)
            if self.now < quiet:
                return "waiting"
            outcome, after = await payments.settle_unsent_refund(self.deps, self.ctx, refund, quiet_since=quiet)
            if outcome is LookupOutcome.UNKNOWN:
                return "waiting"
            theirs = after.status.value if outcome is LookupOutcome.FOUND else "absent"
            return self.drift("refund", refund.id, "pending", theirs)

    async def refund_lookup_due(self, refund: Refund) -> str:
        assert refund.lookup_after is not None
        payment = await load(self.deps, Payment, refund.payment_id, resource="payment", field_path="payment_id")
        found = await lookup_refund(self.deps, refund, payment, quiet_since=refund.lookup_after)
        if found.outcome is not LookupOutcome.FOUND or found.state is None:
            return await self._not_found(Refund, refund.id, found.outcome, found.retry_after)
        after = await payments.record_refund_state(self.deps, self.ctx, refund.id, found.state)
        if after.status is not refund.status:
            return self.drift("refund", refund.id, refund.status.value, after.status.value, reported=True)
        return ""

    # -- subscriptions --------------------------------------------------------------------

    async def subscription(self, sub: Subscription) -> str:
        before = (sub.status, sub.current_period_end, sub.cancel_at_period_end)
        after = await subscriptions.sync_subscription(self.deps, self.ctx, sub.id)
        if (after.status, after.current_period_end, after.cancel_at_period_end) == before:
            return ""
        return self.drift("subscription", sub.id, sub.status.value, after.status.value)

    # -- the pass ---------------------------------------------------------------------------

    async def run(self, event_feed: EventFeed | None) -> ReconcileReport:
        due = {"$lte": self.now}
        for status in PaymentStatus:
            if status not in FINAL_PAYMENT_STATUSES:
                await self.sweep(f"payments:{status.value}", Payment, {"status": status.value}, self.payment)
        await self.sweep("payments:lookup", Payment, {"lookup_after": due}, self.payment_lookup_due)
        await self.sweep("refunds:pending", Refund, {"status": RefundStatus.PENDING.value}, self.refund)
        await self.sweep("refunds:lookup", Refund, {"lookup_after": due}, self.refund_lookup_due)
        for sub_status in SubscriptionStatus:
            if sub_status is SubscriptionStatus.CANCELED:
                continue
            renewal_due = {"status": sub_status.value, "current_period_end": due}
            await self.sweep(f"subscriptions:due:{sub_status.value}", Subscription, renewal_due, self.subscription)
            filters = {"status": sub_status.value}
            await self.sweep(f"subscriptions:{sub_status.value}", Subscription, filters, self.subscription)
        if event_feed is not None:
            await self.events(event_feed)
        return self.report

    async def events(self, event_feed: EventFeed) -> None:
        raw = self.report.cursors.get("events")
        since = datetime.fromisoformat(raw) if raw else self.now - FIRST_EVENTS_LOOKBACK
        try:
            self.report.events = await event_feed(since)
        except Exception as exc:
            self.report.errors += 1
            log.warning("reconcile events sweep failed", extra={"reason": getattr(exc, "reason", type(exc).__name__)})
            return
        self.report.cursors["events"] = (self.now - EVENTS_OVERLAP).isoformat()


async def reconcile_once(
    deps: Deps,
    *,
    stale_after: timedelta = timedelta(minutes=2),
    budget: int | None = None,
    cursors: Mapping[str, str] | None = None,
    event_feed: EventFeed | None = None,
    on_error: Callable[[str, BaseException], None] | None = None,
) -> ReconcileReport:
    """Runs one reconciliation pass (see the module docstring).

    Args:
        deps: Ports.
        stale_after: A PENDING record younger than this may still be in its request's hands.
        budget: Records per sweep; None visits everything (the one-off command).
        cursors: Where the previous pass stopped (``ReconcileReport.cursors``).
        event_feed: Feeds processor events since a time into the webhook inbox; returns
            how many it inserted.
        on_error: Called for each resource that could not be reconciled (the pass goes on).
    """
    run = _Pass(deps, budget=budget, stale_after=stale_after, cursors=cursors or {}, on_error=on_error)
    return await run.run(event_feed)


async def reconcile_with_lease(
    deps: Deps,
    leases: Leases,
    *,
    owner: str,
    lease_seconds: float = 300.0,
    stale_after: timedelta = timedelta(minutes=2),
    budget: int | None = DEFAULT_BUDGET,
    event_feed: EventFeed | None = None,
) -> ReconcileReport:
    """Runs one bounded pass if this replica holds the reconciler lease; otherwise reports skipped.

    The sweeps' cursors are kept with the lease, so the next pass (on any replica) resumes
    where this one stopped; they are saved only while the lease is still ours.
    """
    if not await leases.acquire(LEASE_NAME, owner, now=deps.clock.now(), ttl_seconds=lease_seconds):
        return ReconcileReport(skipped=True)
    cursors = await leases.load_state(LEASE_NAME)
    report = await reconcile_once(deps, stale_after=stale_after, budget=budget, cursors=cursors, event_feed=event_feed)
    await leases.save_state(LEASE_NAME, owner, report.cursors)
    return report
