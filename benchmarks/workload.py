"""A representative workload through the real service, one labelled step at a time.

The gRPC server runs in this process exactly as ``serve`` builds it (``bootstrap`` with the
fake processor) and is called through the generated client; the webhook use cases,
the inbox, the janitor and a reconciliation pass run against the same store. Every step
is recorded by a :class:`~benchmarks.commands.CommandRecorder`, so a step's commands are
the ones that step caused.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc as pb_grpc
from billing.v1 import common_pb2
from billing.v1 import subscription_service_pb2 as spb
from billing.v1 import subscription_service_pb2_grpc as spb_grpc
from google.protobuf import field_mask_pb2

from benchmarks.commands import Command, CommandRecorder, RpcCounts

T = TypeVar("T")


def rid() -> str:
    return str(uuid.uuid4())


def usd(amount: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency="USD")


class Workload:
    """The service in process on ``database``, its client, and a recorder.

    Args:
        mongo_uri: The store.
        database: A database of its own.
        recorder: Registered before this object is built (it must see the store's client).
    """

    def __init__(self, mongo_uri: str, database: str, recorder: CommandRecorder) -> None:
        self.uri = mongo_uri
        self.database = database
        self.recorder = recorder
        self.steps: dict[str, list[Command]] = {}

    async def __aenter__(self) -> Self:
        from billing_service.bootstrap import bootstrap
        from billing_service.config import Settings
        from billing_service.entrypoints.grpc_api.server import GrpcServer

        self.runtime = await bootstrap(
            Settings(mongodb_database=self.database, log_level="WARNING", fake_state="memory"), mongodb_uri=self.uri
        )
        self.server = GrpcServer(
            self.runtime.deps, self.runtime.idempotency, address="127.0.0.1:0", reflection_enabled=False,
            health_interval=3600.0,
        )  # fmt: skip
        port = await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.billing = pb_grpc.BillingServiceStub(self.channel)
        self.subs = spb_grpc.SubscriptionServiceStub(self.channel)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.channel.close(None)
        await self.server.stop(0)
        await self.runtime.aclose()

    async def step(self, label: str, call: Awaitable[T]) -> T:
        """Runs one call, recording its commands under ``label``."""
        with self.recorder.recording(label) as commands:
            result = await call
        self.steps[label] = commands
        return result

    # ------------------------------------------------------------------ mutating RPCs

    async def mutating_rpcs(self) -> RpcCounts:
        """Every mutating RPC once, after a warm-up pass (one-time reads are not counted)."""
        await self._mutations(record=False)
        return RpcCounts(by_rpc=await self._mutations(record=True))

    async def _mutations(self, *, record: bool) -> dict[str, list[Command]]:
        out: dict[str, list[Command]] = {}

        async def run(label: str, call: Awaitable[T]) -> T:
            if not record:
                return await call
            result = await self.step(label, call)
            out[label] = self.steps[label]
            return result

        b, s = self.billing, self.subs
        created = await run(
            "CreateCustomer", b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid(), email="w@x.io"))
        )
        customer = created.customer
        update = pb.UpdateCustomerRequest(
            request_id=rid(), customer=pb.Customer(id=customer.id, name="Grace"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        )  # fmt: skip
        await run("UpdateCustomer", b.UpdateCustomer(update))
        attach = pb.AttachPaymentMethodRequest(
            request_id=rid(), customer_id=customer.id, processor_token="pm_card_visa"
        )
        method = (await run("AttachPaymentMethod", b.AttachPaymentMethod(attach))).payment_method
        create = pb.CreatePaymentRequest(
            request_id=rid(), customer_id=customer.id, payment_method_id=method.id, amount=usd(5000), description="w"
        )
        paid = (await run("CreatePayment", b.CreatePayment(create))).payment
        await run("CreatePayment (retry)", b.CreatePayment(create))
        refund = pb.CreateRefundRequest(request_id=rid(), payment_id=paid.id, amount=usd(1000))
        await run("CreateRefund", b.CreateRefund(refund))
        manual = pb.CreatePaymentRequest(
            request_id=rid(), customer_id=customer.id, payment_method_id=method.id, amount=usd(3000),
            capture_method=pb.CAPTURE_METHOD_MANUAL,
        )  # fmt: skip
        held = (await run("CreatePayment (manual)", b.CreatePayment(manual))).payment
        await run("CapturePayment", b.CapturePayment(pb.CapturePaymentRequest(request_id=rid(), payment_id=held.id)))
        manual.request_id = rid()
        held = (await b.CreatePayment(manual)).payment
        await run("CancelPayment", b.CancelPayment(pb.CancelPaymentRequest(request_id=rid(), payment_id=held.id)))
        new_plan = spb.CreatePlanRequest(request_id=rid(), name="Pro", price=usd(1000), interval=spb.INTERVAL_MONTH)
        plan = (await run("CreatePlan", s.CreatePlan(new_plan))).plan
        subscribe = spb.CreateSubscriptionRequest(
            request_id=rid(), customer_id=customer.id, plan_id=plan.id, payment_method_id=method.id
        )
        sub = (await run("CreateSubscription", s.CreateSubscription(subscribe))).subscription
        change = spb.UpdateSubscriptionRequest(request_id=rid(), subscription_id=sub.id, quantity=2)
        await run("UpdateSubscription", s.UpdateSubscription(change))
        pause = spb.PauseSubscriptionRequest(request_id=rid(), subscription_id=sub.id)
        await run("PauseSubscription", s.PauseSubscription(pause))
        resume = spb.ResumeSubscriptionRequest(request_id=rid(), subscription_id=sub.id)
        await run("ResumeSubscription", s.ResumeSubscription(resume))
        cancel = spb.CancelSubscriptionRequest(request_id=rid(), subscription_id=sub.id)
        await run("CancelSubscription", s.CancelSubscription(cancel))
        await run("ArchivePlan", s.ArchivePlan(spb.ArchivePlanRequest(request_id=rid(), plan_id=plan.id)))
        attach.request_id = rid()
        spare = (await b.AttachPaymentMethod(attach)).payment_method
        detach = pb.DetachPaymentMethodRequest(request_id=rid(), payment_method_id=spare.id)
        await run("DetachPaymentMethod", b.DetachPaymentMethod(detach))
        self.ids = {"customer": customer.id, "method": method.id, "payment": paid.id, "plan": plan.id, "sub": sub.id}
        return out

    # -------------------------------------------------------------------- everything

    async def everything(self) -> None:
        """Mutations, every read and list (with a second page), webhooks, janitor, reconciliation."""
        await self.mutating_rpcs()
        await self.reads()
        await self.webhooks()
        await self.events()
        await self.background()

    async def reads(self) -> None:
        b, s, ids = self.billing, self.subs, self.ids
        await self.step("GetCustomer", b.GetCustomer(pb.GetCustomerRequest(customer_id=ids["customer"])))
        await self.step("GetPayment", b.GetPayment(pb.GetPaymentRequest(payment_id=ids["payment"])))
        refunds = await self.step("ListRefunds", b.ListRefunds(pb.ListRefundsRequest(payment_id=ids["payment"])))
        await self.step("GetRefund", b.GetRefund(pb.GetRefundRequest(refund_id=refunds.refunds[0].id)))
        await self.step("GetPlan", s.GetPlan(spb.GetPlanRequest(plan_id=ids["plan"])))
        await self.step("GetSubscription", s.GetSubscription(spb.GetSubscriptionRequest(subscription_id=ids["sub"])))
        invoices = await self.step("ListInvoices", s.ListInvoices(spb.ListInvoicesRequest(subscription_id=ids["sub"])))
        if invoices.invoices:
            await self.step("GetInvoice", s.GetInvoice(spb.GetInvoiceRequest(invoice_id=invoices.invoices[0].id)))
        await self.step("ListInvoices (customer)", s.ListInvoices(spb.ListInvoicesRequest(customer_id=ids["customer"])))
        customer, succeeded = ids["customer"], pb.PAYMENT_STATUS_SUCCEEDED
        lists: list[tuple[str, Any, Any]] = [
            ("ListCustomers", b.ListCustomers, pb.ListCustomersRequest(page_size=1)),
            ("ListCustomers (email)", b.ListCustomers, pb.ListCustomersRequest(page_size=1, email="w@x.io")),
            ("ListPaymentMethods", b.ListPaymentMethods,
             pb.ListPaymentMethodsRequest(customer_id=customer, page_size=1)),
            ("ListPayments", b.ListPayments, pb.ListPaymentsRequest(page_size=1)),
            ("ListPayments (customer)", b.ListPayments, pb.ListPaymentsRequest(customer_id=customer, page_size=1)),
            ("ListPayments (customer, status)", b.ListPayments,
             pb.ListPaymentsRequest(customer_id=customer, status=succeeded, page_size=1)),
            ("ListPayments (status)", b.ListPayments, pb.ListPaymentsRequest(status=succeeded, page_size=1)),
            ("ListAuditEvents", b.ListAuditEvents, pb.ListAuditEventsRequest(resource_id=ids["payment"], page_size=1)),
            ("ListDisputes", b.ListDisputes, pb.ListDisputesRequest(page_size=1)),
            ("ListPlans", s.ListPlans, spb.ListPlansRequest(page_size=1)),
            ("ListSubscriptions", s.ListSubscriptions, spb.ListSubscriptionsRequest(customer_id=customer, page_size=1)),
        ]  # fmt: skip
        for label, method, request in lists:
            page = await self.step(label, method(request))
            if page.next_page_token:
                request.page_token = page.next_page_token
                await self.step(f"{label} (page 2)", method(request))

    async def webhooks(self) -> None:
        """The webhook use cases (fake processor) and the inbox verbs the sidecar uses."""
        from billing_service.domain.common import Processor
        from billing_service.domain.payments import Payment, Refund
        from billing_service.domain.subscriptions import Subscription
        from billing_service.service_layer import webhooks as wh
        from billing_service.service_layer.ports import WebhookStatus

        deps, store, ids, fake = self.runtime.deps, self.runtime.store, self.ids, Processor.FAKE
        ctx = wh.webhook_context(fake, f"evt_{rid()}", "payment.updated")
        payment = await store.get(Payment, ids["payment"])
        sub = await store.get(Subscription, ids["sub"])
        refund = await store.find_one(Refund, {"payment_id": ids["payment"]})
        assert payment is not None and sub is not None and refund is not None
        await self.step("webhook: converge payment", wh.converge_payment(deps, ctx, fake, payment.processor_id))
        await self.step("webhook: converge refund", wh.converge_refund(deps, ctx, fake, refund.processor_id))
        refunds = wh.converge_payment_refunds(
            deps, ctx, fake, payment.processor_id, processor_refund_ids=(refund.processor_id,)
        )
        await self.step("webhook: converge payment refunds", refunds)
        await self.step("webhook: converge subscription", wh.converge_subscription(deps, ctx, fake, sub.processor_id))
        await self.step("webhook: orphan", wh.converge_payment(deps, ctx, fake, "ch_unknown", payment_id="pay_unknown"))

        inbox = self.runtime.inbox
        now = datetime.now(UTC)
        event_id = f"evt_{rid()}"
        await self.step("inbox: insert", inbox.insert(Processor.STRIPE, event_id, "charge.refunded", b"{}", now=now))
        await self.step(
            "inbox: redelivery", inbox.insert(Processor.STRIPE, event_id, "charge.refunded", b"{}", now=now)
        )
        stored = await inbox.get(Processor.STRIPE, event_id)
        assert stored is not None
        won = await self.step("inbox: claim stored", inbox.claim_stored("w-1", [stored], now=now, lease_seconds=60))
        await self.step("inbox: extend", inbox.extend(won[0].id, "w-1", until=now + timedelta(seconds=90)))
        await self.step("inbox: complete", inbox.complete(won[0].id, "w-1", WebhookStatus.PROCESSED, now=now))
        second = f"evt_{rid()}"
        await inbox.insert(Processor.STRIPE, second, "charge.refunded", b"{}", now=now)
        due = await self.step("inbox: claim due", inbox.claim_due("w-2", now=now, lease_seconds=60, limit=4))
        await self.step("inbox: fail", inbox.fail(due[0].id, "w-2", error="X", retry_at=None, now=now))
        await self.step("inbox: replay", inbox.replay(Processor.STRIPE, second, now=now))
        await self.step("inbox: replay (any processor)", inbox.replay(None, second, now=now))
        await self.step("inbox: replay dead", inbox.replay_dead(now=now))
        await self.step("inbox: get", inbox.get(Processor.STRIPE, event_id))
        await self.step("inbox: stats", inbox.stats(now=now))

    async def events(self) -> None:
        """The event log: a sequencer pass, ListEvents by each filter, a consumer's ack, retention."""
        from billing.v1 import event_service_pb2 as epb
        from billing.v1 import event_service_pb2_grpc as epb_grpc

        log = self.runtime.store.events
        await self.step("events: sequencer pass", log.sequence_pass())
        stub = epb_grpc.EventServiceStub(self.channel)
        ids = self.ids
        filters = [
            ("ListEvents", ""),
            ("ListEvents (resource)", f'resource_id = "{ids["payment"]}"'),
            ("ListEvents (customer)", f'customer_id = "{ids["customer"]}"'),
            ("ListEvents (type)", 'type = "payment.succeeded"'),
        ]
        page = None
        for label, text in filters:
            request = epb.ListEventsRequest(page_size=2, filter=text)
            page = await self.step(label, stub.ListEvents(request))
            if label == "ListEvents" and page.next_page_token:
                request.page_token = page.next_page_token
                await self.step("ListEvents (page 2)", stub.ListEvents(request))
        first = await stub.ListEvents(epb.ListEventsRequest(page_size=1))
        if first.events:
            ack = epb.AckEventsRequest(request_id=rid(), consumer_id="workload", cursor=first.events[0].cursor)
            await self.step("AckEvents", stub.AckEvents(ack))
            await self.step(
                "GetEventConsumer", stub.GetEventConsumer(epb.GetEventConsumerRequest(consumer_id="workload"))
            )
        later = datetime.now(UTC) + timedelta(days=400)
        await self.step("events: retention", log.apply_retention(later, timedelta(days=30)))

    async def background(self) -> None:
        """The janitor (leased), a reconciliation pass and the subscription gauges."""
        from billing_service.adapters.mongo.counts import subscription_counter
        from billing_service.adapters.mongo.janitor import MongoJanitor
        from billing_service.service_layer.reconcile import reconcile_once

        store = self.runtime.store
        janitor = MongoJanitor(store.database.client, self.database, self.runtime.inbox)
        await janitor.ensure_indexes()
        later = datetime.now(UTC) + timedelta(days=60)
        await self.step("janitor: sweep", janitor.sweep_with_lease(owner="w", now=later, lease_seconds=60))
        await self.step("reconcile: pass", reconcile_once(self.runtime.deps, stale_after=timedelta(0)))
        count = subscription_counter(store)
        await self.step("metrics: subscriptions by status", count("active"))
