"""The table, the JSON file and the chart of one benchmark run."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import Result

# Each measured path and the baselines it is compared with.
BASELINES: dict[tuple[str, str], tuple[str, ...]] = {
    ("read", "service"): ("bare_grpc", "pymongo"),
    ("write", "service"): ("store_floor",),
    ("webhook", "sidecar"): ("bare_endpoint", "store_floor"),
}


def _find(results: Sequence[Result], scenario: str, path: str, c: int) -> Result | None:
    for r in results:
        if (r.scenario, r.path, r.concurrency) == (scenario, path, c):
            return r
    return None


def ratios(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Throughput of each path over each of its baselines, per concurrency."""
    out = []
    for (scenario, path), bases in BASELINES.items():
        for r in results:
            if (r.scenario, r.path) != (scenario, path):
                continue
            row: dict[str, Any] = {"scenario": scenario, "path": path, "concurrency": r.concurrency}
            for base in bases:
                b = _find(results, scenario, base, r.concurrency)
                row[f"vs_{base}"] = round(r.rps / b.rps, 3) if b and b.rps else None
            row["p99_over_p50"] = round(r.p99_ms / r.p50_ms, 2) if r.p50_ms else None
            out.append(row)
    scale = {r.concurrency: r for r in results if r.scenario == "scaling" and r.path == "1_process"}
    for r in results:
        if r.scenario == "scaling" and r.path == "2_process" and r.concurrency in scale:
            one = scale[r.concurrency]
            out.append({
                "scenario": "scaling", "path": "2_process", "concurrency": r.concurrency,
                "vs_1_process": round(r.rps / one.rps, 3) if one.rps else None,
            })  # fmt: skip
    return out


def targets(results: Sequence[Result]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it holds."""
    out: list[dict[str, Any]] = []
    svc = _find(results, "read", "service", 64)
    bare, mongo = _find(results, "read", "bare_grpc", 64), _find(results, "read", "pymongo", 64)
    if svc and bare and mongo:
        lower = min(bare.rps, mongo.rps)
        value = svc.rps / lower if lower else 0.0
        out.append({"target": "read c=64 >= 0.5 x lower baseline", "value": round(value, 3), "met": value >= 0.5})
    for scenario, path, base in (("write", "service", "store_floor"), ("webhook", "sidecar", "store_floor")):
        levels = sorted({r.concurrency for r in results if (r.scenario, r.path) == (scenario, path)})
        for c in levels[-1:]:
            a, b = _find(results, scenario, path, c), _find(results, scenario, base, c)
            if a and b and b.rps:
                value = a.rps / b.rps
                name = f"{scenario} c={c} >= 0.7 x raw store floor"
                out.append({"target": name, "value": round(value, 3), "met": value >= 0.7})
    w16 = _find(results, "write", "service", 16)
    if w16 and w16.p50_ms:
        value = w16.p99_ms / w16.p50_ms
        out.append({"target": "write c=16 p99 < 4 x p50", "value": round(value, 2), "met": value < 4})
    return out


def table(results: Sequence[Result]) -> str:
    head = f"{'scenario':<9} {'path':<14} {'c':>3} {'ops':>7} {'err':>4} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8}"
    lines = [head + "  cores used"]
    for r in results:
        lines.append(
            f"{r.scenario:<9} {r.path:<14} {r.concurrency:>3} {r.ops:>7} {r.errors:>4} {r.rps:>9.1f} "
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f}  "
            + " ".join(f"{k}={v}" for k, v in r.extra.get("cores_used", {}).items() if v)
        )
    lines.append("")
    for row in ratios(results):
        rest = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("scenario", "path", "concurrency"))
        lines.append(f"ratio {row['scenario']}/{row['path']} c={row['concurrency']}: {rest}")
    lines.append("")
    for t in targets(results):
        lines.append(f"target {t['target']}: {t['value']} -> {'MET' if t['met'] else 'NOT MET'}")
    return "\n".join(lines)


def write_json(results: Sequence[Result], path: Path, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), **meta},
        "results": [r.as_dict() for r in results],
        "ratios": ratios(results),
        "targets": targets(results),
    }
    path.write_text(json.dumps(doc, indent=2))


def chart(results: Sequence[Result], path: Path) -> None:
    """Throughput and p99 against concurrency, each path beside its baselines; scaling as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in ("read", "write", "webhook") if any(r.scenario == s for r in results)]
    has_scaling = any(r.scenario == "scaling" for r in results)
    rows = len(scenarios) + (1 if has_scaling else 0)
    if rows == 0:
        return  # nothing charted (an events-only run): the table and the JSON have it
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.2 * rows), squeeze=False)
    for row, scenario in enumerate(scenarios):
        paths = list(dict.fromkeys(r.path for r in results if r.scenario == scenario))
        for path_name in paths:
            pts = sorted(
                (r for r in results if (r.scenario, r.path) == (scenario, path_name)), key=lambda r: r.concurrency
            )
            xs = [r.concurrency for r in pts]
            style = "-o" if path_name in ("service", "sidecar") else "--s"
            axes[row][0].plot(xs, [r.rps for r in pts], style, label=path_name)
            axes[row][1].plot(xs, [r.p99_ms for r in pts], style, label=path_name)
        for col, ylabel in ((0, "requests/s"), (1, "p99 latency (ms)")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({r.concurrency for r in results if r.scenario == scenario}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_title(f"{scenario} path: {'throughput' if col == 0 else 'p99'}")
            ax.set_xlabel("concurrency")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    if has_scaling:
        pts = [r for r in results if r.scenario == "scaling"]
        levels = sorted({r.concurrency for r in pts})
        width = 0.35
        for i, procs in enumerate(("1_process", "2_process")):
            sel = {r.concurrency: r for r in pts if r.path == procs}
            bar_x = [j + i * width for j in range(len(levels))]
            axes[-1][0].bar(bar_x, [sel[c].rps if c in sel else 0 for c in levels], width, label=procs)
            axes[-1][1].bar(bar_x, [sel[c].p99_ms if c in sel else 0 for c in levels], width, label=procs)
        for col, ylabel in ((0, "requests/s"), (1, "p99 latency (ms)")):
            ax = axes[-1][col]
            ax.set_xticks([j + width / 2 for j in range(len(levels))], [f"c={c}" for c in levels])
            ax.set_title(f"scaling (CreatePayment, SO_REUSEPORT): {'throughput' if col == 0 else 'p99'}")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
