"""Every line the real processes write on stderr is a JSON object that went through the
redaction filter: the gRPC server, the webhook sidecar (its HTTP server's own logs too), a
start that fails (a traceback) and a configuration error.

The processes are driven into their noisy paths: malformed HTTP and TLS bytes at the
sidecar, hostile webhook bodies, card numbers in request ids and metadata, a port already
in use, unreadable settings. Then stderr is parsed line by line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc

from tests.e2e.test_server_process import ServeProcess
from tests.helpers import rid

VISA = "4242424242424242"
WHSEC = "whsec_logs_test_0123456789abcdef"
pytestmark = pytest.mark.slow


def json_lines(stderr: str) -> list[dict[str, object]]:
    """Parses every stderr line as a JSON object; fails naming the first line that is not."""
    out = []
    for number, line in enumerate(stderr.splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"stderr line {number} is not JSON: {line[:300]!r}")
        assert isinstance(record, dict) and {"ts", "level", "logger", "message"} <= record.keys(), line
        out.append(record)
    return out


def _signed(body: bytes) -> dict[str, str]:
    t = int(time.time())
    mac = hmac.new(WHSEC.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={mac}", "Content-Type": "application/json"}


def _raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass


class Sidecar:
    """``billing-service webhooks serve`` with stdout and stderr drained into lists."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "billing_service", "webhooks", "serve"],
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), daemon=True).start()
        assert self.proc.stdout is not None
        self.port = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.port:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.stdout.append(line)
            if line.startswith("billing webhook sidecar on "):
                self.port = int(line.split()[4].rsplit(":", 1)[1])
        threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout), daemon=True).start()
        if not self.port:
            self.proc.kill()
            raise AssertionError(f"sidecar did not start: {''.join(self.stderr)[-2000:]}")

    @staticmethod
    def _drain(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def stop(self) -> str:
        """SIGTERM, wait, and return everything written on stderr."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        time.sleep(0.2)  # let the drain threads read the last lines
        return "".join(self.stderr)


def test_every_sidecar_stderr_line_is_redacted_json(mongo_uri: str) -> None:
    env = {
        "MONGODB_URI": mongo_uri,
        "BILLING_MONGODB_DATABASE": f"logs_{uuid.uuid4().hex}",
        "BILLING_WEBHOOK_ADDRESS": "127.0.0.1:0",
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "BILLING_WEBHOOK_WORKERS": "0",
        "BILLING_LOG_LEVEL": "DEBUG",
    }
    sidecar = Sidecar(env)
    port = sidecar.port
    try:
        url = f"http://127.0.0.1:{port}"
        # uvicorn's own complaints: garbage instead of HTTP, a TLS hello on the plain port,
        # a bad header carrying a card number.
        _raw(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64))
        _raw(port, b"GARBAGE " + VISA.encode() + b" HTTP/9.9\r\n\r\n")
        _raw(port, f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: {VISA}x\r\n\r\n".encode())
        with httpx.Client(timeout=10) as http:
            deep = b"[" * 20000 + b"]" * 20000
            assert http.post(f"{url}/webhooks/stripe", content=deep, headers=_signed(deep)).status_code == 400
            event = json.dumps(
                {"id": f"evt_{VISA}", "object": "event", "type": "charge.succeeded", "data": {"object": {}}}
            ).encode()
            assert http.post(f"{url}/webhooks/stripe", content=event, headers=_signed(event)).status_code == 200
            assert (
                http.post(f"{url}/webhooks/stripe", content=b"{}", headers={"Content-Type": "text/plain"}).status_code
                == 415
            )
            assert http.get(f"{url}/nowhere").status_code == 404
    finally:
        stderr = sidecar.stop()
    records = json_lines(stderr)
    assert any(str(r["logger"]).startswith("uvicorn") for r in records), "uvicorn's own lines should be there"
    assert VISA not in stderr


def test_every_server_stderr_line_is_redacted_json(mongo_uri: str) -> None:
    served = ServeProcess(mongo_uri, BILLING_LOG_LEVEL="DEBUG")
    try:
        with grpc.insecure_channel(served.target) as channel:
            stub = billing_service_pb2_grpc.BillingServiceStub(channel)
            for request_id in (f"x{VISA}", rid()):
                try:
                    stub.CreateCustomer(
                        pb.CreateCustomerRequest(request_id=request_id, metadata={"note": VISA}),
                        metadata=(("x-request-id", f"trace-{VISA}"),),
                        timeout=10,
                    )
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    finally:
        served.stop()
    # ServeProcess merges stdout into its pipe: the banners are stdout lines, the rest must be JSON.
    banners = ("billing gRPC API on ", "try: grpcurl", "metrics", "embedded store")
    stderr = "".join(line for line in served.output if not line.startswith(banners))
    json_lines(stderr)
    assert VISA not in "".join(served.output)


def test_a_failed_start_logs_its_traceback_as_json(mongo_uri: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "billing_service", "webhooks", "serve"],
            env={
                **os.environ,
                "MONGODB_URI": mongo_uri,
                "BILLING_MONGODB_DATABASE": f"logs_{uuid.uuid4().hex}",
                "BILLING_WEBHOOK_ADDRESS": f"127.0.0.1:{port}",
            },
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode != 0
    records = json_lines(done.stderr)
    assert any("Traceback" in str(r.get("exception", "")) for r in records), done.stderr[-2000:]


@pytest.mark.parametrize("command", [["serve"], ["webhooks", "serve"], ["reconcile"]])
def test_a_configuration_error_is_one_json_line(command: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "billing_service", *command],
        env={**os.environ, "BILLING_AUTH_MODE": "bogus", "BILLING_EMBEDDED_DATA_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    records = json_lines(done.stderr)
    assert [r["level"] for r in records] == ["ERROR"]
    assert "configuration error" in str(records[0]["message"])
