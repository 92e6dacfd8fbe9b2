"""Use cases for customers and payment methods."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from billing_service.domain.common import AuditEvent, Processor, validate_metadata, validate_text
from billing_service.domain.customers import (
    Customer,
    PaymentMethod,
    PaymentMethodStatus,
    validate_email,
)
from billing_service.domain.errors import InvalidArgument
from billing_service.service_layer.core import Deps, audit, commit, commit_with_retry, list_page, load
from billing_service.service_layer.executions import unwritten
from billing_service.service_layer.filtering import FilterField, FilterSpec, created, merge_filters
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import Change, Insert, Update

MAX_NAME = 256
MAX_DESCRIPTION = 1000
MAX_TOKEN = 255
UPDATABLE_CUSTOMER_FIELDS = frozenset({"email", "name", "description", "metadata", "default_processor"})
CUSTOMER_FILTERS = FilterSpec({"email": FilterField("email"), "create_time": created()})
PAYMENT_METHOD_FILTERS = FilterSpec(
    {
        "status": FilterField("status", enum=PaymentMethodStatus, enum_prefix="PAYMENT_METHOD_STATUS_"),
        "create_time": created(),
    }
)


@dataclass(frozen=True)
class CreateCustomer:
    """Command: create a customer."""

    email: str
    name: str
    description: str
    metadata: dict[str, str]
    default_processor: Processor | None

    def validate(self) -> None:
        """Raises InvalidArgument naming the first bad field."""
        validate_email(self.email)
        validate_text(self.name, "name", max_len=MAX_NAME)
        validate_text(self.description, "description", max_len=MAX_DESCRIPTION)
        validate_metadata(self.metadata)


def new_customer(deps: Deps, cmd: CreateCustomer, customer_id: str) -> Customer:
    """The customer ``create_customer`` stores (also its ``validate_only`` preview)."""
    now = deps.clock.now()
    return Customer(
        id=customer_id,
        email=cmd.email,
        name=cmd.name,
        description=cmd.description,
        metadata=dict(cmd.metadata),
        default_processor=cmd.default_processor or deps.default_processor,
        created_at=now,
        updated_at=now,
    )


async def create_customer(deps: Deps, ctx: RequestContext, cmd: CreateCustomer) -> Customer:
    """Creates a customer. Processor-side customers are created lazily on first use."""
    # A fresh execution's resource id is stored nowhere yet: nothing to resume.
    existing = None if unwritten(ctx.resource_id) else await deps.store.get(Customer, ctx.resource_id)
    if existing is not None:  # a resumed request that already wrote its customer
        return existing
    customer = new_customer(deps, cmd, ctx.resource_id)
    event = audit(deps, ctx, "customer.created", "customer", customer.id, "", "active")
    await commit(deps, [Insert(customer)], [event], answer=customer)
    return customer


@dataclass(frozen=True)
class UpdateCustomer:
    """Command: change the masked fields of a customer."""

    customer_id: str
    paths: frozenset[str]
    email: str
    name: str
    description: str
    metadata: dict[str, str]
    default_processor: Processor | None

    def validate(self) -> None:
        """Raises InvalidArgument naming the first bad field."""
        if not self.customer_id:
            raise InvalidArgument.field("customer.id", "is required")
        if not self.paths:
            raise InvalidArgument.field("update_mask", "must name at least one field")
        unknown = sorted(self.paths - UPDATABLE_CUSTOMER_FIELDS)
        if unknown:
            raise InvalidArgument.field(
                "update_mask",
                f"cannot update {', '.join(unknown)}; allowed: {', '.join(sorted(UPDATABLE_CUSTOMER_FIELDS))}",
            )
        validate_email(self.email, "customer.email")
        validate_text(self.name, "customer.name", max_len=MAX_NAME)
        validate_text(self.description, "customer.description", max_len=MAX_DESCRIPTION)
        validate_metadata(self.metadata, field_path="customer.metadata")
        if "default_processor" in self.paths and self.default_processor is None:
            raise InvalidArgument.field("customer.default_processor", "must name a processor")


async def update_customer(deps: Deps, ctx: RequestContext, cmd: UpdateCustomer) -> Customer:
    """Applies a masked update and copies it to every processor that knows the customer."""
    result: list[Customer] = []

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]]:
        customer = await load(deps, Customer, cmd.customer_id, resource="customer", field_path="customer.id")
        for path in cmd.paths:
            value = getattr(cmd, path)
            setattr(customer, path, dict(value) if path == "metadata" else value)
        customer.updated_at = deps.clock.now()
        result[:] = [customer]
        event = audit(
            deps,
            ctx,
            "customer.updated",
            "customer",
            customer.id,
            "active",
            "active",
            fields=",".join(sorted(cmd.paths)),
        )
        return [Update(customer)], [event]

    # Without processors to copy the change to, this commit is the request's last word.
    await commit_with_retry(deps, attempt, answer=lambda: None if result[0].processor_refs else result[0])
    customer = result[0]
    for name, ref in customer.processor_refs.items():
        processor = deps.processor(Processor(name))
        await processor.update_customer(ref, customer, idempotency_key=ctx.processor_key(f"customer-{name}"))
    return customer


async def get_customer(deps: Deps, customer_id: str) -> Customer:
    """Returns one customer."""
    return await load(deps, Customer, customer_id, resource="customer", field_path="customer_id")


async def list_customers(
    deps: Deps, *, email: str, page_size: int, page_token: str, filter_expr: str = ""
) -> tuple[list[Customer], str]:
    """Lists customers newest first, optionally by exact email and a filter (CUSTOMER_FILTERS)."""
    filters = merge_filters({"email": email} if email else {}, filter_expr, CUSTOMER_FILTERS)
    return await list_page(deps, Customer, filters, requested_size=page_size, token=page_token)


async def ensure_processor_customer(
    deps: Deps, customer: Customer, processor: Processor, *, ctx: RequestContext
) -> str:
    """Returns the customer's id at ``processor``, creating it there on first use.

    The processor call's idempotency key depends only on (customer, processor), so two
    concurrent first uses get the same processor-side customer. The link is audited
    (``customer.processor_linked``) as the request ``ctx`` that needed it.
    """
    ref = customer.processor_refs.get(processor.value)
    if ref:
        return ref
    adapter = deps.processor(processor)
    ref = await adapter.create_customer(customer, idempotency_key=f"billing-customer-{customer.id}-{processor.value}")

    # The first attempt starts from the customer as the caller read it (a stale copy loses
    # the version check, and the next attempt reads it).
    first = [copy.deepcopy(customer)]

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        fresh = first.pop() if first else await load(deps, Customer, customer.id, resource="customer",
                                                       field_path="customer_id")  # fmt: skip
        if fresh.processor_refs.get(processor.value):
            return None
        fresh.processor_refs[processor.value] = ref
        fresh.updated_at = deps.clock.now()
        linked = audit(
            deps, ctx, "customer.processor_linked", "customer", fresh.id, "active", "active",
            processor=processor.value, processor_id=ref,
        )  # fmt: skip
        return [Update(fresh)], [linked]

    await commit_with_retry(deps, attempt)
    customer.processor_refs[processor.value] = ref
    return ref


@dataclass(frozen=True)
class AttachPaymentMethod:
    """Command: attach a processor token to a customer."""

    customer_id: str
    processor: Processor | None
    token: str

    def validate(self) -> None:
        """Raises InvalidArgument naming the first bad field."""
        if not self.customer_id:
            raise InvalidArgument.field("customer_id", "is required")
        if not self.token:
            raise InvalidArgument.field("processor_token", "is required")
        validate_text(self.token, "processor_token", max_len=MAX_TOKEN)


async def attach_payment_method(deps: Deps, ctx: RequestContext, cmd: AttachPaymentMethod) -> PaymentMethod:
    """Attaches a token at the processor and records its display data only."""
    # A fresh execution's resource id is stored nowhere yet: nothing to resume.
    existing = None if unwritten(ctx.resource_id) else await deps.store.get(PaymentMethod, ctx.resource_id)
    if existing is not None:
        return existing
    customer = await load(deps, Customer, cmd.customer_id, resource="customer", field_path="customer_id")
    processor = cmd.processor or customer.default_processor
    adapter = deps.processor(processor)
    processor_customer = await ensure_processor_customer(deps, customer, processor, ctx=ctx)
    attached = await adapter.attach_payment_method(
        processor_customer, cmd.token, idempotency_key=ctx.processor_key("attach")
    )
    now = deps.clock.now()
    method = PaymentMethod(
        id=ctx.resource_id,
        customer_id=customer.id,
        processor=processor,
        processor_id=attached.processor_id,
        type=attached.type,
        brand=attached.brand,
        last4=attached.last4,
        exp_month=attached.exp_month,
        exp_year=attached.exp_year,
        status=PaymentMethodStatus.ATTACHED,
        created_at=now,
        updated_at=now,
    )
    event = audit(
        deps, ctx, "payment_method.attached", "payment_method", method.id, "", method.status.value,
        customer_id=customer.id, processor=processor.value, processor_id=method.processor_id,
    )  # fmt: skip
    await commit(deps, [Insert(method)], [event], answer=method)
    return method


async def detach_payment_method(deps: Deps, ctx: RequestContext, payment_method_id: str) -> PaymentMethod:
    """Detaches a payment method at the processor and marks it detached."""
    method = await load(
        deps, PaymentMethod, payment_method_id, resource="payment_method", field_path="payment_method_id"
    )
    if method.status is PaymentMethodStatus.DETACHED:
        if ctx.attempt > 1:
            return method  # a resumed request whose detach was already recorded
        method.detach(deps.clock.now())  # raises the precise precondition error
    await deps.processor(method.processor).detach_payment_method(
        method.processor_id, idempotency_key=ctx.processor_key("detach")
    )

    # The first attempt starts from the method as read above (a stale copy loses the version
    # check, and the next attempt reads it).
    first = [copy.deepcopy(method)]

    async def attempt() -> tuple[Sequence[Change], Sequence[AuditEvent]] | None:
        fresh = (
            first.pop()
            if first
            else await load(
                deps, PaymentMethod, payment_method_id, resource="payment_method", field_path="payment_method_id"
            )
        )
        if fresh.status is PaymentMethodStatus.DETACHED:
            method.__dict__.update(fresh.__dict__)
            return None
        before, after = fresh.detach(deps.clock.now())
        method.__dict__.update(fresh.__dict__)
        return [Update(fresh)], [audit(deps, ctx, "payment_method.detached", "payment_method", fresh.id, before, after)]

    await commit_with_retry(deps, attempt, answer=lambda: method)
    return method


async def list_payment_methods(
    deps: Deps, *, customer_id: str, page_size: int, page_token: str, filter_expr: str = ""
) -> tuple[list[PaymentMethod], str]:
    """Lists a customer's payment methods newest first, optionally filtered (PAYMENT_METHOD_FILTERS)."""
    filters = merge_filters({"customer_id": customer_id}, filter_expr, PAYMENT_METHOD_FILTERS)
    await load(deps, Customer, customer_id, resource="customer", field_path="customer_id")
    return await list_page(deps, PaymentMethod, filters, requested_size=page_size, token=page_token)


async def get_payment_method(deps: Deps, payment_method_id: str) -> PaymentMethod:
    """Returns one payment method."""
    return await load(deps, PaymentMethod, payment_method_id, resource="payment_method", field_path="payment_method_id")
