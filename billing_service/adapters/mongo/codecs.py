"""Generic codec between domain dataclasses and BSON documents.

The mapping is derived from each dataclass's type hints once and cached, so adding a
field to a domain entity needs no change here. Rules:

* ``id`` is stored as ``_id``; every other field keeps its name.
* ``Money`` is ``{"amount_minor": int, "currency": str}``; amounts stay ints, never floats.
* ``StrEnum`` members are stored as their value.
* ``datetime`` stays a BSON date (UTC; Mongo keeps milliseconds only).
* Nested dataclasses become sub-documents; ``X | None``, ``list[X]`` and ``dict[str, X]``
  are handled recursively.

Fields missing from a stored document fall back to the dataclass default, so documents
written before a field existed still load; unknown keys are ignored. A field declared
with ``metadata={"stored": False}`` (a client secret) is never written and always loads
as its default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar, cast

from billing_service.domain.money import Money

__all__ = ["CodecError", "decode", "encode", "encode_filter_value", "field_to_key"]

T = TypeVar("T")

_Encoder = Callable[[Any], Any]
_Decoder = Callable[[Any], Any]


class CodecError(TypeError):
    """A value or a type hint the codec cannot map (a programming error, not bad input)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldCodec:
    name: str
    key: str
    encode: _Encoder
    decode: _Decoder
    has_default: bool
    stored: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class _ClassCodec:
    cls: type[Any]
    fields: tuple[_FieldCodec, ...]
    by_name: Mapping[str, _FieldCodec]


_CACHE: dict[type[Any], _ClassCodec] = {}


def field_to_key(name: str) -> str:
    """Returns the document key of a domain attribute name (``id`` -> ``_id``)."""
    return "_id" if name == "id" else name


def _identity(value: Any) -> Any:
    return value


def _encode_money(value: Money) -> dict[str, Any]:
    return {"amount_minor": value.amount_minor, "currency": value.currency}


def _decode_money(doc: Mapping[str, Any]) -> Money:
    return Money(_to_int(doc["amount_minor"]), doc["currency"])


def _to_int(value: Any) -> int:
    # BSON int64 loads as bson.Int64 (an int subclass); the domain wants plain ints. A float
    # or a bool here means something wrote the field outside this codec: refuse it loudly.
    if not isinstance(value, int) or isinstance(value, bool):
        raise CodecError(f"expected an integer, got {type(value).__name__}")
    return int(value)


def _decode_datetime(value: datetime) -> datetime:
    # Clients are tz_aware, but normalise anyway so equality and tzinfo are exact.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _scalar(expected: type[Any]) -> _Decoder:
    def check(value: Any) -> Any:
        # bool is an int subclass: a stored True must not load as an int field, and vice versa.
        if type(value) is not expected:
            raise CodecError(f"expected {expected.__name__}, got {type(value).__name__}")
        return value

    return check


def _codecs_for(hint: Any) -> tuple[_Encoder, _Decoder]:
    """Builds (encode, decode) for one resolved type hint."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise CodecError(f"only X | None unions are supported, got {hint!r}")
        inner_enc, inner_dec = _codecs_for(args[0])
        return (
            lambda v: None if v is None else inner_enc(v),
            lambda v: None if v is None else inner_dec(v),
        )
    if origin is list:
        (item,) = typing.get_args(hint)
        item_enc, item_dec = _codecs_for(item)
        return (lambda v: [item_enc(x) for x in v], lambda v: [item_dec(x) for x in v])
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if key_type is not str:
            raise CodecError(f"dict keys must be str, got {hint!r}")
        val_enc, val_dec = _codecs_for(value_type)
        return (
            lambda v: {str(k): val_enc(x) for k, x in v.items()},
            lambda v: {k: val_dec(x) for k, x in v.items()},
        )
    if hint is Money:
        return _encode_money, _decode_money
    if isinstance(hint, type) and issubclass(hint, Enum):
        enum_cls = hint
        # enum_cls(v) also accepts the raw value (filters pass plain strings) and rejects typos.
        return (lambda v: enum_cls(v).value, enum_cls)
    if hint is datetime:
        return _identity, _decode_datetime
    if hint is bool:
        return _identity, _scalar(bool)
    if hint is int:
        return _identity, _to_int
    if hint is str:
        return _identity, _scalar(str)
    if hint is bytes:
        return _identity, bytes
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        nested = hint
        return (encode, lambda v: decode(nested, v))
    raise CodecError(f"no codec for type hint {hint!r}")


def _class_codec(cls: type[Any]) -> _ClassCodec:
    cached = _CACHE.get(cls)
    if cached is not None:
        return cached
    if not dataclasses.is_dataclass(cls):
        raise CodecError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    built: list[_FieldCodec] = []
    for f in dataclasses.fields(cls):
        enc, dec = _codecs_for(hints[f.name])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        stored = f.metadata.get("stored", True) is not False
        if not stored and not has_default:
            raise CodecError(f"{cls.__name__}.{f.name} is never stored, so it needs a default")
        built.append(_FieldCodec(f.name, field_to_key(f.name), enc, dec, has_default, stored))
    codec = _ClassCodec(cls, tuple(built), {fc.name: fc for fc in built})
    _CACHE[cls] = codec
    return codec


def encode(obj: Any) -> dict[str, Any]:
    """Converts a domain dataclass instance to a BSON-ready document."""
    if isinstance(obj, Money):
        return _encode_money(obj)
    codec = _class_codec(type(obj))
    return {fc.key: fc.encode(getattr(obj, fc.name)) for fc in codec.fields if fc.stored}


def decode(cls: type[T], doc: Mapping[str, Any]) -> T:
    """Builds a ``cls`` instance from a stored document.

    Raises:
        CodecError: A required field is missing or a value has the wrong type.
    """
    if cls is Money:
        return cast(T, _decode_money(doc))
    codec = _class_codec(cls)
    kwargs: dict[str, Any] = {}
    for fc in codec.fields:
        if fc.key in doc and fc.stored:
            kwargs[fc.name] = fc.decode(doc[fc.key])
        elif not fc.has_default:
            raise CodecError(f"{cls.__name__} document {doc.get('_id')!r} lacks required field {fc.key!r}")
    return cls(**kwargs)


def encode_filter_value(cls: type[Any], name: str, value: Any) -> tuple[str, Any]:
    """Translates one equality filter on a domain attribute into (document key, BSON value).

    ``name`` may be a dotted path (``amount.currency``); only its first segment is checked
    against the class and the value is then passed through with enums flattened.

    Raises:
        CodecError: ``name`` is not a field of ``cls``.
    """
    codec = _class_codec(cls)
    head, _, rest = name.partition(".")
    fc = codec.by_name.get(head)
    if fc is None:
        raise CodecError(f"{cls.__name__} has no field {head!r}")
    if rest:
        return f"{fc.key}.{rest}", value.value if isinstance(value, Enum) else value
    return fc.key, fc.encode(value)
