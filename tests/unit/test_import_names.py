"""Imports in ``billing_service`` use names that grep.

Three rules, checked over every module of the package:

1. No import alias shorter than ``MIN_ALIAS`` characters: ``pay.`` or ``su.`` cannot be
   searched for, ``payments.`` and ``subscriptions.`` can.
2. One module, one name: a module bound in several files is bound under the same name in
   each (``billing_service_pb2`` everywhere, not ``pb`` here and ``bpb`` there).
3. One alias, one module: an alias never means two modules in two files (``pb`` was the
   billing messages in one servicer and the subscription messages in the other).

Generated modules keep protoc's names (``billing_service_pb2``...): rule 2 holds the
package to that once they are imported that way.
"""

from __future__ import annotations

import ast
import importlib.util
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "billing_service"
MIN_ALIAS = 5

# Short aliases in modules other work owns at the time of writing; remove an entry when its
# module is tidied. Keyed by (path from the repository root, alias). None left.
PENDING: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Binding:
    """One import statement's binding of a name."""

    path: str
    line: int
    target: str  # the module or attribute imported, dotted
    name: str  # the local name it is bound to
    aliased: bool
    is_module: bool

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _is_module(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError):  # a parent that is not a package, an optional extra
        return False


def _resolve(module: str | None, level: int, path: str) -> str:
    if not level:
        return module or ""
    parts = Path(path).with_suffix("").parts[:-level]
    return ".".join([*parts, *([module] if module else [])])


def bindings(path: str, source: str, *, module_check: bool = True) -> list[Binding]:
    """Every name ``source`` (the module at ``path``) binds by an import."""
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.asname or alias.name  # ``import a.b`` is used as ``a.b``
                found.append(Binding(path, node.lineno, alias.name, name, bool(alias.asname), True))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, path)
            for alias in node.names:
                if alias.name == "*":
                    continue
                target = f"{base}.{alias.name}"
                is_module = _is_module(target) if module_check else alias.name.islower()
                aliased = alias.asname is not None and alias.asname != alias.name
                found.append(Binding(path, node.lineno, target, alias.asname or alias.name, aliased, is_module))
    return found


def problems(found: list[Binding], pending: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """What breaks the three rules in ``found``, one line per problem."""
    checked = [b for b in found if (b.path, b.name) not in pending]
    out = [
        f"{b.where()}: '{b.target}' imported as '{b.name}': aliases need {MIN_ALIAS}+ characters"
        for b in checked
        if b.aliased and len(b.name) < MIN_ALIAS
    ]
    names_of: dict[str, dict[str, list[Binding]]] = defaultdict(lambda: defaultdict(list))
    modules_of: dict[str, dict[str, list[Binding]]] = defaultdict(lambda: defaultdict(list))
    for b in checked:
        if b.is_module:
            names_of[b.target][b.name].append(b)
            if b.aliased:
                modules_of[b.name][b.target].append(b)
    for target, names in sorted(names_of.items()):
        if len(names) > 1:
            seen = "; ".join(f"'{name}' at {uses[0].where()}" for name, uses in sorted(names.items()))
            out.append(f"module '{target}' has {len(names)} names in the package: {seen}")
    for name, targets in sorted(modules_of.items()):
        if len(targets) > 1:
            seen = "; ".join(f"'{target}' at {uses[0].where()}" for target, uses in sorted(targets.items()))
            out.append(f"alias '{name}' means {len(targets)} modules: {seen}")
    return out


def _package_bindings() -> list[Binding]:
    found = []
    for file in sorted(PACKAGE.rglob("*.py")):
        path = file.relative_to(ROOT).as_posix()
        found += bindings(path, file.read_text(encoding="utf-8"))
    return found


def test_the_package_imports_names_that_grep() -> None:
    found = _package_bindings()
    assert len(found) > 500  # the walk really read the package
    assert problems(found, PENDING) == []


def test_the_rules_catch_what_they_are_for() -> None:
    servicer = (
        "from billing.v1 import billing_service_pb2 as pb\n"
        "from billing_service.service_layer import payments as pay\n"
        "from billing_service.service_layer import disputes\n"
    )
    other = (
        "from billing.v1 import subscription_service_pb2 as pb\n"
        "from billing.v1 import billing_service_pb2\n"
        "from billing_service.service_layer import disputes as dispute_cases\n"
        "import logging\n"
    )
    found = bindings("pkg/a.py", servicer, module_check=False) + bindings("pkg/b.py", other, module_check=False)
    assert problems(found) == [
        "pkg/a.py:1: 'billing.v1.billing_service_pb2' imported as 'pb': aliases need 5+ characters",
        "pkg/a.py:2: 'billing_service.service_layer.payments' imported as 'pay': aliases need 5+ characters",
        "pkg/b.py:1: 'billing.v1.subscription_service_pb2' imported as 'pb': aliases need 5+ characters",
        "module 'billing.v1.billing_service_pb2' has 2 names in the package: "
        "'billing_service_pb2' at pkg/b.py:2; 'pb' at pkg/a.py:1",
        "module 'billing_service.service_layer.disputes' has 2 names in the package: "
        "'dispute_cases' at pkg/b.py:3; 'disputes' at pkg/a.py:3",
        "alias 'pb' means 2 modules: 'billing.v1.billing_service_pb2' at pkg/a.py:1; "
        "'billing.v1.subscription_service_pb2' at pkg/b.py:1",
    ]
    assert problems(found, frozenset({("pkg/a.py", "pb"), ("pkg/b.py", "pb"), ("pkg/a.py", "pay")})) == [
        "module 'billing_service.service_layer.disputes' has 2 names in the package: "
        "'dispute_cases' at pkg/b.py:3; 'disputes' at pkg/a.py:3",
    ]
