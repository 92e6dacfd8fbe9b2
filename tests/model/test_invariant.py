"""The model's invariant is not vacuous: drift planted on either side is reported.

Each case runs a short clean interleaving against the real stack (fake processor), checks
that our store and the processor agree, then plants one kind of drift (a record changed
in our store behind the service's back, or a processor object made without us) and checks
that ``truth.drift`` names it. The last case shows the whole path: the same machine's
teardown (quiescence, one reconciliation pass, the comparison) fails on drift that
reconciliation does not repair.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from billing_service.adapters.mongo.codecs import decode, encode
from billing_service.adapters.mongo.store import COLLECTIONS
from billing_service.domain.money import Money
from billing_service.domain.payments import CaptureMethod, Payment, PaymentStatus
from billing_service.domain.subscriptions import Subscription
from billing_service.service_layer.ports import PaymentRequest
from tests.model.machine import Env, Stats
from tests.model.test_model import FakeModel
from tests.model.truth import drift, fake_truth

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


async def _rewrite(machine: FakeModel, kind: type[Any], entity_id: str, change: Callable[[Any], None]) -> None:
    """Changes one stored record directly in the database, as no use case would."""
    collection = machine.world.store.database[COLLECTIONS[kind]]
    doc = await collection.find_one({"_id": entity_id})
    assert doc is not None
    entity = decode(kind, doc)
    change(entity)
    await collection.replace_one({"_id": entity_id}, encode(entity))


def _payment(machine: FakeModel) -> Payment:
    return next(p for p in machine.payments if p.status is PaymentStatus.SUCCEEDED)


async def _canceled(machine: FakeModel) -> None:
    await _rewrite(machine, Payment, _payment(machine).id, lambda p: setattr(p, "status", PaymentStatus.CANCELED))


async def _captured(machine: FakeModel) -> None:
    await _rewrite(machine, Payment, _payment(machine).id, lambda p: setattr(p, "amount_captured", 2000))


async def _over_refunded(machine: FakeModel) -> None:
    await _rewrite(machine, Payment, _payment(machine).id, lambda p: setattr(p, "amount_refunded", 2501))


async def _unlinked(machine: FakeModel) -> None:
    await _rewrite(machine, Payment, _payment(machine).id, lambda p: setattr(p, "processor_id", ""))


async def _quantity(machine: FakeModel) -> None:
    sub = machine.subscriptions[0]
    await _rewrite(machine, Subscription, sub.id, lambda s: setattr(s, "quantity", s.quantity + 1))


async def _dashboard_refund(machine: FakeModel) -> None:
    fake = machine.world.fake
    assert fake is not None
    await fake.dashboard_refund(_payment(machine).processor_id, 100)  # no webhook, no pass


async def _twin(machine: FakeModel) -> None:
    """A second processor payment for the same payment of ours (another key): two charges."""
    fake = machine.world.fake
    assert fake is not None
    payment = _payment(machine)
    first = fake.ledger.payments[payment.processor_id]
    request = PaymentRequest(
        payment_id=payment.id, amount=Money(2500, "USD"), capture_method=CaptureMethod.AUTOMATIC,
        processor_customer_id=first.customer_id, processor_payment_method_id=first.payment_method_id,
    )  # fmt: skip
    await fake.create_payment(request, idempotency_key="planted-second-key")


PLANTS: dict[str, tuple[Callable[[FakeModel], Coroutine[Any, Any, None]], str]] = {
    "charged_recorded_canceled": (_canceled, "charged_but_canceled_or_failed"),
    "captured_amount": (_captured, "payment_amounts"),
    "refunded_over_captured": (_over_refunded, "refunded_exceeds_captured"),
    "processor_id_lost": (_unlinked, "payment_unlinked"),
    "subscription_quantity": (_quantity, "subscription_plan"),
    "refund_without_record": (_dashboard_refund, "refund_not_recorded"),
    "two_processor_payments": (_twin, "twin_processor_payments"),
}

STEPS = """
state.create_payment(behaviour='ok', currency=0, manual=False, mode='plain')
state.create_subscription(mode='plain', plan=0, quantity=2, trial=False)
"""


def _machine(mongo_uri: str, loop: asyncio.AbstractEventLoop) -> FakeModel:
    FakeModel.env = Env(loop, mongo_uri, None, Stats())
    machine = FakeModel()
    machine.customer(refunds_pending=False)
    machine.plans()
    for line in filter(None, (s.strip() for s in STEPS.splitlines())):
        eval(line, {"state": machine})
        machine.after_every_step()
    return machine


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_planted_drift_is_reported(name: str, mongo_uri: str, model_loop: asyncio.AbstractEventLoop) -> None:
    """A clean interleaving compares equal; after the plant, the comparison names the drift."""
    plant, kind = PLANTS[name]
    machine = _machine(mongo_uri, model_loop)
    world = machine.world
    fake = world.fake
    assert fake is not None
    try:
        assert world.run(drift(world.store, world.run(fake_truth(fake)))) == []
        world.run(plant(machine))
        found = world.run(drift(world.store, world.run(fake_truth(fake))))
        assert kind in {f.kind for f in found}, found
    finally:
        world.run(world.stop())


def test_teardown_fails_on_drift_reconciliation_keeps(mongo_uri: str, model_loop: asyncio.AbstractEventLoop) -> None:
    """The machine's own end (quiescence, one pass, the comparison) raises on drift."""
    machine = _machine(mongo_uri, model_loop)
    machine.world.run(_canceled(machine))
    with pytest.raises(AssertionError, match="charged_but_canceled_or_failed"):
        machine.teardown()
