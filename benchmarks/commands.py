"""Store commands per RPC: a PyMongo command listener around the real gRPC server.

:class:`CommandRecorder` records every command a process sends (``pymongo.monitoring``,
registered before any client exists), and :class:`Workload` drives the real gRPC server
(in process, fake processor, through the generated client) one RPC at a time, so each
RPC's commands are exactly the ones recorded while it ran. ``make bench`` prints the
counts for every mutating RPC; the tests reuse the recorder and the workload to check
every query's plan (``tests/perf/test_query_plans.py``) and shard keys
(``tests/perf/test_shard_keys.py``).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pymongo import monitoring

#: Commands that are not the service's work (handshakes, sessions, monitoring).
IGNORED = frozenset(
    {"hello", "ismaster", "isMaster", "ping", "endSessions", "buildInfo", "getMore", "killCursors", "listIndexes"}
)


@dataclass
class Command:
    """One command as the listener saw it: its name, collection and the statements it holds."""

    name: str
    collection: str
    body: Mapping[str, Any]
    label: str = ""

    def statements(self) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(kind, filter, extra) per statement: a find's filter, each update's or delete's ``q``..."""
        body = self.body
        if self.name == "find":
            yield "find", dict(body.get("filter") or {}), {"sort": body.get("sort"), "limit": body.get("limit")}
        elif self.name == "count":
            yield "count", dict(body.get("query") or {}), {}
        elif self.name == "aggregate":
            stages = body.get("pipeline") or []
            match = stages[0].get("$match", {}) if stages and "$match" in stages[0] else {}
            yield "aggregate", dict(match), {"pipeline": stages}
        elif self.name == "update":
            for stmt in body.get("updates", []):
                yield "update", dict(stmt.get("q") or {}), {"multi": stmt.get("multi", False), "u": stmt.get("u")}
        elif self.name == "delete":
            for stmt in body.get("deletes", []):
                yield "delete", dict(stmt.get("q") or {}), {"limit": stmt.get("limit")}
        elif self.name == "findAndModify":
            yield "findAndModify", dict(body.get("query") or {}), {"sort": body.get("sort")}
        elif self.name == "insert":
            for doc in body.get("documents", []):
                yield "insert", dict(doc), {}


def split_bulk_write(body: Mapping[str, Any], label: str) -> list[Command]:
    """A client ``bulkWrite`` (MongoDB 8.0; one per transaction) as one pseudo-command per operation.

    Each operation becomes the classic command it stands for (``insert``/``update``/
    ``delete`` on its own collection, from ``nsInfo``), so the plan and shard-key checks
    read every statement whichever way the store module sent it.
    """
    namespaces = [str(ns.get("ns", "")).split(".", 1)[-1] for ns in body.get("nsInfo") or []]
    out: list[Command] = []
    for op in body.get("ops") or []:
        for kind in ("insert", "update", "delete"):
            if kind in op:
                collection = namespaces[int(op[kind])] if int(op[kind]) < len(namespaces) else ""
                break
        else:
            continue
        if kind == "insert":
            part: dict[str, Any] = {"documents": [op.get("document") or {}]}
        elif kind == "update":
            stmt = {"q": op.get("filter") or {}, "u": op.get("updateMods"), "multi": op.get("multi", False)}
            part = {"updates": [stmt]}
        else:
            part = {"deletes": [{"q": op.get("filter") or {}, "limit": 0 if op.get("multi") else 1}]}
        out.append(Command(kind, collection, {kind: collection, **part, "bulkWrite": True}, label))
    return out


class CommandRecorder(monitoring.CommandListener):
    """Records the commands sent while :meth:`recording` is active (register it before clients)."""

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self._label: str | None = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self._label is None or event.command_name in IGNORED:
            return
        if event.command_name == "bulkWrite":
            self.commands.extend(split_bulk_write(event.command, self._label))
            return
        target = event.command.get(event.command_name)
        collection = target if isinstance(target, str) else ""
        self.commands.append(Command(event.command_name, collection, dict(event.command), self._label))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    @contextmanager
    def recording(self, label: str) -> Iterator[list[Command]]:
        """Records under ``label``; yields the list this step's commands are appended to."""
        start = len(self.commands)
        step: list[Command] = []
        self._label = label
        try:
            yield step
        finally:
            self._label = None
            step.extend(self.commands[start:])


def register() -> CommandRecorder:
    """A recorder registered for every client created from now on in this process."""
    recorder = CommandRecorder()
    monitoring.register(recorder)
    return recorder


def summary(commands: list[Command]) -> Counter[str]:
    """Commands by name (``commitTransaction`` included: it is a round trip too)."""
    return Counter(c.name for c in commands)


@dataclass
class RpcCounts:
    """Commands each mutating RPC sent, in the order they ran."""

    by_rpc: dict[str, list[Command]] = field(default_factory=dict)

    def table(self) -> str:
        lines = []
        for rpc, commands in self.by_rpc.items():
            parts = ", ".join(f"{n} {name}" for name, n in sorted(summary(commands).items()))
            lines.append(f"{rpc:<22} {len(commands):>3}  ({parts})")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {rpc: {"total": len(cmds), **summary(cmds)} for rpc, cmds in self.by_rpc.items()}


def unique_id() -> str:
    return str(uuid.uuid4())
