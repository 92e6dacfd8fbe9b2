"""Every query and update on a collection to be sharded targets one shard, unless documented.

The shard keys are the ones ``docs/SCALING.md`` chooses. A statement targets one shard when
its filter pins the shard key (an equality, or ``$in`` of values); an insert does when each
document carries the key. The statements are the ones a representative workload sent
(``tests/perf/conftest.py``); the few that must ask every shard are listed below, and the
same list (by name) is in ``docs/SCALING.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.workload import Workload

SCALING = Path(__file__).resolve().parents[2] / "docs" / "SCALING.md"

#: Collection -> (shard key field, the key as SCALING.md writes it).
SHARD_KEYS: dict[str, tuple[str, str]] = {
    "customers": ("_id", "{_id: hashed}"),
    "payment_methods": ("_id", "{_id: hashed}"),
    "payments": ("_id", "{_id: hashed}"),
    "refunds": ("_id", "{_id: hashed}"),
    "subscriptions": ("_id", "{_id: hashed}"),
    "invoices": ("_id", "{_id: hashed}"),
    "disputes": ("_id", "{_id: hashed}"),
    "audit_events": ("resource_id", "{resource_id: hashed}"),
    "idempotency": ("_id", "{_id: hashed}"),
    "fences": ("_id", "{_id: hashed}"),
    "webhook_events": ("_id", "{_id: hashed}"),
}
#: Small collections that stay on the primary shard.
UNSHARDED = frozenset({"plans", "meta", "leases", "event_outbox", "event_log", "event_meta", "event_consumers"})

_ID_RANGE = frozenset({"_id"})  # a page-2 cursor: a range on _id, never one shard when hashed

#: (collection, kind, filter fields) -> the name SCALING.md lists it under.
SCATTER_GATHER: dict[tuple[str, str, frozenset[str]], str] = {
    ("customers", "find", frozenset()): "list all customers",
    ("customers", "find", _ID_RANGE): "list all customers",
    ("customers", "find", frozenset({"email"})): "customers by email",
    ("customers", "find", frozenset({"email", "_id"})): "customers by email",
    ("payment_methods", "find", frozenset({"customer_id"})): "a customer's payment methods",
    ("payment_methods", "find", frozenset({"customer_id", "_id"})): "a customer's payment methods",
    ("payments", "find", frozenset()): "list all payments",
    ("payments", "find", _ID_RANGE): "list all payments",
    ("payments", "find", frozenset({"customer_id"})): "a customer's payments",
    ("payments", "find", frozenset({"customer_id", "_id"})): "a customer's payments",
    ("payments", "find", frozenset({"customer_id", "status"})): "a customer's payments",
    ("payments", "find", frozenset({"customer_id", "status", "_id"})): "a customer's payments",
    ("payments", "find", frozenset({"status"})): "payments by status",
    ("payments", "find", frozenset({"status", "_id"})): "payments by status",
    ("payments", "find", frozenset({"processor", "processor_id"})): "by processor id",
    ("payments", "find", frozenset({"lookup_after"})): "reconciliation sweeps",
    ("refunds", "find", frozenset({"lookup_after"})): "reconciliation sweeps",
    ("subscriptions", "find", frozenset({"status", "current_period_end"})): "reconciliation sweeps",
    ("refunds", "find", frozenset({"payment_id"})): "a payment's refunds",
    ("refunds", "find", frozenset({"status"})): "refunds by status",
    ("refunds", "find", frozenset({"processor", "processor_id"})): "by processor id",
    ("subscriptions", "find", frozenset({"customer_id"})): "a customer's subscriptions",
    ("subscriptions", "find", frozenset({"status"})): "subscriptions by status",
    ("subscriptions", "aggregate", frozenset({"status"})): "subscriptions by status",
    ("subscriptions", "find", frozenset({"processor", "processor_id"})): "by processor id",
    ("invoices", "find", frozenset({"subscription_id"})): "a subscription's invoices",
    ("invoices", "find", frozenset({"customer_id"})): "a customer's invoices",
    ("invoices", "find", frozenset({"processor", "processor_id"})): "by processor id",
    ("disputes", "find", frozenset()): "list all disputes",
    ("idempotency", "find", frozenset({"expires_at"})): "janitor sweeps",
    ("fences", "find", frozenset({"expires_at"})): "janitor sweeps",
    ("webhook_events", "find", frozenset({"status", "available_at"})): "inbox claim query",
    ("webhook_events", "find", frozenset({"status"})): "inbox stats and replay",
    ("webhook_events", "aggregate", frozenset({"status"})): "inbox stats and replay",
    ("webhook_events", "update", frozenset({"status"})): "inbox stats and replay",
    ("webhook_events", "find", frozenset({"purge_at"})): "janitor sweeps",
    ("webhook_events", "find", frozenset({"processor", "event_id"})): "events stored before ids were derived",
    ("webhook_events", "update", frozenset({"processor", "event_id"})): "events stored before ids were derived",
}


def _pins(value: Any) -> bool:
    """An equality or an ``$in`` of values: the router can pick the shard(s) from it."""
    if not isinstance(value, dict):
        return True
    return set(value) <= {"$eq", "$in"} and bool(value)


def test_every_collection_has_a_documented_shard_key() -> None:
    text = SCALING.read_text()
    for collection, (_field, spec) in SHARD_KEYS.items():
        assert f"| `{collection}` | `{spec}` |" in text, f"SCALING.md lacks the shard key row of {collection}"
    for collection in UNSHARDED:
        assert f"| `{collection}` | unsharded |" in text, f"SCALING.md lacks the row of {collection}"
    for name in set(SCATTER_GATHER.values()):
        assert name in text, f"SCALING.md does not list the scatter-gather '{name}'"


def test_queries_and_updates_carry_the_shard_key(workload: Workload) -> None:
    stored = {c.collection for commands in workload.steps.values() for c in commands if c.collection}
    unknown = stored - set(SHARD_KEYS) - UNSHARDED
    assert not unknown, f"collections without a sharding decision: {unknown}"
    untargeted: list[str] = []
    used: set[tuple[str, str, frozenset[str]]] = set()
    for label, commands in workload.steps.items():
        for command in commands:
            if command.collection not in SHARD_KEYS:
                continue
            field, _spec = SHARD_KEYS[command.collection]
            for kind, query, _extra in command.statements():
                if kind == "insert":
                    if field not in query:
                        untargeted.append(f"{label}: insert into {command.collection} without {field}")
                    continue
                if field in query and _pins(query[field]):
                    continue
                key = (command.collection, kind, frozenset(query))
                if key in SCATTER_GATHER:
                    used.add(key)
                    continue
                untargeted.append(f"{label}: {command.collection} {kind} {query}")
    assert not untargeted, "statements that would ask every shard:\n" + "\n".join(untargeted)
    assert used, "the workload should include the documented scatter-gather reads"
