"""Holes found by probing a running stack (issue 11): card numbers in request ids, page tokens
used on another list or by another caller.

Every refusal is checked to change nothing: no collection holds what the refused request
carried.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import subscription_service_pb2 as spb
from google.protobuf.message import Message

from billing_service.config import Settings
from billing_service.domain.common import Processor
from billing_service.domain.disputes import Dispute, DisputeStatus
from billing_service.domain.money import Money
from billing_service.entrypoints.grpc_api.auth import build_auth
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import Insert
from billing_service.service_layer.subscriptions import sync_subscription
from tests.e2e.conftest import Api, start_api, stop_api
from tests.helpers import rich, rid, usd

VISA = "4242424242424242"


async def dump_database(api: Api) -> str:
    """Every document of every collection of the service's database, as one string."""
    db = api.runtime.store.database
    parts = []
    for name in await db.list_collection_names():
        async for doc in db[name].find({}):
            parts.append(f"{name}: {doc!r}")
    return "\n".join(parts)


@pytest.mark.parametrize(
    "request_id",
    [f"x{VISA}", f"req-{VISA}", "req-4242-4242-4242-4242", f"{VISA}.1", "req_4242_4242_4242_4242"],
)
async def test_a_card_number_in_request_id_is_refused_and_never_stored(api: Api, request_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.CreateCustomer(pb.CreateCustomerRequest(request_id=request_id, email="a@example.com"))
    info = rich(err.value)
    assert (info.code, info.reason, info.violations) == (
        grpc.StatusCode.INVALID_ARGUMENT, "CARD_DATA_NOT_ALLOWED", ["request_id"],
    )  # fmt: skip
    echoed = (err.value.details() or "") + repr(err.value.trailing_metadata())
    assert "4242" not in echoed
    stored = await dump_database(api)
    assert "4242" not in stored


# -- page tokens --------------------------------------------------------------------

ListCall = Callable[[str], Awaitable[Message]]


async def _setup_lists(api: Api) -> dict[str, ListCall]:
    """Two of everything a list returns, so page_size=1 yields a token; returns each list's call."""
    b, s = api.billing, api.subs
    customers = [
        (await b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), email=f"{n}@example.com"))).customer
        for n in ("a", "b")
    ]
    cid = customers[0].id
    methods = [
        (
            await b.AttachPaymentMethod(
                pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=cid, processor_token="pm_card_visa")
            )
        ).payment_method
        for _ in range(2)
    ]
    payments = [
        (
            await b.CreatePayment(
                pb.CreatePaymentRequest(
                    request_id=rid(), customer_id=cid, payment_method_id=methods[0].id, amount=usd(1000)
                )
            )
        ).payment
        for _ in range(2)
    ]
    pay_id = payments[0].id
    for _ in range(2):
        await b.CreateRefund(pb.CreateRefundRequest(request_id=rid(), payment_id=pay_id, amount=usd(100)))
    plans = [
        (
            await s.CreatePlan(
                spb.CreatePlanRequest(
                    request_id=rid(),
                    name=f"plan {n}",
                    price=usd(500),
                    interval=spb.INTERVAL_DAY,
                    interval_count=1,
                )
            )
        ).plan
        for n in range(2)
    ]
    subscriptions = [
        (
            await s.CreateSubscription(
                spb.CreateSubscriptionRequest(
                    request_id=rid(),
                    customer_id=cid,
                    plan_id=plans[0].id,
                    payment_method_id=methods[0].id,
                    quantity=1,
                )
            )
        ).subscription
        for _ in range(2)
    ]
    sub_id = subscriptions[0].id
    await api.fake.advance_clock_to(api.clock.now() + timedelta(days=1, minutes=1))
    await sync_subscription(api.runtime.deps, RequestContext("reconciler", "reconcile", rid(), ""), sub_id)
    now = datetime.now(UTC)
    for n in range(2):
        dispute = Dispute(
            id=f"dp_probe{n}{secrets.token_hex(4)}", payment_id=pay_id, processor=Processor.FAKE,
            processor_id=f"du_probe{n}", amount=Money(100, "USD"), reason="fraudulent",
            status=DisputeStatus.NEEDS_RESPONSE, opened_at=now, created_at=now, updated_at=now,
        )  # fmt: skip
        await api.runtime.store.commit([Insert(dispute)], [])
    return {
        "ListCustomers": lambda t: b.ListCustomers(pb.ListCustomersRequest(page_size=1, page_token=t)),
        "ListPaymentMethods": lambda t: b.ListPaymentMethods(
            pb.ListPaymentMethodsRequest(customer_id=cid, page_size=1, page_token=t)
        ),
        "ListPayments": lambda t: b.ListPayments(pb.ListPaymentsRequest(page_size=1, page_token=t)),
        "ListRefunds": lambda t: b.ListRefunds(pb.ListRefundsRequest(payment_id=pay_id, page_size=1, page_token=t)),
        "ListAuditEvents": lambda t: b.ListAuditEvents(
            pb.ListAuditEventsRequest(resource_id=pay_id, page_size=1, page_token=t)
        ),
        "ListDisputes": lambda t: b.ListDisputes(pb.ListDisputesRequest(page_size=1, page_token=t)),
        "ListPlans": lambda t: s.ListPlans(spb.ListPlansRequest(page_size=1, page_token=t)),
        "ListSubscriptions": lambda t: s.ListSubscriptions(spb.ListSubscriptionsRequest(page_size=1, page_token=t)),
        "ListInvoices": lambda t: s.ListInvoices(
            spb.ListInvoicesRequest(subscription_id=sub_id, page_size=1, page_token=t)
        ),
    }


async def test_a_page_token_is_refused_by_every_other_list(api: Api) -> None:
    calls = await _setup_lists(api)
    tokens: dict[str, str] = {}
    for name, call in calls.items():
        first: Any = await call("")
        assert first.next_page_token, f"{name} should have a second page"
        tokens[name] = first.next_page_token
        second: Any = await call(first.next_page_token)  # its own list accepts it
        assert second.ListFields(), name
    wrongly_accepted = []
    for source, token in tokens.items():
        for target, call in calls.items():
            if target == source:
                continue
            try:
                await call(token)
            except grpc.aio.AioRpcError as err:
                info = rich(err)
                assert (info.code, info.reason, info.violations) == (
                    grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", ["page_token"],
                ), (source, target)  # fmt: skip
            else:
                wrongly_accepted.append(f"{source} token on {target}")
    assert wrongly_accepted == []
    assert len(tokens) == 9


@pytest.fixture
async def two_callers(mongo_uri: str) -> AsyncIterator[tuple[Api, dict[str, str]]]:
    tokens = {name: secrets.token_urlsafe(32) for name in ("shop", "backoffice")}
    settings = Settings.from_env(
        {
            "BILLING_AUTH_MODE": "token",
            "BILLING_AUTH_TOKENS": ",".join(f"{n}:{t}" for n, t in tokens.items()),
            "BILLING_CALLER_PERMISSIONS": "shop=customers:read+customers:write;backoffice=customers:read",
        }
    )
    interceptors, _ = build_auth(dataclasses.replace(settings))
    running = await start_api(mongo_uri, interceptors=interceptors)
    try:
        yield running, tokens
    finally:
        await stop_api(running)


async def test_a_page_token_is_refused_for_another_caller(two_callers: tuple[Api, dict[str, str]]) -> None:
    api, tokens = two_callers

    def auth(caller: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {tokens[caller]}"),)

    for n in range(2):
        await api.billing.CreateCustomer(
            pb.CreateCustomerRequest(request_id=rid(), email=f"{n}@example.com"), metadata=auth("shop")
        )
    page = await api.billing.ListCustomers(pb.ListCustomersRequest(page_size=1), metadata=auth("shop"))
    assert page.next_page_token
    assert (
        await api.billing.ListCustomers(
            pb.ListCustomersRequest(page_size=1, page_token=page.next_page_token), metadata=auth("shop")
        )
    ).customers
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.billing.ListCustomers(
            pb.ListCustomersRequest(page_size=1, page_token=page.next_page_token), metadata=auth("backoffice")
        )
    assert (rich(err.value).code, rich(err.value).reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
