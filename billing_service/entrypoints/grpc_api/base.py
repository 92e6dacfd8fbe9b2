"""What the runner and the interceptors share: request digests and the strings a request carries."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message

from billing_service.domain.card_data import contains_card_number

if TYPE_CHECKING:
    Ctx = grpc.aio.ServicerContext[Any, Any]
else:
    Ctx = grpc.aio.ServicerContext

M = TypeVar("M", bound=Message)


def fingerprint(request: Message) -> str:
    """Digest of the request without its request_id (what makes two requests 'the same')."""
    clone = type(request)()
    clone.CopyFrom(request)
    clone.ClearField("request_id")  # type: ignore[arg-type]
    return hashlib.sha256(clone.SerializeToString(deterministic=True)).hexdigest()


def string_fields(message: Message, prefix: str = "") -> list[tuple[str, str]]:
    """Every string in ``message`` (nested messages and maps included) with its field path."""
    out: list[tuple[str, str]] = []
    for desc, value in message.ListFields():
        path = f"{prefix}{desc.name}"
        if path == "request_id":
            continue  # checked whole by validate_request_id (a UUID's digit groups are not a card)
        if desc.message_type is not None and desc.message_type.GetOptions().map_entry:
            for key, item in value.items():
                name = str(key)
                # A field path must never echo card data back: a suspicious key is named by its map.
                entry = f"{path}[{name}]" if len(name) < 64 and not contains_card_number(name) else path
                out.append((path, name))
                if isinstance(item, str):
                    out.append((entry, item))
        elif desc.type == desc.TYPE_STRING:
            values = value if desc.is_repeated else [value]
            out.extend((path, v) for v in values)
        elif desc.type == desc.TYPE_MESSAGE:
            items = value if desc.is_repeated else [value]
            for item in items:
                out.extend(string_fields(item, f"{path}."))
    return out


# String fields that hold a secret for the caller alone: a payment's ``client_secret`` and a
# push endpoint's signing ``secret`` (CreateEventEndpoint, RotateEventEndpointSecret).
_SECRET_FIELDS = frozenset({"client_secret", "secret"})


def without_client_secrets(message: M) -> M:
    """A copy of ``message`` with every ``client_secret`` and ``secret`` cleared (what may be stored)."""
    clone = type(message)()
    clone.CopyFrom(message)
    _clear_client_secrets(clone)
    return clone


def _clear_client_secrets(message: Message) -> None:
    for desc, value in message.ListFields():
        if desc.message_type is None:
            if desc.name in _SECRET_FIELDS:
                message.ClearField(desc.name)  # type: ignore[arg-type]
        elif not desc.message_type.GetOptions().map_entry:
            for item in value if desc.is_repeated else [value]:
                _clear_client_secrets(item)
