"""BillingService: customers, payment methods, payments, refunds and the audit trail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc as pb_grpc

from billing_service.entrypoints.grpc_api import convert as cv
from billing_service.entrypoints.grpc_api.base import Ctx, Servicer, require
from billing_service.service_layer import customers as cu
from billing_service.service_layer import disputes as dsp
from billing_service.service_layer import payments as pay
from billing_service.service_layer.core import list_audit_events
from billing_service.service_layer.idempotency import RequestContext

_SVC = "/billing.v1.BillingService/"


class BillingServicer(Servicer, pb_grpc.BillingServiceServicer):
    """Implements billing.v1.BillingService over the use cases."""

    # -- customers -----------------------------------------------------------

    async def CreateCustomer(self, request: pb.CreateCustomerRequest, context: Ctx) -> pb.CreateCustomerResponse:
        """Creates a customer."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.CreateCustomerResponse]]:
            cmd = cu.CreateCustomer(
                email=request.email,
                name=request.name,
                description=request.description,
                metadata=dict(request.metadata),
                default_processor=cv.processor_from_pb(request.default_processor, "default_processor"),
            )
            cmd.validate()

            async def run(ctx: RequestContext) -> pb.CreateCustomerResponse:
                return pb.CreateCustomerResponse(customer=cv.customer_pb(await cu.create_customer(self.deps, ctx, cmd)))

            return run

        return await self._mutate(
            context, request, method=_SVC + "CreateCustomer", resource_prefix="cus",
            response_type=pb.CreateCustomerResponse, prepare=prepare,
        )  # fmt: skip

    async def GetCustomer(self, request: pb.GetCustomerRequest, context: Ctx) -> pb.GetCustomerResponse:
        """Returns a customer."""

        async def run() -> pb.GetCustomerResponse:
            customer = await cu.get_customer(self.deps, require(request.customer_id, "customer_id"))
            return pb.GetCustomerResponse(customer=cv.customer_pb(customer))

        return await self._read(context, _SVC + "GetCustomer", run)

    async def UpdateCustomer(self, request: pb.UpdateCustomerRequest, context: Ctx) -> pb.UpdateCustomerResponse:
        """Updates the fields named by the mask."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.UpdateCustomerResponse]]:
            c = request.customer
            paths = frozenset(request.update_mask.paths)
            cmd = cu.UpdateCustomer(
                customer_id=c.id,
                paths=paths,
                email=c.email,
                name=c.name,
                description=c.description,
                metadata=dict(c.metadata),
                default_processor=cv.processor_from_pb(c.default_processor, "customer.default_processor"),
            )
            cmd.validate()

            async def run(ctx: RequestContext) -> pb.UpdateCustomerResponse:
                return pb.UpdateCustomerResponse(customer=cv.customer_pb(await cu.update_customer(self.deps, ctx, cmd)))

            return run

        return await self._mutate(
            context, request, method=_SVC + "UpdateCustomer", resource_prefix="cus",
            response_type=pb.UpdateCustomerResponse, prepare=prepare,
        )  # fmt: skip

    async def ListCustomers(self, request: pb.ListCustomersRequest, context: Ctx) -> pb.ListCustomersResponse:
        """Lists customers."""

        async def run() -> pb.ListCustomersResponse:
            items, token = await cu.list_customers(
                self.deps, email=request.email, page_size=request.page_size, page_token=request.page_token
            )
            return pb.ListCustomersResponse(customers=[cv.customer_pb(c) for c in items], next_page_token=token)

        return await self._read(context, _SVC + "ListCustomers", run)

    # -- payment methods -----------------------------------------------------

    async def AttachPaymentMethod(
        self, request: pb.AttachPaymentMethodRequest, context: Ctx
    ) -> pb.AttachPaymentMethodResponse:
        """Attaches a processor token."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.AttachPaymentMethodResponse]]:
            cmd = cu.AttachPaymentMethod(
                customer_id=request.customer_id,
                processor=cv.processor_from_pb(request.processor, "processor"),
                token=request.processor_token,
            )
            cmd.validate()

            async def run(ctx: RequestContext) -> pb.AttachPaymentMethodResponse:
                method = await cu.attach_payment_method(self.deps, ctx, cmd)
                return pb.AttachPaymentMethodResponse(payment_method=cv.payment_method_pb(method))

            return run

        return await self._mutate(
            context, request, method=_SVC + "AttachPaymentMethod", resource_prefix="pm",
            response_type=pb.AttachPaymentMethodResponse, prepare=prepare,
        )  # fmt: skip

    async def ListPaymentMethods(
        self, request: pb.ListPaymentMethodsRequest, context: Ctx
    ) -> pb.ListPaymentMethodsResponse:
        """Lists a customer's payment methods."""

        async def run() -> pb.ListPaymentMethodsResponse:
            items, token = await cu.list_payment_methods(
                self.deps,
                customer_id=require(request.customer_id, "customer_id"),
                page_size=request.page_size,
                page_token=request.page_token,
            )
            return pb.ListPaymentMethodsResponse(
                payment_methods=[cv.payment_method_pb(m) for m in items], next_page_token=token
            )

        return await self._read(context, _SVC + "ListPaymentMethods", run)

    async def DetachPaymentMethod(
        self, request: pb.DetachPaymentMethodRequest, context: Ctx
    ) -> pb.DetachPaymentMethodResponse:
        """Detaches a payment method."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.DetachPaymentMethodResponse]]:
            method_id = require(request.payment_method_id, "payment_method_id")

            async def run(ctx: RequestContext) -> pb.DetachPaymentMethodResponse:
                method = await cu.detach_payment_method(self.deps, ctx, method_id)
                return pb.DetachPaymentMethodResponse(payment_method=cv.payment_method_pb(method))

            return run

        return await self._mutate(
            context, request, method=_SVC + "DetachPaymentMethod", resource_prefix="pm",
            response_type=pb.DetachPaymentMethodResponse, prepare=prepare,
        )  # fmt: skip

    # -- payments ------------------------------------------------------------

    async def CreatePayment(self, request: pb.CreatePaymentRequest, context: Ctx) -> pb.CreatePaymentResponse:
        """Creates and confirms a payment."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.CreatePaymentResponse]]:
            cv.enum_in(request.capture_method, cv.CAPTURE_FROM_PB, "capture_method")  # type: ignore[arg-type]
            amount = cv.money_from_pb(request.amount, "amount", present=request.HasField("amount"))
            assert amount is not None
            cmd = pay.CreatePayment(
                customer_id=request.customer_id,
                payment_method_id=request.payment_method_id,
                amount=amount,
                capture_method=cv.CAPTURE_FROM_PB[request.capture_method],
                description=request.description,
                metadata=dict(request.metadata),
                off_session=request.off_session,
                return_url=request.return_url,
            )
            cmd.validate()

            async def run(ctx: RequestContext) -> pb.CreatePaymentResponse:
                return pb.CreatePaymentResponse(payment=cv.payment_pb(await pay.create_payment(self.deps, ctx, cmd)))

            return run

        return await self._mutate(
            context, request, method=_SVC + "CreatePayment", resource_prefix="pay",
            response_type=pb.CreatePaymentResponse, prepare=prepare, on_replay=self._live_client_secret,
        )  # fmt: skip

    async def _live_client_secret(self, response: pb.CreatePaymentResponse) -> pb.CreatePaymentResponse:
        """A replayed answer was stored without its client secret: the caller gets the live one."""
        if response.payment.status == pb.PAYMENT_STATUS_REQUIRES_ACTION:
            live = await pay.get_payment(self.deps, response.payment.id)
            if live.next_action is not None and live.next_action.client_secret:
                response.payment.next_action.client_secret = live.next_action.client_secret
        return response

    async def GetPayment(self, request: pb.GetPaymentRequest, context: Ctx) -> pb.GetPaymentResponse:
        """Returns a payment."""

        async def run() -> pb.GetPaymentResponse:
            payment = await pay.get_payment(self.deps, require(request.payment_id, "payment_id"))
            return pb.GetPaymentResponse(payment=cv.payment_pb(payment))

        return await self._read(context, _SVC + "GetPayment", run)

    async def ListPayments(self, request: pb.ListPaymentsRequest, context: Ctx) -> pb.ListPaymentsResponse:
        """Lists payments."""

        async def run() -> pb.ListPaymentsResponse:
            status = None
            if request.status:
                cv.enum_in(request.status, cv.PAYMENT_STATUS_FROM_PB, "status")  # type: ignore[arg-type]
                status = cv.PAYMENT_STATUS_FROM_PB[request.status]
            items, token = await pay.list_payments(
                self.deps,
                customer_id=request.customer_id,
                status=status,
                page_size=request.page_size,
                page_token=request.page_token,
            )
            return pb.ListPaymentsResponse(payments=[cv.payment_pb(p) for p in items], next_page_token=token)

        return await self._read(context, _SVC + "ListPayments", run)

    async def CapturePayment(self, request: pb.CapturePaymentRequest, context: Ctx) -> pb.CapturePaymentResponse:
        """Captures an authorized payment."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.CapturePaymentResponse]]:
            payment_id = require(request.payment_id, "payment_id")
            amount = cv.money_from_pb(request.amount, "amount", present=request.HasField("amount"), required=False)

            async def run(ctx: RequestContext) -> pb.CapturePaymentResponse:
                payment = await pay.capture_payment(self.deps, ctx, payment_id, amount)
                return pb.CapturePaymentResponse(payment=cv.payment_pb(payment))

            return run

        return await self._mutate(
            context, request, method=_SVC + "CapturePayment", resource_prefix="pay",
            response_type=pb.CapturePaymentResponse, prepare=prepare,
        )  # fmt: skip

    async def CancelPayment(self, request: pb.CancelPaymentRequest, context: Ctx) -> pb.CancelPaymentResponse:
        """Cancels a payment before capture."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.CancelPaymentResponse]]:
            payment_id = require(request.payment_id, "payment_id")

            async def run(ctx: RequestContext) -> pb.CancelPaymentResponse:
                return pb.CancelPaymentResponse(
                    payment=cv.payment_pb(await pay.cancel_payment(self.deps, ctx, payment_id))
                )

            return run

        return await self._mutate(
            context, request, method=_SVC + "CancelPayment", resource_prefix="pay",
            response_type=pb.CancelPaymentResponse, prepare=prepare,
        )  # fmt: skip

    # -- refunds -------------------------------------------------------------

    async def CreateRefund(self, request: pb.CreateRefundRequest, context: Ctx) -> pb.CreateRefundResponse:
        """Refunds a captured payment."""

        def prepare() -> Callable[[RequestContext], Awaitable[pb.CreateRefundResponse]]:
            cv.enum_in(request.reason, cv.REFUND_REASON_FROM_PB, "reason")  # type: ignore[arg-type]
            cmd = pay.CreateRefund(
                payment_id=request.payment_id,
                amount=cv.money_from_pb(request.amount, "amount", present=request.HasField("amount"), required=False),
                reason=cv.REFUND_REASON_FROM_PB[request.reason],
                metadata=dict(request.metadata),
            )
            cmd.validate()

            async def run(ctx: RequestContext) -> pb.CreateRefundResponse:
                return pb.CreateRefundResponse(refund=cv.refund_pb(await pay.create_refund(self.deps, ctx, cmd)))

            return run

        return await self._mutate(
            context, request, method=_SVC + "CreateRefund", resource_prefix="re",
            response_type=pb.CreateRefundResponse, prepare=prepare,
        )  # fmt: skip

    async def GetRefund(self, request: pb.GetRefundRequest, context: Ctx) -> pb.GetRefundResponse:
        """Returns a refund."""

        async def run() -> pb.GetRefundResponse:
            refund = await pay.get_refund(self.deps, require(request.refund_id, "refund_id"))
            return pb.GetRefundResponse(refund=cv.refund_pb(refund))

        return await self._read(context, _SVC + "GetRefund", run)

    async def ListRefunds(self, request: pb.ListRefundsRequest, context: Ctx) -> pb.ListRefundsResponse:
        """Lists refunds."""

        async def run() -> pb.ListRefundsResponse:
            items, token = await pay.list_refunds(
                self.deps, payment_id=request.payment_id, page_size=request.page_size, page_token=request.page_token
            )
            return pb.ListRefundsResponse(refunds=[cv.refund_pb(r) for r in items], next_page_token=token)

        return await self._read(context, _SVC + "ListRefunds", run)

    # -- audit ---------------------------------------------------------------

    async def ListAuditEvents(self, request: pb.ListAuditEventsRequest, context: Ctx) -> pb.ListAuditEventsResponse:
        """Lists a resource's audit trail, oldest first."""

        async def run() -> pb.ListAuditEventsResponse:
            items, token = await list_audit_events(
                self.deps,
                require(request.resource_id, "resource_id"),
                requested_size=request.page_size,
                token=request.page_token,
            )
            return pb.ListAuditEventsResponse(audit_events=[cv.audit_event_pb(e) for e in items], next_page_token=token)

        return await self._read(context, _SVC + "ListAuditEvents", run)

    # -- disputes ------------------------------------------------------------

    async def ListDisputes(self, request: pb.ListDisputesRequest, context: Ctx) -> pb.ListDisputesResponse:
        """Lists disputes, optionally of one payment."""

        async def run() -> pb.ListDisputesResponse:
            items, token = await dsp.list_disputes(
                self.deps, payment_id=request.payment_id, page_size=request.page_size, page_token=request.page_token
            )
            return pb.ListDisputesResponse(disputes=[cv.dispute_pb(d) for d in items], next_page_token=token)

        return await self._read(context, _SVC + "ListDisputes", run)
