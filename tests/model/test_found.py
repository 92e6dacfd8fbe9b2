"""The shrunk examples the model test found, replayed step by step.

Each entry of ``KNOWN_DEFECTS`` has its minimal interleaving here. While the defect is
listed, its replay must still fail (``xfail(strict=True)``): when a fix lands, the replay
passes, the strict xfail turns that into a failure, and the message says to delete the
entry, which switches the scenario back on in the random run as well. Once deleted, the
replay is an ordinary regression test.
"""

from __future__ import annotations

import asyncio

import pytest

from billing_service.domain.common import Processor
from tests.model.known_defects import KNOWN_DEFECTS
from tests.model.machine import Env, ModelBase, Stats
from tests.model.processors import DashboardStripe
from tests.model.test_model import FakeModel, StripeModel

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

# name: (processor, the steps after initialisation, as the model test printed them once shrunk)
FOUND: dict[str, tuple[Processor, str]] = {
    "cancel_during_create": (
        Processor.FAKE,
        """
        state.create_payment(behaviour='ok', currency=0, manual=False, mode='before')
        state.cancel(i=0, mode='plain')
        """,
    ),
    "pending_over_23h": (
        Processor.FAKE,
        """
        state.create_payment(behaviour='ok', currency=0, manual=False, mode='before')
        state.time_passes(seconds=86400)
        state.in_flight(action='crash', i=0)
        """,
    ),
    "refund_left_to_reconciliation": (
        Processor.FAKE,
        """
        state.create_payment(behaviour='ok', currency=0, manual=False, mode='plain')
        state.refund(i=0, mode='lost', portion=None)
        """,
    ),
    "dashboard_refund_lost_webhook": (
        Processor.FAKE,
        """
        state.create_payment(behaviour='ok', currency=0, manual=False, mode='plain')
        state.dashboard_payment(action='refund', i=0, portion=None)
        """,
    ),
    "dashboard_plan_change": (
        Processor.FAKE,
        """
        state.create_subscription(mode='plain', plan=0, quantity=2, trial=False)
        state.dashboard_subscription(i=0, action='change', plan=0, quantity=1)
        """,
    ),
    "subscription_change_unrecorded": (
        Processor.FAKE,
        """
        state.create_subscription(mode='plain', plan=0, quantity=2, trial=False)
        state.update_subscription(i=0, mode='lost', plan=0, proration=1, quantity=1)
        """,
    ),
    "reconcile_decline_is_error": (
        Processor.FAKE,
        """
        state.create_payment(behaviour='declined', currency=0, manual=False, mode='before')
        state.in_flight(action='crash', i=0)
        """,
    ),
    "reconcile_refund_refused_is_error": (
        Processor.FAKE,
        """
        state.create_payment(behaviour='ok', currency=0, manual=False, mode='plain')
        state.dashboard_payment(action='refund', i=0, portion=None)
        state.refund(i=0, mode='lost', portion=2)
        """,
    ),
    # Found by the long run after the merge; a model artifact, not a service defect: a call held
    # before the processor for 24 h reached it after reconciliation had settled the payment
    # absent (FAILED). No call outlasts the adapter's timeouts: such a call now times out.
    "held_call_outlasts_its_timeouts": (
        Processor.FAKE,
        """
        state.create_payment(behaviour='ok', currency=0, manual=False, mode='before')
        state.refund(i=0, mode='plain', portion=None)
        state.time_passes(seconds=86400)
        state.reconcile(replicas=1)
        """,
    ),
    "subscription_cancel_during_unknown_create": (
        Processor.FAKE,
        """
        state.create_subscription(mode='lost', plan=0, quantity=3, trial=True)
        state.subscription_lifecycle(action='cancel_at_period_end', i=0, mode='plain')
        state.retry(i=0)
        """,
    ),
    "subscription_cancel_during_unknown_create_stripe": (
        Processor.STRIPE,
        """
        state.create_subscription(mode='lost', plan=0, quantity=3, trial=True)
        state.subscription_lifecycle(action='cancel_at_period_end', i=0, mode='plain')
        state.retry(i=0)
        """,
    ),
    "stripe_refund_scale": (
        Processor.STRIPE,
        """
        state.create_payment(behaviour='ok', currency=2, manual=False, mode='plain')
        state.dashboard_payment(action='refund', i=0, portion=3)
        state.webhooks(copies=1, i=-1, process=100)
        """,
    ),
    "lease_expiry_live_executor": (
        Processor.STRIPE,
        """
        state.create_payment(behaviour='declined', currency=0, manual=False, mode='before')
        state.time_passes(seconds=180)
        state.reconcile(replicas=1)
        state.retry(i=0)
        """,
    ),
    "subscription_create_unknown_past_window": (
        Processor.FAKE,
        """
        state.create_subscription(mode='after', plan=0, quantity=1, trial=False)
        state.in_flight(action='deadline', i=0)
        state.time_passes(seconds=86460)
        """,
    ),
    "subscription_create_unknown_past_window_stripe": (
        Processor.STRIPE,
        """
        state.create_subscription(mode='after', plan=0, quantity=1, trial=False)
        state.in_flight(action='deadline', i=0)
        state.time_passes(seconds=86460)
        """,
    ),
    "dashboard_refund_lost_webhook_stripe": (
        Processor.STRIPE,
        """
        state.create_payment(behaviour='ok', currency=0, manual=False, mode='plain')
        state.dashboard_payment(action='refund', i=0, portion=None)
        state.time_passes(seconds=86400)
        """,
    ),
    "subscription_create_unlinked": (
        Processor.STRIPE,
        """
        state.create_subscription(mode='lost', plan=0, quantity=1, trial=False)
        """,
    ),
}


def replay(machine_type: type[ModelBase], env: Env, steps: str) -> None:
    """Runs ``steps`` on a fresh machine (initialisation first), checking after each, then tears down."""
    machine_type.env = env
    machine = machine_type()
    try:
        machine.customer(refunds_pending=False)  # type: ignore[attr-defined]
        machine.plans()  # type: ignore[attr-defined]
        machine.after_every_step()
        for line in filter(None, (s.strip() for s in steps.splitlines())):
            eval(line, {"state": machine})
            machine.after_every_step()
    finally:
        machine.teardown()


@pytest.mark.parametrize("name", sorted(FOUND))
def test_found(
    name: str,
    mongo_uri: str,
    model_loop: asyncio.AbstractEventLoop,
    stripe_dashboard: DashboardStripe,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """The interleaving converges (while its defect is listed: still fails, strictly)."""
    if name in KNOWN_DEFECTS:
        request.applymarker(
            pytest.mark.xfail(
                raises=AssertionError,
                strict=True,
                reason=f"known defect ({KNOWN_DEFECTS[name]}); if this passes, delete {name!r} from KNOWN_DEFECTS",
            )
        )
    monkeypatch.setenv("BILLING_MODEL_CHECK", name)  # its scenario runs although listed
    processor, steps = FOUND[name]
    if processor is Processor.FAKE:
        replay(FakeModel, Env(model_loop, mongo_uri, None, Stats()), steps)
    else:
        replay(StripeModel, Env(model_loop, mongo_uri, stripe_dashboard, Stats()), steps)
