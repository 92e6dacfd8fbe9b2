"""The table, the targets and the JSON file of one benchmark run (the chart: ``chart.py``)."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.chart import chart
from benchmarks.harness import Result

__all__ = ["chart", "ratios", "table", "targets", "write_json"]

# Each measured path and the baselines it is compared with.
BASELINES: dict[tuple[str, str], tuple[str, ...]] = {
    ("read", "service"): ("bare_grpc", "pymongo"),
    ("write", "service"): ("store_floor",),
    ("webhook", "sidecar"): ("bare_endpoint", "store_floor"),
}
#: Where a row's store came from when the scenario did not say (one store for the whole run).
SHARED_STORE = "shared by the run"


def _find(results: Sequence[Result], scenario: str, path: str, c: int) -> Result | None:
    for r in results:
        if (r.scenario, r.path, r.concurrency) == (scenario, path, c):
            return r
    return None


def applied_rate(r: Result) -> float:
    """Events fully applied per second (``webhook_applied`` and ``history`` applied rows)."""
    return float(r.extra.get("applied_per_second", 0.0))


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
    for r in results:
        if r.scenario == "webhook_applied" and r.path.startswith("applied"):
            ingest = _find(results, "webhook_applied", "ingest_only", r.concurrency)
            out.append({
                "scenario": r.scenario, "path": r.path, "concurrency": r.concurrency,
                "applied_vs_ingest_only": round(applied_rate(r) / ingest.rps, 3) if ingest and ingest.rps else None,
            })  # fmt: skip
    scale = {r.concurrency: r for r in results if r.scenario == "scaling" and r.path == "1_process"}
    for r in results:
        if r.scenario == "scaling" and r.path == "2_process" and r.concurrency in scale:
            one = scale[r.concurrency]
            out.append({
                "scenario": "scaling", "path": "2_process", "concurrency": r.concurrency,
                "vs_1_process": round(r.rps / one.rps, 3) if one.rps else None,
            })  # fmt: skip
    return out


def _history_ratio(results: Sequence[Result], path: str, value: Any) -> tuple[float, float, float] | None:
    empty = [value(r) for r in results if (r.scenario, r.path) == ("history", path)]
    after = [value(r) for r in results if (r.scenario, r.path) == ("history", f"{path}_history")]
    if not empty or not after or not sum(empty):
        return None
    return sum(empty) / len(empty), sum(after) / len(after), sum(after) / len(after) / (sum(empty) / len(empty))


def targets(results: Sequence[Result], commands: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]:
    """The issues' targets, each with the measured value and whether it holds."""
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
    for path, what, value_of in (
        ("create_payment", "CreatePayment rps", lambda r: r.rps),
        ("applied", "webhooks applied/s", applied_rate),
    ):
        found = _history_ratio(results, path, value_of)
        if found:
            empty, after, ratio = found
            name = f"history: {what} after history >= 0.9 x empty ({empty:.1f} -> {after:.1f})"
            out.append({"target": name, "value": round(ratio, 3), "met": ratio >= 0.9})
    for r in results:
        if r.scenario != "webhook_applied" or r.path != "applied":
            continue
        ingest = _find(results, "webhook_applied", "ingest_only", r.concurrency)
        if ingest and ingest.rps:
            value = applied_rate(r) / ingest.rps
            name = f"webhooks applied c={r.concurrency} >= 0.4 x ingestion only ({applied_rate(r)} / {ingest.rps})"
            out.append({"target": name, "value": round(value, 3), "met": value >= 0.4})
        today = _find(results, "webhook_applied", "applied_baseline", r.concurrency)
        if today and today.p99_ms:
            name = (
                f"webhooks applied c={r.concurrency}: ack p99 <= baseline's ({r.p99_ms:.0f} vs {today.p99_ms:.0f} ms)"
            )
            out.append({"target": name, "value": round(r.p99_ms / today.p99_ms, 3), "met": r.p99_ms <= today.p99_ms})
    for rpc, limit in (("CreatePayment", 6), ("CreateRefund", 7)):
        if commands and rpc in commands:
            total = commands[rpc]["total"]
            out.append({"target": f"{rpc} <= {limit} store commands", "value": total, "met": total <= limit})
    return out


def table(results: Sequence[Result], commands: dict[str, dict[str, int]] | None = None) -> str:
    head = f"{'scenario':<15} {'path':<22} {'c':>3} {'ops':>6} {'err':>3} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8}"
    lines = [head + "  store / cores used"]
    for r in results:
        applied = f" applied={applied_rate(r)}/s" if "applied_per_second" in r.extra else ""
        lines.append(
            f"{r.scenario:<15} {r.path:<22} {r.concurrency:>3} {r.ops:>6} {r.errors:>3} {r.rps:>8.1f} "
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {applied} [{r.extra.get('store', SHARED_STORE)}] "
            + " ".join(f"{k}={v}" for k, v in r.extra.get("cores_used", {}).items() if v)
        )
    lines.append("")
    for row in ratios(results):
        rest = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("scenario", "path", "concurrency"))
        lines.append(f"ratio {row['scenario']}/{row['path']} c={row['concurrency']}: {rest}")
    if commands:
        lines += ["", "store commands per mutating RPC (fake processor; tests/e2e/test_round_trips.py):"]
        lines.append(f"  {'RPC':<24} {'before':>6} {'now':>4} {'budget':>6}")
        for rpc, counts in commands.items():
            parts = ", ".join(
                f"{n} {name}" for name, n in sorted(counts.items()) if name not in ("total", "before", "budget")
            )
            lines.append(
                f"  {rpc:<24} {counts.get('before', '?'):>6} {counts['total']:>4} {counts.get('budget', '?'):>6}"
                f"  ({parts})"
            )
    lines.append("")
    for t in targets(results, commands):
        lines.append(f"target {t['target']}: {t['value']} -> {'MET' if t['met'] else 'NOT MET'}")
    return "\n".join(lines)


def write_json(
    results: Sequence[Result], path: Path, meta: dict[str, Any], commands: dict[str, dict[str, int]] | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), **meta},
        "results": [r.as_dict() for r in results],
        "ratios": ratios(results),
        "commands_per_rpc": commands or {},
        "targets": targets(results, commands),
    }
    path.write_text(json.dumps(doc, indent=2, default=str))
