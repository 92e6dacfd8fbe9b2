"""Use cases for refunds: reserve, send, settle, mirror.

A refund first *reserves* its amount on the payment (a versioned write together with the
PENDING refund), so concurrent refunds can never together exceed what was captured. The
processor is then called with a key derived from the request; the answer moves the
reserved amount to refunded or back. A refund whose answer was lost is resumed with the
same key while the processor remembers it, and settled by a lookup by our id after that.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from billing_service.domain.common import AuditEvent, Processor, RequestOrigin, validate_metadata
from billing_service.domain.errors import BillingError, ConcurrencyConflict, FailedPrecondition, InvalidArgument
from billing_service.domain.ids import new_id
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    Payment,
    ProcessorRefundState,
    Refund,
    RefundReason,
    RefundStatus,
)
from billing_service.service_layer.core import (
    Deps,
    Drift,
    audit,
    commit_with_retry,
    list_page,
    load,
    report_drift,
)
from billing_service.service_layer.executions import unwritten
from billing_service.service_layer.filtering import FilterField, FilterSpec, created, merge_filters
from billing_service.service_layer.idempotency import RequestContext, ensure_leases, is_final
from billing_service.service_layer.lookups import lookup_refund, resend_deadline
from billing_service.service_layer.ports import Change, Insert, LookupOutcome, RefundRequest, Update

NOT_AT_PROCESSOR = "NOT_FOUND_AT_PROCESSOR"


@dataclass(frozen=True)
class CreateRefund:
    """Command: return money from a captured payment."""

    payment_id: str
    amount: Money | None
    reason: RefundReason
    metadata: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Raises InvalidArgument naming the first bad field."""
        if not self.payment_id:
            raise InvalidArgument.field("payment_id", "is required")
        validate_metadata(self.metadata)


async def record_refund_state(
    deps: Deps,
    ctx: RequestContext,
    refund_id: str,
    state: ProcessorRefundState,
    *,
    lookup_after: datetime | None = None,
    known: tuple[Refund, Payment] | None = None,
    answers: bool = False,
    answer_error: BillingError | None = None,
) -> Refund:
    """Applies a processor report to a refund and moves its money on the payment.

    A refund we recorded FAILED without ever learning its processor id (a final error
    whose answer we could not trust) that the processor reports SUCCEEDED or PENDING is
    drift and is repaired (``refund.drift_repaired``). A FAILED refund with a processor id
    is left to the state machine: processors report refunds that bounce after succeeding.

    Args:
        lookup_after: When the refund ends FAILED without a processor id, have
            reconciliation look it up by our id from then on.
        known: The refund and its payment as this request last wrote them: the first
            attempt starts from them instead of reading them again (a stale copy loses
            the version check, and the next attempt reads both).
        answers: The recorded refund is the request's answer (stored with the change).
        answer_error: The request answers with this final error (stored with the change).
    """
    result: list[Refund] = []
    drifts: list[Drift] = []
    first = [copy.deepcopy(known)] if known is not None else []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        reused = first.pop() if first else None
        refund = reused[0] if reused else await load(deps, Refund, refund_id, resource="refund", field_path="refund_id")
        result[:] = [refund]
        drifts.clear()
        now = deps.clock.now()
        processor_id_before, lookup_before = refund.processor_id, refund.lookup_after
        action = f"refund.{state.status.value}"
        before = None if processor_id_before else refund.repair_succeeded(state, now)
        if before is not None:
            action = "refund.drift_repaired"
            drifts.append(Drift("refund", refund.id, before.value, state.status.value, repaired=True))
        else:
            before = refund.apply_processor_state(state, now)
        if refund.processor_id:
            refund.lookup_after = None
        elif lookup_after is not None and refund.status is not RefundStatus.PENDING:
            refund.lookup_after = lookup_after
        if before is None:
            if processor_id_before != refund.processor_id:
                status = refund.status.value
                linked = audit(
                    deps, ctx, "refund.processor_linked", "refund", refund.id, status, status,
                    payment_id=refund.payment_id, processor_id=refund.processor_id,
                )  # fmt: skip
                return [Update(refund)], [linked]
            return None if lookup_before == refund.lookup_after else ([Update(refund, bookkeeping=True)], [])
        payment = (
            reused[1]
            if reused and reused[1].id == refund.payment_id
            else await load(deps, Payment, refund.payment_id, resource="payment", field_path="payment_id")
        )
        payment.settle_refund(refund.amount.amount_minor, before=before, after=refund.status, now=now)
        events = [
            audit(
                deps, ctx, action, "refund", refund.id, before.value, refund.status.value,
                payment_id=payment.id, amount_minor=refund.amount.amount_minor, failure_reason=refund.failure_reason,
                currency=refund.amount.currency, processor_id=refund.processor_id,
            ),
            audit(
                deps, ctx, "payment.refund_settled", "payment", payment.id, payment.status.value, payment.status.value,
                refund_id=refund.id, amount_refunded=payment.amount_refunded,
            ),
        ]  # fmt: skip
        return [Update(refund), Update(payment)], events

    def answer() -> object | None:
        return answer_error if answer_error is not None else (result[0] if answers else None)

    await commit_with_retry(deps, attempt, answer=answer)
    for drift in drifts:
        report_drift(deps, drift)
    return result[0]


def new_refund(
    deps: Deps, cmd: CreateRefund, payment: Payment, refund_id: str, *, origin: RequestOrigin | None = None
) -> Refund:
    """Reserves the refund's amount on ``payment`` (in memory) and builds the PENDING refund.

    ``create_refund`` writes both; its ``validate_only`` preview runs this on a loaded copy
    of the payment that is never written back, so the two check the same things.
    """
    amount = payment.reserve_refund(cmd.amount)
    deps.processor(payment.processor)  # fail before writing if it is not configured
    now = deps.clock.now()
    return Refund(
        id=refund_id,
        payment_id=payment.id,
        processor=payment.processor,
        amount=amount,
        reason=cmd.reason,
        status=RefundStatus.PENDING,
        metadata=dict(cmd.metadata),
        created_at=now,
        updated_at=now,
        origin=origin,
    )


async def create_refund(deps: Deps, ctx: RequestContext, cmd: CreateRefund) -> Refund:
    """Reserves the amount on the payment, refunds at the processor, records the result.

    The reservation is a versioned write of the payment together with the PENDING refund,
    so concurrent refunds can never together exceed the captured amount.
    """
    # A fresh execution's resource id is stored nowhere yet: nothing to resume.
    refund = None if unwritten(ctx.resource_id) else await deps.store.get(Refund, ctx.resource_id)
    reserved: Payment | None = None
    if refund is None:
        created: list[Refund] = []
        reserving: list[Payment] = []

        async def reserve() -> tuple[Sequence[Change], Sequence[AuditEvent]]:
            payment = await load(deps, Payment, cmd.payment_id, resource="payment", field_path="payment_id")
            new = new_refund(deps, cmd, payment, ctx.resource_id, origin=ctx.origin)
            amount = new.amount
            reserving[:] = [payment]
            created[:] = [new]
            events = [
                audit(
                    deps, ctx, "refund.created", "refund", new.id, "", new.status.value,
                    payment_id=payment.id, amount_minor=amount.amount_minor, reason=cmd.reason.value,
                ),
                audit(
                    deps, ctx, "payment.refund_reserved", "payment", payment.id, payment.status.value,
                    payment.status.value, refund_id=new.id, amount_refund_pending=payment.amount_refund_pending,
                ),
            ]  # fmt: skip
            return [Update(payment), Insert(new)], events

        await commit_with_retry(deps, reserve)
        refund, reserved = created[0], reserving[0]
    return await send_refund(deps, ctx, refund, payment=reserved)


async def send_refund(deps: Deps, ctx: RequestContext, refund: Refund, *, payment: Payment | None = None) -> Refund:
    """Sends a reserved refund to its processor (or resumes it) and records the answer.

    ``ctx`` must be the refund's creating request (the processor key derives from it). A
    refund is never re-sent after its processor may have forgotten that key: a lost answer
    plus a late retry would otherwise refund twice; reconciliation looks it up instead.
    ``payment`` is the refunded payment as this request has just written it (None: read it).

    Raises:
        FailedPrecondition: REFUND_OUTCOME_UNKNOWN past the resend deadline.
    """
    if refund.status is not RefundStatus.PENDING or refund.processor_id:
        return refund  # resumed after the processor's answer was recorded
    adapter = deps.processor(refund.processor)
    if deps.clock.now() > resend_deadline(adapter, refund.created_at):
        raise FailedPrecondition(
            f"refund {refund.id} has been pending too long to be re-sent safely; reconciliation settles it "
            "by looking it up",
            reason="REFUND_OUTCOME_UNKNOWN",
            metadata={"refund_id": refund.id, "payment_id": refund.payment_id},
        )
    if payment is None:
        payment = await load(deps, Payment, refund.payment_id, resource="payment", field_path="payment_id")
    request = RefundRequest(
        refund_id=refund.id,
        processor_payment_id=payment.processor_id,
        amount=refund.amount,
        reason=refund.reason,
        metadata=refund.metadata,
    )
    try:
        ensure_leases(deps.clock.now())
        state = await adapter.create_refund(request, idempotency_key=ctx.processor_key("refund"))
    except BillingError as exc:
        if not is_final(exc):
            raise  # the reservation stays: the processor may have refunded; the retry resumes
        exc.metadata["refund_id"] = refund.id
        await record_refund_state(
            deps,
            ctx,
            refund.id,
            ProcessorRefundState(processor_id="", status=RefundStatus.FAILED, failure_reason=exc.reason),
            lookup_after=deps.clock.now(),
            known=(refund, payment),
            answer_error=exc,
        )
        raise
    return await record_refund_state(deps, ctx, refund.id, state, known=(refund, payment), answers=True)


async def settle_unsent_refund(
    deps: Deps, ctx: RequestContext, refund: Refund, *, quiet_since: datetime
) -> tuple[LookupOutcome, Refund]:
    """Settles a PENDING refund without a processor id by a lookup by our id.

    The caller guarantees no send of it can run (held, or past its resend deadline).
    Found: converge. Absent: FAILED (``NOT_FOUND_AT_PROCESSOR``), releasing the reserved
    amount. Unknown: unchanged.
    """
    payment = await load(deps, Payment, refund.payment_id, resource="payment", field_path="payment_id")
    found = await lookup_refund(deps, refund, payment, quiet_since=quiet_since)
    if found.outcome is LookupOutcome.FOUND and found.state is not None:
        return found.outcome, await record_refund_state(deps, ctx, refund.id, found.state)
    if found.outcome is LookupOutcome.ABSENT:
        failed = ProcessorRefundState(processor_id="", status=RefundStatus.FAILED, failure_reason=NOT_AT_PROCESSOR)
        return found.outcome, await record_refund_state(deps, ctx, refund.id, failed)
    return found.outcome, refund


async def mirror_external_refund(
    deps: Deps, ctx: RequestContext, processor: Processor, state: ProcessorRefundState
) -> Refund | None:
    """Records on its payment a refund made outside the service (e.g. in a processor dashboard).

    A refund of ours on the same payment that is still waiting for its processor id is
    resolved first by a lookup by our id: found, it is recorded (and if it is the very
    refund reported, that is the answer); absent, the reported refund cannot be it (it
    exists, ours does not), and any refund ours creates later is another object, so the
    mirror proceeds. One processor refund is therefore never counted twice, and in-flight
    refunds no longer block mirrors.

    Returns:
        The mirrored (or already mirrored) refund; None when the refund is not about one of
        our payments, or is one of ours (the processor echoed our id).

    Raises:
        ConcurrencyConflict: An in-flight refund of ours could not be resolved yet (its
            processor cannot answer now); retry later.
    """
    if state.refund_id or not state.processor_payment_id or state.amount_minor <= 0:
        return None
    payment = await deps.store.find_one(
        Payment, {"processor": processor.value, "processor_id": state.processor_payment_id}
    )
    if payment is None:
        return None
    known = await deps.store.find_one(Refund, {"processor": processor.value, "processor_id": state.processor_id})
    if known is not None:
        return known
    in_flight = await deps.store.list_page(
        Refund,
        {"payment_id": payment.id, "status": RefundStatus.PENDING.value, "processor_id": ""},
        limit=50,
        after=None,
    )
    for ours in in_flight.items:
        found = await lookup_refund(deps, ours, payment, quiet_since=deps.clock.now())
        if found.outcome is LookupOutcome.FOUND and found.state is not None:
            recorded = await record_refund_state(deps, ctx, ours.id, found.state)
            if found.state.processor_id == state.processor_id:
                return recorded
        elif found.outcome is LookupOutcome.UNKNOWN:
            raise ConcurrencyConflict(f"refund {ours.id} of payment {payment.id} is still in flight")
    result: list[Refund] = []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        known = await deps.store.find_one(Refund, {"processor": processor.value, "processor_id": state.processor_id})
        if known is not None:
            result[:] = [known]
            return None
        fresh = await load(deps, Payment, payment.id, resource="payment", field_path="payment_id")
        now = deps.clock.now()
        refund = Refund(
            id=new_id("re"),
            payment_id=fresh.id,
            processor=processor,
            amount=fresh.money(state.amount_minor),
            reason=RefundReason.UNSPECIFIED,
            status=state.status,
            metadata={"source": "processor"},
            created_at=now,
            updated_at=now,
            processor_id=state.processor_id,
            failure_reason=state.failure_reason,
        )
        fresh.settle_refund(state.amount_minor, before=None, after=state.status, now=now)
        result[:] = [refund]
        events = [
            audit(
                deps, ctx, "refund.mirrored", "refund", refund.id, "", refund.status.value,
                payment_id=fresh.id, amount_minor=state.amount_minor, processor_id=state.processor_id,
            ),
            audit(
                deps, ctx, "payment.refund_settled", "payment", fresh.id, fresh.status.value, fresh.status.value,
                refund_id=refund.id, amount_refunded=fresh.amount_refunded, currency=fresh.currency,
            ),
        ]  # fmt: skip
        return [Update(fresh), Insert(refund)], events

    await commit_with_retry(deps, attempt)
    return result[0] if result else None


async def refresh_refund(deps: Deps, ctx: RequestContext, refund_id: str) -> Refund:
    """Re-reads a refund from its processor and records any move (pending → final)."""
    refund = await load(deps, Refund, refund_id, resource="refund", field_path="refund_id")
    if not refund.processor_id:
        return refund
    state = await deps.processor(refund.processor).get_refund(refund.processor_id)
    return await record_refund_state(deps, ctx, refund.id, state)


async def get_refund(deps: Deps, refund_id: str) -> Refund:
    """Returns one refund."""
    return await load(deps, Refund, refund_id, resource="refund", field_path="refund_id")


REFUND_FILTERS = FilterSpec(
    {"status": FilterField("status", enum=RefundStatus, enum_prefix="REFUND_STATUS_"), "create_time": created()}
)


async def list_refunds(
    deps: Deps, *, payment_id: str, page_size: int, page_token: str, filter_expr: str = ""
) -> tuple[list[Refund], str]:
    """Lists refunds newest first, optionally of one payment and filtered (REFUND_FILTERS)."""
    filters = merge_filters({"payment_id": payment_id} if payment_id else {}, filter_expr, REFUND_FILTERS)
    return await list_page(deps, Refund, filters, requested_size=page_size, token=page_token)
