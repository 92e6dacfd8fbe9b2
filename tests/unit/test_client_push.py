"""The receivers' helper in the client package (billing_client.push): verify, then parse."""

from __future__ import annotations

import json

import pytest
from billing.v1 import billing_event_pb2 as ev
from billing.v1 import billing_service_pb2 as bpb
from billing.v1 import common_pb2
from billing_client import push
from google.protobuf import json_format

from billing_service.domain import event_signing as sig

NOW = 1_764_633_600
SECRET = "whsec_client_test_secret_0000000000000000000"


def delivered_body() -> bytes:
    """A body as the service POSTs it: the event's proto3 JSON with the original field names."""
    event = ev.BillingEvent(
        id="bev_01",
        type="payment.succeeded",
        resource_type="payment",
        resource_id="pay_01",
        customer_id="cus_01",
        resource_version=2,
        previous_status="pending",
        cursor="00000000000004d2-k3v9x2qa",
        cause=ev.EventCause(request=ev.RequestCause(caller="orders", request_id="r-1")),
        payment=bpb.Payment(
            id="pay_01",
            customer_id="cus_01",
            amount=common_pb2.Money(amount_minor=2500, currency="EUR"),
            status=bpb.PAYMENT_STATUS_SUCCEEDED,
        ),
    )
    return json_format.MessageToJson(event, preserving_proto_field_name=True, indent=2).encode()


def test_construct_event_verifies_and_parses_a_delivery() -> None:
    body = delivered_body()
    header = sig.sign(body, [SECRET], timestamp=NOW)
    event = push.construct_event(body, header, SECRET, now=NOW)
    assert event.id == "bev_01" and event.type == "payment.succeeded"
    assert event.WhichOneof("resource") == "payment"
    assert event.payment.amount.amount_minor == 2500 and event.payment.status == bpb.PAYMENT_STATUS_SUCCEEDED
    assert event.cause.WhichOneof("kind") == "request" and event.cause.request.request_id == "r-1"


def test_fields_a_newer_server_adds_are_ignored() -> None:
    data = json.loads(delivered_body())
    data["a_field_from_the_future"] = {"x": 1}
    data["payment"]["another_new_field"] = "y"
    body = json.dumps(data).encode()
    event = push.construct_event(body, sig.sign(body, [SECRET], timestamp=NOW), [SECRET], now=NOW)
    assert event.resource_id == "pay_01"


def test_nothing_is_parsed_when_the_signature_fails() -> None:
    body = delivered_body()
    header = sig.sign(body, [SECRET], timestamp=NOW)
    with pytest.raises(push.SignatureVerificationError) as caught:
        push.construct_event(body.replace(b"2500", b"9999"), header, SECRET, now=NOW)
    assert caught.value.reason == "signature_mismatch"
    with pytest.raises(push.SignatureVerificationError) as caught:
        push.construct_event(body, header, SECRET, now=NOW + 301)
    assert caught.value.reason == "timestamp_outside_tolerance"
    # It is a ValueError, so frameworks that map ValueError to 400 do the right thing.
    assert issubclass(push.SignatureVerificationError, ValueError)


def test_a_verified_body_that_is_not_an_event_is_a_parse_error() -> None:
    body = b'{"id": 5, "payment": "not an object"}'
    with pytest.raises(json_format.ParseError):
        push.construct_event(body, sig.sign(body, [SECRET], timestamp=NOW), SECRET, now=NOW)


def test_the_system_clock_is_used_by_default() -> None:
    import time

    body = delivered_body()
    now = int(time.time())
    assert push.verify_signature(body, sig.sign(body, [SECRET], timestamp=now), SECRET) == now
    with pytest.raises(push.SignatureVerificationError):
        push.verify_signature(body, sig.sign(body, [SECRET], timestamp=now - 3600), SECRET)


@pytest.mark.parametrize("secrets", [[], [""], ""])
def test_missing_secrets_are_a_programming_error(secrets: list[str] | str) -> None:
    body = delivered_body()
    with pytest.raises(ValueError) as caught:
        push.verify_signature(body, sig.sign(body, [SECRET], timestamp=NOW), secrets, now=NOW)
    assert not isinstance(caught.value, push.SignatureVerificationError)
