"""BillingService: customers, payment methods, payments, refunds, disputes and the audit trail.

One entry per RPC (see :mod:`.runner`); required fields are enforced from the schema's
annotations, so the decoders only convert and run the commands' own validation.
"""

from __future__ import annotations

from collections.abc import Callable

from billing.v1 import billing_service_pb2

from billing_service.domain.customers import PaymentMethod
from billing_service.domain.money import Money
from billing_service.entrypoints.grpc_api import convert
from billing_service.entrypoints.grpc_api.runner import Read, Runner, Service, Write
from billing_service.service_layer import customers, disputes, payments, previews
from billing_service.service_layer.core import Deps, list_audit_events
from billing_service.service_layer.idempotency import Idempotency

# -- decoders: request -> validated command ------------------------------------------


def _create_customer(r: billing_service_pb2.CreateCustomerRequest) -> customers.CreateCustomer:
    cmd = customers.CreateCustomer(
        email=r.email,
        name=r.name,
        description=r.description,
        metadata=dict(r.metadata),
        default_processor=convert.processor_from_pb(r.default_processor, "default_processor"),
    )
    cmd.validate()
    return cmd


def _update_customer(r: billing_service_pb2.UpdateCustomerRequest) -> customers.UpdateCustomer:
    c = r.customer
    cmd = customers.UpdateCustomer(
        customer_id=c.id,
        paths=frozenset(r.update_mask.paths),
        email=c.email,
        name=c.name,
        description=c.description,
        metadata=dict(c.metadata),
        default_processor=convert.processor_from_pb(c.default_processor, "customer.default_processor"),
    )
    cmd.validate()
    return cmd


def _attach(r: billing_service_pb2.AttachPaymentMethodRequest) -> customers.AttachPaymentMethod:
    cmd = customers.AttachPaymentMethod(
        customer_id=r.customer_id,
        processor=convert.processor_from_pb(r.processor, "processor"),
        token=r.processor_token,
    )
    cmd.validate()
    return cmd


def _create_payment(r: billing_service_pb2.CreatePaymentRequest) -> payments.CreatePayment:
    convert.enum_in(r.capture_method, convert.CAPTURE_FROM_PB, "capture_method")  # type: ignore[arg-type]
    amount = convert.money_from_pb(r.amount, "amount", present=r.HasField("amount"))
    assert amount is not None
    cmd = payments.CreatePayment(
        customer_id=r.customer_id,
        payment_method_id=r.payment_method_id,
        amount=amount,
        capture_method=convert.CAPTURE_FROM_PB[r.capture_method],
        description=r.description,
        metadata=dict(r.metadata),
        off_session=r.off_session,
        return_url=r.return_url,
    )
    cmd.validate()
    return cmd


def _update_payment(r: billing_service_pb2.UpdatePaymentRequest) -> payments.UpdatePayment:
    p = r.payment
    cmd = payments.UpdatePayment(
        payment_id=p.id, paths=frozenset(r.update_mask.paths), description=p.description, metadata=dict(p.metadata)
    )
    cmd.validate()
    return cmd


def _capture(r: billing_service_pb2.CapturePaymentRequest) -> tuple[str, Money | None]:
    return r.payment_id, convert.money_from_pb(r.amount, "amount", present=r.HasField("amount"), required=False)


def _create_refund(r: billing_service_pb2.CreateRefundRequest) -> payments.CreateRefund:
    convert.enum_in(r.reason, convert.REFUND_REASON_FROM_PB, "reason")  # type: ignore[arg-type]
    cmd = payments.CreateRefund(
        payment_id=r.payment_id,
        amount=convert.money_from_pb(r.amount, "amount", present=r.HasField("amount"), required=False),
        reason=convert.REFUND_REASON_FROM_PB[r.reason],
        metadata=dict(r.metadata),
    )
    cmd.validate()
    return cmd


_Attached = PaymentMethod | previews.PaymentMethodPreview


def _payment_method(m: _Attached) -> billing_service_pb2.AttachPaymentMethodResponse:
    if isinstance(m, previews.PaymentMethodPreview):
        return billing_service_pb2.AttachPaymentMethodResponse(payment_method=convert.payment_method_preview_pb(m))
    return billing_service_pb2.AttachPaymentMethodResponse(payment_method=convert.payment_method_pb(m))


async def _live_client_secret(
    deps: Deps, response: billing_service_pb2.CreatePaymentResponse
) -> billing_service_pb2.CreatePaymentResponse:
    """A replayed answer was stored without its client secret: the caller gets the live one."""
    if response.payment.status == billing_service_pb2.PAYMENT_STATUS_REQUIRES_ACTION:
        live = await payments.get_payment(deps, response.payment.id)
        if live.next_action is not None and live.next_action.client_secret:
            response.payment.next_action.client_secret = live.next_action.client_secret
    return response


# -- the RPCs -------------------------------------------------------------------------

BILLING = Service(
    billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"],
    [
        Write(
            "CreateCustomer", billing_service_pb2.CreateCustomerRequest, "customers:write", "cus",
            _create_customer, customers.create_customer,
            lambda c: billing_service_pb2.CreateCustomerResponse(customer=convert.customer_pb(c)),
            preview=previews.preview_customer,
        ),
        Read(
            "GetCustomer", billing_service_pb2.GetCustomerRequest, "customers:read",
            lambda deps, r: customers.get_customer(deps, r.customer_id),
            lambda c: billing_service_pb2.GetCustomerResponse(customer=convert.customer_pb(c)),
        ),
        Write(
            "UpdateCustomer", billing_service_pb2.UpdateCustomerRequest, "customers:write", "cus",
            _update_customer, customers.update_customer,
            lambda c: billing_service_pb2.UpdateCustomerResponse(customer=convert.customer_pb(c)),
        ),
        Read(
            "ListCustomers", billing_service_pb2.ListCustomersRequest, "customers:read",
            lambda deps, r: customers.list_customers(
                deps, email=r.email, page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter
            ),
            lambda page: billing_service_pb2.ListCustomersResponse(
                customers=map(convert.customer_pb, page[0]), next_page_token=page[1]
            ),
        ),
        # The preview (no card details yet) and the attached method share one encoder.
        Write[
            billing_service_pb2.AttachPaymentMethodRequest, customers.AttachPaymentMethod,
            _Attached, billing_service_pb2.AttachPaymentMethodResponse,
        ](
            "AttachPaymentMethod", billing_service_pb2.AttachPaymentMethodRequest, "customers:write", "pm",
            _attach, customers.attach_payment_method, _payment_method, preview=previews.preview_payment_method,
        ),
        Read(
            "GetPaymentMethod", billing_service_pb2.GetPaymentMethodRequest, "customers:read",
            lambda deps, r: customers.get_payment_method(deps, r.payment_method_id),
            lambda m: billing_service_pb2.GetPaymentMethodResponse(payment_method=convert.payment_method_pb(m)),
        ),
        Read(
            "ListPaymentMethods", billing_service_pb2.ListPaymentMethodsRequest, "customers:read",
            lambda deps, r: customers.list_payment_methods(
                deps, customer_id=r.customer_id, page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter
            ),
            lambda page: billing_service_pb2.ListPaymentMethodsResponse(
                payment_methods=map(convert.payment_method_pb, page[0]), next_page_token=page[1]
            ),
        ),
        Write(
            "DetachPaymentMethod", billing_service_pb2.DetachPaymentMethodRequest, "customers:write", "pm",
            lambda r: r.payment_method_id, customers.detach_payment_method,
            lambda m: billing_service_pb2.DetachPaymentMethodResponse(payment_method=convert.payment_method_pb(m)),
        ),
        Write(
            "CreatePayment", billing_service_pb2.CreatePaymentRequest, "payments:write", "pay",
            _create_payment, payments.create_payment,
            lambda p: billing_service_pb2.CreatePaymentResponse(payment=convert.payment_pb(p)),
            preview=previews.preview_payment, on_replay=_live_client_secret,
        ),
        Read(
            "GetPayment", billing_service_pb2.GetPaymentRequest, "payments:read",
            lambda deps, r: payments.get_payment(deps, r.payment_id),
            lambda p: billing_service_pb2.GetPaymentResponse(payment=convert.payment_pb(p)),
        ),
        Read(
            "ListPayments", billing_service_pb2.ListPaymentsRequest, "payments:read",
            lambda deps, r: payments.list_payments(
                deps, customer_id=r.customer_id, status=convert.payment_status_filter(r.status),
                page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter,
            ),
            lambda page: billing_service_pb2.ListPaymentsResponse(
                payments=map(convert.payment_pb, page[0]), next_page_token=page[1]
            ),
        ),
        Write(
            "UpdatePayment", billing_service_pb2.UpdatePaymentRequest, "payments:write", "pay",
            _update_payment, payments.update_payment,
            lambda p: billing_service_pb2.UpdatePaymentResponse(payment=convert.payment_pb(p)),
        ),
        Write(
            "CapturePayment", billing_service_pb2.CapturePaymentRequest, "payments:write", "pay",
            _capture, lambda deps, ctx, c: payments.capture_payment(deps, ctx, *c),
            lambda p: billing_service_pb2.CapturePaymentResponse(payment=convert.payment_pb(p)),
        ),
        Write(
            "CancelPayment", billing_service_pb2.CancelPaymentRequest, "payments:write", "pay",
            lambda r: r.payment_id, payments.cancel_payment,
            lambda p: billing_service_pb2.CancelPaymentResponse(payment=convert.payment_pb(p)),
        ),
        Write(
            "CreateRefund", billing_service_pb2.CreateRefundRequest, "refunds:write", "re",
            _create_refund, payments.create_refund,
            lambda f: billing_service_pb2.CreateRefundResponse(refund=convert.refund_pb(f)),
            preview=previews.preview_refund,
        ),
        Read(
            "GetRefund", billing_service_pb2.GetRefundRequest, "payments:read",
            lambda deps, r: payments.get_refund(deps, r.refund_id),
            lambda f: billing_service_pb2.GetRefundResponse(refund=convert.refund_pb(f)),
        ),
        Read(
            "ListRefunds", billing_service_pb2.ListRefundsRequest, "payments:read",
            lambda deps, r: payments.list_refunds(
                deps, payment_id=r.payment_id, page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter
            ),
            lambda page: billing_service_pb2.ListRefundsResponse(
                refunds=map(convert.refund_pb, page[0]), next_page_token=page[1]
            ),
        ),
        Read(
            "ListAuditEvents", billing_service_pb2.ListAuditEventsRequest, "audit:read",
            lambda deps, r: list_audit_events(deps, r.resource_id, requested_size=r.page_size, token=r.page_token),
            lambda page: billing_service_pb2.ListAuditEventsResponse(
                audit_events=map(convert.audit_event_pb, page[0]), next_page_token=page[1]
            ),
        ),
        Read(
            "GetDispute", billing_service_pb2.GetDisputeRequest, "payments:read",
            lambda deps, r: disputes.get_dispute(deps, r.dispute_id),
            lambda d: billing_service_pb2.GetDisputeResponse(dispute=convert.dispute_pb(d)),
        ),
        Read(
            "ListDisputes", billing_service_pb2.ListDisputesRequest, "payments:read",
            lambda deps, r: disputes.list_disputes(
                deps, payment_id=r.payment_id, page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter
            ),
            lambda page: billing_service_pb2.ListDisputesResponse(
                disputes=map(convert.dispute_pb, page[0]), next_page_token=page[1]
            ),
        ),
    ],
)  # fmt: skip


class BillingServicer:
    """Implements billing.v1.BillingService: one handler per entry of :data:`BILLING`.

    Args:
        deps: Ports for the use cases.
        idempotency: Runs mutating requests at most once per request_id.
        store_serving: False while health finds the store down (calls then fail at once).
    """

    def __init__(self, deps: Deps, idempotency: Idempotency, store_serving: Callable[[], bool] = lambda: True) -> None:
        Runner(deps, idempotency, store_serving).bind(self, BILLING)
