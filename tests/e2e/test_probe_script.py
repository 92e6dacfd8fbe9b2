"""``scripts/probe.py`` against a real stack (``serve`` and ``webhooks serve`` on one store):
every hostile request refused cleanly, nothing wrongly accepted or refused, no INTERNAL,
no HTTP 500, nothing left in the store. Keeps the probe itself working too."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_process_logs import Sidecar
from tests.e2e.test_server_process import ServeProcess

pytestmark = pytest.mark.slow

PROBE = Path(__file__).resolve().parents[2] / "scripts" / "probe.py"
SECRET = "whsec_probe_test_0123456789abcdef"


def test_the_probe_finds_no_hole(mongo_uri: str) -> None:
    database = f"probe_{uuid.uuid4().hex}"
    env = {"BILLING_MONGODB_DATABASE": database, "STRIPE_WEBHOOK_SECRET": SECRET}
    served = ServeProcess(mongo_uri, **env)
    sidecar = Sidecar({"MONGODB_URI": mongo_uri, "BILLING_WEBHOOK_ADDRESS": "127.0.0.1:0", **env})
    try:
        done = subprocess.run(
            [sys.executable, str(PROBE), "--grpc", served.target, "--webhooks", f"http://127.0.0.1:{sidecar.port}",
             "--stripe-webhook-secret", SECRET, "--mongodb-uri", mongo_uri, "--database", database, "--json"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        sidecar.stop()
        served.stop()
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["failures"] == []
    grpc, webhooks = report["grpc_hostile"], report["webhooks"]
    assert grpc["tried"] >= 442 and grpc["refused_cleanly"] == grpc["tried"]
    assert (grpc["wrongly_accepted"], grpc["internal"], grpc["unknown"]) == (0, 0, 0)
    assert report["grpc_not_cards"]["wrongly_refused"] == 0
    assert webhooks["tried"] >= 28 and webhooks["refused_cleanly"] == webhooks["tried"]
    assert (webhooks["wrongly_accepted"], webhooks["http_500"]) == (0, 0)
    assert report["store"] == {"documents_with_card_digits": 0, "hostile_webhook_events_stored": 0}
    assert done.returncode == 0
