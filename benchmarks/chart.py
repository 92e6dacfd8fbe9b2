"""The chart of one benchmark run: one row per scenario, throughput left, latency right."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import Result


def _lines(ax_rps: Any, ax_p99: Any, results: Sequence[Result], scenario: str) -> None:
    import matplotlib

    for path_name in dict.fromkeys(r.path for r in results if r.scenario == scenario):
        pts = sorted((r for r in results if (r.scenario, r.path) == (scenario, path_name)), key=lambda r: r.concurrency)
        xs = [r.concurrency for r in pts]
        style = "-o" if path_name in ("service", "sidecar") else "--s"
        ax_rps.plot(xs, [r.rps for r in pts], style, label=path_name)
        ax_p99.plot(xs, [r.p99_ms for r in pts], style, label=path_name)
    for col, (ax, ylabel) in enumerate(((ax_rps, "requests/s"), (ax_p99, "p99 latency (ms)"))):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.concurrency for r in results if r.scenario == scenario}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_title(f"{scenario} path: {'throughput' if col == 0 else 'p99'}")
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def _bars(ax: Any, groups: list[str], series: dict[str, list[float]], title: str, ylabel: str) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(groups))], values, width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))], groups)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def _applied(ax_rate: Any, ax_p99: Any, results: Sequence[Result]) -> None:
    pts = [r for r in results if r.scenario == "webhook_applied"]
    levels = sorted({r.concurrency for r in pts})
    paths = list(dict.fromkeys(r.path for r in pts))

    def value(path: str, c: int, of: str) -> float:
        r = next((r for r in pts if (r.path, r.concurrency) == (path, c)), None)
        if r is None:
            return 0.0
        if of == "p99":
            return r.p99_ms
        return float(r.extra["applied_per_second"]) if path.startswith("applied") else r.rps

    groups = [f"c={c}" for c in levels]

    def label(p: str) -> str:
        return "ingest only (acked/s)" if p == "ingest_only" else f"{p} (applied/s)"

    rates = {label(p): [value(p, c, "rate") for c in levels] for p in paths}
    _bars(ax_rate, groups, rates, "webhooks: ingestion only vs fully applied", "events/s")
    _bars(ax_p99, groups, {p: [value(p, c, "p99") for c in levels] for p in paths}, "webhooks: ack p99", "ms")


def _history(ax_rate: Any, ax_p99: Any, results: Sequence[Result]) -> None:
    pts = [r for r in results if r.scenario == "history"]

    def mean(path: str, of: str) -> float:
        values = [r for r in pts if r.path == path]
        if not values:
            return 0.0
        if of == "p99":
            return sum(r.p99_ms for r in values) / len(values)
        if path.startswith("applied"):
            return sum(float(r.extra["applied_per_second"]) for r in values) / len(values)
        return sum(r.rps for r in values) / len(values)

    groups = ["CreatePayment (rps)", "webhooks applied (/s)"]
    rates = {
        "empty store": [mean("create_payment", "rate"), mean("applied", "rate")],
        "after history": [mean("create_payment_history", "rate"), mean("applied_history", "rate")],
    }
    _bars(ax_rate, groups, rates, "history: empty store vs after history", "per second")
    p99 = {
        "empty store": [mean("create_payment", "p99"), mean("applied", "p99")],
        "after history": [mean("create_payment_history", "p99"), mean("applied_history", "p99")],
    }
    _bars(ax_p99, groups, p99, "history: p99 (ack p99 for webhooks)", "ms")


def _scaling(ax_rps: Any, ax_p99: Any, results: Sequence[Result]) -> None:
    pts = [r for r in results if r.scenario == "scaling"]
    levels = sorted({r.concurrency for r in pts})
    by = {p: {r.concurrency: r for r in pts if r.path == p} for p in ("1_process", "2_process")}
    groups = [f"c={c}" for c in levels]
    _bars(ax_rps, groups, {p: [by[p][c].rps if c in by[p] else 0 for c in levels] for p in by},
          "scaling (CreatePayment, SO_REUSEPORT): throughput", "requests/s")  # fmt: skip
    _bars(ax_p99, groups, {p: [by[p][c].p99_ms if c in by[p] else 0 for c in levels] for p in by},
          "scaling: p99", "p99 latency (ms)")  # fmt: skip


def chart(results: Sequence[Result], path: Path) -> None:
    """Writes the PNG: read/write/webhook as lines, applied webhooks, history and scaling as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line_rows = [s for s in ("read", "write", "webhook") if any(r.scenario == s for r in results)]
    bar_rows = [s for s in ("webhook_applied", "history", "scaling") if any(r.scenario == s for r in results)]
    rows = len(line_rows) + len(bar_rows)
    if not rows:
        return
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.2 * rows), squeeze=False)
    for row, scenario in enumerate(line_rows):
        _lines(axes[row][0], axes[row][1], results, scenario)
    draw = {"webhook_applied": _applied, "history": _history, "scaling": _scaling}
    for row, scenario in enumerate(bar_rows, start=len(line_rows)):
        draw[scenario](axes[row][0], axes[row][1], results)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
