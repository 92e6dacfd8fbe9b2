"""MongoBillingStore against the embedded MongoDB-wire server, over the wire."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_service.adapters.mongo import store as store_module
from billing_service.adapters.mongo import writes as writes_module
from billing_service.adapters.mongo.codecs import decode, encode
from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.domain.common import AuditEvent, Processor
from billing_service.domain.customers import Customer, PaymentMethod, PaymentMethodStatus, PaymentMethodType
from billing_service.domain.errors import ConcurrencyConflict, StoreUnavailable
from billing_service.domain.ids import new_id
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    CaptureMethod,
    NextAction,
    Payment,
    PaymentFailure,
    PaymentStatus,
    Refund,
    RefundReason,
    RefundStatus,
)
from billing_service.domain.subscriptions import (
    Interval,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Plan,
    PlanStatus,
    Subscription,
    SubscriptionStatus,
)
from billing_service.service_layer.ports import Change, IdempotencyOutcome, Insert, Update

# Mongo keeps milliseconds: build times that survive a round trip exactly.
T0 = datetime(2026, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)


def _t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def customer(**kw: Any) -> Customer:
    base: dict[str, Any] = {
        "id": new_id("cus"),
        "email": "ada@example.com",
        "name": "Ada Lovelace",
        "description": "analytical engine account",
        "metadata": {"crm_id": "42", "tier": "gold"},
        "default_processor": Processor.STRIPE,
        "created_at": T0,
        "updated_at": _t(1),
        "processor_refs": {"stripe": "cus_Stripe123", "paypal": "PAYPAL-9"},
    }
    return Customer(**(base | kw))


def payment_method(customer_id: str) -> PaymentMethod:
    return PaymentMethod(
        id=new_id("pm"),
        customer_id=customer_id,
        processor=Processor.STRIPE,
        processor_id="pm_1Abc",
        type=PaymentMethodType.CARD,
        brand="visa",
        last4="4242",
        exp_month=12,
        exp_year=2031,
        status=PaymentMethodStatus.ATTACHED,
        created_at=T0,
        updated_at=T0,
    )


def payment(customer_id: str, **kw: Any) -> Payment:
    base: dict[str, Any] = {
        "id": new_id("pay"),
        "customer_id": customer_id,
        "payment_method_id": new_id("pm"),
        "processor": Processor.STRIPE,
        "amount": Money(1999, "USD"),
        "capture_method": CaptureMethod.MANUAL,
        "status": PaymentStatus.REQUIRES_ACTION,
        "description": "order #1001",
        "metadata": {"order": "1001"},
        "created_at": T0,
        "updated_at": _t(2),
        "processor_id": "pi_3Xyz",
        "amount_capturable": 1999,
        "next_action": NextAction(redirect_url="https://hooks.example/3ds"),
        "failure": PaymentFailure(code="card_declined", decline_code="insufficient_funds", message="nope"),
        "off_session": True,
        "dispute_ids": ["dp_1", "dp_2"],
    }
    return Payment(**(base | kw))


def all_entities() -> list[Any]:
    cus = customer()
    pay = payment(cus.id)
    plan = Plan(
        id=new_id("plan"),
        name="Pro",
        description="Pro monthly",
        price=Money(1500, "KWD"),
        interval=Interval.MONTH,
        interval_count=1,
        trial_period_days=14,
        status=PlanStatus.ACTIVE,
        metadata={},
        created_at=T0,
        updated_at=T0,
        processor_refs={"stripe": "price_1", "stripe_product": "prod_1"},
    )
    sub = Subscription(
        id=new_id("sub"),
        customer_id=cus.id,
        plan_id=plan.id,
        payment_method_id=new_id("pm"),
        quantity=3,
        status=SubscriptionStatus.TRIALING,
        processor=Processor.PAYPAL,
        metadata={"seat": "team"},
        created_at=T0,
        updated_at=_t(5),
        processor_id="I-BW452GLLEP1G",
        trial_end=_t(14 * 86400),
        current_period_start=T0,
        current_period_end=_t(30 * 86400),
        cancel_at_period_end=True,
        canceled_at=None,
        paused_at=_t(60),
        approval_url="https://www.paypal.example/approve",
    )
    invoice = Invoice(
        id=new_id("inv"),
        subscription_id=sub.id,
        customer_id=cus.id,
        processor=Processor.STRIPE,
        processor_id="in_1",
        status=InvoiceStatus.OPEN,
        amount_due=Money(4500, "JPY"),
        amount_paid=Money(0, "JPY"),
        period_start=T0,
        period_end=None,
        lines=[
            InvoiceLine(description="Pro x3", amount=Money(4500, "JPY"), quantity=3),
            InvoiceLine(description="proration", amount=Money(-150, "JPY"), quantity=1, proration=True),
        ],
        created_at=T0,
        updated_at=T0,
    )
    refund = Refund(
        id=new_id("re"),
        payment_id=pay.id,
        processor=Processor.STRIPE,
        amount=Money(10**15, "USD"),
        reason=RefundReason.UNSPECIFIED,
        status=RefundStatus.FAILED,
        metadata={"k": "v"},
        created_at=T0,
        updated_at=T0,
        processor_id="re_1",
        failure_reason="expired_or_canceled_card",
    )
    return [cus, payment_method(cus.id), pay, refund, plan, sub, invoice]


def audit(resource_id: str, action: str = "thing.created", *, at: datetime = T0) -> AuditEvent:
    return AuditEvent(
        id=new_id("evt"),
        caller="svc:checkout",
        request_id=str(uuid.uuid4()),
        action=action,
        resource_type=resource_id.split("_", maxsplit=1)[0],
        resource_id=resource_id,
        before_status="",
        after_status="created",
        at=at,
        data={"amount_minor": "1999"},
    )


@pytest.fixture(params=["bulk", "one_by_one"], autouse=True)
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both ways a transaction is sent: MongoDB 8.0's one ``bulkWrite``
    command, and one command per write (older servers)."""
    if request.param == "one_by_one":
        monkeypatch.setattr(store_module, "supports_bulk_write", lambda client: False)
    return str(request.param)


def write_command(path: str, command: str) -> str:
    """The command that carries an ``insert``/``update`` on ``path``."""
    return "bulkWrite" if path == "bulk" else command


async def raw(store: MongoBillingStore, collection: str, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return await store.database[collection].find(query or {}).to_list()


async def fail_next(mongo_client, command: str, code: int, labels: tuple[str, ...] = ()) -> None:
    data: dict[str, Any] = {"failCommands": [command], "errorCode": code}
    if labels:
        data["errorLabels"] = list(labels)
    await mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": data})


async def fail_off(mongo_client) -> None:
    await mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


# --------------------------------------------------------------------------- codec


@pytest.mark.parametrize("index", range(7))
async def test_every_entity_round_trips_exactly(store: MongoBillingStore, index: int) -> None:
    entity = all_entities()[index]
    assert decode(type(entity), encode(entity)) == entity

    await store.commit([Insert(entity)], [])
    assert entity.version == 1
    loaded = await store.get(type(entity), entity.id)
    assert loaded == entity
    assert type(loaded) is type(entity)


async def test_audit_event_round_trips(store: MongoBillingStore) -> None:
    event = audit(new_id("pay"))
    await store.commit([], [event])
    page = await store.list_audit_events(event.resource_id, limit=10, after=None)
    assert page.items == [event]
    assert page.items[0].at.tzinfo is UTC


async def test_documents_use_plain_bson(store: MongoBillingStore) -> None:
    cus = customer()
    pay = payment(
        cus.id,
        amount=Money(10**15, "USD"),
        next_action=NextAction(client_secret="pi_3Xyz_secret_abc", redirect_url="https://hooks.example/3ds"),
    )
    await store.commit([Insert(pay)], [])
    (doc,) = await raw(store, "payments")
    assert doc["_id"] == pay.id
    assert "id" not in doc
    assert doc["amount"] == {"amount_minor": 10**15, "currency": "USD"}
    assert isinstance(doc["amount"]["amount_minor"], int)  # bson.Int64 for large values, never a float
    assert doc["status"] == "requires_action"
    assert type(doc["status"]) is str
    # A client secret is handed to the caller, never stored.
    assert doc["next_action"] == {"redirect_url": "https://hooks.example/3ds"}
    assert (await store.get(Payment, pay.id)).next_action == NextAction(redirect_url="https://hooks.example/3ds")  # type: ignore[union-attr]
    assert doc["version"] == 1


# --------------------------------------------------------------------------- commit


async def test_commit_inserts_entity_and_audit_together(store: MongoBillingStore) -> None:
    cus = customer()
    pm = payment_method(cus.id)
    events = [audit(cus.id, "customer.created"), audit(pm.id, "payment_method.attached")]
    await store.commit([Insert(cus), Insert(pm)], events)

    assert (cus.version, pm.version) == (1, 1)
    assert await store.get(Customer, cus.id) == cus
    assert await store.get(PaymentMethod, pm.id) == pm
    assert (await store.list_audit_events(cus.id, limit=5, after=None)).items == [events[0]]


async def test_update_bumps_version_and_stale_update_conflicts(store: MongoBillingStore) -> None:
    cus = customer()
    await store.commit([Insert(cus)], [])
    stale = await store.get(Customer, cus.id)
    assert stale is not None

    cus.name = "Ada King"
    await store.commit([Update(cus)], [audit(cus.id, "customer.updated")])
    assert cus.version == 2

    stale.name = "Lost update"
    other = customer()
    with pytest.raises(ConcurrencyConflict):
        await store.commit([Insert(other), Update(stale)], [audit(stale.id, "customer.updated")])

    assert stale.version == 1, "in-memory version must not move on failure"
    assert other.version == 0
    assert await store.get(Customer, other.id) is None
    assert (await store.get(Customer, cus.id)) == cus
    assert len((await store.list_audit_events(cus.id, limit=10, after=None)).items) == 1


async def test_duplicate_insert_is_a_conflict(store: MongoBillingStore) -> None:
    cus = customer()
    await store.commit([Insert(cus)], [])
    twin = customer(id=cus.id, name="Twin")
    with pytest.raises(ConcurrencyConflict):
        await store.commit([Insert(twin)], [audit(cus.id)])
    assert (await store.get(Customer, cus.id)) == cus
    assert await raw(store, "audit_events") == []


async def test_update_of_missing_entity_conflicts(store: MongoBillingStore) -> None:
    cus = customer(version=1)
    with pytest.raises(ConcurrencyConflict):
        await store.commit([Update(cus)], [])
    assert await store.get(Customer, cus.id) is None


@pytest.mark.parametrize("command", ["insert", "update", "commitTransaction"])
async def test_server_failure_mid_commit_writes_nothing(
    store: MongoBillingStore, mongo_client, command: str, write_path: str
) -> None:
    cus = customer()
    await store.commit([Insert(cus)], [])
    pay = payment(cus.id)
    cus.name = "changed"
    changes: list[Change] = [Insert(pay), Update(cus)]
    events = [audit(pay.id, "payment.created")]

    outbox_before = await raw(store, "event_outbox")
    # 8 (UnknownError) is not transient: the transaction must fail, not be retried.
    await fail_next(mongo_client, command if command == "commitTransaction" else write_command(write_path, command), 8)
    try:
        with pytest.raises(StoreUnavailable):
            await store.commit(changes, events)
    finally:
        await fail_off(mongo_client)

    assert await store.get(Payment, pay.id) is None
    stored = await store.get(Customer, cus.id)
    assert stored is not None
    assert (stored.name, stored.version) == ("Ada Lovelace", 1)
    assert await raw(store, "audit_events") == []
    assert await raw(store, "event_outbox") == outbox_before  # no billing event either
    assert (pay.version, cus.version) == (0, 1)

    await store.commit(changes, events)
    assert (pay.version, cus.version) == (1, 2)
    assert await store.get(Payment, pay.id) == pay
    assert await store.get(Customer, cus.id) == cus
    assert len(await raw(store, "audit_events")) == 1


async def test_transient_failure_is_retried_transparently(
    store: MongoBillingStore, mongo_client, monkeypatch, write_path: str
) -> None:
    # Without retries the injected write conflict surfaces as a conflict (proves it fires).
    monkeypatch.setattr(writes_module, "_TXN_ATTEMPTS", 1)
    lost = customer()
    await fail_next(mongo_client, write_command(write_path, "insert"), 112, ("TransientTransactionError",))
    try:
        with pytest.raises(ConcurrencyConflict):
            await store.commit([Insert(lost)], [])
    finally:
        await fail_off(mongo_client)
    assert await store.get(Customer, lost.id) is None
    monkeypatch.setattr(writes_module, "_TXN_ATTEMPTS", 5)

    cus = customer()
    # A write conflict is transient: the whole transaction reruns. (91 ShutdownInProgress
    # works too, but makes the driver rediscover the server for ~10 s.)
    await fail_next(mongo_client, write_command(write_path, "insert"), 112, ("TransientTransactionError",))
    try:
        await store.commit([Insert(cus)], [audit(cus.id)])
    finally:
        await fail_off(mongo_client)
    assert await store.get(Customer, cus.id) == cus
    assert len(await raw(store, "audit_events")) == 1


async def test_concurrent_updates_one_winner_per_version(store: MongoBillingStore) -> None:
    cus = customer()
    await store.commit([Insert(cus)], [])

    async def writer(n: int, mine: Customer | None = None) -> bool:
        mine = mine or await store.get(Customer, cus.id)
        assert mine is not None
        mine.metadata[f"w{n}"] = "1"
        try:
            await store.commit([Update(mine)], [audit(cus.id, f"customer.updated.{n}")])
        except ConcurrencyConflict:
            return False
        return True

    # Ten copies loaded at the same version, written at once: exactly one may win.
    copies = [await store.get(Customer, cus.id) for _ in range(10)]
    assert {c.version for c in copies if c is not None} == {1}
    results = await asyncio.gather(*(writer(n, c) for n, c in enumerate(copies)))
    assert results.count(True) == 1
    winner = copies[results.index(True)]
    assert winner is not None
    assert winner.version == 2
    assert all(c is not None and c.version == 1 for c, ok in zip(copies, results, strict=True) if not ok)
    stored = await store.get(Customer, cus.id)
    assert stored == winner
    assert len(stored.metadata) == 3  # two originals + the winner's key
    assert len(await raw(store, "audit_events")) == 1

    # Retrying until success: no lost update, one version per writer.
    async def persistent(n: int) -> None:
        while not await writer(n):
            await asyncio.sleep(0)

    await asyncio.gather(*(persistent(n) for n in range(100, 110)))
    stored = await store.get(Customer, cus.id)
    assert stored is not None
    assert stored.version == 12
    assert {f"w{n}" for n in range(100, 110)} <= stored.metadata.keys()
    assert len(await raw(store, "audit_events")) == 11


async def test_invoice_processor_id_is_unique_when_set(store: MongoBillingStore) -> None:
    inv = all_entities()[6]
    await store.commit([Insert(inv)], [])
    twin = dataclasses.replace(inv, id=new_id("inv"), version=0)
    with pytest.raises(ConcurrencyConflict):
        await store.commit([Insert(twin)], [])
    # Empty processor ids stay out of the unique index.
    blank = [dataclasses.replace(inv, id=new_id("inv"), processor_id="", version=0) for _ in range(2)]
    await store.commit([Insert(b) for b in blank], [])
    await store.ensure_indexes()  # idempotent


# --------------------------------------------------------------------------- reads


async def test_find_one_by_processor_id(store: MongoBillingStore) -> None:
    cus = customer()
    pay = payment(cus.id, processor_id="pi_find_me", status=PaymentStatus.SUCCEEDED)
    await store.commit([Insert(pay), Insert(payment(cus.id, processor_id="pi_other"))], [])
    found = await store.find_one(Payment, {"processor": Processor.STRIPE, "processor_id": "pi_find_me"})
    assert found == pay
    assert await store.find_one(Payment, {"id": pay.id, "status": "succeeded"}) == pay
    assert await store.find_one(Payment, {"id": pay.id, "status": PaymentStatus.FAILED}) is None
    assert await store.find_one(Payment, {"amount.currency": "USD", "processor_id": "pi_find_me"}) == pay
    # Regression: SecantusDB mis-answers non-prefix queries on partial indexes.
    assert await store.find_one(Payment, {"processor_id": "pi_find_me"}) == pay
    assert await store.find_one(Payment, {"processor": "stripe", "status": "succeeded"}) == pay
    assert await store.find_one(Payment, {"processor": "paypal"}) is None
    blank = payment(cus.id, processor_id="")
    await store.commit([Insert(blank)], [])
    assert await store.find_one(Payment, {"processor": "stripe", "processor_id": ""}) == blank


async def test_list_page_newest_first_with_filters(store: MongoBillingStore) -> None:
    cus, other = customer(), customer()
    base_ms = 1_800_000_000_000
    mine: list[Payment] = []
    noise: list[Payment] = []
    for i in range(12):
        pid = new_id("pay", now_ms=base_ms + i)
        status = PaymentStatus.SUCCEEDED if i % 4 else PaymentStatus.FAILED
        mine.append(payment(cus.id, id=pid, status=status))
        noise.append(payment(other.id, id=new_id("pay", now_ms=base_ms + i), status=PaymentStatus.SUCCEEDED))
    await store.commit([Insert(p) for p in mine + noise], [])

    wanted = sorted((p for p in mine if p.status is PaymentStatus.SUCCEEDED), key=lambda p: p.id, reverse=True)
    assert len(wanted) == 9
    filters = {"customer_id": cus.id, "status": PaymentStatus.SUCCEEDED}
    seen: list[Payment] = []
    after: str | None = None
    pages = 0
    while True:
        page = await store.list_page(Payment, filters, limit=4, after=after)
        pages += 1
        seen.extend(page.items)
        if not page.next_cursor:
            break
        assert page.next_cursor == page.items[-1].id
        after = page.next_cursor
    assert pages == 3
    assert [p.id for p in seen] == [p.id for p in wanted]

    exact = await store.list_page(Payment, {"customer_id": cus.id}, limit=12, after=None)
    assert len(exact.items) == 12
    assert exact.next_cursor == ""
    assert (await store.list_page(Payment, {"customer_id": "cus_nobody"}, limit=5, after=None)).items == []


async def test_audit_events_oldest_first(store: MongoBillingStore) -> None:
    rid = new_id("pay")
    events = [
        dataclasses.replace(audit(rid, f"payment.step{i}"), id=new_id("evt", now_ms=1_800_000_000_000 + i))
        for i in range(5)
    ]
    await store.commit([], [*reversed(events), audit(new_id("pay"))])
    first = await store.list_audit_events(rid, limit=3, after=None)
    assert [e.action for e in first.items] == ["payment.step0", "payment.step1", "payment.step2"]
    second = await store.list_audit_events(rid, limit=3, after=first.next_cursor)
    assert [e.action for e in second.items] == ["payment.step3", "payment.step4"]
    assert second.next_cursor == ""


# --------------------------------------------------------------------------- idempotency


async def begin(store: MongoBillingStore, **kw: Any):
    args: dict[str, Any] = {
        "caller": "svc:checkout",
        "method": "CreatePayment",
        "request_id": "8d4c3f8e-93a5-4d2b-9a36-52f4bd1e2c11",
        "fingerprint": "fp-1",
        "resource_id": "pay_first",
        "owner": "owner-a",
        "now": T0,
        "lease_seconds": 30,
        "ttl_seconds": 86400,
    }
    return await store.idempotency_begin(**(args | kw))


async def test_idempotency_lifecycle(store: MongoBillingStore) -> None:
    outcome, rec = await begin(store)
    assert outcome is IdempotencyOutcome.STARTED
    assert (rec.state, rec.attempts, rec.resource_id, rec.owner) == ("in_progress", 1, "pay_first", "owner-a")

    outcome, other = await begin(store, owner="owner-b", resource_id="pay_second", now=_t(5))
    assert outcome is IdempotencyOutcome.IN_PROGRESS
    assert other.owner == "owner-a"

    outcome, _ = await begin(store, fingerprint="fp-other", owner="owner-b", now=_t(5))
    assert outcome is IdempotencyOutcome.MISMATCH

    # Only the owner may complete.
    await store.idempotency_complete(rec.key, "owner-b", response=b"nope", error=None)
    assert (await begin(store, owner="owner-c", now=_t(6)))[0] is IdempotencyOutcome.IN_PROGRESS

    await store.idempotency_complete(rec.key, "owner-a", response=b"\x00\x01response", error=None)
    outcome, done = await begin(store, owner="owner-b", now=_t(7))
    assert outcome is IdempotencyOutcome.COMPLETED
    assert done.response == b"\x00\x01response"
    assert type(done.response) is bytes
    assert done.resource_id == "pay_first"

    (doc,) = await raw(store, "idempotency")
    assert (doc["caller"], doc["method"], doc["request_id"]) == ("svc:checkout", "CreatePayment", rec.request_id)
    assert doc["expires_at"] == T0 + timedelta(days=1)


async def test_idempotency_stores_error(store: MongoBillingStore) -> None:
    _, rec = await begin(store)
    err = {"reason": "PAYMENT_DECLINED", "message": "declined", "metadata": {"decline_code": "do_not_honor"}}
    await store.idempotency_complete(rec.key, rec.owner, response=None, error=err)
    outcome, done = await begin(store, owner="owner-b")
    assert outcome is IdempotencyOutcome.COMPLETED
    assert (done.error, done.response) == (err, None)


async def test_idempotency_takeover_after_lease_expiry(store: MongoBillingStore) -> None:
    _, first = await begin(store)
    outcome, taken = await begin(store, owner="owner-b", resource_id="pay_twin", now=_t(31))
    assert outcome is IdempotencyOutcome.STARTED
    assert (taken.owner, taken.attempts, taken.resource_id) == ("owner-b", 2, "pay_first")
    assert taken.lease_until == _t(61)

    # The crashed executor wakes up: it no longer owns the key.
    await store.idempotency_complete(first.key, "owner-a", response=b"late", error=None)
    await store.idempotency_release(first.key, "owner-a")
    assert (await begin(store, owner="owner-c", now=_t(32)))[0] is IdempotencyOutcome.IN_PROGRESS

    # Two racing takeovers after the second lease: exactly one wins.
    results = await asyncio.gather(*(begin(store, owner=f"racer-{i}", now=_t(100)) for i in range(5)))
    outcomes = [o for o, _ in results]
    assert outcomes.count(IdempotencyOutcome.STARTED) == 1
    assert outcomes.count(IdempotencyOutcome.IN_PROGRESS) == 4
    winner = next(r for o, r in results if o is IdempotencyOutcome.STARTED)
    assert winner.attempts == 3


async def test_idempotency_release_lets_a_retry_resume_with_the_same_resource(store: MongoBillingStore) -> None:
    _, rec = await begin(store)
    await store.idempotency_release(rec.key, rec.owner)
    outcome, again = await begin(store, owner="owner-b", resource_id="pay_new", now=_t(1))
    assert outcome is IdempotencyOutcome.STARTED
    # The retry resumes the first execution's resource instead of creating a twin.
    assert (again.owner, again.attempts, again.resource_id) == ("owner-b", 2, "pay_first")


async def test_idempotency_record_past_ttl_is_treated_as_absent(store: MongoBillingStore) -> None:
    _, rec = await begin(store, ttl_seconds=60)
    await store.idempotency_complete(rec.key, rec.owner, response=b"old", error=None)
    outcome, fresh = await begin(store, owner="owner-b", fingerprint="fp-new", now=_t(61))
    assert outcome is IdempotencyOutcome.STARTED
    assert fresh.fingerprint == "fp-new"


async def test_idempotency_keys_are_scoped_by_caller_and_method(store: MongoBillingStore) -> None:
    assert (await begin(store))[0] is IdempotencyOutcome.STARTED
    assert (await begin(store, caller="svc:other"))[0] is IdempotencyOutcome.STARTED
    assert (await begin(store, method="CapturePayment"))[0] is IdempotencyOutcome.STARTED


# --------------------------------------------------------------------------- meta


async def test_page_token_secret_is_shared_and_stable(store: MongoBillingStore, mongo_uri: str) -> None:
    name = store.database.name
    others = [MongoBillingStore.connect(mongo_uri, name) for _ in range(3)]
    try:
        secrets = await asyncio.gather(*(s.page_token_secret() for s in [store, *others]))
        assert len(set(secrets)) == 1
        assert len(secrets[0]) == 32
        assert await store.page_token_secret() == secrets[0]
    finally:
        for s in others:
            await s.aclose()
    later = MongoBillingStore.connect(mongo_uri, name)
    try:
        assert await later.page_token_secret() == secrets[0]
    finally:
        await later.aclose()


async def test_ping(store: MongoBillingStore) -> None:
    await store.ping()


async def test_unreachable_server_is_store_unavailable() -> None:
    dead = MongoBillingStore.connect("mongodb://127.0.0.1:9/?directConnection=true", "x", timeout_ms=200)
    try:
        with pytest.raises(StoreUnavailable):
            await dead.ping()
        with pytest.raises(StoreUnavailable):
            await dead.commit([Insert(customer())], [])
        with pytest.raises(StoreUnavailable):
            await dead.get(Customer, "cus_x")
    finally:
        await dead.aclose()


async def test_get_pair_reads_both_or_either_side(store: MongoBillingStore) -> None:
    cus = customer()
    pm = payment_method(cus.id)
    await store.commit([Insert(cus), Insert(pm)], [])
    assert await store.get_pair(Customer, cus.id, PaymentMethod, pm.id) == (cus, pm)
    assert await store.get_pair(Customer, cus.id, PaymentMethod, "pm_missing") == (cus, None)
    assert await store.get_pair(Customer, "cus_missing", PaymentMethod, pm.id) == (None, pm)
    assert await store.get_pair(Customer, "cus_missing", PaymentMethod, "pm_missing") == (None, None)
    # The join's working fields never reach the entity.
    raw = await store.database["customers"].find_one({"_id": cus.id})
    assert raw is not None and not any(key.startswith("__") for key in raw)
