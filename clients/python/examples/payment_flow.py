"""The payment flow of the client's README, run against a live server.

It doubles as the Python client's smoke test: tests/clients runs it in two
virtualenvs, one with the oldest and one with the newest runtime that
clients/python/pyproject.toml declares. It must therefore run on every Python
and runtime in those ranges (Python 3.9 included: no 3.10+ syntax at runtime).

Usage: python payment_flow.py HOST:PORT
Exits with an AssertionError on the first surprise.
"""

from __future__ import annotations

import asyncio
import platform
import random
import sys
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from billing.v1 import billing_service_pb2 as billing
from billing.v1 import billing_service_pb2_grpc as billing_grpc
from billing.v1 import common_pb2 as common
from google.protobuf import __version__ as protobuf_version
from google.rpc import error_details_pb2
from grpc_status import rpc_status

T = TypeVar("T")

# Codes after which the same request may be sent again with the same request_id.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}


def new_request_id() -> str:
    """One idempotency key per logical operation; keep it across retries."""
    return str(uuid.uuid4())


async def error_details(call: grpc.aio.Call) -> tuple[error_details_pb2.ErrorInfo, float | None]:
    """The ErrorInfo of a failed call and the RetryInfo delay in seconds, if the server sent one."""
    info, delay = error_details_pb2.ErrorInfo(), None
    # grpc_status defines `aio` behind a version check that type checkers cannot read.
    status = await rpc_status.aio.from_call(call)  # type: ignore[attr-defined]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return info, delay


async def with_retries(send: Callable[[], grpc.aio.UnaryUnaryCall[Any, T]], attempts: int = 4) -> T:
    """Make a call, and make it again with the very same request on retryable errors.

    Args:
        send: Starts one call; it must reuse one request message, so every attempt
            carries the same request_id and the server never acts twice.
        attempts: How many calls at most.

    Returns:
        The first successful response.
    """
    for attempt in range(1, attempts + 1):
        call = send()
        try:
            return await call
        except grpc.aio.AioRpcError as err:
            if err.code() not in RETRYABLE or attempt == attempts:
                raise
            # Honour the server's RetryInfo when present, else back off exponentially with jitter.
            _, delay = await error_details(call)
            await asyncio.sleep(delay if delay is not None else random.uniform(0, 0.2 * 2**attempt))
    raise AssertionError("unreachable")


async def payment_flow(target: str) -> None:
    """Customer, card, payment, its retry, a partial refund, a read back and one refused request."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = billing_grpc.BillingServiceStub(channel)

        created = await stub.CreateCustomer(
            billing.CreateCustomerRequest(request_id=new_request_id(), email="ada@example.com", name="Ada"),
            timeout=10,
        )
        customer = created.customer
        assert customer.id.startswith("cus_"), customer

        attached = await stub.AttachPaymentMethod(
            billing.AttachPaymentMethodRequest(
                request_id=new_request_id(), customer_id=customer.id, processor_token="pm_card_visa"
            ),
            timeout=10,
        )
        card = attached.payment_method

        request = billing.CreatePaymentRequest(
            request_id=new_request_id(),
            customer_id=customer.id,
            payment_method_id=card.id,
            amount=common.Money(amount_minor=2500, currency="EUR"),  # 25.00 EUR in minor units
            description="smoke test",
        )
        payment = (await with_retries(lambda: stub.CreatePayment(request, timeout=10))).payment
        assert payment.status == billing.PAYMENT_STATUS_SUCCEEDED, payment

        # A retry with the same request_id returns the first result: nothing is charged twice.
        again = (await stub.CreatePayment(request, timeout=10)).payment
        assert again.id == payment.id, (again.id, payment.id)

        refund_request = billing.CreateRefundRequest(
            request_id=new_request_id(), payment_id=payment.id, amount=common.Money(amount_minor=500, currency="EUR")
        )
        refund = (await with_retries(lambda: stub.CreateRefund(refund_request, timeout=10))).refund
        assert refund.status == billing.REFUND_STATUS_SUCCEEDED, refund

        read = (await stub.GetPayment(billing.GetPaymentRequest(payment_id=payment.id), timeout=10)).payment
        assert read.amount_refunded == common.Money(amount_minor=500, currency="EUR"), read

        # The same request_id with different parameters is refused and changes nothing.
        reused = billing.CreatePaymentRequest()
        reused.CopyFrom(request)
        reused.amount.amount_minor = 9999
        call = stub.CreatePayment(reused, timeout=10)
        try:
            await call
        except grpc.aio.AioRpcError as err:
            info, _ = await error_details(call)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            assert (info.domain, info.reason) == ("billing.v1", "IDEMPOTENCY_KEY_REUSED"), info
        else:
            raise AssertionError("a reused request_id with another amount was accepted")

    print(
        f"payment flow ok: {payment.id} refunded 5.00 EUR of 25.00 EUR; Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}, protobuf {protobuf_version}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} HOST:PORT")
    asyncio.run(payment_flow(sys.argv[1]))
