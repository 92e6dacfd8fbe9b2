"""The schema's field behaviours are what the server enforces, for every RPC.

The cases are generated from the descriptors: for every REQUIRED field of every request
(and the id of every required resource), a request with everything else filled in but
that field goes through the real servicer (under ``grpc_testing``) and must come back
``INVALID_ARGUMENT`` with exactly that field violation, before any use case runs.
"""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest
from billing.v1 import billing_service_pb2 as bpb
from billing.v1 import common_pb2
from billing.v1 import subscription_service_pb2 as spb
from google.protobuf import field_mask_pb2, message_factory, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from billing_service.domain.errors import InvalidArgument
from billing_service.entrypoints.grpc_api.billing import BILLING, BillingServicer
from billing_service.entrypoints.grpc_api.field_behavior import (
    IDENTIFIER,
    OUTPUT_ONLY,
    REQUIRED,
    behaviors,
    enforce,
    identifier_field,
    is_resource,
    updatable_paths,
)
from billing_service.entrypoints.grpc_api.runner import Write
from billing_service.entrypoints.grpc_api.subscriptions import SUBSCRIPTIONS, SubscriptionServicer
from billing_service.service_layer.customers import UPDATABLE_CUSTOMER_FIELDS
from billing_service.service_layer.idempotency import Idempotency
from billing_service.service_layer.payments import UPDATABLE_PAYMENT_FIELDS
from tests.grpc_testing_support import deps_without_ports, invoke, socketless_server, sync_servicer

SERVICES = [svc for module in (bpb, spb) for svc in module.DESCRIPTOR.services_by_name.values()]
METHODS = [(svc, m) for svc in SERVICES for m in svc.methods]


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _fill(message: Message, field: FieldDescriptor) -> None:
    """Sets ``field`` to a valid-looking non-default value."""
    if _is_map(field):
        getattr(message, field.name)["k"] = "v"
    elif field.message_type is not None:
        sub = getattr(message, field.name)
        name = field.message_type.full_name
        if name == "billing.v1.Money":
            sub.CopyFrom(common_pb2.Money(amount_minor=100, currency="USD"))
        elif name == "google.protobuf.FieldMask":
            resource = next(f for f in message.DESCRIPTOR.fields if f.message_type and is_resource(f.message_type))
            sub.CopyFrom(field_mask_pb2.FieldMask(paths=[sorted(updatable_paths(resource.message_type))[0]]))
        else:
            sub.SetInParent()
            ident = identifier_field(field.message_type) if is_resource(field.message_type) else None
            if ident is not None:
                setattr(sub, ident.name, "id_1")
    elif field.type == FieldDescriptor.TYPE_STRING:
        setattr(message, field.name, "x_1")
    elif field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        setattr(message, field.name, field.enum_type.values[1].number)
    elif field.type == FieldDescriptor.TYPE_BOOL:
        setattr(message, field.name, True)
    else:
        setattr(message, field.name, 1)


def _required_paths(descriptor: Any) -> list[tuple[str, FieldDescriptor, FieldDescriptor | None]]:
    """(path, top-level field, identifier sub-field or None) of each required value."""
    out: list[tuple[str, FieldDescriptor, FieldDescriptor | None]] = []
    for field in descriptor.fields:
        if REQUIRED not in behaviors(field):
            continue
        out.append((field.name, field, None))
        if field.message_type is not None and is_resource(field.message_type):
            ident = identifier_field(field.message_type)
            assert ident is not None
            out.append((f"{field.name}.{ident.name}", field, ident))
    return out


def _complete(descriptor: Any) -> Message:
    request = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if REQUIRED in behaviors(field):
            _fill(request, field)
    return request


CASES = [
    pytest.param(svc, method, path, field, ident, id=f"{method.name}.{path}")
    for svc, method in METHODS
    for path, field, ident in _required_paths(method.input_type)
]


@pytest.fixture(scope="module")
def server() -> Any:
    # The ports are never reached: a missing required field is refused before any use case.
    deps, idem = deps_without_ports(), cast(Idempotency, None)
    servicers = {
        "BillingService": BillingServicer(deps, idem),
        "SubscriptionService": SubscriptionServicer(deps, idem),
    }
    return socketless_server({svc: sync_servicer(svc, servicers[svc.name]) for svc in SERVICES})


def test_there_are_required_fields_to_check() -> None:
    assert len(CASES) > 40


def test_a_complete_request_passes_the_schema_checks() -> None:
    for _, method in METHODS:
        enforce(_complete(method.input_type))  # raises if the generator missed something


@pytest.mark.parametrize(("svc", "method", "path", "field", "ident"), CASES)
def test_every_required_field_is_enforced(
    server: Any, svc: Any, method: Any, path: str, field: Any, ident: Any
) -> None:
    request = _complete(method.input_type)
    if ident is None:
        request.ClearField(field.name)
    else:
        getattr(request, field.name).ClearField(ident.name)
    out = invoke(server, svc, method.name, request)
    assert (out.code, out.error_infos, out.reason) == (grpc.StatusCode.INVALID_ARGUMENT, 1, "INVALID_ARGUMENT")
    assert out.violations == [(path, "is required")]


def test_every_missing_field_is_named_at_once(server: Any) -> None:
    svc = bpb.DESCRIPTOR.services_by_name["BillingService"]
    out = invoke(server, svc, "CreatePayment", bpb.CreatePaymentRequest())
    assert out.violations is not None
    assert [f for f, _ in out.violations] == ["request_id", "customer_id", "payment_method_id", "amount"]


# -- the annotations themselves --------------------------------------------------------


def test_every_request_field_declares_its_behaviour() -> None:
    missing = [
        f"{method.input_type.name}.{field.name}"
        for _, method in METHODS
        for field in method.input_type.fields
        if not behaviors(field)
    ]
    assert missing == []


def test_every_mutating_request_requires_a_request_id_and_is_a_write_entry() -> None:
    entries = {rpc.name: rpc for rpc in (*BILLING.rpcs, *SUBSCRIPTIONS.rpcs)}
    for _, method in METHODS:
        request_id = method.input_type.fields_by_name.get("request_id")
        assert (request_id is not None) == isinstance(entries[method.name], Write), method.name
        if request_id is not None:
            assert REQUIRED in behaviors(request_id), method.name


def test_every_resource_has_an_identifier_and_output_only_timestamps() -> None:
    resources = [m for module in (bpb, common_pb2, spb) for m in module.DESCRIPTOR.message_types_by_name.values()]
    resources = [m for m in resources if is_resource(m)]
    assert {m.name for m in resources} >= {"Customer", "PaymentMethod", "Payment", "Refund", "Dispute", "Plan",
                                           "Subscription", "Invoice", "AuditEvent"}  # fmt: skip
    for resource in resources:
        ident = identifier_field(resource)
        assert ident is not None and ident.name == "id", resource.name
        assert IDENTIFIER in behaviors(ident)
        for name in ("create_time", "update_time"):
            if name in resource.fields_by_name:
                assert OUTPUT_ONLY in behaviors(resource.fields_by_name[name]), (resource.name, name)


def test_update_masks_allow_exactly_what_the_use_cases_update() -> None:
    assert updatable_paths(bpb.Customer.DESCRIPTOR) == UPDATABLE_CUSTOMER_FIELDS
    assert updatable_paths(bpb.Payment.DESCRIPTOR) == UPDATABLE_PAYMENT_FIELDS


# -- OUTPUT_ONLY and IMMUTABLE --------------------------------------------------------


def test_output_only_fields_are_ignored_not_refused() -> None:
    request = bpb.UpdatePaymentRequest(
        request_id="r-1",
        payment=bpb.Payment(
            id="pay_1", description="new", status=bpb.PAYMENT_STATUS_SUCCEEDED, processor_id="pi_1",
            create_time=timestamp_pb2.Timestamp(seconds=1), amount_refunded=common_pb2.Money(amount_minor=5),
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["description"]),
    )  # fmt: skip
    enforce(request)
    assert request.payment == bpb.Payment(id="pay_1", description="new")


@pytest.mark.parametrize("path", ["amount", "customer_id", "capture_method", "status", "id", "nope"])
def test_a_mask_naming_a_field_callers_cannot_change_is_refused(path: str) -> None:
    request = bpb.UpdatePaymentRequest(
        request_id="r-1", payment=bpb.Payment(id="pay_1"), update_mask=field_mask_pb2.FieldMask(paths=[path])
    )
    with pytest.raises(InvalidArgument) as err:
        enforce(request)
    assert [v.field for v in err.value.violations] == ["update_mask"]
    assert path in err.value.violations[0].description


def test_an_update_needs_the_resources_required_fields_only_when_its_mask_names_them() -> None:
    from billing.v1 import event_service_pb2

    def update(paths: list[str], **fields: Any) -> event_service_pb2.UpdateEventEndpointRequest:
        return event_service_pb2.UpdateEventEndpointRequest(
            request_id="r-1", endpoint=event_service_pb2.EventEndpoint(id="ep_1", **fields),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )  # fmt: skip

    enforce(update(["description"], description="orders team"))  # url and event_types are not read
    enforce(update(["url"], url="https://x.example/hook"))
    with pytest.raises(InvalidArgument) as err:
        enforce(update(["url", "event_types"]))  # named by the mask, so required
    assert [v.field for v in err.value.violations] == ["endpoint.url", "endpoint.event_types"]
    with pytest.raises(InvalidArgument) as err:
        enforce(event_service_pb2.UpdateEventEndpointRequest(
            request_id="r-1", endpoint=event_service_pb2.EventEndpoint(description="x"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"])))  # fmt: skip
    assert [v.field for v in err.value.violations] == ["endpoint.id"]
