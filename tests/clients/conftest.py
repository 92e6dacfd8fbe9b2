"""A real `billing-service serve` process for the generated clients, and where their toolchains live."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# `make test` sets this: a client toolchain that `make clients-install` should have
# installed is then a failure, not a skip.
TOOLCHAINS_REQUIRED = os.environ.get("BILLING_CLIENT_TOOLCHAINS") == "required"


def toolchain(path: Path) -> Path:
    """A tool the smoke tests need; skips (or fails under `make test`) when it is missing."""
    if path.exists():
        return path
    message = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} is missing: run `make clients-install`"
    if TOOLCHAINS_REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def run(args: list[str | Path], *, timeout: float, env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    """Runs a client's smoke test; fails with its output unless it exits 0."""
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout[-6000:]}"
    return proc.stdout


class Server:
    """`python -m billing_service serve` on a free port: the embedded store of the session, the fake processor."""

    def __init__(self, mongo_uri: str) -> None:
        env = {
            **os.environ,
            "MONGODB_URI": mongo_uri,
            "BILLING_MONGODB_DATABASE": f"clients_{uuid.uuid4().hex}",
            "BILLING_GRPC_ADDRESS": "127.0.0.1:0",
            "BILLING_PROCESSOR": "fake",
            "BILLING_RECONCILE_INTERVAL_SECONDS": "0",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "billing_service", "serve"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.output: list[str] = []
        self.port = 0
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            found = re.search(r"billing gRPC API on [\d.]+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        assert self.port, "server did not start:\n" + "".join(self.output[-30:])
        # Keep reading: a full pipe would block the server's logging.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(mongo_uri: str) -> Iterator[Server]:
    """One server for all the clients of a module."""
    running = Server(mongo_uri)
    try:
        yield running
    finally:
        running.stop()
