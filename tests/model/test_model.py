"""The stateful model test: random interleavings against the real service, for each processor.

Bounded in ``make test``; ``BILLING_MODEL_SCALE=10`` runs ten times the examples (the long
run, random rather than derandomized). See docs/RELIABILITY.md, "The model test".
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from billing_service.domain.common import Processor
from tests.model.machine import Env, ModelBase, Stats
from tests.model.processors import DashboardStripe
from tests.model.rules_payments import PaymentRules
from tests.model.rules_subscriptions import SubscriptionRules

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

SCALE = float(os.environ.get("BILLING_MODEL_SCALE", "1"))
EXAMPLES = {Processor.FAKE: 20, Processor.STRIPE: 8}
STEPS = int(os.environ.get("BILLING_MODEL_STEPS", "40"))
SURVEY = os.environ.get("BILLING_MODEL_SURVEY", "") == "1"
STATS: dict[str, Stats] = {}


class FakeModel(PaymentRules, SubscriptionRules):
    """The model against the fake processor."""

    processor = Processor.FAKE
    tokens = {
        "ok": "pm_card_visa",
        "declined": "pm_card_chargeDeclined",
        "refunds_pending": "pm_card_refundPending",
        "refunds_fail": "pm_card_refundFail",
    }


class StripeModel(PaymentRules, SubscriptionRules):
    """The model against Stripe: the real adapter and SDK, the local imitation."""

    processor = Processor.STRIPE
    currencies = (("USD", 2500), ("JPY", 3000), ("ISK", 700))


def _settings(processor: Processor) -> settings:
    long_run = SCALE > 1
    return settings(
        max_examples=max(1, int(EXAMPLES[processor] * SCALE)),
        stateful_step_count=STEPS,
        deadline=None,
        derandomize=not long_run,  # the bounded run explores the same interleavings every time
        database=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )


def _run(machine: type[ModelBase], env: Env, name: str) -> None:
    machine.env = env
    start = time.perf_counter()
    try:
        run_state_machine_as_test(machine, settings=_settings(machine.processor))
    finally:
        env.stats.wall_seconds = time.perf_counter() - start
        STATS[name] = env.stats


def test_model_fake(mongo_uri: str, model_loop: asyncio.AbstractEventLoop) -> None:
    """Interleavings against the fake processor converge on its truth."""
    _run(FakeModel, Env(model_loop, mongo_uri, None, Stats(), SURVEY), "fake")


def test_model_stripe(mongo_uri: str, model_loop: asyncio.AbstractEventLoop, stripe_dashboard: DashboardStripe) -> None:
    """Interleavings against Stripe (real SDK, local imitation, signed webhooks) converge on its truth."""
    _run(StripeModel, Env(model_loop, mongo_uri, stripe_dashboard, Stats(), SURVEY), "stripe")
