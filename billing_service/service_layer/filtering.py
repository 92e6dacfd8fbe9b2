"""List filters: a strict parser for the small AIP-160 subset the list RPCs accept.

Grammar (whitespace between tokens is free)::

    filter     = comparison { "AND" comparison }
    comparison = field operator value
    operator   = "=" | "<" | "<=" | ">" | ">="
    value      = quoted string | bare word (letters, digits and _ - .)

Each list names the fields it can be filtered by (:class:`FilterSpec`): ids and statuses
accept ``=`` only, ``create_time`` accepts the four ordering operators with an RFC 3339
timestamp in double quotes. Anything else (OR, NOT, parentheses, ``!=``, ``:``, an
unknown field, a repeated equality) is refused with ``INVALID_ARGUMENT`` and reason
``INVALID_FILTER`` before the store is touched; error messages name positions and fields,
never echo values. The result is a plain filter mapping for the store, so it is bound into
the page token like every other filter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final

from billing_service.domain.errors import InvalidArgument
from billing_service.service_layer.ports import Between

INVALID_FILTER: Final = "INVALID_FILTER"
MAX_FILTER_LENGTH: Final = 1024
MAX_COMPARISONS: Final = 10
MAX_VALUE_LENGTH: Final = 320

_ORDERING: Final = frozenset({"<", "<=", ">", ">="})
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<op><=|>=|!=|=|<|>|:)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)
      | (?P<paren>[()])
    )""",
    re.VERBOSE,
)


def _refuse(description: str) -> InvalidArgument:
    return InvalidArgument.field("filter", description, reason=INVALID_FILTER)


@dataclass(frozen=True)
class FilterField:
    """One field a list can be filtered by.

    Attributes:
        attribute: The domain attribute the store filters on.
        enum: For a status field, the domain enum (matched by member name).
        enum_prefix: The API's enum value prefix, also accepted (``PAYMENT_STATUS_``).
        time: A creation-time field (ordering operators, RFC 3339 values).
    """

    attribute: str
    enum: type[Enum] | None = None
    enum_prefix: str = ""
    time: bool = False


@dataclass(frozen=True)
class FilterSpec:
    """The fields one list accepts, by their API (proto) names."""

    fields: Mapping[str, FilterField] = field(default_factory=dict)

    def describe(self) -> str:
        """The accepted field names, for error messages."""
        return ", ".join(sorted(self.fields)) or "none"


def created(attribute: str = "created_at") -> FilterField:
    """The ``create_time`` field of a list."""
    return FilterField(attribute, time=True)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    position: int


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    position = 0
    while position < len(text):
        if text[position:].isspace():
            break
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            start = position + (len(text[position:]) - len(text[position:].lstrip()))
            raise _refuse(f"unexpected character at position {start + 1}")
        kind = match.lastgroup
        out.append(_Token(kind, match.group(kind), match.start(kind) + 1))
        position = match.end()
    return out


def _unquote(token: _Token) -> str:
    body = token.text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _parse_time(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _refuse(f'{name} needs an RFC 3339 timestamp such as "2026-01-01T00:00:00Z"') from None
    if parsed.tzinfo is None or "T" not in value.upper():
        raise _refuse(f'{name} needs an RFC 3339 timestamp with a time zone, such as "2026-01-01T00:00:00Z"')
    return parsed.astimezone(UTC)


def _enum_value(spec: FilterField, value: str, name: str) -> str:
    assert spec.enum is not None
    member = value.upper()
    if spec.enum_prefix and member.startswith(spec.enum_prefix):
        member = member[len(spec.enum_prefix) :]
    found = spec.enum.__members__.get(member)
    if found is None or member == "UNSPECIFIED":
        names = ", ".join(sorted(spec.enum.__members__))
        raise _refuse(f"{name} must be one of {names}")
    return str(found.value)


def _narrow(current: Between | None, operator: str, bound: datetime) -> Between:
    """Intersects a time window with one more ordering comparison."""
    window = current or Between()
    if operator in (">", ">="):
        inclusive = operator == ">="
        if window.lower is None or bound > window.lower or (bound == window.lower and not inclusive):
            return Between(bound, window.upper, inclusive, window.upper_inclusive)
        return window
    inclusive = operator == "<="
    if window.upper is None or bound < window.upper or (bound == window.upper and not inclusive):
        return Between(window.lower, bound, window.lower_inclusive, inclusive)
    return window


def parse_filter(text: str, spec: FilterSpec) -> dict[str, Any]:
    """Parses ``text`` into store filters (attribute -> value or :class:`Between`).

    Raises:
        InvalidArgument: Reason ``INVALID_FILTER``, naming what is wrong.
    """
    if not text.strip():
        return {}
    if len(text) > MAX_FILTER_LENGTH:
        raise _refuse(f"must be at most {MAX_FILTER_LENGTH} characters")
    tokens = _tokens(text)
    out: dict[str, Any] = {}
    index = 0
    comparisons = 0
    while True:
        if index + 3 > len(tokens):
            raise _refuse("ends early: each comparison is `field operator value`")
        name_tok, op_tok, value_tok = tokens[index : index + 3]
        if name_tok.kind != "word" or name_tok.text in ("AND", "OR", "NOT"):
            raise _refuse(f"expected a field name at position {name_tok.position}")
        name = name_tok.text
        fspec = spec.fields.get(name)
        if fspec is None:
            # The name is not echoed: whatever a caller typed stays out of errors and logs.
            raise _refuse(f"cannot filter on the field at position {name_tok.position}; fields: {spec.describe()}")
        if op_tok.kind != "op":
            raise _refuse(f"expected an operator after {name} at position {op_tok.position}")
        operator = op_tok.text
        if value_tok.kind == "string":
            value = _unquote(value_tok)
        elif value_tok.kind == "word" and value_tok.text not in ("AND", "OR", "NOT"):
            value = value_tok.text
        else:
            raise _refuse(f"expected a value after {name} {operator} at position {value_tok.position}")
        if fspec.time:
            if operator not in _ORDERING:
                raise _refuse(f"{name} accepts <, <=, > and >=")
            if value_tok.kind != "string":
                raise _refuse(f'{name} needs a quoted timestamp such as "2026-01-01T00:00:00Z"')
            current = out.get(fspec.attribute)
            bound = _parse_time(value, name)
            out[fspec.attribute] = _narrow(current if isinstance(current, Between) else None, operator, bound)
        else:
            if operator != "=":
                raise _refuse(f"{name} accepts only =")
            if fspec.attribute in out:
                raise _refuse(f"{name} is compared more than once")
            if fspec.enum is not None:
                out[fspec.attribute] = _enum_value(fspec, value, name)
            elif not value or len(value) > MAX_VALUE_LENGTH:
                raise _refuse(f"{name} needs a value of 1 to {MAX_VALUE_LENGTH} characters")
            else:
                out[fspec.attribute] = value  # always a str: compared for equality, never interpreted
        comparisons += 1
        index += 3
        if index == len(tokens):
            break
        joiner = tokens[index]
        if joiner.kind != "word" or joiner.text != "AND":
            what = "OR, NOT and parentheses are not supported" if joiner.text in ("OR", "NOT", "(", ")") else ""
            raise _refuse(what or f"expected AND at position {joiner.position}")
        index += 1
        if comparisons >= MAX_COMPARISONS:
            raise _refuse(f"may combine at most {MAX_COMPARISONS} comparisons")
    return out


def merge_filters(base: Mapping[str, Any], text: str, spec: FilterSpec) -> dict[str, Any]:
    """Adds the parsed ``text`` to the filters a list already has from its request fields.

    Raises:
        InvalidArgument: The filter is invalid, or names a field the request also sets to
            another value (reason ``INVALID_FILTER``).
    """
    merged = dict(base)
    for attribute, value in parse_filter(text, spec).items():
        if attribute in merged and merged[attribute] != value:
            name = next(n for n, f in spec.fields.items() if f.attribute == attribute)
            raise _refuse(f"{name} contradicts the request's own {name} field")
        merged[attribute] = value
    return merged
