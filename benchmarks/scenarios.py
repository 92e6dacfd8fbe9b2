"""The benchmark scenarios: read path, write path, webhook ingestion and multi-process scaling.

Every path is measured beside its baselines in the same run, from this (client) process,
against servers running as child processes on loopback.
"""

from __future__ import annotations

import hashlib
import secrets
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc as pb_grpc
from billing.v1 import common_pb2
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from benchmarks.harness import ROOT, WATCH, Child, Result, closed_loop
from billing_service.adapters.mongo.codecs import encode
from billing_service.adapters.mongo.store import MongoBillingStore, idempotency_key
from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.money import Money
from billing_service.domain.payments import CaptureMethod, Payment, PaymentStatus


@dataclass
class Config:
    """Durations and concurrency levels of one run."""

    seconds: float = 4.0
    warmup: float = 1.0
    levels: tuple[int, ...] = (1, 16, 64)
    profile_dir: Path | None = None


def channel(port: int, *, own_connection: bool = False) -> grpc.aio.Channel:
    options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)


def start_service(
    mongo_uri: str, database: str, *, port: int = 0, reuseport: bool = False, profile: str = "", root: Path = ROOT
) -> Child:
    args = ["-m", "benchmarks.serve", "service", "--mongo-uri", mongo_uri, "--database", database, "--port", str(port)]
    if reuseport:
        args.append("--reuseport")
    if profile:
        args += ["--profile", profile]
    child = Child(args, root=root)
    WATCH["server" if "server" not in WATCH else f"server{len(WATCH)}"] = child.proc.pid
    return child


async def seed(stub: Any, payments: int) -> tuple[str, str, list[str]]:
    """A customer, a card and ``payments`` succeeded payments, created through the API."""
    customer = await stub.CreateCustomer(pb.CreateCustomerRequest(request_id=str(uuid.uuid4()), email="b@example.com"))
    method = await stub.AttachPaymentMethod(
        pb.AttachPaymentMethodRequest(
            request_id=str(uuid.uuid4()), customer_id=customer.customer.id, processor_token="pm_card_visa"
        )
    )
    ids = []
    for _ in range(payments):
        created = await stub.CreatePayment(create_request(customer.customer.id, method.payment_method.id))
        ids.append(created.payment.id)
    return customer.customer.id, method.payment_method.id, ids


def create_request(customer_id: str, method_id: str) -> pb.CreatePaymentRequest:
    return pb.CreatePaymentRequest(
        request_id=str(uuid.uuid4()),
        customer_id=customer_id,
        payment_method_id=method_id,
        amount=common_pb2.Money(amount_minor=1999, currency="USD"),
        description="bench",
    )


# ---------------------------------------------------------------------------- read


async def read_path(cfg: Config, mongo_uri: str) -> list[Result]:
    """GetPayment through the service vs a bare grpc.aio server vs PyMongo find_one."""
    database = f"bench_read_{uuid.uuid4().hex[:8]}"
    profile = str(cfg.profile_dir / "read.txt") if cfg.profile_dir else ""
    service = start_service(mongo_uri, database, profile=profile)
    results: list[Result] = []
    store = MongoBillingStore.connect(mongo_uri, database)
    try:
        ch = channel(int(service.info))
        stub = pb_grpc.BillingServiceStub(ch)
        _, _, ids = await seed(stub, 100)
        sample = await stub.GetPayment(pb.GetPaymentRequest(payment_id=ids[0]))
        with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
            f.write(sample.SerializeToString())
        bare = Child(["-m", "benchmarks.serve", "bare", "--response", f.name])
        WATCH["bare"] = bare.proc.pid
        bare_ch = channel(int(bare.info))
        bare_stub = pb_grpc.BillingServiceStub(bare_ch)
        payments = store.database["payments"]
        requests = [pb.GetPaymentRequest(payment_id=i) for i in ids]

        async def via_service(i: int) -> object:
            return await stub.GetPayment(requests[i % len(requests)])

        async def via_bare(i: int) -> object:
            return await bare_stub.GetPayment(requests[i % len(requests)])

        async def via_pymongo(i: int) -> object:
            doc = await payments.find_one({"_id": ids[i % len(ids)]})
            assert doc is not None
            return doc

        for c in cfg.levels:
            results.append(await closed_loop("read", "service", c, via_service, seconds=cfg.seconds, warmup=cfg.warmup))
            results.append(await closed_loop("read", "bare_grpc", c, via_bare, seconds=cfg.seconds, warmup=cfg.warmup))
            results.append(await closed_loop("read", "pymongo", c, via_pymongo, seconds=cfg.seconds, warmup=cfg.warmup))
        await bare_ch.close(None)
        await ch.close(None)
        bare.stop()
        Path(f.name).unlink(missing_ok=True)
    finally:
        service.stop()
        await store.database.client.drop_database(database)
        await store.aclose()
    return results


# --------------------------------------------------------------------------- write


class StoreFloor:
    """CreatePayment's Mongo writes issued directly with PyMongo (no reads, no service code).

    Per operation, as the service does them: the idempotency insert, the payment insert
    with its audit event in one transaction, the payment update (version-checked) with its
    audit event in one transaction, and the idempotency completion.
    """

    def __init__(self, store: MongoBillingStore) -> None:
        self.store = store
        self.db = store.database
        self.client = store.database.client

    def _txn_options(self) -> dict[str, Any]:
        return {"read_concern": ReadConcern("snapshot"), "write_concern": WriteConcern(w="majority")}

    async def write(self, i: int) -> None:
        now = datetime.now(UTC)
        request_id = str(uuid.uuid4())
        key = idempotency_key("anonymous", "/billing.v1.BillingService/CreatePayment", request_id)
        owner = secrets.token_hex(12)
        pay_id = f"pay_{uuid.uuid4().hex}"
        await self.db["idempotency"].insert_one({
            "_id": key, "caller": "anonymous", "method": "/billing.v1.BillingService/CreatePayment",
            "request_id": request_id, "fingerprint": hashlib.sha256(request_id.encode()).hexdigest(),
            "resource_id": pay_id, "owner": owner, "state": "in_progress", "created_at": now,
            "lease_until": now + timedelta(seconds=60), "expires_at": now + timedelta(hours=48), "attempts": 1,
        })  # fmt: skip
        payment = Payment(
            id=pay_id, customer_id="cus_bench", payment_method_id="pm_bench", processor=Processor.FAKE,
            amount=Money(1999, "USD"), capture_method=CaptureMethod.AUTOMATIC, status=PaymentStatus.PENDING,
            description="bench", metadata={}, created_at=now, updated_at=now,
        )  # fmt: skip
        doc = encode(payment)
        doc["version"] = 1
        await self._txn([("insert", doc)], self._event(pay_id, "payment.created", "", "pending", now))
        payment.status = PaymentStatus.SUCCEEDED
        payment.processor_id = f"ch_{uuid.uuid4().hex[:24]}"
        doc = encode(payment)
        doc["version"] = 2
        await self._txn([("replace", doc)], self._event(pay_id, "payment.succeeded", "pending", "succeeded", now))
        await self.db["idempotency"].update_one(
            {"_id": key, "owner": owner, "state": "in_progress"},
            {"$set": {"state": "completed", "response": b"x" * 200, "error": None}},
        )

    @staticmethod
    def _event(pay_id: str, action: str, before: str, after: str, now: datetime) -> dict[str, Any]:
        return encode(
            AuditEvent(
                id=f"evt_{uuid.uuid4().hex}", caller="anonymous", request_id="r", action=action,
                resource_type="payment", resource_id=pay_id, before_status=before, after_status=after, at=now,
                data={"amount_minor": "1999", "currency": "USD"},
            )
        )  # fmt: skip

    async def _txn(self, writes: list[tuple[str, dict[str, Any]]], event: dict[str, Any]) -> None:
        async with self.client.start_session() as session:
            await session.start_transaction(**self._txn_options())
            for kind, doc in writes:
                if kind == "insert":
                    await self.db["payments"].insert_one(doc, session=session)
                else:
                    result = await self.db["payments"].replace_one(
                        {"_id": doc["_id"], "version": doc["version"] - 1}, doc, session=session
                    )
                    assert result.matched_count == 1
            await self.db["audit_events"].insert_many([event], ordered=True, session=session)
            await session.commit_transaction()


async def write_path(cfg: Config, mongo_uri: str) -> list[Result]:
    """CreatePayment through the service (fake processor) vs the raw store floor."""
    database = f"bench_write_{uuid.uuid4().hex[:8]}"
    floor_db = f"bench_floor_{uuid.uuid4().hex[:8]}"
    profile = str(cfg.profile_dir / "write.txt") if cfg.profile_dir else ""
    service = start_service(mongo_uri, database, profile=profile)
    floor_store = MongoBillingStore.connect(mongo_uri, floor_db)
    await floor_store.ensure_indexes()
    floor = StoreFloor(floor_store)
    results: list[Result] = []
    try:
        ch = channel(int(service.info))
        stub = pb_grpc.BillingServiceStub(ch)
        customer_id, method_id, _ = await seed(stub, 1)

        async def via_service(i: int) -> object:
            return await stub.CreatePayment(create_request(customer_id, method_id))

        for c in cfg.levels:
            results.append(
                await closed_loop("write", "service", c, via_service, seconds=cfg.seconds, warmup=cfg.warmup)
            )
            results.append(
                await closed_loop("write", "store_floor", c, floor.write, seconds=cfg.seconds, warmup=cfg.warmup)
            )
        await ch.close(None)
    finally:
        service.stop()
        store = MongoBillingStore.connect(mongo_uri, database)
        await store.database.client.drop_database(database)
        await store.aclose()
        await floor_store.database.client.drop_database(floor_db)
        await floor_store.aclose()
    return results


# ------------------------------------------------------------------------- scaling


async def scaling(cfg: Config, mongo_uri: str, levels: tuple[int, ...] = (16, 64)) -> list[Result]:
    """The write path with one and with two service processes sharing a port (SO_REUSEPORT)."""
    import socket

    results: list[Result] = []
    for processes in (1, 2):
        database = f"bench_scale_{uuid.uuid4().hex[:8]}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        children = [start_service(mongo_uri, database, port=port, reuseport=True) for _ in range(processes)]
        try:
            # Several connections, so the kernel spreads them over the processes.
            channels = [channel(port, own_connection=True) for _ in range(8)]
            stubs = [pb_grpc.BillingServiceStub(ch) for ch in channels]
            # The fake processor lives in each server's memory: a customer seeded through a
            # connection is only ever charged through it (a connection stays on one process).
            seeded = [await seed(stub, 1) for stub in stubs]

            async def op(i: int, stubs: list[Any] = stubs, seeded: list[Any] = seeded) -> object:
                k = i % len(stubs)
                return await stubs[k].CreatePayment(create_request(seeded[k][0], seeded[k][1]))

            for c in levels:
                r = await closed_loop("scaling", f"{processes}_process", c, op, seconds=cfg.seconds, warmup=cfg.warmup)
                r.extra["processes"] = processes
                results.append(r)
            for ch in channels:
                await ch.close(None)
        finally:
            for child in children:
                child.stop()
            store = MongoBillingStore.connect(mongo_uri, database)
            await store.database.client.drop_database(database)
            await store.aclose()
    return results
