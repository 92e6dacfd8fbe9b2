"""Client secrets are returned to the caller and never stored (issue 11, item 8).

A 3-D Secure payment's PaymentIntent client secret lets a browser finish the payment, so
it must not rest anywhere: after the whole flow (create, retry with the same request id,
get, list, cancel) no collection, cached idempotent response or log record holds it, while
the caller still gets a live one from CreatePayment (first call and retry) and GetPayment.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import common_pb2

from billing_service.observability.logging import setup_logging
from tests.e2e.conftest import Api
from tests.helpers import rich, rid, usd

# stripe-python's HTTPXClient posts the form body as a string (``data=``), which httpx deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


async def _all_documents(api: Api) -> str:
    db = api.runtime.store.database
    parts = []
    for name in await db.list_collection_names():
        async for doc in db[name].find({}):
            parts.append(f"{name}: {doc!r}")
    return "\n".join(parts)


async def _three_ds_flow(api: Api, processor: common_pb2.Processor.ValueType) -> tuple[pb.Payment, list[str]]:
    b = api.billing
    customer = (
        await b.CreateCustomer(
            pb.CreateCustomerRequest(request_id=rid(), email="3ds@example.com", default_processor=processor)
        )
    ).customer
    method = (
        await b.AttachPaymentMethod(
            pb.AttachPaymentMethodRequest(
                request_id=rid(), customer_id=customer.id, processor_token="pm_card_authenticationRequired"
            )
        )
    ).payment_method
    request = pb.CreatePaymentRequest(
        request_id=rid(), customer_id=customer.id, payment_method_id=method.id, amount=usd(4200),
        description="3DS order", return_url="https://shop.example.com/return",
    )  # fmt: skip
    created = (await b.CreatePayment(request)).payment
    assert created.status == pb.PAYMENT_STATUS_REQUIRES_ACTION
    secrets = [created.next_action.client_secret]
    replayed = (await b.CreatePayment(request)).payment  # the same request_id: the stored answer
    got = (await b.GetPayment(pb.GetPaymentRequest(payment_id=created.id))).payment
    secrets += [replayed.next_action.client_secret, got.next_action.client_secret]
    listed = (await b.ListPayments(pb.ListPaymentsRequest(customer_id=customer.id))).payments
    assert [p.id for p in listed] == [created.id]
    assert listed[0].next_action.client_secret == ""  # lists come from our records only
    return created, secrets


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every record at DEBUG through the service's own handler (JSON + redaction filter)."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    handler = setup_logging("DEBUG", stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


@pytest.mark.parametrize("processor", ["fake", "stripe"])
async def test_client_secret_reaches_the_caller_and_rests_nowhere(
    api: Api, processors_api: Api, processor: str, json_logs: io.StringIO
) -> None:
    running = api if processor == "fake" else processors_api
    code = common_pb2.PROCESSOR_FAKE if processor == "fake" else common_pb2.PROCESSOR_STRIPE
    created, secrets = await _three_ds_flow(running, code)
    assert all(s and "_secret_" in s for s in secrets), secrets
    assert len(set(secrets)) == 1  # one PaymentIntent, one live secret
    secret = secrets[0]
    canceled = (
        await running.billing.CancelPayment(pb.CancelPaymentRequest(request_id=rid(), payment_id=created.id))
    ).payment
    assert canceled.status == pb.PAYMENT_STATUS_CANCELED and not canceled.next_action.client_secret
    stored = await _all_documents(running)
    assert created.id in stored  # the scan does see the payment
    assert secret not in stored
    assert secret.split("_secret_")[1] not in stored
    logged = json_logs.getvalue()
    # (Depending on its own settings the Stripe SDK logs response bodies at DEBUG; the
    # redaction filter masks the secret in them.)
    assert secret not in logged


async def test_get_payment_without_the_processor_is_unavailable_not_secretless(api: Api) -> None:
    created, _ = await _three_ds_flow(api, common_pb2.PROCESSOR_FAKE)
    from billing_service.domain.errors import ProcessorError

    api.fake.fail_next("get_payment", ProcessorError("down", reason="PROCESSOR_UNAVAILABLE", retryable=True))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.GetPayment(pb.GetPaymentRequest(payment_id=created.id))
    assert rich(err.value).code == grpc.StatusCode.UNAVAILABLE
    again = (await api.billing.GetPayment(pb.GetPaymentRequest(payment_id=created.id))).payment
    assert again.next_action.client_secret
