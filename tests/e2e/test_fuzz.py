"""Property-based fuzzing of every RPC of both services through the generated client.

Requests are built from the message descriptors: random and hostile strings (unicode,
control characters, huge, card-number-like), integers at and beyond the int64/int32
edges, unknown enum numbers, random Money and maps, and ids of real resources so the
fuzzer gets past "not found". One server on the embedded store serves the whole module.

Properties, for every call:
- never ``INTERNAL`` or ``UNKNOWN`` (a bug, or grpcio's answer to an exception);
- a refusal carries exactly one ``google.rpc.ErrorInfo`` of domain ``billing.v1``;
- a refused request changes nothing in the store (every document of every collection
  is compared), with two precise exceptions the service promises:
  * a refusal that is the request's *final* answer is recorded once in ``idempotency``
    (so a retry replays it): one new completed record for this (method, request_id)
    holding the same reason; validation failures and card data record nothing;
  * a processor refusal keeps what was attempted (a declined payment is stored as
    FAILED, its id in the error metadata): only that resource, its audit events and the
    idempotency record may change;
- the server keeps serving (health and a known-good call after each RPC's run).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2 as bpb
from billing.v1 import common_pb2
from billing.v1 import subscription_service_pb2 as spb
from google.protobuf import field_mask_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from billing_service.adapters.processors._fake_records import TEST_TOKENS
from billing_service.service_layer.clock import ManualClock, SystemClock
from tests.e2e.conftest import Api, start_api, stop_api, stored_documents
from tests.helpers import rich, rid, usd

# -- the server and its seeded resources ---------------------------------------------


@dataclass
class Fuzz:
    api: Api
    ids: list[str] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)
    page_tokens: list[str] = field(default_factory=list)

    def stub(self, service: str) -> Any:
        return self.api.billing if service == "BillingService" else self.api.subs


@pytest.fixture(scope="module")
async def fuzz(mongo_uri: str) -> AsyncIterator[Fuzz]:
    # The clock starts at the real time: the store's TTL monitor would otherwise delete the
    # idempotency records (expiring 48 h after a frozen past date) while the fuzzer watches.
    api = await start_api(mongo_uri, clock=ManualClock(SystemClock().now()))
    try:
        yield await seed(api)
    finally:
        await stop_api(api)


async def seed(api: Api) -> Fuzz:
    """Real resources in every state the fuzzer can reach, so its ids hit real code paths."""
    b, s = api.billing, api.subs
    out = Fuzz(api)
    customer = (await b.CreateCustomer(bpb.CreateCustomerRequest(request_id=rid(), email="fuzz@example.com"))).customer
    methods = {}
    for token in ("pm_card_visa", "pm_card_chargeDeclined", "pm_card_refundFail", "pm_card_authenticationRequired"):
        attached = await b.AttachPaymentMethod(
            bpb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.id, processor_token=token)
        )
        methods[token] = attached.payment_method.id
    paid = await b.CreatePayment(
        bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer.id,
                                 payment_method_id=methods["pm_card_visa"], amount=usd(5000))
    )  # fmt: skip
    held = await b.CreatePayment(
        bpb.CreatePaymentRequest(request_id=rid(), customer_id=customer.id, payment_method_id=methods["pm_card_visa"],
                                 amount=usd(3000), capture_method=bpb.CAPTURE_METHOD_MANUAL)
    )  # fmt: skip
    refund = await b.CreateRefund(bpb.CreateRefundRequest(request_id=rid(), payment_id=paid.payment.id, amount=usd(10)))
    plan = await s.CreatePlan(
        spb.CreatePlanRequest(request_id=rid(), name="Pro", price=usd(1200), interval=spb.INTERVAL_MONTH)
    )
    sub = await s.CreateSubscription(
        spb.CreateSubscriptionRequest(request_id=rid(), customer_id=customer.id, plan_id=plan.plan.id,
                                      payment_method_id=methods["pm_card_visa"])
    )  # fmt: skip
    invoices = await s.ListInvoices(spb.ListInvoicesRequest(subscription_id=sub.subscription.id))
    out.roles = {
        "customer": customer.id, "pm": methods["pm_card_visa"], "pm_declined": methods["pm_card_chargeDeclined"],
        "paid": paid.payment.id, "held": held.payment.id, "refund": refund.refund.id, "plan": plan.plan.id,
        "sub": sub.subscription.id, "invoice": invoices.invoices[0].id,
    }  # fmt: skip
    out.ids = [*out.roles.values(), *methods.values(), *(i.id for i in invoices.invoices)]
    # Page tokens are signed with a secret created on first use: create it now, outside the
    # fuzzed calls, and keep some real tokens to replay against other filters.
    for call in (
        b.ListCustomers(bpb.ListCustomersRequest(page_size=1)),
        b.ListPayments(bpb.ListPaymentsRequest(page_size=1)),
        b.ListPaymentMethods(bpb.ListPaymentMethodsRequest(customer_id=customer.id, page_size=1)),
        b.ListAuditEvents(bpb.ListAuditEventsRequest(resource_id=paid.payment.id, page_size=1)),
    ):
        token = (await call).next_page_token
        if token:
            out.page_tokens.append(token)
    return out


# -- strategies built from the descriptors ------------------------------------------


def _luhn(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def _separate(number: str, sep: str) -> str:
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4)) if sep else number


card_numbers = st.builds(
    _separate,
    st.text(alphabet="0123456789", min_size=12, max_size=18).map(_luhn),
    st.sampled_from(["", " ", "-"]),
)
huge_strings = st.builds(
    lambda piece, n: piece * n, st.sampled_from(["x", "é", "🙂", "9", "\u0000", "$.", "4242"]), st.integers(500, 70_000)
)
any_text = st.text(max_size=40)
hostile = st.sampled_from(
    ["", " ", "\u0000", "$where", "a.b", "{}", "../../etc/passwd", "%s%n", "null", "\u202e", "\ufeff", "NaN", "-1"]
)
texts = st.one_of(
    any_text,
    hostile,
    card_numbers,
    st.tuples(any_text, card_numbers, any_text).map("".join),
    huge_strings,
    st.uuids().map(str),
)
CURRENCIES = ["USD", "JPY", "KWD", "EUR", "BHD", "CLF", "usd", "XXX", "XTS", "US", "USDD", ""]
MASK_PATHS = ["name", "email", "description", "metadata", "default_processor", "processor_refs", "id", "create_time"]

_INT_RANGES = {
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
}


def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [lo, hi, lo + 1, hi - 1, 0, 1, -1, 2**31 - 1, -(2**31), 2**53 + 1, 10**15, 10**16, 999_999_999_999]
    return st.one_of(
        st.sampled_from([v for v in edges if lo <= v <= hi]),
        st.integers(max(lo, -5), min(hi, 100_000)),
        st.integers(lo, hi),
    )


def enums(field: FieldDescriptor) -> st.SearchStrategy[int]:
    assert field.enum_type is not None
    known = [v.number for v in field.enum_type.values]
    # proto3 enums are open: any int32 travels, known or not.
    return st.one_of(st.sampled_from(known), st.integers(-3, 40), st.sampled_from([-(2**31), 2**31 - 1]))


def string_field(field: FieldDescriptor, fuzz: Fuzz) -> st.SearchStrategy[str]:
    name = field.name
    if name == "request_id":
        return st.one_of(st.uuids().map(str), st.uuids().map(str), texts)
    if name.endswith("_id") or name == "id":
        return st.one_of(st.sampled_from(fuzz.ids), st.sampled_from(fuzz.ids).map(lambda i: i + "x"), texts)
    if name == "currency":
        return st.one_of(st.sampled_from(CURRENCIES), texts)
    if name == "processor_token":
        return st.one_of(st.sampled_from(sorted(TEST_TOKENS)), texts)
    if name == "page_token":
        return st.one_of(st.sampled_from(fuzz.page_tokens or [""]), texts)
    if name == "email":
        return st.one_of(st.emails(), texts)
    if name == "return_url":
        return st.one_of(st.sampled_from(["https://example.com/back", "javascript:alert(1)", "http://"]), texts)
    if name == "paths":
        return st.one_of(st.sampled_from(MASK_PATHS), texts)
    return texts


def scalar(field: FieldDescriptor, fuzz: Fuzz, depth: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return string_field(field, fuzz)
    if t in _INT_RANGES:
        return ints(*_INT_RANGES[t])
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return enums(field)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    if t == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        return messages(field.message_type, fuzz, depth + 1)
    raise AssertionError(f"no strategy for field {field.full_name} of type {t}")


def field_strategy(field: FieldDescriptor, fuzz: Fuzz, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return st.one_of(
            st.dictionaries(scalar(key, fuzz, depth), scalar(value, fuzz, depth), max_size=4),
            st.integers(45, 60).map(lambda n: {f"k{i}": "v" for i in range(n)}),  # around the 50-entry cap
        )
    if field.is_repeated:
        return st.lists(scalar(field, fuzz, depth), max_size=4)
    return scalar(field, fuzz, depth)


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if field.message_type.fields_by_name["value"].message_type is not None:
            for k, v in value.items():
                target[k].CopyFrom(v)
        else:
            target.update(value)
    elif field.is_repeated:
        target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def messages(descriptor: Descriptor, fuzz: Fuzz, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    if descriptor.full_name == "billing.v1.Money":
        return st.builds(
            common_pb2.Money,
            amount_minor=ints(-(2**63), 2**63 - 1),
            currency=st.one_of(st.sampled_from(CURRENCIES), texts),
        )
    fields = {f.name: field_strategy(f, fuzz, depth) for f in descriptor.fields}

    def build(values: dict[str, Any]) -> Message:
        out = cls()
        for name, value in values.items():
            _set(out, descriptor.fields_by_name[name], value)
        return out

    return st.fixed_dictionaries({}, optional=fields).map(build)


def _valid_templates(fuzz: Fuzz) -> dict[str, dict[str, st.SearchStrategy[Any]]]:
    """A valid request per RPC (field -> strategy of valid values), built on the seeded resources."""
    r = {k: st.just(v) for k, v in fuzz.roles.items()}
    uid = st.uuids().map(str)
    money = st.integers(1, 5000).map(usd)
    return {
        "CreateCustomer": {"request_id": uid, "email": st.just("x@example.com"), "name": st.just("X")},
        "GetCustomer": {"customer_id": r["customer"]},
        "UpdateCustomer": {
            "request_id": uid,
            "customer": st.builds(lambda i: bpb.Customer(id=i, name="Y"), r["customer"]),
            "update_mask": st.just(field_mask_pb2.FieldMask(paths=["name"])),
        },
        "AttachPaymentMethod": {
            "request_id": uid, "customer_id": r["customer"], "processor_token": st.sampled_from(sorted(TEST_TOKENS)),
        },
        "ListPaymentMethods": {"customer_id": r["customer"]},
        "DetachPaymentMethod": {"request_id": uid, "payment_method_id": r["pm_declined"]},
        "CreatePayment": {
            "request_id": uid, "customer_id": r["customer"], "amount": money,
            "payment_method_id": st.sampled_from([fuzz.roles["pm"], fuzz.roles["pm_declined"]]),
        },
        "GetPayment": {"payment_id": r["paid"]},
        "ListPayments": {"customer_id": r["customer"]},
        "CapturePayment": {"request_id": uid, "payment_id": r["held"], "amount": st.integers(1, 3000).map(usd)},
        "CancelPayment": {"request_id": uid, "payment_id": r["held"]},
        "CreateRefund": {"request_id": uid, "payment_id": r["paid"], "amount": st.integers(1, 50).map(usd)},
        "GetRefund": {"refund_id": r["refund"]},
        "ListRefunds": {"payment_id": r["paid"]},
        "ListAuditEvents": {"resource_id": r["paid"]},
        "CreatePlan": {
            "request_id": uid, "name": st.just("P"), "price": money,
            "interval": st.sampled_from([spb.INTERVAL_MONTH, spb.INTERVAL_YEAR]),
        },
        "GetPlan": {"plan_id": r["plan"]},
        "ArchivePlan": {"request_id": uid, "plan_id": r["plan"]},
        "CreateSubscription": {
            "request_id": uid, "customer_id": r["customer"], "plan_id": r["plan"], "payment_method_id": r["pm"],
        },
        "GetSubscription": {"subscription_id": r["sub"]},
        "ListSubscriptions": {"customer_id": r["customer"]},
        "UpdateSubscription": {"request_id": uid, "subscription_id": r["sub"], "quantity": st.integers(1, 5)},
        "CancelSubscription": {"request_id": uid, "subscription_id": r["sub"], "at_period_end": st.booleans()},
        "PauseSubscription": {"request_id": uid, "subscription_id": r["sub"]},
        "ResumeSubscription": {"request_id": uid, "subscription_id": r["sub"]},
        "GetInvoice": {"invoice_id": r["invoice"]},
        "ListInvoices": {"subscription_id": r["sub"]},
    }  # fmt: skip


def near_valid(descriptor: Descriptor, method: str, fuzz: Fuzz) -> st.SearchStrategy[Message]:
    """A valid request with up to two fields replaced by fuzz, to reach the deeper code."""
    template = _valid_templates(fuzz).get(method, {})
    cls = message_factory.GetMessageClass(descriptor)
    names = [f.name for f in descriptor.fields]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        mutated = set(draw(st.lists(st.sampled_from(names), max_size=2, unique=True))) if names else set()
        out = cls()
        for f in descriptor.fields:
            if f.name in mutated:
                _set(out, f, draw(field_strategy(f, fuzz, 0)))
            elif f.name in template:
                _set(out, f, draw(template[f.name]))
        return out

    return build()


# -- the properties -------------------------------------------------------------------

METHODS = [
    (service.name, method)
    for module in (bpb, spb)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]

Snapshot = dict[str, dict[str, bytes]]


async def snapshot(api: Api) -> Snapshot:
    return await stored_documents(api.runtime.store.database)


def changes(before: Snapshot, after: Snapshot) -> dict[str, set[str]]:
    """Collection -> ids of documents added, removed or modified."""
    out: dict[str, set[str]] = {}
    for name in set(before) | set(after):
        old, new = before.get(name, {}), after.get(name, {})
        changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
        if changed:
            out[name] = changed
    return out


# A refusal after the processor answered keeps the attempted resource (its id in metadata).
PROCESSOR_REFUSAL_KEYS = ("payment_id", "refund_id", "subscription_id", "invoice_id")


async def check_refusal_changed_nothing(
    api: Api, method: str, request: Message, err: grpc.aio.AioRpcError, before: Snapshot
) -> None:
    info = rich(err)
    diff = changes(before, await snapshot(api))
    db = api.runtime.store.database
    recorded = diff.pop("idempotency", set())
    if recorded:
        assert len(recorded) == 1, (method, recorded)
        records = await db["idempotency"].find({"method": method, "request_id": request.request_id}).to_list()  # type: ignore[attr-defined]
        assert len(records) == 1, (method, records)
        record = records[0]
        assert record["state"] == "completed" and record["response"] is None, record
        assert record["error"]["reason"] == info.reason, (record["error"], info)
        assert info.reason != "CARD_DATA_NOT_ALLOWED", "card data must leave no trace"
    kept = {info.metadata[k] for k in PROCESSOR_REFUSAL_KEYS if k in info.metadata}
    if diff:
        assert kept, f"{method} refused ({info.code.name} {info.reason}) but changed the store: {diff}"
        for name, ids in diff.items():
            for doc_id in ids:
                doc = await db[name].find_one({"_id": eval(doc_id)}) or {}
                refers = {doc.get("_id"), doc.get("resource_id"), doc.get("payment_id"), doc.get("refund_id")}
                assert refers & kept, (method, info.reason, name, doc_id)


BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


async def call_and_check(fuzz: Fuzz, service: str, method_name: str, request: Message) -> None:
    method = f"/billing.v1.{service}/{method_name}"
    api = fuzz.api
    before = await snapshot(api)
    try:
        await getattr(fuzz.stub(service), method_name)(request, timeout=20)
        event("OK")
    except grpc.aio.AioRpcError as err:
        event(f"{err.code().name} {rich(err).reason}")  # shown by --hypothesis-show-statistics
        assert err.code() not in BAD_CODES, (method, err.code(), err.details(), request)
        if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # grpcio's own size limit
            info = rich(err)
            assert (info.error_infos, info.domain) == (1, "billing.v1"), (method, err.code(), err.details())
        await check_refusal_changed_nothing(api, method, request, err, before)


async def still_serving(fuzz: Fuzz) -> None:
    health = health_pb2_grpc.HealthStub(fuzz.api.channel)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
    await fuzz.api.billing.GetCustomer(bpb.GetCustomerRequest(customer_id=fuzz.ids[0]))


# BILLING_FUZZ_EXAMPLES scales the run (e.g. 500 for a long local or nightly session).
FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("BILLING_FUZZ_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
PARAMS = pytest.mark.parametrize(
    ("service", "method"), [(s, m.name) for s, m in METHODS], ids=[m.name for _, m in METHODS]
)


@PARAMS
@FUZZ_SETTINGS
@given(data=st.data())
async def test_random_requests_never_fail_internally_or_change_the_store_when_refused(
    fuzz: Fuzz, service: str, method: str, data: st.DataObject
) -> None:
    descriptor = next(m for s, m in METHODS if (s, m.name) == (service, method)).input_type
    request = data.draw(st.one_of(messages(descriptor, fuzz), near_valid(descriptor, method, fuzz)), label="request")
    await call_and_check(fuzz, service, method, request)
    await still_serving(fuzz)


@PARAMS
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.one_of(
        st.binary(min_size=1, max_size=64),
        st.sampled_from([b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\xff\xff\xff", b"\x08", b"\x12\x80"]),
    )
)
async def test_undecodable_or_random_bytes_never_fail_internally(
    fuzz: Fuzz, service: str, method: str, raw: bytes
) -> None:
    path = f"/billing.v1.{service}/{method}"
    call = fuzz.api.channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
    before = await snapshot(fuzz.api)
    try:
        await call(raw, timeout=20)
    except grpc.aio.AioRpcError as err:
        assert err.code() not in BAD_CODES, (path, raw, err.details())
        info = rich(err)
        assert (info.error_infos, info.domain) == (1, "billing.v1"), (path, raw, err.details())
        if info.reason == "MALFORMED_REQUEST":
            assert info.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "parsing" not in info.message  # the parser's text is not echoed
            assert not changes(before, await snapshot(fuzz.api))
        else:
            # The bytes happened to parse: the same rules as any refused request.
            request = message_factory.GetMessageClass(
                next(m for s, m in METHODS if (s, m.name) == (service, method)).input_type
            ).FromString(raw)
            await check_refusal_changed_nothing(fuzz.api, path, request, err, before)


async def test_known_bad_wire_bytes_are_malformed_request(fuzz: Fuzz) -> None:
    call = fuzz.api.channel.unary_unary(
        "/billing.v1.BillingService/GetCustomer", request_serializer=bytes, response_deserializer=bytes
    )
    for raw in (b"\x0a\x05ab", b"\x0a\x02\xff\xfe"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(raw)
        info = rich(err.value)
        assert (info.code, info.reason, info.error_infos) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", 1)


async def test_server_still_serves_after_the_fuzzing(fuzz: Fuzz) -> None:
    await still_serving(fuzz)
    created = await fuzz.api.billing.CreateCustomer(bpb.CreateCustomerRequest(request_id=rid(), name="after"))
    assert created.customer.id.startswith("cus_")


# -- regressions found by the fuzzer --------------------------------------------------


async def test_replayed_not_found_is_still_not_found(fuzz: Fuzz) -> None:
    # A final NotFound is stored and replayed on retry; the replay used to lose the
    # error's attributes and fail while being mapped (UNKNOWN).
    request = bpb.CancelPaymentRequest(request_id=rid(), payment_id="pay_missing")
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fuzz.api.billing.CancelPayment(request)
        info = rich(err.value)
        assert (info.code, info.reason, info.metadata["resource_id"]) == (
            grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "pay_missing",
        )  # fmt: skip


async def test_an_error_quoting_a_huge_value_still_reaches_the_caller(fuzz: Fuzz) -> None:
    # The status travels in trailers; quoting an 80 KB id made the client drop the stream
    # (RESOURCE_EXHAUSTED "Stream removed") instead of seeing NOT_FOUND.
    huge = "plan_" + "9" * 80_000
    for call in (
        fuzz.api.subs.GetPlan(spb.GetPlanRequest(plan_id=huge)),
        fuzz.api.subs.ArchivePlan(spb.ArchivePlanRequest(request_id=rid(), plan_id=huge)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        info = rich(err.value)
        assert (info.code, info.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
        assert len(info.message.encode()) <= 400 and len(info.metadata["resource_id"].encode()) <= 128
