"""Use cases for disputes: mirror the processor's reports, list them."""

from __future__ import annotations

from collections.abc import Sequence

from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.disputes import Dispute, DisputeStatus, ProcessorDisputeState
from billing_service.domain.ids import new_id
from billing_service.domain.payments import Payment
from billing_service.service_layer.core import Deps, audit, commit_with_retry, list_page, load
from billing_service.service_layer.filtering import FilterField, FilterSpec, created, merge_filters
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import Change, Insert, Update


async def _disputed_payment(deps: Deps, processor: Processor, state: ProcessorDisputeState) -> Payment | None:
    """Finds the disputed payment by our id (when echoed back) or by the processor's id."""
    if state.payment_id:
        payment = await deps.store.get(Payment, state.payment_id)
        if payment is not None and payment.processor is processor:
            return payment
    if state.processor_payment_id:
        return await deps.store.find_one(
            Payment, {"processor": processor.value, "processor_id": state.processor_payment_id}
        )
    return None


async def record_dispute(
    deps: Deps, ctx: RequestContext, processor: Processor, state: ProcessorDisputeState
) -> Dispute | None:
    """Opens or advances the mirror of a processor dispute.

    The dispute and the payment's ``dispute_ids`` are written with their audit events in
    one commit. A report of an earlier stage than the stored one changes nothing.

    Returns:
        The stored dispute, or None when the disputed payment is not ours.
    """
    result: list[Dispute] = []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        found = await deps.store.find_one(Dispute, {"processor": processor.value, "processor_id": state.processor_id})
        now = deps.clock.now()
        if found is not None:
            result[:] = [found]
            before = found.apply_processor_state(state, now)
            if before is None:
                return None
            event = audit(
                deps, ctx, f"dispute.{found.status.value}", "dispute", found.id, before.value, found.status.value,
                payment_id=found.payment_id, processor_id=found.processor_id,
                resolution_seconds=_seconds(found),
            )  # fmt: skip
            return [Update(found)], [event]
        payment = await _disputed_payment(deps, processor, state)
        if payment is None:
            result.clear()
            return None
        dispute = Dispute(
            id=new_id("dp"),
            payment_id=payment.id,
            processor=processor,
            processor_id=state.processor_id,
            amount=state.amount,
            reason=state.reason,
            status=state.status,
            opened_at=state.opened_at or now,  # a report without a date: when we learned of it
            created_at=now,
            updated_at=now,
        )
        if dispute.is_final:  # the closing report arrived first
            dispute.closed_at = state.closed_at or now
        payment.dispute_ids = [*payment.dispute_ids, dispute.id]
        payment.updated_at = now
        result[:] = [dispute]
        events = [
            audit(
                deps, ctx, "dispute.opened", "dispute", dispute.id, "", dispute.status.value,
                payment_id=payment.id, processor_id=dispute.processor_id, reason=dispute.reason,
                amount_minor=dispute.amount.amount_minor, currency=dispute.amount.currency,
                resolution_seconds=_seconds(dispute),
            ),
            audit(
                deps, ctx, "payment.dispute_opened", "payment", payment.id, payment.status.value,
                payment.status.value, dispute_id=dispute.id,
            ),
        ]  # fmt: skip
        return [Insert(dispute), Update(payment)], events

    await commit_with_retry(deps, attempt)
    return result[0] if result else None


def _seconds(dispute: Dispute) -> int | None:
    resolution = dispute.time_to_resolution
    return None if resolution is None else int(resolution.total_seconds())


async def get_dispute(deps: Deps, dispute_id: str) -> Dispute:
    """Returns one dispute."""
    return await load(deps, Dispute, dispute_id, resource="dispute", field_path="dispute_id")


DISPUTE_FILTERS = FilterSpec(
    {
        "payment_id": FilterField("payment_id"),
        "status": FilterField("status", enum=DisputeStatus, enum_prefix="DISPUTE_STATUS_"),
        "create_time": created(),
    }
)


async def list_disputes(
    deps: Deps, *, payment_id: str, page_size: int, page_token: str, filter_expr: str = ""
) -> tuple[list[Dispute], str]:
    """Lists disputes newest first, optionally of one payment and filtered (DISPUTE_FILTERS)."""
    filters = merge_filters({"payment_id": payment_id} if payment_id else {}, filter_expr, DISPUTE_FILTERS)
    return await list_page(deps, Dispute, filters, requested_size=page_size, token=page_token)
