"""Closed-loop load generation, latency statistics and child-process plumbing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Processes whose CPU use is recorded with every point (name -> pid); the client is added.
WATCH: dict[str, int] = {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (Linux /proc), or 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    """One measured (scenario, path, concurrency) point."""

    scenario: str
    path: str
    concurrency: int
    ops: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def closed_loop(
    scenario: str,
    path: str,
    concurrency: int,
    op: Callable[[int], Awaitable[object]],
    *,
    seconds: float,
    warmup: float,
) -> Result:
    """Runs ``concurrency`` workers calling ``op(i)`` back to back; measures after ``warmup``."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    first_error: list[BaseException] = []

    async def worker() -> None:
        nonlocal errors, counter
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            counter += 1
            t0 = now
            try:
                await op(counter)
            except Exception as exc:
                if t0 >= measure_from:
                    errors += 1
                if not first_error:
                    first_error.append(exc)
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append(t1 - t0)

    watched = {"client": os.getpid(), **WATCH}
    task = asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))  # the workers warm up meanwhile
    cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
    await task
    elapsed = time.perf_counter() - measure_from
    cpu = {name: round((cpu_seconds(pid) - cpu_before[name]) / elapsed, 2) for name, pid in watched.items()}
    latencies.sort()
    if first_error and errors:
        print(f"  ! {scenario}/{path}@{concurrency}: {errors} errors, first: {first_error[0]!r}", file=sys.stderr)
    return Result(
        scenario=scenario,
        path=path,
        concurrency=concurrency,
        ops=len(latencies),
        errors=errors,
        seconds=round(elapsed, 3),
        rps=round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        extra={"cores_used": cpu},
    )


class Child:
    """A child process that prints ``READY <info>`` on stdout once it serves."""

    def __init__(
        self, args: list[str], *, env: dict[str, str] | None = None, timeout: float = 60.0, root: Path = ROOT
    ) -> None:
        # ``python -m`` imports from the working directory first: run in ``root`` so another
        # checkout (a baseline of earlier code) really runs its own code.
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        self.info = ""
        for line in self.proc.stdout:
            if line.startswith("READY"):
                self.info = line.split(maxsplit=1)[1].strip() if " " in line.strip() else ""
                break
            if time.monotonic() > deadline:
                break
        if not self.info and self.proc.poll() is not None:
            raise RuntimeError(f"child {args} exited with {self.proc.returncode} before it was ready")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
