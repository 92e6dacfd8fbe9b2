"""Probe a running stack with hostile and malformed input and count how it answered.

Start a stack with the fake processor and a Stripe webhook secret (so signed hostile
bodies reach the parser), then run the probe against it::

    STRIPE_WEBHOOK_SECRET=whsec_probe_0123456789abcdef make run
    .venv/bin/python scripts/probe.py --grpc 127.0.0.1:50051 --webhooks http://127.0.0.1:8081 \\
        --stripe-webhook-secret whsec_probe_0123456789abcdef \\
        --mongodb-uri mongodb://127.0.0.1:<port>/?directConnection=true   # optional: scan the store

The corpus is built generatively: card numbers in 23 spellings (separators, Unicode
digits and spaces, zero-width characters, glued to text) in every kind of free-text field
and in request ids; page tokens of every list used on every other list, and forged ones;
missing, malformed, oversized and out-of-range fields; corrupt wire bytes for every RPC;
illegal state moves; reused idempotency keys; and numbers that are *not* cards (they must
be accepted). Webhooks: signed bodies that are deep, unparseable or not events, forged
signatures, wrong sizes and types, and raw non-HTTP bytes.

Prints the figures (``--json`` for machine output) and exits 1 if anything was wrongly
accepted or wrongly refused, answered ``INTERNAL``/``UNKNOWN``, or HTTP 500.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import grpc
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc, common_pb2, subscription_service_pb2_grpc
from billing.v1 import subscription_service_pb2 as spb
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2, status_pb2
from probe_http import PANS, Tally, probe_webhooks, scan_store

NOT_CARDS = [
    "order 2024011512345674", "ORD-1000234567898", "+49 30 901820 12349", "(415) 555-0132", "1718000000000001",
    "2024-01-15T10:30:00Z", "2024-01-15 2024-02-14", "550e8400-e29b-41d4-a716-446655440000",
    "123e4567-e89b-12d3-a456-426614174007", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "192.168.100.200 192.168.100.201", "5,234,567,890,124",
]  # fmt: skip
REFUSALS = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE", "ALREADY_EXISTS"}


def spellings(pan: str) -> list[str]:
    """Ways a card number gets written (groups of 4, or Amex 4-6-5)."""
    groups = [pan[:4], pan[4:10], pan[10:]] if len(pan) == 15 else [pan[i : i + 4] for i in range(0, len(pan), 4)]
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in pan)
    arabic = "".join(chr(0x0660 + int(d)) for d in pan)
    joined = [sep.join(groups) for sep in (" ", "-", ".", "/", "_", "\t", "\n", "  ", " - ", "\u00a0", "\u202f",
                                           "\u200b", "\u200d", "\u2013")]  # fmt: skip
    return [pan, *joined, fullwidth, arabic, f"x{pan}", f"req-{pan}", f"{pan} 123", f"card: {pan} exp 12/30",
            " ".join(pan), pan[:2] + "\u00ad" + pan[2:]]  # fmt: skip


def _reason(err: grpc.aio.AioRpcError) -> tuple[str, int]:
    infos = 0
    reason = ""
    trailers: Any = err.trailing_metadata() or ()
    for key, value in trailers:
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason, infos = info.reason, infos + 1
    return reason, infos


class Probe:
    """Sends the corpus over one channel and tallies the answers."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.b = billing_service_pb2_grpc.BillingServiceStub(channel)
        self.s = subscription_service_pb2_grpc.SubscriptionServiceStub(channel)
        self.hostile = Tally()
        self.benign = Tally()

    async def refuse(self, name: str, call: Awaitable[Any]) -> None:
        """A request that must be refused with a clear error."""
        t = self.hostile
        t.tried += 1
        try:
            await call
        except grpc.aio.AioRpcError as err:
            code = err.code().name
            reason, infos = _reason(err)
            if code == "INTERNAL":
                t.internal += 1
                t.failures.append(f"INTERNAL: {name}")
            elif code == "UNKNOWN":
                t.unknown += 1
                t.failures.append(f"UNKNOWN: {name}")
            elif code in REFUSALS and infos == 1:
                t.refused_cleanly += 1
                t.reasons[reason] += 1
            else:
                t.other[code] += 1
                t.failures.append(f"{code}/{reason or 'no ErrorInfo'} ({infos} ErrorInfo): {name}")
            return
        t.wrongly_accepted += 1
        t.failures.append(f"accepted: {name}")

    async def accept(self, name: str, call: Awaitable[Any]) -> None:
        """A request that must succeed (a number that is not a card)."""
        t = self.benign
        t.tried += 1
        try:
            await call
        except grpc.aio.AioRpcError as err:
            t.wrongly_refused += 1
            t.failures.append(f"refused {err.code().name}/{_reason(err)[0]}: {name}")
            return
        t.accepted += 1


def rid() -> str:
    return str(uuid.uuid4())


def usd(minor: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=minor, currency="USD")


@dataclass
class World:
    """What the setup created: valid references, so hostile requests reach deep validation."""

    customer: str
    card: str
    card2: str
    payment: str
    manual_payment: str
    plan: str
    subscription: str
    tokens: dict[str, str]


async def setup(p: Probe) -> World:
    b, s = p.b, p.s
    customers = [
        (await b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), email=f"probe{n}@example.com"))).customer.id
        for n in range(2)
    ]
    cus = customers[0]
    cards = [(await b.AttachPaymentMethod(pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=cus,
              processor_token=t))).payment_method.id for t in ("pm_card_visa", "pm_card_mastercard")]  # fmt: skip
    pays = [(await b.CreatePayment(pb.CreatePaymentRequest(request_id=rid(), customer_id=cus,
             payment_method_id=cards[0], amount=usd(1000)))).payment.id for _ in range(2)]  # fmt: skip
    manual = (await b.CreatePayment(pb.CreatePaymentRequest(
        request_id=rid(), customer_id=cus, payment_method_id=cards[0], amount=usd(800),
        capture_method=pb.CAPTURE_METHOD_MANUAL))).payment.id  # fmt: skip
    for _ in range(2):
        await b.CreateRefund(pb.CreateRefundRequest(request_id=rid(), payment_id=pays[0], amount=usd(100)))
    plans = [(await s.CreatePlan(spb.CreatePlanRequest(request_id=rid(), name=f"probe plan {n}", price=usd(500),
              interval=spb.INTERVAL_MONTH))).plan.id for n in range(2)]  # fmt: skip
    subs = [(await s.CreateSubscription(spb.CreateSubscriptionRequest(request_id=rid(), customer_id=cus,
             plan_id=plans[0], payment_method_id=cards[0], quantity=1))).subscription.id for _ in range(2)]  # fmt: skip
    tokens = {
        "ListCustomers": (await b.ListCustomers(pb.ListCustomersRequest(page_size=1))).next_page_token,
        "ListPaymentMethods": (
            await b.ListPaymentMethods(pb.ListPaymentMethodsRequest(customer_id=cus, page_size=1))
        ).next_page_token,
        "ListPayments": (await b.ListPayments(pb.ListPaymentsRequest(page_size=1))).next_page_token,
        "ListRefunds": (await b.ListRefunds(pb.ListRefundsRequest(payment_id=pays[0], page_size=1))).next_page_token,
        "ListAuditEvents": (
            await b.ListAuditEvents(pb.ListAuditEventsRequest(resource_id=pays[0], page_size=1))
        ).next_page_token,
        "ListPlans": (await s.ListPlans(spb.ListPlansRequest(page_size=1))).next_page_token,
        "ListSubscriptions": (await s.ListSubscriptions(spb.ListSubscriptionsRequest(page_size=1))).next_page_token,
    }
    return World(cus, cards[0], cards[1], pays[0], manual, plans[0], subs[0], {k: v for k, v in tokens.items() if v})


def list_calls(p: Probe, w: World) -> dict[str, Callable[[str], Awaitable[Any]]]:
    b, s = p.b, p.s
    return {
        "ListCustomers": lambda t: b.ListCustomers(pb.ListCustomersRequest(page_size=1, page_token=t)),
        "ListPaymentMethods": lambda t: b.ListPaymentMethods(
            pb.ListPaymentMethodsRequest(customer_id=w.customer, page_size=1, page_token=t)),
        "ListPayments": lambda t: b.ListPayments(pb.ListPaymentsRequest(page_size=1, page_token=t)),
        "ListRefunds": lambda t: b.ListRefunds(pb.ListRefundsRequest(payment_id=w.payment, page_size=1, page_token=t)),
        "ListAuditEvents": lambda t: b.ListAuditEvents(
            pb.ListAuditEventsRequest(resource_id=w.payment, page_size=1, page_token=t)),
        "ListDisputes": lambda t: b.ListDisputes(pb.ListDisputesRequest(page_size=1, page_token=t)),
        "ListPlans": lambda t: s.ListPlans(spb.ListPlansRequest(page_size=1, page_token=t)),
        "ListSubscriptions": lambda t: s.ListSubscriptions(spb.ListSubscriptionsRequest(page_size=1, page_token=t)),
        "ListInvoices": lambda t: s.ListInvoices(
            spb.ListInvoicesRequest(subscription_id=w.subscription, page_size=1, page_token=t)),
    }  # fmt: skip


async def probe_cards(p: Probe, w: World) -> None:
    """Every spelling of every card number, in a rotating text field, in request_id and in metadata."""
    b, s = p.b, p.s
    places: list[Callable[[str], Awaitable[Any]]] = [
        lambda v: b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), description=v)),
        lambda v: b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), name=v)),
        lambda v: b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), email=v)),
        lambda v: b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), metadata={v: "x"})),
        lambda v: b.AttachPaymentMethod(pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=w.customer,
                                                                      processor_token=v)),
        lambda v: b.CreatePayment(pb.CreatePaymentRequest(request_id=rid(), customer_id=w.customer,
                                                          payment_method_id=w.card, amount=usd(100), description=v)),
        lambda v: b.CreateRefund(pb.CreateRefundRequest(request_id=rid(), payment_id=w.payment, amount=usd(1),
                                                        metadata={"note": v})),
        lambda v: s.CreatePlan(spb.CreatePlanRequest(request_id=rid(), name=v, price=usd(100),
                                                     interval=spb.INTERVAL_MONTH)),
        lambda v: b.UpdateCustomer(pb.UpdateCustomerRequest(request_id=rid(), customer=pb.Customer(
            id=w.customer, name=v), update_mask=field_mask_pb2.FieldMask(paths=["name"]))),
    ]  # fmt: skip
    n = 0
    for pan in PANS:
        for spelling in spellings(pan):
            place = places[n % len(places)]
            n += 1
            await p.refuse(f"card in field #{n % len(places)}: {spelling!r}", place(spelling))
            await p.refuse(f"card in request_id: {spelling!r}", b.CreateCustomer(pb.CreateCustomerRequest(
                request_id=spelling.replace(" ", "-"))))  # fmt: skip
            await p.refuse(f"card in metadata: {spelling!r}", b.CreateCustomer(pb.CreateCustomerRequest(
                request_id=rid(), metadata={"note": spelling})))  # fmt: skip
    for text in NOT_CARDS:
        await p.accept(f"not a card: {text!r}", b.CreateCustomer(pb.CreateCustomerRequest(
            request_id=rid(), description=text, metadata={"ref": text})))  # fmt: skip
        request_id = f"probe-{uuid.uuid4().hex[:8]}-" + text.replace(" ", "-")
        if all(c.isascii() and (c.isalnum() or c in "-._:") for c in request_id):
            await p.accept(f"not a card (request_id): {request_id!r}", b.CreateCustomer(pb.CreateCustomerRequest(
                request_id=request_id)))  # fmt: skip


async def probe_page_tokens(p: Probe, w: World) -> None:
    calls = list_calls(p, w)
    for source, token in w.tokens.items():
        for target, call in calls.items():
            if target != source:
                await p.refuse(f"{source} token on {target}", call(token))
    some = next(iter(w.tokens.values()))
    forged = ["x", "AAAA", some[:-2], some[:10] + ("A" if some[10] != "A" else "B") + some[11:], some + "AA",
              "A" * 2000, "%%%", "\u00e9t\u00e9"]  # fmt: skip
    for target, call in calls.items():
        for token in forged:
            await p.refuse(f"forged token {token[:12]!r} on {target}", call(token))


async def probe_malformed(p: Probe, w: World) -> None:
    b, s = p.b, p.s
    big = "x" * 100_000
    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("no request_id", lambda: b.CreateCustomer(pb.CreateCustomerRequest(email="a@example.com"))),
        ("request_id too long", lambda: b.CreateCustomer(pb.CreateCustomerRequest(request_id="r" * 256))),
        ("request_id with space", lambda: b.CreateCustomer(pb.CreateCustomerRequest(request_id="a b"))),
        ("request_id unicode", lambda: b.CreateCustomer(pb.CreateCustomerRequest(request_id="\u00e9\u00e9"))),
        ("request_id NUL", lambda: b.CreateCustomer(pb.CreateCustomerRequest(request_id="a\x00b"))),
        ("huge name", lambda: b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), name=big))),
        ("huge metadata value", lambda: b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(),
                                                                                   metadata={"k": big}))),
        ("too many metadata keys", lambda: b.CreateCustomer(pb.CreateCustomerRequest(
            request_id=rid(), metadata={f"k{i}": "v" for i in range(200)}))),
        ("bad email", lambda: b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), email="not-an-email"))),
        ("unknown processor enum", lambda: b.CreateCustomer(pb.CreateCustomerRequest(
            request_id=rid(), default_processor=cast(Any, 99)))),
        ("unknown customer", lambda: b.GetCustomer(pb.GetCustomerRequest(customer_id="cus_nope"))),
        ("empty customer id", lambda: b.GetCustomer(pb.GetCustomerRequest())),
        ("unknown payment", lambda: b.GetPayment(pb.GetPaymentRequest(payment_id="pay_nope"))),
        ("unknown refund", lambda: b.GetRefund(pb.GetRefundRequest(refund_id="re_nope"))),
        ("unknown plan", lambda: s.GetPlan(spb.GetPlanRequest(plan_id="plan_nope"))),
        ("unknown subscription", lambda: s.GetSubscription(spb.GetSubscriptionRequest(subscription_id="sub_nope"))),
        ("unknown invoice", lambda: s.GetInvoice(spb.GetInvoiceRequest(invoice_id="in_nope"))),
        ("negative page size", lambda: b.ListCustomers(pb.ListCustomersRequest(page_size=-1))),
        ("audit without resource", lambda: b.ListAuditEvents(pb.ListAuditEventsRequest())),
        ("unknown token", lambda: b.AttachPaymentMethod(pb.AttachPaymentMethodRequest(
            request_id=rid(), customer_id=w.customer, processor_token="tok_unknown"))),  # noqa: S106
        ("attach to unknown customer", lambda: b.AttachPaymentMethod(pb.AttachPaymentMethodRequest(
            request_id=rid(), customer_id="cus_nope", processor_token="pm_card_visa"))),  # noqa: S106
        ("detach unknown", lambda: b.DetachPaymentMethod(pb.DetachPaymentMethodRequest(request_id=rid(),
                                                                                       payment_method_id="pm_nope"))),
        ("capture succeeded payment", lambda: b.CapturePayment(pb.CapturePaymentRequest(request_id=rid(),
                                                                                        payment_id=w.payment))),
        ("cancel succeeded payment", lambda: b.CancelPayment(pb.CancelPaymentRequest(request_id=rid(),
                                                                                     payment_id=w.payment))),
        ("refund more than captured", lambda: b.CreateRefund(pb.CreateRefundRequest(
            request_id=rid(), payment_id=w.payment, amount=usd(10**9)))),
        ("capture more than authorized", lambda: b.CapturePayment(pb.CapturePaymentRequest(
            request_id=rid(), payment_id=w.manual_payment, amount=usd(10**9)))),
        ("refund in other currency", lambda: b.CreateRefund(pb.CreateRefundRequest(
            request_id=rid(), payment_id=w.payment, amount=common_pb2.Money(amount_minor=1, currency="EUR")))),
        ("resume active subscription", lambda: s.ResumeSubscription(spb.ResumeSubscriptionRequest(
            request_id=rid(), subscription_id=w.subscription))),
        ("subscribe to unknown plan", lambda: s.CreateSubscription(spb.CreateSubscriptionRequest(
            request_id=rid(), customer_id=w.customer, plan_id="plan_nope", payment_method_id=w.card, quantity=1))),
        ("zero quantity", lambda: s.CreateSubscription(spb.CreateSubscriptionRequest(
            request_id=rid(), customer_id=w.customer, plan_id=w.plan, payment_method_id=w.card, quantity=-1))),
        ("plan without interval", lambda: s.CreatePlan(spb.CreatePlanRequest(request_id=rid(), name="x",
                                                                             price=usd(100)))),
        ("plan interval_count 13", lambda: s.CreatePlan(spb.CreatePlanRequest(
            request_id=rid(), name="x", price=usd(100), interval=spb.INTERVAL_MONTH, interval_count=13))),
    ]  # fmt: skip
    for minor, currency in [(0, "USD"), (-1, "USD"), (2**63 - 1, "USD"), (-(2**63), "USD"), (100, "XXX"),
                            (100, "usd"), (100, ""), (1, "JPY\u0000"), (100, "US"), (5, "KWD0")]:  # fmt: skip
        amount = common_pb2.Money(amount_minor=minor, currency=currency)
        request = pb.CreatePaymentRequest(customer_id=w.customer, payment_method_id=w.card, amount=amount)
        cases.append((f"amount {minor} {currency!r}", partial(_fresh_payment, b, request)))
    cases.append(("payment without amount", lambda: b.CreatePayment(pb.CreatePaymentRequest(
        request_id=rid(), customer_id=w.customer, payment_method_id=w.card))))  # fmt: skip
    cases.append(
        (
            "capture method 7",
            lambda: b.CreatePayment(
                pb.CreatePaymentRequest(
                    request_id=rid(),
                    customer_id=w.customer,
                    payment_method_id=w.card,
                    amount=usd(100),
                    capture_method=cast(Any, 7),
                )
            ),
        )
    )
    cases.append(
        (
            "card of another customer",
            lambda: b.CreatePayment(
                pb.CreatePaymentRequest(
                    request_id=rid(), customer_id="cus_nope", payment_method_id=w.card, amount=usd(100)
                )
            ),
        )
    )
    reused = rid()
    await b.CreateCustomer(pb.CreateCustomerRequest(request_id=reused, email="reuse@example.com"))
    for n in range(5):
        other = pb.CreateCustomerRequest(request_id=reused, email=f"other{n}@example.com")
        cases.append((f"request_id reused #{n}", partial(b.CreateCustomer, other)))
    for name, make in cases:
        await p.refuse(name, make())


def _fresh_payment(b: Any, request: pb.CreatePaymentRequest) -> Awaitable[Any]:
    fresh = pb.CreatePaymentRequest()
    fresh.CopyFrom(request)
    fresh.request_id = rid()
    return b.CreatePayment(fresh)  # type: ignore[no-any-return]


async def probe_wire_bytes(p: Probe) -> None:
    """Corrupt protobuf bytes for every RPC of both services."""
    methods = [f"/billing.v1.BillingService/{m.name}" for m in pb.DESCRIPTOR.services_by_name["BillingService"].methods]
    methods += [f"/billing.v1.SubscriptionService/{m.name}"
                for m in spb.DESCRIPTOR.services_by_name["SubscriptionService"].methods]  # fmt: skip
    garbage = [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", os.urandom(64)]
    for method in methods:
        call = p.channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
        for blob in garbage:
            await p.refuse(f"corrupt bytes {blob[:6]!r} to {method}", call(blob))


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grpc", default="127.0.0.1:50051")
    parser.add_argument("--webhooks", default="http://127.0.0.1:8081")
    parser.add_argument("--stripe-webhook-secret", default=os.environ.get("STRIPE_WEBHOOK_SECRET", ""))
    parser.add_argument("--token", default="", help="a bearer token when the stack requires one")
    parser.add_argument("--mongodb-uri", default="", help="scan the service's database afterwards")
    parser.add_argument("--database", default="billing")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    call_credentials = (("authorization", f"Bearer {args.token}"),) if args.token else None

    class _Auth(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            if call_credentials:
                details = details._replace(metadata=tuple(details.metadata or ()) + call_credentials)
            return await continuation(details, request)

    async with grpc.aio.insecure_channel(args.grpc, interceptors=[cast(Any, _Auth())]) as channel:
        probe = Probe(channel)
        world = await setup(probe)
        await probe_cards(probe, world)
        await probe_page_tokens(probe, world)
        await probe_malformed(probe, world)
        await probe_wire_bytes(probe)
    webhooks, hostile_ids = Tally(), list[str]()
    if args.webhooks:
        await probe_webhooks(args.webhooks.rstrip("/"), args.stripe_webhook_secret or "whsec_unset", webhooks,
                             hostile_ids)  # fmt: skip
    scan = await scan_store(args.mongodb_uri, args.database, hostile_ids) if args.mongodb_uri else {}
    report: dict[str, Any] = {
        "grpc_hostile": {"tried": probe.hostile.tried, "refused_cleanly": probe.hostile.refused_cleanly,
                         "wrongly_accepted": probe.hostile.wrongly_accepted, "internal": probe.hostile.internal,
                         "unknown": probe.hostile.unknown, "other": dict(probe.hostile.other),
                         "reasons": dict(probe.hostile.reasons.most_common())},
        "grpc_not_cards": {"tried": probe.benign.tried, "accepted": probe.benign.accepted,
                           "wrongly_refused": probe.benign.wrongly_refused},
        "webhooks": {"tried": webhooks.tried, "refused_cleanly": webhooks.refused_cleanly,
                     "wrongly_accepted": webhooks.wrongly_accepted, "http_500": webhooks.internal,
                     "other": dict(webhooks.other), "statuses": dict(webhooks.reasons)},
        "store": scan,
        "failures": probe.hostile.failures + probe.benign.failures + webhooks.failures,
    }  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for section in ("grpc_hostile", "grpc_not_cards", "webhooks", "store"):
            print(f"{section}: {json.dumps(report[section])}")
        for failure in report["failures"]:
            print(f"  ! {failure}")
    hostile, benign = probe.hostile, probe.benign
    bad = (
        hostile.wrongly_accepted + hostile.internal + hostile.unknown + sum(hostile.other.values())
        + benign.wrongly_refused + webhooks.wrongly_accepted + webhooks.internal + sum(scan.values())
    )  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
