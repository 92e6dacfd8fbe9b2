"""The event type catalogue (domain/event_catalog.py) and docs/EVENTS.md, which documents it.

The catalogue must name every status of every resource, pick types by the documented rule,
and be exactly the table in docs/EVENTS.md; every example in the document must be a valid
BillingEvent of a listed type, and the worked push example must verify.
"""

from __future__ import annotations

import importlib.util
import json
import re
from enum import Enum
from pathlib import Path
from types import ModuleType

import pytest
from billing.v1 import billing_event_pb2 as ev
from billing_client import push
from google.protobuf import json_format

from billing_service.domain import event_signing as sig
from billing_service.domain.customers import PaymentMethodStatus
from billing_service.domain.disputes import DisputeStatus
from billing_service.domain.errors import InvalidArgument
from billing_service.domain.event_catalog import (
    EVENT_TYPES,
    INITIAL_STATUS,
    MAX_TYPE_PATTERNS,
    RESOURCE_TYPES,
    event_types,
    matches,
    validate_type_patterns,
)
from billing_service.domain.payments import PaymentStatus, RefundStatus
from billing_service.domain.subscriptions import InvoiceStatus, PlanStatus, SubscriptionStatus

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "EVENTS.md"

STATUSES: dict[str, type[Enum]] = {
    "payment_method": PaymentMethodStatus,
    "payment": PaymentStatus,
    "refund": RefundStatus,
    "plan": PlanStatus,
    "subscription": SubscriptionStatus,
    "invoice": InvoiceStatus,
    "dispute": DisputeStatus,
}


# -- the list ---------------------------------------------------------------------------


def test_every_resource_has_created_and_updated_and_every_type_names_its_resource() -> None:
    assert set(INITIAL_STATUS) == set(RESOURCE_TYPES)
    for resource in RESOURCE_TYPES:
        assert f"{resource}.created" in EVENT_TYPES and f"{resource}.updated" in EVENT_TYPES
    for name, event_type in EVENT_TYPES.items():
        assert name == event_type.name and name.startswith(f"{event_type.resource_type}.")
        assert re.fullmatch(r"[a-z_]+\.[a-z_]+", name) and event_type.follows


@pytest.mark.parametrize("resource", sorted(STATUSES))
def test_every_status_but_the_initial_one_is_an_event_type(resource: str) -> None:
    statuses = {str(member.value) for member in STATUSES[resource]}
    assert INITIAL_STATUS[resource] in statuses
    missing = {f"{resource}.{s}" for s in statuses - {INITIAL_STATUS[resource]}} - set(EVENT_TYPES)
    assert missing == set(), "add these to billing_service/domain/event_catalog.py (and docs/EVENTS.md)"


# -- the rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "created", "before", "after", "actions", "expected"),
    [
        ("payment", True, "", "pending", ["payment.created"], ["payment.created"]),
        ("payment", False, "pending", "succeeded", ["payment.succeeded"], ["payment.succeeded"]),
        ("payment", False, "pending", "requires_action", [], ["payment.requires_action"]),
        ("payment", False, "succeeded", "succeeded", ["payment.refund_settled"], ["payment.updated"]),
        ("invoice", True, "", "paid", ["invoice.paid"], ["invoice.created", "invoice.paid"]),
        ("invoice", True, "", "draft", ["invoice.draft"], ["invoice.created"]),
        ("invoice", False, "open", "open", ["invoice.payment_failed"], ["invoice.payment_failed"]),
        ("refund", True, "", "succeeded", ["refund.mirrored"], ["refund.created", "refund.succeeded"]),
        (
            "subscription",
            False,
            "active",
            "active",
            ["subscription.cancel_scheduled"],
            ["subscription.cancel_scheduled"],
        ),
        ("subscription", False, "active", "past_due", ["subscription.updated"], ["subscription.past_due"]),
        ("customer", True, "", "active", ["customer.created"], ["customer.created"]),
        ("customer", False, "active", "active", ["customer.updated"], ["customer.updated"]),
        ("dispute", True, "", "warning_closed", ["dispute.opened"], ["dispute.created", "dispute.warning_closed"]),
        # A named action of another resource does not leak into this one.
        ("payment", False, "succeeded", "succeeded", ["invoice.payment_failed"], ["payment.updated"]),
        # A status the catalogue does not know is an update, never a failure.
        ("payment", False, "pending", "teleported", [], ["payment.updated"]),
        ("payment", True, "", "teleported", [], ["payment.created", "payment.updated"]),
    ],
)
def test_types_follow_the_documented_rule(
    resource: str, created: bool, before: str, after: str, actions: list[str], expected: list[str]
) -> None:
    got = event_types(resource, created=created, previous_status=before, status=after, actions=actions)
    assert got == expected
    assert all(t in EVENT_TYPES for t in got)


def test_a_resource_without_events_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        event_types("audit_event", created=True, previous_status="", status="x")


# -- filters ----------------------------------------------------------------------------


def test_type_patterns_match_by_name_by_resource_or_all() -> None:
    assert matches((), "payment.succeeded")
    assert matches(("*",), "dispute.created")
    assert matches(("payment.*",), "payment.failed") and not matches(("payment.*",), "payment_method.created")
    assert matches(("payment_method.*",), "payment_method.created")
    assert matches(("refund.succeeded", "invoice.paid"), "invoice.paid")
    assert not matches(("refund.succeeded",), "refund.failed")


@pytest.mark.parametrize(
    "patterns",
    [["payment.teleported"], ["payments.*"], ["payment"], ["*.succeeded"], ["payment.**"], [""]],
)
def test_unknown_or_malformed_patterns_are_refused_naming_the_entry(patterns: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_type_patterns(["payment.succeeded", *patterns], "event_types")
    assert caught.value.violations[0].field == "event_types[1]"


def test_pattern_limits_and_the_all_pattern() -> None:
    assert validate_type_patterns(["payment.*", "payment.*", "*"], "f") == ("payment.*", "*")
    with pytest.raises(InvalidArgument):
        validate_type_patterns(["*"], "f", allow_all=False)
    with pytest.raises(InvalidArgument):
        validate_type_patterns(["payment.*"] * (MAX_TYPE_PATTERNS + 1), "f")


# -- docs/EVENTS.md ---------------------------------------------------------------------


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("event_types", ROOT / "scripts" / "event_types.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_doc_table_is_generated_from_the_catalogue() -> None:
    script = _script()
    table = script.markdown()
    assert script.doc_block(DOC.read_text()) == table, "run scripts/event_types.py --write"
    listed = [row.split("`")[1] for row in table.splitlines() if row.startswith("| `")]
    assert listed == list(EVENT_TYPES)


def _json_blocks() -> list[str]:
    return re.findall(r"```json\n(.*?)\n```", DOC.read_text(), re.S)


def test_every_example_is_a_valid_event_of_a_listed_type() -> None:
    blocks = _json_blocks()
    assert len(blocks) >= 8
    shown = set()
    for block in blocks:
        event = ev.BillingEvent()
        json_format.Parse(block, event)  # strict: an unknown field fails
        assert event.type in EVENT_TYPES, event.type
        assert EVENT_TYPES[event.type].resource_type == event.resource_type
        assert event.WhichOneof("resource") == event.resource_type
        resource = getattr(event, event.resource_type)
        assert resource.id == event.resource_id
        assert event.id.startswith("bev_") and event.resource_version >= 1
        assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-z]{8}", event.cursor)
        if event.HasField("payment"):
            assert event.payment.next_action.client_secret == ""
        shown.add(event.type)
    # The types other teams ask about first are shown in full.
    assert {"payment.succeeded", "payment.requires_action", "payment.failed", "refund.succeeded"} <= shown
    assert {"subscription.past_due", "invoice.paid", "dispute.created"} <= shown
    # ...and one of every resource.
    assert {EVENT_TYPES[t].resource_type for t in shown} == set(RESOURCE_TYPES)


def test_the_worked_push_example_verifies() -> None:
    text = DOC.read_text()
    request = re.search(r"```http\n(.*?)\n```", text, re.S)
    assert request is not None
    head, body = request.group(1).split("\n\n", 1)
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    t = int(re.search(r"was signed at\s+`t=(\d+)`", text).group(1))  # type: ignore[union-attr]
    secrets = re.search(r"with the secrets `(whsec_[^`]+)` \(new\) and `(whsec_[^`]+)` \(old", text)
    assert secrets is not None
    header = headers["Billing-Signature"]
    for secret in secrets.groups():
        assert sig.verify(body.encode(), header, [secret], now=t) == t
        event = push.construct_event(body.encode(), header, secret, now=t)
        assert event.id == headers["Billing-Event-Id"] and event.type == headers["Billing-Event-Type"]
    assert len(sig.parse_header(header)[1]) == 2
    # The body is the compact form of the customer.created example.
    (example,) = [b for b in _json_blocks() if '"type": "customer.created"' in b]
    assert json.loads(body) == json.loads(example)
