"""``billing-service events``: push delivery from a shell, through the same use cases as the RPCs.

* ``events replay --endpoint ep_... [--all] [--since T] [--until T]``: the endpoint's
  dead-lettered deliveries of the window become pending with a fresh 3-day window (the
  default), or with ``--all`` every retained event of the window that matches the
  endpoint's types is queued again as new deliveries, in the background (``ReplayEvents``).
* ``events deliveries --endpoint ep_... [--state pending|succeeded|dead-lettered] [--limit N]``:
  the endpoint's deliveries, newest first (``ListEventDeliveries``).

Times are ISO 8601 (``2026-12-01T00:00:00Z``; without an offset, UTC).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from billing_service.config import ConfigError, Settings
from billing_service.domain.errors import BillingError
from billing_service.domain.ids import new_id
from billing_service.domain.push import EventDelivery
from billing_service.service_layer import push_endpoints
from billing_service.service_layer.idempotency import RequestContext

__all__ = ["add_parser", "run"]

_CALLER = "billing-service-cli"
_STATES = {"pending": "pending", "succeeded": "succeeded", "dead-lettered": "dead_lettered"}


def add_parser(sub: Any) -> None:
    """Registers the ``events`` command group on the top-level subparsers."""
    events = sub.add_parser("events", help="push delivery: replay events, list deliveries")
    actions = events.add_subparsers(dest="events_command", required=True)
    replay = actions.add_parser("replay", help="send an endpoint's dead letters (or every event) again")
    replay.add_argument("--endpoint", required=True, metavar="ep_...", help="the push endpoint")
    replay.add_argument("--all", action="store_true", help="every retained event of the window, not only dead letters")
    replay.add_argument("--since", metavar="ISO8601", help="events that entered the log at or after this time")
    replay.add_argument("--until", metavar="ISO8601", help="events that entered the log before this time")
    deliveries = actions.add_parser("deliveries", help="list an endpoint's deliveries, newest first")
    deliveries.add_argument("--endpoint", required=True, metavar="ep_...", help="the push endpoint")
    deliveries.add_argument("--state", choices=sorted(_STATES), help="only deliveries in this state")
    deliveries.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")


def _time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{name}: not an ISO 8601 time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the chosen ``events`` action; returns the exit status."""
    try:
        if args.events_command == "replay":
            cmd = push_endpoints.ReplayCommand(
                endpoint_id=args.endpoint, all_events=args.all,
                start=_time(args.since, "--since"), end=_time(args.until, "--until"),
            )  # fmt: skip
            cmd.validate()
            return asyncio.run(_replay(settings, cmd))
        return asyncio.run(_deliveries(settings, args.endpoint, _STATES.get(args.state or ""), args.limit))
    except BillingError as exc:
        print(f"events {args.events_command}: {exc.reason}: {exc.message}", flush=True)
        return 1


async def _replay(settings: Settings, cmd: push_endpoints.ReplayCommand) -> int:
    from billing_service.bootstrap import bootstrap

    runtime = await bootstrap(settings)
    try:
        # One operator action, one request: its reserved id names the replay of every event.
        ctx = RequestContext(_CALLER, "billing-service events replay", str(uuid.uuid4()), new_id("rpl"))
        result = await push_endpoints.replay_events(runtime.deps, ctx, cmd)
    finally:
        await runtime.aclose()
    if cmd.all_events:
        if not result.first_cursor:
            print("no retained event in the window", flush=True)
        else:
            print(
                f"queued for {cmd.endpoint_id} in the background: events {result.first_cursor} to "
                f"{result.last_cursor} that match its types (replay {ctx.resource_id})",
                flush=True,
            )
    else:
        print(f"{result.requeued_count} dead-lettered deliveries of {cmd.endpoint_id} are pending again", flush=True)
    return 0


def _line(d: EventDelivery) -> str:
    when = d.next_attempt_at.isoformat() if d.next_attempt_at and d.state.value == "pending" else "-"
    return (
        f"{d.id}  {d.state.value:<13}  {d.event_type:<28}  {d.event_id}  attempts={d.attempt_count}  "
        f"last={d.last_status_code or '-'}/{d.last_error or '-'}  next={when}"
    )


async def _deliveries(settings: Settings, endpoint_id: str, state: str | None, limit: int) -> int:
    from billing_service.bootstrap import bootstrap

    runtime = await bootstrap(settings)
    try:
        shown = 0
        token = ""
        filter_text = f"state = {state}" if state else ""
        while shown < limit:
            items, token = await push_endpoints.list_deliveries(
                runtime.deps, endpoint_id, requested_size=min(200, limit - shown), token=token, filter_text=filter_text
            )
            for delivery in items:
                print(_line(delivery), flush=True)
            shown += len(items)
            if not token:
                break
    finally:
        await runtime.aclose()
    print(f"{shown} deliveries", flush=True)
    return 0
