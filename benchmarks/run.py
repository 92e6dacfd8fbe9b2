"""``python -m benchmarks.run``: starts everything on loopback, measures, reports.

    python -m benchmarks.run [--seconds 4] [--warmup 1] [--profile DIR] [--chart docs/img/benchmarks.png]
                             [--only read,write,webhook,applied,history,scaling,commands]
                             [--events 1000] [--history-payments 50000] [--history-events 20000]
                             [--baseline-root /path/to/a/checkout/of/main]

Prints a table (with ratios, store commands per mutating RPC and the issues' targets), writes
``benchmarks/results/latest.json`` and a PNG chart (``benchmarks/results/latest.png``
unless ``--chart`` says otherwise). ``--profile DIR`` runs the service children under
pyinstrument and writes one profile per scenario (figures are then lower: sampling costs).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import harness, report, scenarios
from benchmarks.harness import ROOT, Result
from billing_service.adapters.mongo.embedded import EmbeddedMongo

ALL = ("read", "write", "webhook", "applied", "history", "scaling", "commands", "events")


def webhook_available() -> bool:
    """The webhook scenario needs the sidecar and its benchmark module (added last)."""
    return (
        importlib.util.find_spec("billing_service.entrypoints.webhooks.app") is not None
        and importlib.util.find_spec("benchmarks.webhook") is not None
    )


async def count_commands(mongo_uri: str) -> dict[str, dict[str, int]]:
    """Store commands of each mutating RPC, as ``tests/e2e/test_round_trips.py`` counts them.

    The test is the one source of these counts (its command listener around the real
    gRPC server, its budgets and the figures from before); this runs it and reads its table.
    """
    del mongo_uri  # the test starts its own store
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "round_trips.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/e2e/test_round_trips.py::test_store_commands_per_mutating_rpc",
            cwd=ROOT, env={**os.environ, "BILLING_ROUND_TRIPS_JSON": str(out)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await proc.communicate()
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"tests/e2e/test_round_trips.py failed:\n{output.decode(errors='replace')[-2000:]}")
        table = json.loads(out.read_text())
    counts: dict[str, dict[str, int]] = {}
    for rpc, row in table.items():
        by_name: dict[str, int] = {}
        for name in row["commands"]:
            by_name[name] = by_name.get(name, 0) + 1
        counts[rpc] = {"total": row["total"], "before": row["before"], "budget": row["budget"], **by_name}
    return counts


async def main_async(args: argparse.Namespace) -> tuple[list[Result], dict[str, dict[str, int]]]:
    only = tuple(s.strip() for s in args.only.split(",") if s.strip()) if args.only else ALL
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    cfg = scenarios.Config(seconds=args.seconds, warmup=args.warmup, profile_dir=profile_dir)
    results: list[Result] = []
    commands: dict[str, dict[str, int]] = {}
    mongo = EmbeddedMongo(":memory:")
    await mongo.start()
    try:
        for name in only:
            t0 = time.monotonic()
            print(f"== {name}", flush=True)
            harness.WATCH.clear()
            harness.WATCH["mongo"] = mongo._proc.pid if mongo._proc else 0
            try:
                commands = await _scenario(name, args, cfg, mongo.uri, results) or commands
            except Exception as exc:  # report what the other scenarios measured
                traceback.print_exc()
                print(f"   {name} failed: {exc!r}", flush=True)
            print(f"   done in {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        await mongo.astop()
    return results, commands


async def _scenario(
    name: str, args: argparse.Namespace, cfg: scenarios.Config, mongo_uri: str, results: list[Result]
) -> dict[str, dict[str, int]] | None:
    """Runs one scenario, appending its rows; returns the command counts of ``commands``."""
    if name == "read":
        results += await scenarios.read_path(cfg, mongo_uri)
    elif name == "write":
        results += await scenarios.write_path(cfg, mongo_uri)
    elif name == "scaling":
        results += await scenarios.scaling(cfg, mongo_uri)
    elif name == "events":
        results += await importlib.import_module("benchmarks.events").events_path(cfg, mongo_uri)
    elif name == "webhook":
        if not webhook_available():
            print("   webhook scenario not available yet: skipped", flush=True)
            return None
        webhook = importlib.import_module("benchmarks.webhook")
        results += await webhook.webhook_path(cfg, mongo_uri)
    elif name == "applied":
        from benchmarks import applied

        baseline = Path(args.baseline_root).resolve() if args.baseline_root else None
        results += await applied.applied_path(cfg, baseline_root=baseline, events=args.events)
    elif name == "history":
        from benchmarks import history

        results += await history.history_path(
            cfg, payments=args.history_payments, events=args.history_events, applied_events=args.events
        )
    elif name == "commands":
        return await count_commands(mongo_uri)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--profile", default="", help="directory for pyinstrument profiles of the service")
    parser.add_argument("--baseline-root", default="", help="a checkout of earlier code run beside this one")
    parser.add_argument("--events", type=int, default=1000, help="events per fully-applied webhook point")
    parser.add_argument("--history-payments", type=int, default=50_000, help="earlier payments (history)")
    parser.add_argument("--history-events", type=int, default=20_000, help="earlier webhook events (history)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/latest.json"))
    parser.add_argument("--chart", default=str(ROOT / "benchmarks/results/latest.png"))
    args = parser.parse_args()
    started = time.monotonic()
    results, commands = asyncio.run(main_async(args))
    print()
    print(report.table(results, commands))
    meta = {"cpus": os.cpu_count(), "seconds_per_point": args.seconds, "warmup": args.warmup,
            "profiled": bool(args.profile), "argv": sys.argv[1:]}  # fmt: skip
    report.write_json(results, Path(args.json), meta, commands)
    report.chart(results, Path(args.chart))
    print(f"\nwrote {args.json} and {args.chart} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
