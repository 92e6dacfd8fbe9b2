"""Use cases for payments and refunds.

Every processor write happens *between* two store commits: the intent is recorded first
(PENDING payment, PENDING refund with its amount reserved), then the processor is called
with a key derived from the request, then the outcome is recorded. A crash anywhere in
between leaves a record that the caller's retry (or reconciliation) resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from billing_service.domain.common import AuditEvent, Processor, validate_metadata, validate_text
from billing_service.domain.customers import Customer, PaymentMethod
from billing_service.domain.errors import (
    BillingError,
    ConcurrencyConflict,
    FailedPrecondition,
    InvalidArgument,
    PaymentDeclined,
)
from billing_service.domain.ids import new_id
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    CaptureMethod,
    NextAction,
    Payment,
    PaymentFailure,
    PaymentStatus,
    ProcessorPaymentState,
    ProcessorRefundState,
    Refund,
    RefundReason,
    RefundStatus,
)
from billing_service.service_layer.core import Deps, audit, commit, commit_with_retry, list_page, load
from billing_service.service_layer.customers import MAX_DESCRIPTION, ensure_processor_customer
from billing_service.service_layer.filtering import FilterField, FilterSpec, created, merge_filters
from billing_service.service_layer.idempotency import RequestContext, is_final
from billing_service.service_layer.ports import Change, Insert, PaymentRequest, RefundRequest, Update

MAX_URL = 2048


# Processors forget idempotency keys after 24 h (Stripe). A payment still PENDING after this
# long is never re-sent: its first attempt may have charged under a key the processor no
# longer remembers, so only reconciliation (which looks the payment up) may settle it.
PROCESSOR_KEY_WINDOW = timedelta(hours=23)


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
    deps: Deps, ctx: RequestContext, payment_id: str, state: ProcessorPaymentState, action: str
) -> Payment:
    """Applies a processor report to the stored payment and audits the move."""
    result: list[Payment] = []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        payment = await load(deps, Payment, payment_id, resource="payment", field_path="payment_id")
        result[:] = [payment]
        before = payment.status.value
        processor_id_before = payment.processor_id
        changed = payment.apply_processor_state(state, deps.clock.now())
        if not changed and processor_id_before == payment.processor_id:
            return None
        event = audit(
            deps, ctx, action, "payment", payment.id, before, payment.status.value,
            processor_id=payment.processor_id, amount_captured=payment.amount_captured,
            amount_capturable=payment.amount_capturable,
            failure_code=(payment.failure.decline_code or payment.failure.code) if payment.failure else None,
        )  # fmt: skip
        return [Update(payment)], [event]

    await commit_with_retry(deps, attempt)
    return result[0]


async def create_payment(deps: Deps, ctx: RequestContext, cmd: CreatePayment) -> Payment:
    """Records a payment, has the processor confirm it, and records the outcome.

    Raises:
        PaymentDeclined: The processor declined; the payment is kept as FAILED and its id
            is in the error metadata.
    """
    payment = await deps.store.get(Payment, ctx.resource_id)
    if payment is None:
        customer = await load(deps, Customer, cmd.customer_id, resource="customer", field_path="customer_id")
        method = await load(
            deps, PaymentMethod, cmd.payment_method_id, resource="payment_method", field_path="payment_method_id"
        )
        if method.customer_id != customer.id:
            raise InvalidArgument.field("payment_method_id", "does not belong to this customer")
        method.ensure_usable()
        deps.processor(method.processor)  # fail before writing if it is not configured
        now = deps.clock.now()
        payment = Payment(
            id=ctx.resource_id,
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
        )
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
        return payment  # a resumed request whose outcome was already recorded
    if deps.clock.now() - payment.created_at > PROCESSOR_KEY_WINDOW:
        raise FailedPrecondition(
            f"payment {payment.id} has been pending too long to be re-sent safely; reconciliation will settle it",
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
    adapter = deps.processor(payment.processor)
    try:
        processor_customer = await ensure_processor_customer(deps, customer, payment.processor)
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
        await record_payment_state(deps, ctx, payment.id, failed, "payment.failed")
        exc.metadata["payment_id"] = payment.id
        raise
    except BillingError as exc:
        # Any final refusal (invalid at the processor, not supported, misconfigured) ends the
        # payment as FAILED; a retryable one (processor or store unavailable, a write
        # conflict) leaves it PENDING for the retry to resume.
        if is_final(exc):
            failed = ProcessorPaymentState(
                processor_id="",
                status=PaymentStatus.FAILED,
                failure=PaymentFailure(code=exc.reason.lower(), message=exc.message),
            )
            await record_payment_state(deps, ctx, payment.id, failed, "payment.failed")
            exc.metadata["payment_id"] = payment.id
        elif processor_payment_id := exc.metadata.get("processor_payment_id", ""):
            # The processor acted but its answer could not be read: keep its id on the PENDING
            # payment so refreshes and reconciliation can find what it did.
            linked = ProcessorPaymentState(processor_id=processor_payment_id, status=PaymentStatus.PENDING)
            await record_payment_state(deps, ctx, payment.id, linked, "payment.processor_linked")
        raise
    return await record_payment_state(deps, ctx, payment.id, state, f"payment.{state.status.value}")


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
REFUND_FILTERS = FilterSpec(
    {"status": FilterField("status", enum=RefundStatus, enum_prefix="REFUND_STATUS_"), "create_time": created()}
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
    state = await deps.processor(payment.processor).capture_payment(
        payment.processor_id, to_capture, idempotency_key=ctx.processor_key("capture")
    )
    return await record_payment_state(deps, ctx, payment.id, state, "payment.captured")


async def cancel_payment(deps: Deps, ctx: RequestContext, payment_id: str) -> Payment:
    """Cancels a payment that has not been captured (voids an authorization)."""
    payment = await load(deps, Payment, payment_id, resource="payment", field_path="payment_id")
    if ctx.attempt > 1 and payment.status is PaymentStatus.CANCELED:
        return payment
    payment.ensure_cancelable()
    if payment.processor_id:
        state = await deps.processor(payment.processor).cancel_payment(
            payment.processor_id, idempotency_key=ctx.processor_key("cancel")
        )
    else:  # never reached the processor: nothing to void there
        state = ProcessorPaymentState(processor_id="", status=PaymentStatus.CANCELED)
    return await record_payment_state(deps, ctx, payment.id, state, "payment.canceled")


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


async def record_refund_state(deps: Deps, ctx: RequestContext, refund_id: str, state: ProcessorRefundState) -> Refund:
    """Applies a processor report to a refund and moves its money on the payment."""
    result: list[Refund] = []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        refund = await load(deps, Refund, refund_id, resource="refund", field_path="refund_id")
        result[:] = [refund]
        processor_id_before = refund.processor_id
        before = refund.apply_processor_state(state, deps.clock.now())
        if before is None:
            return ([Update(refund)], []) if processor_id_before != refund.processor_id else None
        payment = await load(deps, Payment, refund.payment_id, resource="payment", field_path="payment_id")
        payment.settle_refund(refund.amount.amount_minor, before=before, after=refund.status, now=deps.clock.now())
        events = [
            audit(
                deps, ctx, f"refund.{refund.status.value}", "refund", refund.id, before.value, refund.status.value,
                payment_id=payment.id, amount_minor=refund.amount.amount_minor, failure_reason=refund.failure_reason,
                currency=refund.amount.currency,
            ),
            audit(
                deps, ctx, "payment.refund_settled", "payment", payment.id, payment.status.value, payment.status.value,
                refund_id=refund.id, amount_refunded=payment.amount_refunded,
            ),
        ]  # fmt: skip
        return [Update(refund), Update(payment)], events

    await commit_with_retry(deps, attempt)
    return result[0]


async def create_refund(deps: Deps, ctx: RequestContext, cmd: CreateRefund) -> Refund:
    """Reserves the amount on the payment, refunds at the processor, records the result.

    The reservation is a versioned write of the payment together with the PENDING refund,
    so concurrent refunds can never together exceed the captured amount.
    """
    refund = await deps.store.get(Refund, ctx.resource_id)
    if refund is None:
        created: list[Refund] = []

        async def reserve() -> tuple[Sequence[Change], Sequence[AuditEvent]]:
            payment = await load(deps, Payment, cmd.payment_id, resource="payment", field_path="payment_id")
            amount = payment.reserve_refund(cmd.amount)
            now = deps.clock.now()
            new = Refund(
                id=ctx.resource_id,
                payment_id=payment.id,
                processor=payment.processor,
                amount=amount,
                reason=cmd.reason,
                status=RefundStatus.PENDING,
                metadata=dict(cmd.metadata),
                created_at=now,
                updated_at=now,
            )
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
        refund = created[0]
    if refund.status is not RefundStatus.PENDING or refund.processor_id:
        return refund  # resumed after the processor's answer was recorded

    payment = await load(deps, Payment, refund.payment_id, resource="payment", field_path="payment_id")
    request = RefundRequest(
        refund_id=refund.id,
        processor_payment_id=payment.processor_id,
        amount=refund.amount,
        reason=refund.reason,
        metadata=refund.metadata,
    )
    try:
        state = await deps.processor(refund.processor).create_refund(
            request, idempotency_key=ctx.processor_key("refund")
        )
    except BillingError as exc:
        if not is_final(exc):
            raise  # the reservation stays: the processor may have refunded; the retry resumes
        await record_refund_state(
            deps,
            ctx,
            refund.id,
            ProcessorRefundState(processor_id="", status=RefundStatus.FAILED, failure_reason=exc.reason),
        )
        exc.metadata["refund_id"] = refund.id
        raise
    return await record_refund_state(deps, ctx, refund.id, state)


async def mirror_external_refund(
    deps: Deps, ctx: RequestContext, processor: Processor, state: ProcessorRefundState
) -> Refund | None:
    """Records on its payment a refund made outside the service (e.g. in a processor dashboard).

    Returns:
        The mirrored (or already mirrored) refund; None when the refund is not about one of
        our payments, or is one of ours (the processor echoed our id).

    Raises:
        ConcurrencyConflict: A refund of ours on that payment is still waiting for its
            processor id; retry later rather than risk counting one refund twice.
    """
    if state.refund_id or not state.processor_payment_id or state.amount_minor <= 0:
        return None
    payment = await deps.store.find_one(
        Payment, {"processor": processor.value, "processor_id": state.processor_payment_id}
    )
    if payment is None:
        return None
    result: list[Refund] = []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        known = await deps.store.find_one(Refund, {"processor": processor.value, "processor_id": state.processor_id})
        if known is not None:
            result[:] = [known]
            return None
        in_flight = await deps.store.find_one(
            Refund, {"payment_id": payment.id, "status": RefundStatus.PENDING.value, "processor_id": ""}
        )
        if in_flight is not None:
            raise ConcurrencyConflict(f"refund {in_flight.id} of payment {payment.id} is still in flight")
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


async def refresh_payment(deps: Deps, ctx: RequestContext, payment_id: str) -> Payment:
    """Re-reads a payment from its processor and converges on it."""
    payment = await load(deps, Payment, payment_id, resource="payment", field_path="payment_id")
    if not payment.processor_id:
        return payment
    state = await deps.processor(payment.processor).get_payment(payment.processor_id)
    return await record_payment_state(deps, ctx, payment.id, state, f"payment.{state.status.value}")


async def get_refund(deps: Deps, refund_id: str) -> Refund:
    """Returns one refund."""
    return await load(deps, Refund, refund_id, resource="refund", field_path="refund_id")


async def list_refunds(
    deps: Deps, *, payment_id: str, page_size: int, page_token: str, filter_expr: str = ""
) -> tuple[list[Refund], str]:
    """Lists refunds newest first, optionally of one payment and filtered (REFUND_FILTERS)."""
    filters = merge_filters({"payment_id": payment_id} if payment_id else {}, filter_expr, REFUND_FILTERS)
    return await list_page(deps, Refund, filters, requested_size=page_size, token=page_token)


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

    await commit_with_retry(deps, attempt)
    return result[0]
