"""Every reason the code can raise is a billing.v1.ErrorReason value, and vice versa.

The reasons are read from the source of the code that answers gRPC callers (``ast``):
class-level ``reason = "..."`` of the error classes, every ``reason=`` keyword, the
positional ``reason`` argument of helpers that take one (``processor_error(reason, ...)``,
``_refuse(what, reason)``), module constants they name, and ``error_reason_pb2.<NAME>``
references. Reasons computed from a processor's own code at run time are not in the
source; the gRPC layer sends those under a listed reason (``test_grpc_servicers``).
The README's table is generated from the enum.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType

from billing.v1 import error_reason_pb2

from billing_service.entrypoints.grpc_api.errors import REASONS

ROOT = Path(__file__).resolve().parents[2]
_UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9_]*")


def _helpers_taking_reason(trees: list[ast.Module]) -> dict[str, int]:
    """Function name -> positional index of its ``reason`` parameter (self/cls dropped)."""
    out: dict[str, int] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name != "__init__":
                names = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
                if names[:1] in (["self"], ["cls"]):
                    names = names[1:]
                if "reason" in names:
                    out[node.name] = names.index("reason")
    return out


# Code whose errors can reach a gRPC caller (the webhook sidecar's and the reconciler's
# outcomes are logged and stored, never sent as an ErrorInfo).
API_CODE = ("domain", "service_layer", "adapters", "entrypoints/grpc_api")


def reasons_in_code() -> dict[str, set[str]]:
    """Reason -> files that raise it."""
    paths = sorted(p for sub in API_CODE for p in (ROOT / "billing_service" / sub).rglob("*.py"))
    trees = [ast.parse(p.read_text()) for p in paths]
    helpers = _helpers_taking_reason(trees)
    found: dict[str, set[str]] = {}
    for path, tree in zip(paths, trees, strict=True):
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        expressions: list[ast.expr] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):  # reason = "..." in an error class body
                for item in node.body:
                    if isinstance(item, ast.Assign | ast.AnnAssign) and item.value is not None:
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        if any(isinstance(t, ast.Name) and t.id == "reason" for t in targets):
                            expressions.append(item.value)
            elif isinstance(node, ast.Call):
                expressions.extend(k.value for k in node.keywords if k.arg == "reason")
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if name in helpers and len(node.args) > helpers[name]:
                    expressions.append(node.args[helpers[name]])
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "error_reason_pb2"
                and _UPPER_SNAKE.fullmatch(node.attr)
            ):
                found.setdefault(node.attr, set()).add(str(path.relative_to(ROOT)))
        for expression in expressions:
            for leaf in ast.walk(expression):
                value = None
                if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str):
                    value = leaf.value
                elif isinstance(leaf, ast.Name):
                    value = constants.get(leaf.id)
                if value and _UPPER_SNAKE.fullmatch(value):
                    found.setdefault(value, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_scan_sees_reasons_of_every_kind() -> None:
    found = reasons_in_code()
    # class attribute, reason= keyword, positional helper argument, module constant, enum reference
    assert {"NOT_FOUND", "PAYMENT_NOT_CAPTURABLE", "SUBSCRIPTION_CANCELED", "MALFORMED_REQUEST", "INTERNAL"} <= set(
        found
    )


def test_every_reason_the_code_raises_is_in_the_enum() -> None:
    unlisted = {reason: sorted(files) for reason, files in reasons_in_code().items() if reason not in REASONS}
    assert unlisted == {}, "add these to protos/billing/v1/error_reason.proto (then make gen)"


def test_every_reason_in_the_enum_is_raised_somewhere() -> None:
    assert sorted(REASONS - set(reasons_in_code())) == []


def test_enum_names_are_the_reasons_and_zero_is_unspecified() -> None:
    values = error_reason_pb2.ErrorReason.DESCRIPTOR.values
    assert values[0].name == "ERROR_REASON_UNSPECIFIED" and values[0].number == 0
    assert all(_UPPER_SNAKE.fullmatch(v.name) for v in values)
    assert {v.name for v in values[1:]} == REASONS


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("error_reasons", ROOT / "scripts" / "error_reasons.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_generated_from_the_enum() -> None:
    script = _script()
    table = script.markdown()
    assert script.readme_block((ROOT / "README.md").read_text()) == table, "run scripts/error_reasons.py --write"
    listed = {row.split("`")[1] for row in table.splitlines() if row.startswith("| `")}
    assert listed == REASONS


def test_reasons_named_in_the_readme_prose_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    before_table = readme[: readme.index("<!-- error-reasons:begin")]
    section = before_table[before_table.index("## Calling it from another service") :]
    named = set(re.findall(r"`([A-Z][A-Z0-9_]{3,})`", section))
    codes = {c.name for c in __import__("grpc").StatusCode}
    assert named - codes - {"FAILED", "REQUIRED", "OUTPUT_ONLY", "IMMUTABLE"} <= REASONS
