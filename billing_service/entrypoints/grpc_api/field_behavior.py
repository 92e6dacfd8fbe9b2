"""Request validation read from the schema's ``google.api.field_behavior`` annotations.

The rules of each request message are derived once from its descriptor, so the contract
and its enforcement cannot drift:

- ``REQUIRED`` fields must be set (a non-empty string, a non-zero number or enum, a
  present message, a non-empty list or map). A required field holding a resource (a
  message with a ``google.api.resource`` option) needs its ``IDENTIFIER`` field too.
  Every missing field is named in one ``INVALID_ARGUMENT`` with a ``BadRequest`` field
  violation each.
- ``OUTPUT_ONLY`` fields a caller sets are cleared before anything reads the request:
  ignored, not refused, as AIP-203 asks (and so they do not change the request's
  idempotency fingerprint either).
- ``update_mask`` paths may name only the resource's updatable fields: a path naming an
  ``IMMUTABLE``, ``OUTPUT_ONLY`` or ``IDENTIFIER`` field (or no field) is refused with
  ``INVALID_ARGUMENT``. (AIP-203 allows ignoring an unchanged immutable field instead; we
  refuse, so a caller learns at once that the field cannot change.) In an update, the
  resource's ``REQUIRED`` fields are required only when the mask names them: the others
  are not read (AIP-134).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, cast

from google.api import field_behavior_pb2, resource_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from billing_service.domain.errors import FieldViolation, InvalidArgument

REQUIRED: Final = field_behavior_pb2.REQUIRED
OUTPUT_ONLY: Final = field_behavior_pb2.OUTPUT_ONLY
IMMUTABLE: Final = field_behavior_pb2.IMMUTABLE
IDENTIFIER: Final = field_behavior_pb2.IDENTIFIER
_NOT_UPDATABLE: Final = frozenset({OUTPUT_ONLY, IMMUTABLE, IDENTIFIER})

# A message descriptor; protobuf's stubs type the pure-Python and upb ones apart.
Descriptor = Any


def behaviors(field: FieldDescriptor) -> frozenset[int]:
    """The field_behavior values annotated on ``field``."""
    return frozenset(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def is_resource(descriptor: Descriptor) -> bool:
    """True for a message annotated with ``google.api.resource``."""
    return bool(descriptor.GetOptions().HasExtension(resource_pb2.resource))


def identifier_field(descriptor: Descriptor) -> FieldDescriptor | None:
    """The resource's IDENTIFIER field, if it has one."""
    return next((f for f in descriptor.fields if IDENTIFIER in behaviors(f)), None)


def updatable_paths(resource: Descriptor) -> frozenset[str]:
    """The fields of ``resource`` an update_mask may name."""
    return frozenset(f.name for f in resource.fields if not behaviors(f) & _NOT_UPDATABLE)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _is_set(message: Message, field: FieldDescriptor) -> bool:
    if field.is_repeated:
        return len(getattr(message, field.name)) > 0
    if field.message_type is not None or field.has_presence:
        return message.HasField(field.name)
    return bool(getattr(message, field.name))


@dataclass(frozen=True)
class _Field:
    field: FieldDescriptor
    required: bool
    output_only: bool
    nested: _Rules | None  # rules of a singular or repeated sub-message
    required_identifier: FieldDescriptor | None  # set when a required field holds a resource


@dataclass(frozen=True)
class _Rules:
    fields: tuple[_Field, ...]


_CACHE: dict[str, _Rules] = {}


def _rules(descriptor: Descriptor) -> _Rules:
    cached = _CACHE.get(descriptor.full_name)
    if cached is not None:
        return cached
    _CACHE[descriptor.full_name] = _Rules(())  # a recursive message type stops here
    fields: list[_Field] = []
    for field in descriptor.fields:
        marks = behaviors(field)
        sub = field.message_type if field.message_type is not None and not _is_map(field) else None
        nested = _rules(sub) if sub is not None else None
        if nested is not None and not nested.fields:
            nested = None
        required = REQUIRED in marks
        ident = identifier_field(sub) if required and sub is not None and is_resource(sub) else None
        if required or OUTPUT_ONLY in marks or nested is not None or ident is not None:
            fields.append(_Field(field, required, OUTPUT_ONLY in marks, nested, ident))
    rules = _Rules(tuple(fields))
    _CACHE[descriptor.full_name] = rules
    return rules


def _walk(message: Message, rules: _Rules, prefix: str, violations: list[FieldViolation]) -> None:
    for spec in rules.fields:
        field = spec.field
        path = f"{prefix}{field.name}"
        if spec.output_only:
            message.ClearField(field.name)
            continue
        present = _is_set(message, field)
        if spec.required and not present:
            violations.append(FieldViolation(path, "is required"))
            continue
        if not present:
            continue
        value = getattr(message, field.name)
        if spec.required_identifier is not None and not getattr(value, spec.required_identifier.name):
            violations.append(FieldViolation(f"{path}.{spec.required_identifier.name}", "is required"))
        if spec.nested is not None:
            items: Iterable[Message] = value if field.is_repeated else [value]
            for i, item in enumerate(items):
                _walk(item, spec.nested, f"{path}[{i}]." if field.is_repeated else f"{path}.", violations)


def _mask_violations(request: Message) -> list[FieldViolation]:
    """Refuses update_mask paths that name fields the resource does not let callers change."""
    descriptor = request.DESCRIPTOR
    mask_field = descriptor.fields_by_name.get("update_mask")
    if mask_field is None or mask_field.message_type is None:
        return []
    if mask_field.message_type.full_name != "google.protobuf.FieldMask" or not request.HasField("update_mask"):
        return []
    resources = [f for f in descriptor.fields if f.message_type is not None and is_resource(f.message_type)]
    if len(resources) != 1:
        return []
    allowed = updatable_paths(resources[0].message_type)
    paths = cast(Any, request).update_mask.paths
    refused = sorted({p for p in paths if p not in allowed})
    if not refused:
        return []
    return [FieldViolation("update_mask", f"cannot update {', '.join(refused)}; allowed: {', '.join(sorted(allowed))}")]


def _outside_mask(request: Message, path: str) -> bool:
    """True for a path inside an update's resource that its update_mask does not name."""
    descriptor = request.DESCRIPTOR
    if "update_mask" not in descriptor.fields_by_name or not request.HasField("update_mask"):
        return False
    resources = [f for f in descriptor.fields if f.message_type is not None and is_resource(f.message_type)]
    if len(resources) != 1:
        return False
    head, _, rest = path.partition(".")
    if head != resources[0].name or not rest:
        return False
    ident = identifier_field(resources[0].message_type)
    name = rest.split(".", 1)[0].split("[", 1)[0]
    if ident is not None and name == ident.name:
        return False  # the resource's id is always needed
    paths = cast(Any, request).update_mask.paths
    return not any(p == name or p.startswith(name + ".") for p in paths)


def enforce(request: Message) -> None:
    """Applies the schema's field behaviours to ``request`` (in place).

    Clears OUTPUT_ONLY fields, then refuses missing REQUIRED fields and update_mask paths
    that name non-updatable fields.

    Raises:
        InvalidArgument: Naming every violated field in its BadRequest.
    """
    violations: list[FieldViolation] = []
    _walk(request, _rules(request.DESCRIPTOR), "", violations)
    violations = [v for v in violations if not _outside_mask(request, v.field)]
    violations.extend(_mask_violations(request))
    if violations:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgument(message, violations=violations)
