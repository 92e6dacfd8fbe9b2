"""Use cases for payments and refunds.

Every processor write happens *between* two store commits: the intent is recorded first
(PENDING payment, PENDING refund with its amount reserved), then the processor is called
with a key derived from the request, then the outcome is recorded. A crash anywhere in
between leaves a record that the caller's retry (or reconciliation) resumes while the
processor still remembers the key, and that reconciliation settles by a lookup by our id
after that (``lookups``).

A processor report that contradicts a final CANCELED or FAILED payment (money captured or
held) is drift, never an old event to ignore: captured money turns the record SUCCEEDED,
held money is released at the processor, and both are audited and counted.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from billing_service.domain.common import AuditEvent, RequestOrigin, validate_metadata, validate_text
from billing_service.domain.customers import Customer, PaymentMethod
from billing_service.domain.errors import (
    BillingError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PaymentDeclined,
    RequestInProgress,
)
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    CaptureMethod,
    NextAction,
    Payment,
    PaymentFailure,
    PaymentStatus,
    ProcessorPaymentState,
)
from billing_service.service_layer.core import (
    Deps,
    Drift,
    audit,
    commit,
    commit_with_retry,
    list_page,
    load,
    report_drift,
)
from billing_service.service_layer.customers import MAX_DESCRIPTION, ensure_processor_customer
from billing_service.service_layer.executions import unwritten
from billing_service.service_layer.filtering import FilterField, FilterSpec, created, merge_filters
from billing_service.service_layer.idempotency import (
    RequestContext,
    ensure_leases,
    hold_request,
    is_final,
)
from billing_service.service_layer.lookups import (
    lookup_payment,
    payment_origin,
    resend_deadline,
)
from billing_service.service_layer.ports import (
    Change,
    Insert,
    LookupOutcome,
    PaymentRequest,
    Update,
)

MAX_URL = 2048

# Failure code of a payment that reconciliation proved never reached its processor.
NOT_AT_PROCESSOR = "not_found_at_processor"
_HOLDS_MONEY = (PaymentStatus.REQUIRES_CAPTURE, PaymentStatus.REQUIRES_ACTION)


def _drift_key(resource_id: str, step: str) -> str:
    """A processor key for a drift repair: the same for every replica and retry."""
    return f"billing-drift-{hashlib.sha256(resource_id.encode()).hexdigest()[:32]}-{step}"


@dataclass(frozen=True)
class CreatePayment:
    """Command: charge (or authorize) a customer's payment method."""

    customer_id: str
    payment_method_id: str
    amount: Money
    capture_method: CaptureMethod
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    off_session: bool = False
    return_url: str = ""

    def validate(self) -> None:
        """Raises InvalidArgument naming the first bad field."""
        if not self.customer_id:
            raise InvalidArgument.field("customer_id", "is required")
        if not self.payment_method_id:
            raise InvalidArgument.field("payment_method_id", "is required")
        validate_text(self.description, "description", max_len=MAX_DESCRIPTION)
        validate_metadata(self.metadata)
        validate_text(self.return_url, "return_url", max_len=MAX_URL)
        if self.return_url and not self.return_url.startswith(("https://", "http://")):
            raise InvalidArgument.field("return_url", "must be an http(s) URL")


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


async def new_payment(
    deps: Deps, cmd: CreatePayment, payment_id: str, *, origin: RequestOrigin | None = None
) -> tuple[Payment, Customer, PaymentMethod]:
    """Loads and checks what a new payment needs; builds it PENDING, writing nothing.

    ``create_payment`` records what this returns, and its ``validate_only`` preview returns
    it, so the two cannot check different things.
    """
    customer, method = await deps.store.get_pair(Customer, cmd.customer_id, PaymentMethod, cmd.payment_method_id)
    if customer is None:
        raise NotFound("customer", cmd.customer_id, field_path="customer_id")
    if method is None:
        raise NotFound("payment_method", cmd.payment_method_id, field_path="payment_method_id")
    if method.customer_id != customer.id:
        raise InvalidArgument.field("payment_method_id", "does not belong to this customer")
    method.ensure_usable()
    deps.processor(method.processor)  # fail before writing if it is not configured
    now = deps.clock.now()
    payment = Payment(
        id=payment_id,
        customer_id=customer.id,
        payment_method_id=method.id,
        processor=method.processor,
        amount=cmd.amount,
        capture_method=cmd.capture_method,
        status=PaymentStatus.PENDING,
        description=cmd.description,
        metadata=dict(cmd.metadata),
        created_at=now,
        updated_at=now,
        off_session=cmd.off_session,
        origin=origin,
    )
    return payment, customer, method


async def create_payment(deps: Deps, ctx: RequestContext, cmd: CreatePayment) -> Payment:
    """Records a payment, has the processor confirm it, and records the outcome.

    Raises:
        PaymentDeclined: The processor declined; the payment is kept as FAILED and its id
            is in the error metadata.
    """
    # A fresh execution's resource id is stored nowhere yet: nothing to resume.
    payment = None if unwritten(ctx.resource_id) else await deps.store.get(Payment, ctx.resource_id)
    if payment is None:
        payment, customer, method = await new_payment(deps, cmd, ctx.resource_id, origin=ctx.origin)
        event = audit(
            deps, ctx, "payment.created", "payment", payment.id, "", payment.status.value,
            amount_minor=cmd.amount.amount_minor, currency=cmd.amount.currency, processor=method.processor.value,
        )  # fmt: skip
        await commit(deps, [Insert(payment)], [event])
        # Just written and loaded: hand them on instead of reading all three again.
        return await resume_payment(
            deps, ctx, payment.id, return_url=cmd.return_url, loaded=(payment, customer, method)
        )
    return await resume_payment(deps, ctx, payment.id, return_url=cmd.return_url)


async def resume_payment(
    deps: Deps,
    ctx: RequestContext,
    payment_id: str,
    *,
    return_url: str = "",
    loaded: tuple[Payment, Customer, PaymentMethod] | None = None,
) -> Payment:
    """Sends a recorded PENDING payment to its processor and records the outcome.

    ``ctx`` must be the context of the request that created the payment: the processor key
    derives from it, so a resumed attempt (a caller's retry, or reconciliation) can never
    charge twice. ``loaded`` is the (payment, customer, method) the caller has just
    written or read in this request; None reads them from the store.
    """
    payment = (
        loaded[0] if loaded else await load(deps, Payment, payment_id, resource="payment", field_path="payment_id")
    )
    if payment.status is not PaymentStatus.PENDING:
        return payment  # a resumed request whose outcome was already recorded (or a cancel won)
    adapter = deps.processor(payment.processor)
    if deps.clock.now() > resend_deadline(adapter, payment.created_at):
        raise FailedPrecondition(
            f"payment {payment.id} has been pending too long to be re-sent safely (the processor may have "
            "forgotten its idempotency key); reconciliation settles it by looking it up",
            reason="PAYMENT_OUTCOME_UNKNOWN",
            metadata={"payment_id": payment.id},
        )

    if loaded:
        customer, method = loaded[1], loaded[2]
    else:
        customer = await load(deps, Customer, payment.customer_id, resource="customer", field_path="customer_id")
        method = await load(
            deps, PaymentMethod, payment.payment_method_id, resource="payment_method", field_path="payment_method_id"
        )
    try:
        processor_customer = await ensure_processor_customer(deps, customer, payment.processor, ctx=ctx)
        request = PaymentRequest(
            payment_id=payment.id,
            amount=payment.amount,
            capture_method=payment.capture_method,
            processor_customer_id=processor_customer,
            processor_payment_method_id=method.processor_id,
            description=payment.description,
            metadata=payment.metadata,
            off_session=payment.off_session,
            return_url=return_url,
        )
        ensure_leases(deps.clock.now())  # never send for a request another execution took over
        state = await adapter.create_payment(request, idempotency_key=ctx.processor_key("payment"))
    except PaymentDeclined as exc:
        failed = ProcessorPaymentState(
            processor_id=exc.metadata.get("processor_payment_id", ""),
            status=PaymentStatus.FAILED,
            failure=PaymentFailure(
                code=exc.metadata.get("code", "card_declined"),
                decline_code=exc.metadata.get("decline_code", ""),
                message=exc.message,
            ),
        )
        exc.metadata["payment_id"] = payment.id
        await record_payment_state(
            deps, ctx, payment.id, failed, "payment.failed", lookup_after=deps.clock.now(), known=payment,
            answer_error=exc,
        )  # fmt: skip
        raise
    except BillingError as exc:
        # Any final refusal (invalid at the processor, not supported, misconfigured) ends the
        # payment as FAILED; a retryable one (processor or store unavailable, a write
        # conflict, a lost lease) leaves it PENDING for the retry to resume. Without a
        # processor id reconciliation still looks the payment up once: a refusal may come
        # after the processor did something (an answer we could not read).
        if is_final(exc):
            failed = ProcessorPaymentState(
                processor_id="",
                status=PaymentStatus.FAILED,
                failure=PaymentFailure(code=exc.reason.lower(), message=exc.message),
            )
            exc.metadata["payment_id"] = payment.id
            await record_payment_state(
                deps, ctx, payment.id, failed, "payment.failed", lookup_after=deps.clock.now(), known=payment,
                answer_error=exc,
            )  # fmt: skip
        elif processor_payment_id := exc.metadata.get("processor_payment_id", ""):
            # The processor acted but its answer could not be read: keep its id on the PENDING
            # payment so refreshes and reconciliation can find what it did.
            linked = ProcessorPaymentState(processor_id=processor_payment_id, status=PaymentStatus.PENDING)
            await record_payment_state(deps, ctx, payment.id, linked, "payment.processor_linked", known=payment)
        raise
    return await record_payment_state(
        deps, ctx, payment.id, state, f"payment.{state.status.value}", known=payment, answers=True
    )


async def get_payment(deps: Deps, payment_id: str) -> Payment:
    """Returns one payment; one awaiting buyer action carries the processor's live client secret.

    Client secrets are never stored (see ``NextAction``), so the processor is asked for
    it; when the processor cannot answer, the call fails (retryably) rather than hand the
    caller a payment it cannot finish. Nothing is written.
    """
    payment = await load(deps, Payment, payment_id, resource="payment", field_path="payment_id")
    if payment.status is PaymentStatus.REQUIRES_ACTION and payment.processor_id:
        state = await deps.processor(payment.processor).get_payment(payment.processor_id)
        live = state.next_action if state.status is PaymentStatus.REQUIRES_ACTION else None
        if live is not None and live.client_secret:
            redirect = payment.next_action.redirect_url if payment.next_action else live.redirect_url
            payment.next_action = NextAction(client_secret=live.client_secret, redirect_url=redirect)
    return payment


PAYMENT_FILTERS = FilterSpec(
    {
        "customer_id": FilterField("customer_id"),
        "status": FilterField("status", enum=PaymentStatus, enum_prefix="PAYMENT_STATUS_"),
        "create_time": created(),
    }
)


async def list_payments(
    deps: Deps,
    *,
    customer_id: str,
    status: PaymentStatus | None,
    page_size: int,
    page_token: str,
    filter_expr: str = "",
) -> tuple[list[Payment], str]:
    """Lists payments newest first, by customer and/or status and a filter (PAYMENT_FILTERS)."""
    filters: dict[str, object] = {}
    if customer_id:
        filters["customer_id"] = customer_id
    if status is not None:
        filters["status"] = status.value
    filters = merge_filters(filters, filter_expr, PAYMENT_FILTERS)
    return await list_page(deps, Payment, filters, requested_size=page_size, token=page_token)


async def capture_payment(deps: Deps, ctx: RequestContext, payment_id: str, amount: Money | None) -> Payment:
    """Captures all or part of an authorized payment."""
    payment = await load(deps, Payment, payment_id, resource="payment", field_path="payment_id")
    if ctx.attempt > 1 and payment.status is PaymentStatus.SUCCEEDED:
        return payment  # resumed after the capture was recorded
    to_capture = payment.ensure_capturable(amount)
    ensure_leases(deps.clock.now())
    state = await deps.processor(payment.processor).capture_payment(
        payment.processor_id, to_capture, idempotency_key=ctx.processor_key("capture")
    )
    return await record_payment_state(deps, ctx, payment.id, state, "payment.captured", known=payment, answers=True)


async def cancel_payment(deps: Deps, ctx: RequestContext, payment_id: str) -> Payment:
    """Cancels a payment that has not been captured (voids an authorization).

    A PENDING payment without a processor id may still be in its create's hands: see
    ``_settle_unsent_for_cancel``. Whatever that finds decides: nothing at the processor
    (CANCELED), an authorization (voided here), or a charge (SUCCEEDED, and the cancel
    answers PAYMENT_NOT_CANCELABLE).
    """
    payment = await load(deps, Payment, payment_id, resource="payment", field_path="payment_id")
    if ctx.attempt > 1 and payment.status is PaymentStatus.CANCELED:
        return payment
    payment.ensure_cancelable()
    if payment.status is PaymentStatus.PENDING and not payment.processor_id:
        payment = await _settle_unsent_for_cancel(deps, ctx, payment)
        if payment.status is PaymentStatus.CANCELED:
            return payment
        payment.ensure_cancelable()
    ensure_leases(deps.clock.now())
    state = await deps.processor(payment.processor).cancel_payment(
        payment.processor_id, idempotency_key=ctx.processor_key("cancel")
    )
    return await record_payment_state(deps, ctx, payment.id, state, "payment.canceled", known=payment, answers=True)


async def _settle_unsent_for_cancel(deps: Deps, ctx: RequestContext, payment: Payment) -> Payment:
    """Makes sure no create of ``payment`` runs, then learns what the processor did.

    The creating request's idempotency record is held (taken over from an executor whose
    lease lapsed) so no retry of the create can resume while we decide, and a stale
    executor's late commit is refused by its fence. A live create answers the cancel with
    REQUEST_IN_PROGRESS (retry shortly). Once decided and released, a resumed create finds
    a payment that is no longer PENDING and never sends it.

    Raises:
        RequestInProgress: The create is still executing.
        FailedPrecondition: PAYMENT_OUTCOME_UNKNOWN: the processor cannot tell yet whether
            the create went through (PayPal's search lags up to three hours).
    """
    origin = await payment_origin(deps, payment)
    if origin is None:
        raise FailedPrecondition(
            f"payment {payment.id} has no record of the request that created it",
            reason="PAYMENT_OUTCOME_UNKNOWN",
            metadata={"payment_id": payment.id},
        )
    async with hold_request(deps.store, deps.clock, origin, lease_seconds=deps.lease_seconds) as hold:
        if not hold.quiet:
            raise RequestInProgress(
                f"payment {payment.id} is still being created; retry the cancel shortly",
                metadata={"payment_id": payment.id},
            )
        payment = await load(deps, Payment, payment.id, resource="payment", field_path="payment_id")
        if payment.status is not PaymentStatus.PENDING or payment.processor_id:
            return payment  # the create finished first
        now = deps.clock.now()
        found = await lookup_payment(deps, payment, quiet_since=now)
        if found.outcome is LookupOutcome.FOUND and found.state is not None:
            return await record_payment_state(deps, ctx, payment.id, found.state, f"payment.{found.state.status.value}")
        if found.outcome is LookupOutcome.UNKNOWN:
            retry = found.retry_after.isoformat() if found.retry_after else ""
            raise FailedPrecondition(
                f"the processor cannot tell yet whether payment {payment.id} was charged; cancel it again later",
                reason="PAYMENT_OUTCOME_UNKNOWN",
                metadata={"payment_id": payment.id, "retry_after": retry},
            )
        # Nothing at the processor, and nothing can send the create now. An executor that
        # lost its lease without noticing (store unreachable) is caught by one more lookup.
        canceled = ProcessorPaymentState(processor_id="", status=PaymentStatus.CANCELED)
        recheck = now + timedelta(seconds=2 * deps.lease_seconds)
        return await record_payment_state(deps, ctx, payment.id, canceled, "payment.canceled", lookup_after=recheck)


async def settle_unsent_payment(
    deps: Deps, ctx: RequestContext, payment: Payment, *, quiet_since: datetime
) -> tuple[LookupOutcome, Payment]:
    """Settles a PENDING payment without a processor id by a lookup by our id.

    The caller guarantees no create of it can run (its request is held or past its resend
    deadline). Found: converge on it. Absent: FAILED (``not_found_at_processor``): nothing
    was charged. Unknown: unchanged.
    """
    found = await lookup_payment(deps, payment, quiet_since=quiet_since)
    if found.outcome is LookupOutcome.FOUND and found.state is not None:
        state = found.state
        return found.outcome, await record_payment_state(deps, ctx, payment.id, state, f"payment.{state.status.value}")
    if found.outcome is LookupOutcome.ABSENT:
        failed = ProcessorPaymentState(
            processor_id="",
            status=PaymentStatus.FAILED,
            failure=PaymentFailure(
                code=NOT_AT_PROCESSOR, message="the processor has no payment for this id: nothing was charged"
            ),
        )
        return found.outcome, await record_payment_state(deps, ctx, payment.id, failed, "payment.failed")
    return found.outcome, payment


async def refresh_payment(deps: Deps, ctx: RequestContext, payment_id: str) -> Payment:
    """Re-reads a payment from its processor and converges on it."""
    payment = await load(deps, Payment, payment_id, resource="payment", field_path="payment_id")
    if not payment.processor_id:
        return payment
    state = await deps.processor(payment.processor).get_payment(payment.processor_id)
    return await record_payment_state(deps, ctx, payment.id, state, f"payment.{state.status.value}")


# Refund use cases live in ``refunds``; these names stay importable from here.
from billing_service.service_layer.refunds import (  # noqa: E402
    REFUND_FILTERS,
    CreateRefund,
    create_refund,
    get_refund,
    list_refunds,
    mirror_external_refund,
    record_refund_state,
    refresh_refund,
    send_refund,
    settle_unsent_refund,
)

UPDATABLE_PAYMENT_FIELDS = frozenset({"description", "metadata"})


@dataclass(frozen=True)
class UpdatePayment:
    """Command: change the masked caller-owned fields of a payment (our record only)."""

    payment_id: str
    paths: frozenset[str]
    description: str
    metadata: dict[str, str]

    def validate(self) -> None:
        """Raises InvalidArgument naming the first bad field."""
        if not self.payment_id:
            raise InvalidArgument.field("payment.id", "is required")
        if not self.paths:
            raise InvalidArgument.field("update_mask", "must name at least one field")
        unknown = sorted(self.paths - UPDATABLE_PAYMENT_FIELDS)
        if unknown:
            raise InvalidArgument.field(
                "update_mask",
                f"cannot update {', '.join(unknown)}; allowed: {', '.join(sorted(UPDATABLE_PAYMENT_FIELDS))}",
            )
        validate_text(self.description, "payment.description", max_len=MAX_DESCRIPTION)
        validate_metadata(self.metadata, field_path="payment.metadata")


async def update_payment(deps: Deps, ctx: RequestContext, cmd: UpdatePayment) -> Payment:
    """Applies a masked update of description and/or metadata, audited as ``payment.updated``.

    The processor keeps the values sent at creation: no processor is called. Each attempt
    re-reads the payment, so a concurrent webhook's change is never overwritten.
    """
    result: list[Payment] = []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]]:
        payment = await load(deps, Payment, cmd.payment_id, resource="payment", field_path="payment.id")
        if "description" in cmd.paths:
            payment.description = cmd.description
        if "metadata" in cmd.paths:
            payment.metadata = dict(cmd.metadata)
        payment.updated_at = deps.clock.now()
        result[:] = [payment]
        event = audit(
            deps, ctx, "payment.updated", "payment", payment.id, payment.status.value, payment.status.value,
            fields=",".join(sorted(cmd.paths)),
        )  # fmt: skip
        return [Update(payment)], [event]

    await commit_with_retry(deps, attempt, answer=lambda: result[0])
    return result[0]


__all__ = [
    "NOT_AT_PROCESSOR",
    "PAYMENT_FILTERS",
    "REFUND_FILTERS",
    "UPDATABLE_PAYMENT_FIELDS",
    "CreatePayment",
    "CreateRefund",
    "UpdatePayment",
    "cancel_payment",
    "capture_payment",
    "create_payment",
    "create_refund",
    "get_payment",
    "get_refund",
    "list_payments",
    "list_refunds",
    "mirror_external_refund",
    "record_payment_state",
    "record_refund_state",
    "refresh_payment",
    "refresh_refund",
    "resume_payment",
    "send_refund",
    "settle_unsent_payment",
    "settle_unsent_refund",
    "update_payment",
]
