"""The runner's error mapping and the interceptors, through ``grpc_testing`` (no sockets).

Every ``BillingError`` class is raised by a use case and must leave as its status code
with exactly one ErrorInfo (domain ``billing.v1``, a listed reason), a BadRequest for bad
input and a RetryInfo for retryable failures. The expected codes below are written out by
hand: they are the contract's, not a copy of ``errors.py``'s table.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, cast

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb

from billing_service.config import Secret, Settings
from billing_service.domain import errors as e
from billing_service.entrypoints.grpc_api.auth import AuthInterceptor, AuthPolicy
from billing_service.entrypoints.grpc_api.billing import BILLING
from billing_service.entrypoints.grpc_api.errors import PROCESSOR_REASON_KEY, REASONS
from billing_service.entrypoints.grpc_api.runner import Read, Runner, Service
from billing_service.observability.context import current_caller
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import Idempotency
from tests.grpc_testing_support import deps_without_ports, invoke, socketless_server, sync_servicer

SERVICE = pb.DESCRIPTOR.services_by_name["BillingService"]
REQUEST_TYPES = {rpc.name: rpc.request_type for rpc in BILLING.rpcs}

# One instance of every error class, with the code, whether a BadRequest and a RetryInfo
# must come with it.
CASES: list[tuple[e.BillingError, grpc.StatusCode, bool, bool]] = [
    (e.InvalidArgument.field("amount", "must be positive"), grpc.StatusCode.INVALID_ARGUMENT, True, False),
    (e.CardDataNotAllowed("looks like a card", violations=[e.FieldViolation("metadata", "card")]),
     grpc.StatusCode.INVALID_ARGUMENT, True, False),
    (e.IdempotencyKeyReused("reused"), grpc.StatusCode.INVALID_ARGUMENT, False, False),
    (e.RequestInProgress("busy"), grpc.StatusCode.ABORTED, False, True),
    (e.NotFound("payment", "pay_1", field_path="payment_id"), grpc.StatusCode.NOT_FOUND, False, False),
    (e.FailedPrecondition("no"), grpc.StatusCode.FAILED_PRECONDITION, False, False),
    (e.IllegalTransition("no", reason="PAYMENT_NOT_CAPTURABLE"), grpc.StatusCode.FAILED_PRECONDITION, False, False),
    (e.RefundExceedsCaptured("too much"), grpc.StatusCode.FAILED_PRECONDITION, False, False),
    (e.CaptureExceedsAuthorized("too much"), grpc.StatusCode.FAILED_PRECONDITION, False, False),
    (e.PaymentDeclined("declined", metadata={"decline_code": "insufficient_funds"}),
     grpc.StatusCode.FAILED_PRECONDITION, False, False),
    (e.NotSupportedByProcessor("no"), grpc.StatusCode.FAILED_PRECONDITION, False, False),
    (e.ProcessorMismatch("no"), grpc.StatusCode.FAILED_PRECONDITION, False, False),
    (e.ConcurrencyConflict("again"), grpc.StatusCode.ABORTED, False, True),
    (e.ProcessorError("refused", reason="PROCESSOR_STATE_CONFLICT"), grpc.StatusCode.FAILED_PRECONDITION, False, False),
    (e.ProcessorError("later", reason="PROCESSOR_RATE_LIMITED", retryable=True, retry_after_seconds=2.5),
     grpc.StatusCode.UNAVAILABLE, False, True),
    (e.ProcessorUnavailable("down"), grpc.StatusCode.UNAVAILABLE, False, True),
    (e.ProcessorConfigurationError("bad key"), grpc.StatusCode.FAILED_PRECONDITION, False, False),
    (e.StoreUnavailable("down"), grpc.StatusCode.UNAVAILABLE, False, True),
    (e.Unauthenticated("who"), grpc.StatusCode.UNAUTHENTICATED, False, False),
    (e.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED, False, False),
]  # fmt: skip


def _all_error_classes() -> set[type[e.BillingError]]:
    out: set[type[e.BillingError]] = set()
    todo: list[type[e.BillingError]] = [e.BillingError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__ == e.__name__ and sub not in out:
                out.add(sub)
                todo.append(sub)
    return out


def test_every_error_class_has_a_case() -> None:
    assert {type(err) for err, *_ in CASES} == _all_error_classes()


def _raising_service(raise_: Any) -> Service:
    """Every BillingService RPC as a read whose use case calls ``raise_``."""

    async def run(deps: Deps, request: Any) -> Any:
        result = raise_()
        return await result if inspect.isawaitable(result) else result

    return Service(SERVICE, [Read(m.name, REQUEST_TYPES[m.name], "payments:read", run, _same) for m in SERVICE.methods])


class _Servicer:
    pass


def _same(out: Any) -> Any:
    return out


def _server(service: Service, interceptors: list[Any] | None = None, *, fake_time: bool = False) -> Any:
    servicer = _Servicer()
    # No use case reaches a port here: the runner is only asked to run and map errors.
    Runner(deps_without_ports(), cast(Idempotency, None)).bind(servicer, service)
    return socketless_server({SERVICE: sync_servicer(SERVICE, servicer, interceptors or [])}, fake_time=fake_time)


@pytest.mark.parametrize(("error", "code", "bad_request", "retry"), CASES, ids=lambda v: type(v).__name__)
def test_each_error_class_maps_to_its_status(
    error: e.BillingError, code: grpc.StatusCode, bad_request: bool, retry: bool
) -> None:
    def raise_() -> None:
        raise error

    out = invoke(_server(_raising_service(raise_)), SERVICE, "GetPayment", pb.GetPaymentRequest(payment_id="pay_1"))
    assert out.code == code
    assert (out.error_infos, out.domain, out.reason) == (1, "billing.v1", error.reason)
    assert out.reason in REASONS
    assert (out.violations is not None) == bad_request
    assert (out.retry_delay_ms is not None) == retry
    assert out.details == error.message
    assert out.metadata is not None
    for key, value in error.metadata.items():
        assert out.metadata[key] == value


def test_retry_delay_follows_the_processor_hint() -> None:
    def raise_() -> None:
        raise e.ProcessorError("later", reason="PROCESSOR_RATE_LIMITED", retryable=True, retry_after_seconds=2.5)

    out = invoke(_server(_raising_service(raise_)), SERVICE, "GetPayment", pb.GetPaymentRequest(payment_id="pay_1"))
    assert out.retry_delay_ms == 2500


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (e.ProcessorError("Stripe refused", reason="RESOURCE_MISSING"), "PROCESSOR_ERROR"),
        (e.InvalidArgument("Stripe refused amount", reason="AMOUNT_TOO_SMALL"), "INVALID_ARGUMENT"),
        (e.ProcessorError("PayPal refused", reason="ORDER_NOT_APPROVED"), "PROCESSOR_ERROR"),
    ],
)
def test_a_processors_own_code_travels_in_metadata_under_a_listed_reason(error: e.BillingError, reason: str) -> None:
    def raise_() -> None:
        raise error

    out = invoke(_server(_raising_service(raise_)), SERVICE, "GetPayment", pb.GetPaymentRequest(payment_id="pay_1"))
    assert out.reason == reason
    assert out.metadata is not None and out.metadata[PROCESSOR_REASON_KEY] == error.reason


def test_an_unexpected_exception_is_internal_and_says_nothing_more() -> None:
    def raise_() -> None:
        raise KeyError("secret detail")

    out = invoke(_server(_raising_service(raise_)), SERVICE, "GetPayment", pb.GetPaymentRequest(payment_id="pay_1"))
    assert (out.code, out.reason, out.error_infos) == (grpc.StatusCode.INTERNAL, "INTERNAL", 1)
    assert "secret" not in out.details


def test_work_past_the_deadline_is_deadline_exceeded() -> None:
    def raise_() -> Any:
        return asyncio.sleep(5)

    service = _raising_service(raise_)
    # grpc_testing's clock is frozen, so the cut-off observed is the runner's own.
    server = _server(service, fake_time=True)
    out = invoke(server, SERVICE, "GetPayment", pb.GetPaymentRequest(payment_id="pay_1"), timeout=0.2)
    assert (out.code, out.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")


# -- interceptors ------------------------------------------------------------------------


def _whoami_service() -> Service:
    """Every RPC answers GetCustomerResponse naming the caller the interceptor admitted."""

    async def run(deps: Deps, request: Any) -> Any:
        return pb.GetCustomerResponse(customer=pb.Customer(id=current_caller.get()))

    return Service(SERVICE, [Read(m.name, REQUEST_TYPES[m.name], "payments:read", run, _same) for m in SERVICE.methods])


def _auth() -> AuthInterceptor:
    settings = Settings(
        auth_mode="token",
        auth_tokens=(("checkout", Secret("tok-checkout-0123456789")), ("ops", Secret("tok-ops-0123456789"))),
        caller_permissions=(("checkout", ("payments:read",)), ("ops", ("admin",))),
    )
    return AuthInterceptor(AuthPolicy.from_settings(settings))


@pytest.mark.parametrize(
    ("metadata", "method", "code", "reason", "caller"),
    [
        ((), "GetPayment", grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", ""),
        ((("authorization", "Bearer nope"),), "GetPayment", grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", ""),
        ((("authorization", "Basic tok-checkout-0123456789"),), "GetPayment", grpc.StatusCode.UNAUTHENTICATED,
         "UNAUTHENTICATED", ""),
        ((("authorization", "Bearer tok-checkout-0123456789"),), "GetPayment", grpc.StatusCode.OK, "", "checkout"),
        ((("authorization", "Bearer tok-checkout-0123456789"),), "CreateRefund", grpc.StatusCode.PERMISSION_DENIED,
         "PERMISSION_DENIED", ""),
        ((("authorization", "Bearer tok-ops-0123456789"),), "CreateRefund", grpc.StatusCode.OK, "", "ops"),
    ],
)  # fmt: skip
def test_auth_interceptor_admits_by_token_and_permission(
    metadata: tuple[tuple[str, str], ...], method: str, code: grpc.StatusCode, reason: str, caller: str
) -> None:
    server = _server(_whoami_service(), [_auth()])
    request = {
        "GetPayment": pb.GetPaymentRequest(payment_id="pay_1"),
        "CreateRefund": pb.CreateRefundRequest(request_id="r-1", payment_id="pay_1"),
    }[method]
    out = invoke(server, SERVICE, method, request, metadata=metadata)
    assert out.code == code
    if reason:
        assert (out.reason, out.error_infos) == (reason, 1)
        assert "tok-" not in out.details  # a token is never echoed
    else:
        assert out.response.customer.id == caller


def test_permission_denied_names_the_permission_the_rpc_declares() -> None:
    server = _server(_whoami_service(), [_auth()])
    out = invoke(
        server, SERVICE, "CreateRefund", pb.CreateRefundRequest(),
        metadata=(("authorization", "Bearer tok-checkout-0123456789"),),
    )  # fmt: skip
    assert out.metadata is not None
    assert out.metadata["permission"] == "refunds:write"  # from the CreateRefund entry
