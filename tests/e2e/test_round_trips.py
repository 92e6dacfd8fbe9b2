"""Store commands per mutating RPC, counted with a PyMongo command listener around the real server.

A count is not a timing: every RPC below issues a fixed number of store commands on the
path it takes (the fake processor keeps its state in memory, so only the service talks
to the store). The test prints the table and fails when an RPC needs more than its
budget; issue 14 asks for CreatePayment <= 6 and CreateRefund <= 7 on the paths that
call the processor.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc, subscription_service_pb2_grpc
from billing.v1 import subscription_service_pb2 as spb
from google.protobuf import field_mask_pb2
from pymongo import AsyncMongoClient, monitoring

from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.adapters.processors.fake import FakePaymentProcessor
from billing_service.domain.common import Processor
from billing_service.entrypoints.grpc_api.server import GrpcServer
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import Idempotency
from tests.helpers import rich, rid, usd

T = TypeVar("T")

# Driver housekeeping, not work an RPC asks of the store.
_NOT_COUNTED = frozenset({"ping", "hello", "ismaster", "isMaster", "endSessions", "killCursors"})

#: The most store commands each mutating RPC may issue on the path measured here (the
#: fake processor; the customer already exists at the processor except where noted).
BUDGET: dict[str, int] = {
    "CreateCustomer": 3,
    "UpdateCustomer": 4,
    "AttachPaymentMethod": 8,  # first method: creates the customer at the processor too
    "DetachPaymentMethod": 6,
    "CreatePayment": 6,
    "CreatePayment (replay)": 1,
    "CreatePayment (declined)": 6,
    "UpdatePayment": 4,
    "CreateRefund": 6,
    "CapturePayment": 6,
    "CancelPayment": 6,
    "CreatePlan": 3,
    "CreateSubscription": 15,  # mirrors the plan at the processor and its first invoice
    "UpdateSubscription": 13,  # mirrors the new plan and the proration invoice
    "PauseSubscription": 7,
    "ResumeSubscription": 7,
    "CancelSubscription": 7,
    "ArchivePlan": 6,
}

#: What the same paths issued before idempotency claims and answers rode in the commits
#: (commit 03d6ab1), printed alongside for comparison.
BEFORE: dict[str, int] = {
    "CreateCustomer": 7,
    "UpdateCustomer": 8,
    "AttachPaymentMethod": 12,
    "DetachPaymentMethod": 8,
    "CreatePayment": 14,
    "CreatePayment (replay)": 2,
    "CreatePayment (declined)": 14,
    "UpdatePayment": 7,
    "CreateRefund": 17,
    "CapturePayment": 8,
    "CancelPayment": 8,
    "CreatePlan": 7,
    "CreateSubscription": 29,
    "UpdateSubscription": 16,
    "PauseSubscription": 10,
    "ResumeSubscription": 10,
    "CancelSubscription": 10,
    "ArchivePlan": 8,
}


class CommandLog(monitoring.CommandListener):
    """Remembers the name (and collection) of every command the service's client starts."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in _NOT_COUNTED:
            return
        target = event.command.get(event.command_name)
        self.commands.append(f"{event.command_name}:{target}" if isinstance(target, str) else event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@dataclass
class Counted:
    """The service on its own store client, whose commands are logged."""

    billing: billing_service_pb2_grpc.BillingServiceAsyncStub
    subs: subscription_service_pb2_grpc.SubscriptionServiceAsyncStub
    log: CommandLog
    table: dict[str, list[str]] = field(default_factory=dict)

    async def measure(self, name: str, call: Awaitable[T]) -> T:
        """Runs one RPC and records the commands it issued under ``name``."""
        self.log.commands.clear()
        result = await call
        self.table[name] = list(self.log.commands)
        return result

    async def measure_error(self, name: str, call: Callable[[], Awaitable[Any]]) -> grpc.aio.AioRpcError:
        self.log.commands.clear()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        self.table[name] = list(self.log.commands)
        return err.value


@pytest.fixture
async def counted(mongo_uri: str) -> AsyncIterator[Counted]:
    log = CommandLog()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_uri, tz_aware=True, tzinfo=UTC, event_listeners=[log], retryWrites=True
    )
    name = f"rt_{uuid.uuid4().hex}"
    store = MongoBillingStore(client, name, owns_client=True)
    await store.ensure_indexes()
    clock = ManualClock()
    fake = FakePaymentProcessor(clock)
    deps = Deps(store=store, processors={Processor.FAKE: fake}, default_processor=Processor.FAKE, clock=clock)
    # A health interval longer than the test: its pings are not counted anyway.
    server = GrpcServer(deps, Idempotency(store, clock), address="127.0.0.1:0", health_interval=3600)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Counted(
            billing_service_pb2_grpc.BillingServiceStub(channel),
            subscription_service_pb2_grpc.SubscriptionServiceStub(channel),
            log,
        )
    finally:
        await channel.close(None)
        await server.stop(1)
        await client.drop_database(name)
        await store.aclose()
        await fake.aclose()


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def test_store_commands_per_mutating_rpc(counted: Counted) -> None:
    c, b, s = counted, counted.billing, counted.subs
    customer = (
        await c.measure("CreateCustomer", b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), email="a@b.co")))
    ).customer
    await c.measure(
        "UpdateCustomer",
        b.UpdateCustomer(
            pb.UpdateCustomerRequest(request_id=rid(), customer=pb.Customer(id=customer.id, name="Ada"),
                                     update_mask=_mask("name"))
        ),
    )  # fmt: skip
    method = (
        await c.measure(
            "AttachPaymentMethod",
            b.AttachPaymentMethod(
                pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.id, processor_token="pm_card_visa")
            ),
        )
    ).payment_method
    spare = await b.AttachPaymentMethod(
        pb.AttachPaymentMethodRequest(request_id=rid(), customer_id=customer.id, processor_token="pm_card_visa")
    )
    await c.measure(
        "DetachPaymentMethod",
        b.DetachPaymentMethod(
            pb.DetachPaymentMethodRequest(request_id=rid(), payment_method_id=spare.payment_method.id)
        ),
    )

    create = pb.CreatePaymentRequest(
        request_id=rid(), customer_id=customer.id, payment_method_id=method.id, amount=usd(5000)
    )
    paid = (await c.measure("CreatePayment", b.CreatePayment(create))).payment
    assert paid.status == pb.PAYMENT_STATUS_SUCCEEDED
    replayed = (await c.measure("CreatePayment (replay)", b.CreatePayment(create))).payment
    assert replayed.id == paid.id

    declined = await b.AttachPaymentMethod(
        pb.AttachPaymentMethodRequest(
            request_id=rid(), customer_id=customer.id, processor_token="pm_card_chargeDeclined"
        )
    )
    err = await c.measure_error(
        "CreatePayment (declined)",
        lambda: b.CreatePayment(
            pb.CreatePaymentRequest(request_id=rid(), customer_id=customer.id,
                                    payment_method_id=declined.payment_method.id, amount=usd(100))
        ),
    )  # fmt: skip
    assert rich(err).reason == "PAYMENT_DECLINED"

    await c.measure(
        "UpdatePayment",
        b.UpdatePayment(
            pb.UpdatePaymentRequest(request_id=rid(), payment=pb.Payment(id=paid.id, description="tea"),
                                    update_mask=_mask("description"))
        ),
    )  # fmt: skip
    refund = (
        await c.measure(
            "CreateRefund",
            b.CreateRefund(pb.CreateRefundRequest(request_id=rid(), payment_id=paid.id, amount=usd(1500))),
        )
    ).refund
    assert refund.status == pb.REFUND_STATUS_SUCCEEDED

    manual = pb.CreatePaymentRequest(
        request_id=rid(), customer_id=customer.id, payment_method_id=method.id, amount=usd(2000),
        capture_method=pb.CAPTURE_METHOD_MANUAL,
    )  # fmt: skip
    held = (await b.CreatePayment(manual)).payment
    captured = (
        await c.measure(
            "CapturePayment", b.CapturePayment(pb.CapturePaymentRequest(request_id=rid(), payment_id=held.id))
        )
    ).payment
    assert captured.status == pb.PAYMENT_STATUS_SUCCEEDED
    manual.request_id = rid()
    held = (await b.CreatePayment(manual)).payment
    canceled = (
        await c.measure("CancelPayment", b.CancelPayment(pb.CancelPaymentRequest(request_id=rid(), payment_id=held.id)))
    ).payment
    assert canceled.status == pb.PAYMENT_STATUS_CANCELED

    plan = (
        await c.measure(
            "CreatePlan",
            s.CreatePlan(spb.CreatePlanRequest(request_id=rid(), name="Basic", price=usd(1000),
                                               interval=spb.INTERVAL_MONTH)),
        )
    ).plan  # fmt: skip
    pro = (
        await s.CreatePlan(spb.CreatePlanRequest(request_id=rid(), name="Pro", price=usd(3000),
                                                 interval=spb.INTERVAL_MONTH))
    ).plan  # fmt: skip
    sub = (
        await c.measure(
            "CreateSubscription",
            s.CreateSubscription(
                spb.CreateSubscriptionRequest(request_id=rid(), customer_id=customer.id, plan_id=plan.id,
                                              payment_method_id=method.id)
            ),
        )
    ).subscription  # fmt: skip
    await c.measure(
        "UpdateSubscription",
        s.UpdateSubscription(spb.UpdateSubscriptionRequest(request_id=rid(), subscription_id=sub.id, plan_id=pro.id)),
    )
    await c.measure(
        "PauseSubscription", s.PauseSubscription(spb.PauseSubscriptionRequest(request_id=rid(), subscription_id=sub.id))
    )
    await c.measure(
        "ResumeSubscription",
        s.ResumeSubscription(spb.ResumeSubscriptionRequest(request_id=rid(), subscription_id=sub.id)),
    )
    await c.measure(
        "CancelSubscription",
        s.CancelSubscription(spb.CancelSubscriptionRequest(request_id=rid(), subscription_id=sub.id)),
    )
    await c.measure("ArchivePlan", s.ArchivePlan(spb.ArchivePlanRequest(request_id=rid(), plan_id=plan.id)))

    width = max(len(name) for name in c.table)
    lines = [f"{'RPC':<{width}}  before  after  (command:collection, in order)"]
    for name, commands in c.table.items():
        lines.append(f"{name:<{width}}  {BEFORE[name]:>6}  {len(commands):>5}  {' '.join(commands)}")
    print("\nstore commands per mutating RPC\n" + "\n".join(lines))
    if out := os.environ.get("BILLING_ROUND_TRIPS_JSON"):
        # ``make bench`` runs this test and prints this table: one source for the counts.
        table = {
            name: {"total": len(commands), "before": BEFORE[name], "budget": BUDGET[name],
                   "commands": [command.split(":")[0] for command in commands]}
            for name, commands in c.table.items()
        }  # fmt: skip
        Path(out).write_text(json.dumps(table, indent=2))
    over = {name: len(commands) for name, commands in c.table.items() if len(commands) > BUDGET[name]}
    assert not over, f"over budget: {over} (budget {BUDGET})"
