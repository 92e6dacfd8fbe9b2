"""The client package's push helper (billing_client.push) on the oldest and newest runtimes it declares.

The installed package (not the source tree) must carry billing_client, and the helper must run
on Python 3.9 and protobuf 5.26: it verifies a delivery signed as the service signs it (the
service's signer runs here, in the test's own interpreter) and parses the body.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from billing_service.domain import event_signing as sig
from tests.clients.conftest import ROOT, run, toolchain

SECRET = "whsec_runtime_test_secret_000000000000000000"
NOW = 1_764_633_600
BODY = json.dumps(
    {
        "id": "bev_01",
        "type": "refund.succeeded",
        "resource_type": "refund",
        "resource_id": "re_01",
        "resource_version": "2",
        "refund": {
            "id": "re_01",
            "amount": {"amount_minor": "500", "currency": "EUR"},
            "status": "REFUND_STATUS_SUCCEEDED",
        },
    }
)
SCRIPT = """
import sys
from billing_client import push
body, header = sys.argv[1].encode(), sys.argv[2]
event = push.construct_event(body, header, [sys.argv[3]], now=float(sys.argv[4]))
assert event.refund.amount.amount_minor == 500, event
try:
    push.construct_event(body + b" ", header, sys.argv[3], now=float(sys.argv[4]))
except push.SignatureVerificationError as err:
    assert err.reason == "signature_mismatch"
else:
    raise AssertionError("a tampered body verified")
print("push helper ok on", sys.version.split()[0], "from", push.__file__)
"""


@pytest.mark.parametrize("runtime", ["oldest", "newest"])
def test_push_helper_on_declared_runtime(runtime: str, tmp_path: Path) -> None:
    python = toolchain(ROOT / f".tools/py-{runtime}/bin/python")
    header = sig.sign(BODY.encode(), [SECRET], timestamp=NOW)
    # -I: isolated, so billing_client comes from the installed package, not from the repository.
    out = run([python, "-I", "-W", "error", "-c", SCRIPT, BODY, header, SECRET, str(NOW)], timeout=60, cwd=tmp_path)
    assert "push helper ok" in out and "site-packages" in out, out
