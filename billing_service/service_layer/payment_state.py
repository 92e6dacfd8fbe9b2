"""Processor reports applied to our payment record, drift included.

Every path that learns a payment's state at its processor (the creating request's outcome,
a capture or cancel, a webhook, a reconciliation re-read or lookup) records it through
:func:`record_payment_state`: one version-checked write with its audit event, so the state
machine and the drift rules live in one place.

A processor report that contradicts a final CANCELED or FAILED payment (money captured or
held) is drift, never an old event to ignore: captured money turns the record SUCCEEDED,
held money is released at the processor, and both are audited and counted.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from billing_service.domain.common import AuditEvent
from billing_service.domain.errors import BillingError
from billing_service.domain.payments import Payment, PaymentStatus, ProcessorPaymentState
from billing_service.service_layer.core import Deps, Drift, audit, commit, commit_with_retry, load, report_drift
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import Change, Update

# Failure code of a payment that reconciliation proved never reached its processor.
NOT_AT_PROCESSOR = "not_found_at_processor"
_HOLDS_MONEY = (PaymentStatus.REQUIRES_CAPTURE, PaymentStatus.REQUIRES_ACTION)


def _drift_key(resource_id: str, step: str) -> str:
    """A processor key for a drift repair: the same for every replica and retry."""
    return f"billing-drift-{hashlib.sha256(resource_id.encode()).hexdigest()[:32]}-{step}"


async def record_payment_state(
    deps: Deps,
    ctx: RequestContext,
    payment_id: str,
    state: ProcessorPaymentState,
    action: str,
    *,
    lookup_after: datetime | None = None,
    known: Payment | None = None,
    answers: bool = False,
    answer_error: BillingError | None = None,
) -> Payment:
    """Applies a processor report to the stored payment and audits the move.

    A report that contradicts a final CANCELED/FAILED record is drift: captured money turns
    the record SUCCEEDED (``payment.drift_repaired``); money the processor still holds is
    released there (re-read, then voided) and audited as ``payment.drift_voided``.

    Args:
        lookup_after: When the payment ends without a processor id, have reconciliation
            look it up by our id from then on (an attempt may have reached the processor).
        known: The payment as this request last read or wrote it: the first attempt
            starts from it instead of reading it again (a stale copy loses the version
            check, and the next attempt reads it).
        answers: The recorded payment is the request's answer (stored with the change).
        answer_error: The request answers with this final error (stored with the change).
    """
    result: list[Payment] = []
    drifts: list[Drift] = []
    first = [copy.deepcopy(known)] if known is not None else []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        payment = first.pop() if first else await load(deps, Payment, payment_id, resource="payment",
                                                         field_path="payment_id")  # fmt: skip
        result[:] = [payment]
        drifts.clear()
        now = deps.clock.now()
        if payment.contradicted_by(state):
            return _drift_changes(deps, ctx, payment, state, drifts, now)
        before = payment.status.value
        processor_id_before, lookup_before = payment.processor_id, payment.lookup_after
        changed = payment.apply_processor_state(state, now)
        if payment.processor_id:
            payment.lookup_after = None  # nothing left to look up by our id
        elif lookup_after is not None and payment.is_final:
            payment.lookup_after = lookup_after
        linked = processor_id_before != payment.processor_id
        if not changed and not linked and lookup_before == payment.lookup_after:
            return None
        if changed:
            return [Update(payment)], [_state_event(deps, ctx, action, payment, before)]
        if linked:
            return [Update(payment)], [_linked_event(deps, ctx, payment)]
        return [Update(payment, bookkeeping=True)], []

    def releases_held_money(payment: Payment) -> bool:
        return payment.contradicted_by(state) and state.status in _HOLDS_MONEY and bool(payment.processor_id)

    def answer() -> object | None:
        if answer_error is not None:
            return answer_error
        # Voiding held money comes after this commit: then this is not the last word.
        return result[0] if answers and not releases_held_money(result[0]) else None

    await commit_with_retry(deps, attempt, answer=answer)
    for drift in drifts:
        report_drift(deps, drift)
    payment = result[0]
    if releases_held_money(payment):
        return await _release_held_money(deps, ctx, payment)
    return payment


def _linked_event(deps: Deps, ctx: RequestContext, payment: Payment) -> AuditEvent:
    """The audit event of a payment whose processor id was learned without a status change."""
    status = payment.status.value
    return audit(
        deps, ctx, "payment.processor_linked", "payment", payment.id, status, status,
        processor_id=payment.processor_id,
    )  # fmt: skip


def _state_event(deps: Deps, ctx: RequestContext, action: str, payment: Payment, before: str) -> AuditEvent:
    failure = payment.failure
    return audit(
        deps, ctx, action, "payment", payment.id, before, payment.status.value,
        processor_id=payment.processor_id, amount_captured=payment.amount_captured,
        amount_capturable=payment.amount_capturable,
        failure_code=(failure.decline_code or failure.code) if failure else None,
    )  # fmt: skip


def _drift_changes(
    deps: Deps, ctx: RequestContext, payment: Payment, state: ProcessorPaymentState, drifts: list[Drift], now: datetime
) -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
    """The write for a report contradicting a final CANCELED/FAILED payment (see record_payment_state)."""
    ours = payment.status.value
    repaired = payment.repair_captured(state, now)
    if repaired is not None:
        drifts.append(Drift("payment", payment.id, ours, state.status.value, repaired=True))
        event = audit(
            deps, ctx, "payment.drift_repaired", "payment", payment.id, repaired.value, payment.status.value,
            processor_id=payment.processor_id, amount_captured=payment.amount_captured,
            processor_status=state.status.value,
        )  # fmt: skip
        return [Update(payment)], [event]
    # Held or pending money: link the processor's id (releasing it comes next, outside the
    # transaction); a PROCESSING payment cannot be voided, so reconciliation re-reads it.
    linked = state.processor_id and not payment.processor_id
    if linked:
        payment.processor_id = state.processor_id
    if state.status is PaymentStatus.PROCESSING:
        first = payment.lookup_after is None or linked  # later re-reads only move the next one
        payment.lookup_after = now + timedelta(minutes=15)
        if not first:
            return [Update(payment, bookkeeping=True)], []
        drifts.append(Drift("payment", payment.id, ours, state.status.value, repaired=False))
        event = audit(
            deps, ctx, "payment.drift_found", "payment", payment.id, ours, ours,
            processor_id=payment.processor_id, processor_status=state.status.value,
        )  # fmt: skip
        return [Update(payment)], [event]
    payment.lookup_after = None
    return ([Update(payment)], [_linked_event(deps, ctx, payment)]) if linked else None


async def _release_held_money(deps: Deps, ctx: RequestContext, payment: Payment) -> Payment:
    """Voids at the processor what it holds for a payment we recorded CANCELED/FAILED."""
    adapter = deps.processor(payment.processor)
    fresh = await adapter.get_payment(payment.processor_id)  # the report may be stale
    if fresh.status in _HOLDS_MONEY:
        held = fresh.status.value
        try:
            fresh = await adapter.cancel_payment(payment.processor_id, idempotency_key=_drift_key(payment.id, "void"))
        except BillingError:
            report_drift(deps, Drift("payment", payment.id, payment.status.value, held, repaired=False))
            raise
        report_drift(deps, Drift("payment", payment.id, payment.status.value, held, repaired=True))
        event = audit(
            deps, ctx, "payment.drift_voided", "payment", payment.id, payment.status.value, payment.status.value,
            processor_id=payment.processor_id, processor_status=fresh.status.value,
        )  # fmt: skip
        await commit(deps, [], [event])
    return await record_payment_state(deps, ctx, payment.id, fresh, f"payment.{fresh.status.value}")
