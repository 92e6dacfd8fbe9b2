"""The house rules, read from the source: who may import what, who may touch the database
client, and where a processor may be named.

Every module of ``billing_service`` is parsed (no import side effects); imports inside
functions and under ``TYPE_CHECKING`` count like the others.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "billing_service"
# Vendor SDKs and the database driver: only adapters/ and the composition root use them.
DRIVERS = frozenset({"pymongo", "bson", "motor", "gridfs", "stripe", "paypalserversdk", "apimatic_core"})
# Names of the raw database client and its handles.
RAW_CLIENT_NAMES = frozenset({"AsyncMongoClient", "MongoClient", "AsyncDatabase", "AsyncCollection"})
# Where the composition root and the adapters live.
WIRING = ("billing_service.adapters", "billing_service.bootstrap")
# Modules that only call the processor port and must know no processor by name.
VENDOR_FREE = (
    "billing_service.entrypoints.webhooks",
    "billing_service.entrypoints.reconciler",
    "billing_service.service_layer.event_intake",
    "billing_service.service_layer.webhooks",
)
VENDORS = ("stripe", "paypal")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    def within(self, *prefixes: str) -> bool:
        return any(self.name == p or self.name.startswith(p + ".") for p in prefixes)

    def imports(self) -> Iterator[tuple[int, str]]:
        """(line, absolute module) of every import, the names imported from a package included."""
        package = self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    anchor = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{anchor}.{base}" if base else anchor
                yield node.lineno, base
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}"


def _modules() -> list[Module]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append(Module(name, path, ast.parse(path.read_text(), filename=str(path))))
    return found


MODULES = _modules()


def _ours(target: str, *prefixes: str) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def _violations(modules: list[Module], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{m.name}:{line} imports {target}"
        for m in modules
        for line, target in m.imports()
        if _ours(target, *forbidden)
    ]


def test_the_walk_sees_the_whole_package() -> None:
    names = {m.name for m in MODULES}
    assert {"billing_service.bootstrap", "billing_service.domain.money", "billing_service.service_layer.ports"} <= names
    assert len(MODULES) > 60


def test_domain_imports_only_the_standard_library_and_itself() -> None:
    bad = []
    for m in MODULES:
        if not m.within("billing_service.domain"):
            continue
        for line, target in m.imports():
            top = target.split(".")[0]
            if top == "billing_service":
                if not _ours(target, "billing_service.domain"):
                    bad.append(f"{m.name}:{line} imports {target}")
            elif top not in sys.stdlib_module_names and top != "__future__":
                bad.append(f"{m.name}:{line} imports {target}")
    assert bad == []


def test_service_layer_imports_no_adapters_entrypoints_or_observability() -> None:
    layer = [m for m in MODULES if m.within("billing_service.service_layer")]
    forbidden = (
        "billing_service.adapters",
        "billing_service.entrypoints",
        "billing_service.observability",
        "billing_service.bootstrap",
        "billing_service.__main__",
    )
    assert _violations(layer, forbidden) == []


def test_observability_stays_below_the_entrypoints_and_the_adapters() -> None:
    layer = [m for m in MODULES if m.within("billing_service.observability")]
    forbidden = ("billing_service.entrypoints", "billing_service.adapters", "billing_service.bootstrap")
    assert _violations(layer, forbidden) == []


def test_entrypoints_get_their_adapters_from_the_composition_root() -> None:
    layer = [m for m in MODULES if m.within("billing_service.entrypoints")]
    assert _violations(layer, ("billing_service.adapters",)) == []


def test_only_the_composition_root_builds_things_from_the_wiring() -> None:
    """bootstrap is imported by __main__ and the CLI subcommands only, never by what they run."""
    callers = {m.name for m in MODULES for _, target in m.imports() if _ours(target, "billing_service.bootstrap")}
    assert callers <= {
        "billing_service.__main__",
        "billing_service.entrypoints.webhooks.cli",
        "billing_service.entrypoints.events_cli",
    }


def test_vendor_sdks_and_the_database_driver_stay_in_the_adapters() -> None:
    bad = [
        f"{m.name}:{line} imports {target}"
        for m in MODULES
        if not m.within(*WIRING)
        for line, target in m.imports()
        if target.split(".")[0] in DRIVERS
    ]
    assert bad == []


def test_nothing_outside_the_adapters_and_bootstrap_touches_the_raw_database_client() -> None:
    bad = []
    for m in MODULES:
        if m.within(*WIRING):
            continue
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Attribute) and node.attr in {"database", "client"} | RAW_CLIENT_NAMES:
                if node.attr == "client" and not (
                    isinstance(node.value, ast.Attribute) and node.value.attr == "database"
                ):
                    continue  # other clients (HTTP, gRPC) are no business of this rule
                bad.append(f"{m.name}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Name) and node.id in RAW_CLIENT_NAMES:
                bad.append(f"{m.name}:{node.lineno} {node.id}")
    assert bad == []


def _docstrings(tree: ast.Module) -> set[int]:
    """Ids of the string constants that are docstrings (a vendor may be named in prose)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


@pytest.mark.parametrize("prefix", VENDOR_FREE)
def test_the_sidecar_backfill_and_reconciler_know_no_vendor(prefix: str) -> None:
    bad = []
    for m in MODULES:
        if not m.within(prefix):
            continue
        docstrings = _docstrings(m.tree)
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Name):
                text = node.id
            elif isinstance(node, ast.Attribute):
                text = node.attr
            elif isinstance(node, ast.alias):
                text = node.name
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
            else:
                continue
            if any(vendor in text.lower() for vendor in VENDORS):
                bad.append(f"{m.name}:{getattr(node, 'lineno', '?')} {text[:60]!r}")
    assert bad == []


def test_the_rules_catch_what_they_are_about() -> None:
    """The checks themselves: a module breaking each rule is reported."""
    source = (
        "import pymongo\n"
        "from billing_service.adapters.processors import stripe\n"
        "def f(store):\n"
        "    '''Stripe in prose is fine.'''\n"
        "    return store.database.client, 'paypal'\n"
    )
    fake = Module("billing_service.entrypoints.webhooks.bad", PACKAGE / "x.py", ast.parse(source))
    assert _violations([fake], ("billing_service.adapters",)) == [
        "billing_service.entrypoints.webhooks.bad:2 imports billing_service.adapters.processors",
        "billing_service.entrypoints.webhooks.bad:2 imports billing_service.adapters.processors.stripe",
    ]
    assert [t for _, t in fake.imports() if t.split(".")[0] in DRIVERS] == ["pymongo"]
    attrs = [n.attr for n in ast.walk(fake.tree) if isinstance(n, ast.Attribute)]
    assert {"database", "client"} <= set(attrs)
    strings = [
        n.value
        for n in ast.walk(fake.tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in _docstrings(fake.tree)
    ]
    assert strings == ["paypal"]
