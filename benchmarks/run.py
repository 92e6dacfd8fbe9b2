"""``python -m benchmarks.run``: starts everything on loopback, measures, reports.

    python -m benchmarks.run [--seconds 4] [--warmup 1] [--only read,write,webhook,scaling]
                             [--profile DIR] [--chart docs/img/benchmarks.png]

Prints a table (with ratios and the issue's targets), writes
``benchmarks/results/latest.json`` and a PNG chart (``benchmarks/results/latest.png``
unless ``--chart`` says otherwise). ``--profile DIR`` runs the service children under
pyinstrument and writes one profile per scenario (figures are then lower: sampling costs).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import time
from pathlib import Path

from benchmarks import harness, report, scenarios
from benchmarks.harness import ROOT, Result
from billing_service.adapters.mongo.embedded import EmbeddedMongo

ALL = ("read", "write", "webhook", "scaling", "events")


def webhook_available() -> bool:
    """The webhook scenario needs the sidecar and its benchmark module (added last)."""
    return (
        importlib.util.find_spec("billing_service.entrypoints.webhooks.app") is not None
        and importlib.util.find_spec("benchmarks.webhook") is not None
    )


async def main_async(args: argparse.Namespace) -> list[Result]:
    only = tuple(s.strip() for s in args.only.split(",") if s.strip()) if args.only else ALL
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    cfg = scenarios.Config(seconds=args.seconds, warmup=args.warmup, profile_dir=profile_dir)
    results: list[Result] = []
    mongo = EmbeddedMongo(":memory:")
    await mongo.start()
    try:
        for name in only:
            t0 = time.monotonic()
            print(f"== {name}", flush=True)
            harness.WATCH.clear()
            harness.WATCH["mongo"] = mongo._proc.pid if mongo._proc else 0
            if name == "read":
                results += await scenarios.read_path(cfg, mongo.uri)
            elif name == "write":
                results += await scenarios.write_path(cfg, mongo.uri)
            elif name == "scaling":
                results += await scenarios.scaling(cfg, mongo.uri)
            elif name == "events":
                results += await importlib.import_module("benchmarks.events").events_path(cfg, mongo.uri)
            elif name == "webhook":
                if not webhook_available():
                    print("   webhook scenario not available yet: skipped", flush=True)
                    continue
                webhook = importlib.import_module("benchmarks.webhook")
                results += await webhook.webhook_path(cfg, mongo.uri)
            print(f"   done in {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        await mongo.astop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--profile", default="", help="directory for pyinstrument profiles of the service")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/latest.json"))
    parser.add_argument("--chart", default=str(ROOT / "benchmarks/results/latest.png"))
    args = parser.parse_args()
    started = time.monotonic()
    results = asyncio.run(main_async(args))
    print()
    print(report.table(results))
    meta = {"cpus": os.cpu_count(), "seconds_per_point": args.seconds, "warmup": args.warmup,
            "profiled": bool(args.profile), "argv": sys.argv[1:]}  # fmt: skip
    report.write_json(results, Path(args.json), meta)
    report.chart(results, Path(args.chart))
    print(f"\nwrote {args.json} and {args.chart} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
