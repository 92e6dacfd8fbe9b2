"""Each generated client runs a payment flow against a real server.

Create a customer, attach pm_card_visa, pay, retry with the same request_id,
refund part, read the payment back, and reuse a request_id with another amount
to see INVALID_ARGUMENT with ErrorInfo reason IDEMPOTENCY_KEY_REUSED. Python runs
twice, on the oldest and on the newest runtime its package declares; TypeScript
through Connect's gRPC (HTTP/2) transport; Go on Debian's grpc-go in GOPATH mode.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.clients.conftest import ROOT, Server, run, toolchain

PY_EXAMPLE = ROOT / "clients/python/examples/payment_flow.py"
TS_DIR = ROOT / "clients/typescript"
GO_SMOKE = ROOT / "tests/clients/go"


@pytest.mark.parametrize("runtime", ["oldest", "newest"])
def test_python_client_on_declared_runtime(server: Server, runtime: str) -> None:
    python = toolchain(ROOT / f".tools/py-{runtime}/bin/python")
    pins = dict(
        line.split("==")
        for line in (ROOT / f"clients/python/requirements/runtime-{runtime}.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    # -W error: no version warning from protobuf or grpc may be printed either.
    out = run([python, "-W", "error", PY_EXAMPLE, server.target], timeout=120)
    assert "payment flow ok" in out, out
    assert f"grpcio {pins['grpcio']}," in out, out
    assert f"protobuf {pins['protobuf']}" in out, out
    print(out.strip())  # which Python ran it (3.9 where the machine has it)


def test_typescript_client(server: Server) -> None:
    tsc = toolchain(TS_DIR / "node_modules/.bin/tsc")
    run([tsc, "-p", TS_DIR / "tsconfig.json"], timeout=180)
    out = run(
        ["node", "--test", TS_DIR / "dist/test/smoke.test.js"], env={"BILLING_TARGET": server.target}, timeout=120
    )
    assert re.search(r"^# pass 1$", out, re.M) and re.search(r"^# skipped 0$", out, re.M), out


def test_go_client(server: Server, tmp_path: Path) -> None:
    go = toolchain(Path("/usr/bin/go"))
    toolchain(Path("/usr/share/gocode/src/google.golang.org/grpc"))
    # GOPATH mode on Debian's Go sources: the client and the test at their import paths.
    src = tmp_path / "gopath/src"
    (src / "billing/clients").mkdir(parents=True)
    (src / "billing/clients/go").symlink_to(ROOT / "clients/go")
    (src / "billingsmoke").symlink_to(GO_SMOKE)
    env = {
        "GO111MODULE": "off",
        "GOPATH": f"{tmp_path / 'gopath'}:/usr/share/gocode",
        "GOCACHE": str(ROOT / ".tools/go-build"),  # compiled grpc-go is kept between runs
        "GOFLAGS": "",
        "BILLING_TARGET": server.target,
    }
    out = run([go, "test", "-v", "-count=1", "billingsmoke"], env=env, timeout=600, cwd=tmp_path)
    assert "--- PASS: TestPaymentFlow" in out, out
