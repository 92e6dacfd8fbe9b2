"""The invoice mirror: a subscription's processor invoices, copied into the store.

Invoices are never computed here; each sync reads the processor's invoices of one
subscription and inserts or converges our copies. A status move writes the audit action
``invoice.<status>``; a payment attempt that failed (the processor's attempt count rose
while the invoice stayed unpaid) writes ``invoice.payment_failed`` in the same commit, from
which the outbox derives the ``invoice.payment_failed`` billing event (docs/EVENTS.md).

Exactly one such action per failed attempt the mirror sees, however often the same
processor state is read (a webhook and reconciliation, a redelivered webhook, two
concurrent re-reads): each write is a version-checked read-modify-write whose check is
"the stored count is lower than the processor's", so of two writers reading the same
count only the first commits it; the other re-reads, finds the count recorded, and
writes nothing. The count never moves backwards (``Invoice.apply_processor_state``).
"""

from __future__ import annotations

from collections.abc import Sequence

from billing_service.domain.common import AuditEvent
from billing_service.domain.ids import new_id
from billing_service.domain.subscriptions import Invoice, ProcessorInvoiceState, Subscription
from billing_service.service_layer.core import Deps, audit, commit_with_retry
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import Change, Insert, Update

__all__ = ["PAYMENT_FAILED", "sync_invoices"]

#: The audit action (and billing event type) of a failed payment attempt of an invoice.
PAYMENT_FAILED = "invoice.payment_failed"


def _failed_event(deps: Deps, ctx: RequestContext, invoice: Invoice) -> AuditEvent:
    """The audit event of one failed attempt (status unchanged; decline code, never card data)."""
    failure = invoice.last_failure
    return audit(
        deps, ctx, PAYMENT_FAILED, "invoice", invoice.id, invoice.status.value, invoice.status.value,
        subscription_id=invoice.subscription_id, attempt_count=invoice.attempt_count,
        code=failure.code if failure else "", decline_code=failure.decline_code if failure else "",
    )  # fmt: skip


def _new_invoice(deps: Deps, sub: Subscription, state: ProcessorInvoiceState) -> Invoice:
    """Our copy of an invoice first seen, as it was before any payment attempt failed.

    A processor issues an invoice before it tries to collect it; an invoice first seen with a
    failed attempt (we missed its creation, or the attempt followed at once) is recorded in
    two commits, the invoice and then the attempt, so that every ``invoice.payment_failed``
    event is a change of an existing invoice (``previous_status`` = its status then).
    """
    now = deps.clock.now()
    bare = Invoice.first_seen_failed(state)
    return Invoice(
        id=new_id("in"),
        subscription_id=sub.id,
        customer_id=sub.customer_id,
        processor=sub.processor,
        processor_id=state.processor_id,
        status=state.status,
        amount_due=state.amount_due,
        amount_paid=state.amount_paid,
        period_start=state.period_start,
        period_end=state.period_end,
        lines=list(state.lines),
        created_at=state.created_at or now,
        updated_at=now,
        attempt_count=0 if bare else state.attempt_count,
        next_attempt_time=None if bare else state.next_attempt_at,
    )


async def _mirror_one(deps: Deps, ctx: RequestContext, sub: Subscription, state: ProcessorInvoiceState) -> Invoice:
    """Inserts or converges one invoice; retried on a lost version check or insert race."""
    key = {"processor": sub.processor.value, "processor_id": state.processor_id}
    result: list[Invoice] = []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        result.clear()
        found = await deps.store.find_one(Invoice, key)
        if found is None:
            invoice = _new_invoice(deps, sub, state)
            result.append(invoice)
            status = invoice.status.value
            created = audit(
                deps, ctx, f"invoice.{status}", "invoice", invoice.id, "", status,
                subscription_id=sub.id, amount_due=invoice.amount_due.amount_minor,
            )  # fmt: skip
            # A concurrent writer inserting it first fails this commit (unique processor id):
            # the retry re-reads and converges on theirs.
            return [Insert(invoice)], [created]
        result.append(found)
        before = found.status.value
        failed = found.failed_attempt(state)
        if not found.apply_processor_state(state, deps.clock.now()):
            return None
        events = []
        if found.status.value != before or not failed:
            events.append(
                audit(deps, ctx, f"invoice.{found.status.value}", "invoice", found.id, before, found.status.value)
            )
        if failed:
            events.append(_failed_event(deps, ctx, found))
        return [Update(found)], events

    await commit_with_retry(deps, attempt)
    if result and result[0].attempt_count < state.attempt_count:
        await commit_with_retry(deps, attempt)  # inserted without its failed attempt: now the attempt
    return result[0]


async def sync_invoices(deps: Deps, ctx: RequestContext, sub: Subscription) -> list[Invoice]:
    """Mirrors the processor's invoices of ``sub`` into the store (insert or converge).

    Returns:
        Our copies of the processor's invoices, in the processor's order (newest first).
    """
    if not sub.processor_id:
        return []
    states = await deps.processor(sub.processor).list_invoices(sub.processor_id)
    return [await _mirror_one(deps, ctx, sub, state) for state in states]
