"""BillingService: customers, payment methods, payments, refunds, disputes and the audit trail.

One entry per RPC (see :mod:`.runner`); required fields are enforced from the schema's
annotations, so the decoders only convert and run the commands' own validation.
"""

from __future__ import annotations

from collections.abc import Callable

from billing.v1 import billing_service_pb2 as pb

from billing_service.domain.customers import PaymentMethod
from billing_service.domain.money import Money
from billing_service.entrypoints.grpc_api import convert as cv
from billing_service.entrypoints.grpc_api.runner import Read, Runner, Service, Write
from billing_service.service_layer import customers as cu
from billing_service.service_layer import disputes as dsp
from billing_service.service_layer import payments as pay
from billing_service.service_layer import previews
from billing_service.service_layer.core import Deps, list_audit_events
from billing_service.service_layer.idempotency import Idempotency

# -- decoders: request -> validated command ------------------------------------------


def _create_customer(r: pb.CreateCustomerRequest) -> cu.CreateCustomer:
    cmd = cu.CreateCustomer(
        email=r.email,
        name=r.name,
        description=r.description,
        metadata=dict(r.metadata),
        default_processor=cv.processor_from_pb(r.default_processor, "default_processor"),
    )
    cmd.validate()
    return cmd


def _update_customer(r: pb.UpdateCustomerRequest) -> cu.UpdateCustomer:
    c = r.customer
    cmd = cu.UpdateCustomer(
        customer_id=c.id,
        paths=frozenset(r.update_mask.paths),
        email=c.email,
        name=c.name,
        description=c.description,
        metadata=dict(c.metadata),
        default_processor=cv.processor_from_pb(c.default_processor, "customer.default_processor"),
    )
    cmd.validate()
    return cmd


def _attach(r: pb.AttachPaymentMethodRequest) -> cu.AttachPaymentMethod:
    cmd = cu.AttachPaymentMethod(
        customer_id=r.customer_id,
        processor=cv.processor_from_pb(r.processor, "processor"),
        token=r.processor_token,
    )
    cmd.validate()
    return cmd


def _create_payment(r: pb.CreatePaymentRequest) -> pay.CreatePayment:
    cv.enum_in(r.capture_method, cv.CAPTURE_FROM_PB, "capture_method")  # type: ignore[arg-type]
    amount = cv.money_from_pb(r.amount, "amount", present=r.HasField("amount"))
    assert amount is not None
    cmd = pay.CreatePayment(
        customer_id=r.customer_id,
        payment_method_id=r.payment_method_id,
        amount=amount,
        capture_method=cv.CAPTURE_FROM_PB[r.capture_method],
        description=r.description,
        metadata=dict(r.metadata),
        off_session=r.off_session,
        return_url=r.return_url,
    )
    cmd.validate()
    return cmd


def _update_payment(r: pb.UpdatePaymentRequest) -> pay.UpdatePayment:
    p = r.payment
    cmd = pay.UpdatePayment(
        payment_id=p.id, paths=frozenset(r.update_mask.paths), description=p.description, metadata=dict(p.metadata)
    )
    cmd.validate()
    return cmd


def _capture(r: pb.CapturePaymentRequest) -> tuple[str, Money | None]:
    return r.payment_id, cv.money_from_pb(r.amount, "amount", present=r.HasField("amount"), required=False)


def _create_refund(r: pb.CreateRefundRequest) -> pay.CreateRefund:
    cv.enum_in(r.reason, cv.REFUND_REASON_FROM_PB, "reason")  # type: ignore[arg-type]
    cmd = pay.CreateRefund(
        payment_id=r.payment_id,
        amount=cv.money_from_pb(r.amount, "amount", present=r.HasField("amount"), required=False),
        reason=cv.REFUND_REASON_FROM_PB[r.reason],
        metadata=dict(r.metadata),
    )
    cmd.validate()
    return cmd


_Attached = PaymentMethod | previews.PaymentMethodPreview


def _payment_method(m: _Attached) -> pb.AttachPaymentMethodResponse:
    if isinstance(m, previews.PaymentMethodPreview):
        return pb.AttachPaymentMethodResponse(payment_method=cv.payment_method_preview_pb(m))
    return pb.AttachPaymentMethodResponse(payment_method=cv.payment_method_pb(m))


async def _live_client_secret(deps: Deps, response: pb.CreatePaymentResponse) -> pb.CreatePaymentResponse:
    """A replayed answer was stored without its client secret: the caller gets the live one."""
    if response.payment.status == pb.PAYMENT_STATUS_REQUIRES_ACTION:
        live = await pay.get_payment(deps, response.payment.id)
        if live.next_action is not None and live.next_action.client_secret:
            response.payment.next_action.client_secret = live.next_action.client_secret
    return response


# -- the RPCs -------------------------------------------------------------------------

BILLING = Service(
    pb.DESCRIPTOR.services_by_name["BillingService"],
    [
        Write(
            "CreateCustomer", pb.CreateCustomerRequest, "customers:write", "cus",
            _create_customer, cu.create_customer, lambda c: pb.CreateCustomerResponse(customer=cv.customer_pb(c)),
            preview=previews.preview_customer,
        ),
        Read(
            "GetCustomer", pb.GetCustomerRequest, "customers:read",
            lambda deps, r: cu.get_customer(deps, r.customer_id),
            lambda c: pb.GetCustomerResponse(customer=cv.customer_pb(c)),
        ),
        Write(
            "UpdateCustomer", pb.UpdateCustomerRequest, "customers:write", "cus",
            _update_customer, cu.update_customer, lambda c: pb.UpdateCustomerResponse(customer=cv.customer_pb(c)),
        ),
        Read(
            "ListCustomers", pb.ListCustomersRequest, "customers:read",
            lambda deps, r: cu.list_customers(
                deps, email=r.email, page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter
            ),
            lambda page: pb.ListCustomersResponse(customers=map(cv.customer_pb, page[0]), next_page_token=page[1]),
        ),
        # The preview (no card details yet) and the attached method share one encoder.
        Write[pb.AttachPaymentMethodRequest, cu.AttachPaymentMethod, _Attached, pb.AttachPaymentMethodResponse](
            "AttachPaymentMethod", pb.AttachPaymentMethodRequest, "customers:write", "pm",
            _attach, cu.attach_payment_method, _payment_method, preview=previews.preview_payment_method,
        ),
        Read(
            "GetPaymentMethod", pb.GetPaymentMethodRequest, "customers:read",
            lambda deps, r: cu.get_payment_method(deps, r.payment_method_id),
            lambda m: pb.GetPaymentMethodResponse(payment_method=cv.payment_method_pb(m)),
        ),
        Read(
            "ListPaymentMethods", pb.ListPaymentMethodsRequest, "customers:read",
            lambda deps, r: cu.list_payment_methods(
                deps, customer_id=r.customer_id, page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter
            ),
            lambda page: pb.ListPaymentMethodsResponse(
                payment_methods=map(cv.payment_method_pb, page[0]), next_page_token=page[1]
            ),
        ),
        Write(
            "DetachPaymentMethod", pb.DetachPaymentMethodRequest, "customers:write", "pm",
            lambda r: r.payment_method_id, cu.detach_payment_method,
            lambda m: pb.DetachPaymentMethodResponse(payment_method=cv.payment_method_pb(m)),
        ),
        Write(
            "CreatePayment", pb.CreatePaymentRequest, "payments:write", "pay",
            _create_payment, pay.create_payment, lambda p: pb.CreatePaymentResponse(payment=cv.payment_pb(p)),
            preview=previews.preview_payment, on_replay=_live_client_secret,
        ),
        Read(
            "GetPayment", pb.GetPaymentRequest, "payments:read",
            lambda deps, r: pay.get_payment(deps, r.payment_id),
            lambda p: pb.GetPaymentResponse(payment=cv.payment_pb(p)),
        ),
        Read(
            "ListPayments", pb.ListPaymentsRequest, "payments:read",
            lambda deps, r: pay.list_payments(
                deps, customer_id=r.customer_id, status=cv.payment_status_filter(r.status),
                page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter,
            ),
            lambda page: pb.ListPaymentsResponse(payments=map(cv.payment_pb, page[0]), next_page_token=page[1]),
        ),
        Write(
            "UpdatePayment", pb.UpdatePaymentRequest, "payments:write", "pay",
            _update_payment, pay.update_payment, lambda p: pb.UpdatePaymentResponse(payment=cv.payment_pb(p)),
        ),
        Write(
            "CapturePayment", pb.CapturePaymentRequest, "payments:write", "pay",
            _capture, lambda deps, ctx, c: pay.capture_payment(deps, ctx, *c),
            lambda p: pb.CapturePaymentResponse(payment=cv.payment_pb(p)),
        ),
        Write(
            "CancelPayment", pb.CancelPaymentRequest, "payments:write", "pay",
            lambda r: r.payment_id, pay.cancel_payment, lambda p: pb.CancelPaymentResponse(payment=cv.payment_pb(p)),
        ),
        Write(
            "CreateRefund", pb.CreateRefundRequest, "refunds:write", "re",
            _create_refund, pay.create_refund, lambda f: pb.CreateRefundResponse(refund=cv.refund_pb(f)),
            preview=previews.preview_refund,
        ),
        Read(
            "GetRefund", pb.GetRefundRequest, "payments:read",
            lambda deps, r: pay.get_refund(deps, r.refund_id),
            lambda f: pb.GetRefundResponse(refund=cv.refund_pb(f)),
        ),
        Read(
            "ListRefunds", pb.ListRefundsRequest, "payments:read",
            lambda deps, r: pay.list_refunds(
                deps, payment_id=r.payment_id, page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter
            ),
            lambda page: pb.ListRefundsResponse(refunds=map(cv.refund_pb, page[0]), next_page_token=page[1]),
        ),
        Read(
            "ListAuditEvents", pb.ListAuditEventsRequest, "audit:read",
            lambda deps, r: list_audit_events(deps, r.resource_id, requested_size=r.page_size, token=r.page_token),
            lambda page: pb.ListAuditEventsResponse(
                audit_events=map(cv.audit_event_pb, page[0]), next_page_token=page[1]
            ),
        ),
        Read(
            "GetDispute", pb.GetDisputeRequest, "payments:read",
            lambda deps, r: dsp.get_dispute(deps, r.dispute_id),
            lambda d: pb.GetDisputeResponse(dispute=cv.dispute_pb(d)),
        ),
        Read(
            "ListDisputes", pb.ListDisputesRequest, "payments:read",
            lambda deps, r: dsp.list_disputes(
                deps, payment_id=r.payment_id, page_size=r.page_size, page_token=r.page_token, filter_expr=r.filter
            ),
            lambda page: pb.ListDisputesResponse(disputes=map(cv.dispute_pb, page[0]), next_page_token=page[1]),
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
