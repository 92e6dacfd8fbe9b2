"""Every query the service issues uses an index (checked with ``explain`` on the embedded store).

The statements are the ones a representative workload actually sent (``tests/perf/conftest.py``):
each find, count, update, delete and findAndModify filter is explained as a ``find`` with
the same filter and sort. A plan passes when it reads an index (IXSCAN), or, for a filter
of several clauses, when one of its clauses alone is answered from an index: MongoDB's
planner considers every indexed predicate, and SecantusDB runs such filters through the
index of one clause too, but its ``explain`` reports a COLLSCAN for them (it does not model
that step). What is left is the documented list below.
"""

from __future__ import annotations

from typing import Any

from benchmarks.commands import Command
from benchmarks.workload import Workload

# (collection, kind, filter fields, sort fields) -> why a collection scan is acceptable.
DOCUMENTED_SCANS: dict[tuple[str, str, frozenset[str], frozenset[str]], str] = {
    ("customers", "find", frozenset(), frozenset({"_id"})): "ListCustomers without a filter (admin)",
    ("customers", "find", frozenset({"_id"}), frozenset({"_id"})): "ListCustomers without a filter, page 2",
    ("payments", "find", frozenset(), frozenset({"_id"})): "ListPayments without a filter (admin)",
    ("payments", "find", frozenset({"_id"}), frozenset({"_id"})): "ListPayments without a filter, page 2",
    ("disputes", "find", frozenset(), frozenset({"_id"})): "ListDisputes without a filter",
    ("event_log", "find", frozenset(), frozenset({"_id"})): "the log's head (its highest number)",
    ("event_log", "find", frozenset({"_id"}), frozenset({"_id"})): "events by number range",
    ("event_log", "delete", frozenset({"_id"}), frozenset()): "retention by number range",
    ("plans", "find", frozenset({"processor_refs.fake"}), frozenset({"_id"})): "a plan by its processor price id",
}
WHY = """Newest-first lists with no filter walk the _id index on MongoDB (IXSCAN of _id_, backward,
stopping at the page size), and so do the event log's reads and deletes by number range
(its _id is the event's number); SecantusDB cannot walk its virtual _id index and sorts the whole
collection in memory, so on the embedded store their cost grows with the collection. A plan
found by its processor price id (UpdateSubscription, a price the processor reports) scans the
plan catalog, which holds one small document per plan the business sells."""


def _stages(plan: Any, out: list[str]) -> list[str]:
    if isinstance(plan, dict):
        if "stage" in plan:
            out.append(plan["stage"])
        for value in plan.values():
            _stages(value, out)
    elif isinstance(plan, list):
        for value in plan:
            _stages(value, out)
    return out


async def _uses_index(workload: Workload, collection: str, query: dict[str, Any], sort: Any) -> bool:
    command: dict[str, Any] = {"find": collection, "filter": query}
    if sort:
        command["sort"] = sort
    explained = await workload.runtime.store.database.command("explain", command, verbosity="queryPlanner")
    stages = _stages(explained["queryPlanner"]["winningPlan"], [])
    return "COLLSCAN" not in stages and "IXSCAN" in stages


def _statements(workload: Workload) -> dict[tuple[str, str, frozenset[str], frozenset[str]], tuple[str, Command, Any]]:
    seen: dict[tuple[str, str, frozenset[str], frozenset[str]], tuple[str, Command, Any]] = {}
    for label, commands in workload.steps.items():
        for command in commands:
            for kind, query, extra in command.statements():
                if kind == "insert":
                    continue
                sort = extra.get("sort") or {}
                key = (command.collection, kind, frozenset(query), frozenset(sort))
                seen.setdefault(key, (label, command, (query, sort)))
    return seen


async def test_every_query_reads_an_index_or_is_documented(workload: Workload) -> None:
    statements = _statements(workload)
    assert len(statements) > 40, "the workload should exercise the service's queries"
    unexplained = []
    for key, (label, _command, (query, sort)) in sorted(statements.items(), key=str):
        collection = key[0]
        if await _uses_index(workload, collection, query, sort):
            continue
        clauses = [{field: value} for field, value in query.items() if not field.startswith("$")]
        if len(query) > 1 and any([await _uses_index(workload, collection, c, None) for c in clauses]):
            continue
        if key not in DOCUMENTED_SCANS:
            unexplained.append(f"{label}: {collection} {key[1]} {dict(query)} sort={sort}")
    assert not unexplained, "collection scans:\n" + "\n".join(unexplained)


async def test_the_documented_scans_are_still_issued(workload: Workload) -> None:
    """A stale entry would hide a new scan with the same shape."""
    assert set(DOCUMENTED_SCANS) <= set(_statements(workload))
