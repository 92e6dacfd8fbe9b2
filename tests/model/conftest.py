"""Fixtures of the model test, and the figure it prints at the end of the run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.model.processors import DashboardStripe
from tests.model.world import STRIPE_KEY


@pytest.fixture(scope="session")
def model_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The model's own event loop (the machine's rules are synchronous and drive it)."""
    running = asyncio.new_event_loop()
    yield running
    running.close()


@pytest.fixture(scope="session")
def stripe_dashboard() -> Iterator[DashboardStripe]:
    """The Stripe imitation with dashboard handles (reset by every example)."""
    api = DashboardStripe(api_key=STRIPE_KEY)
    api.start()
    try:
        yield api
    finally:
        api.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Prints what the model test explored (examples x steps, rules fired), and writes it to
    ``var/model-test.json`` for the record (one entry per machine of this run)."""
    from tests.model.test_model import SCALE, STATS

    if not STATS:
        return
    for name, stats in STATS.items():
        terminalreporter.write_line(stats.line(name))
    record = {"scale": SCALE, "machines": {name: stats.record() for name, stats in STATS.items()}}
    out = Path(__file__).resolve().parents[2] / "var" / "model-test.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
