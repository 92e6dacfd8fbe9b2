"""Opaque, signed page tokens (AIP-158).

A token carries the store cursor and a digest of the list's filters and scope (the
method and the caller, set by the entrypoint with :func:`token_scope`), signed with a
secret shared by all replicas. A token we did not issue, or one used on another list, by
another caller or with other filters, is refused with INVALID_ARGUMENT/INVALID_PAGE_TOKEN
instead of silently listing something else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from billing_service.domain.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def page_size(requested: int) -> int:
    """Returns the effective page size (0 means the default; larger is capped)."""
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


_scope: ContextVar[str] = ContextVar("page_token_scope", default="")


@contextmanager
def token_scope(method: str, caller: str) -> Iterator[None]:
    """Binds the page tokens issued and accepted inside the block to one list and one caller.

    Args:
        method: The list's full method name (``/billing.v1.BillingService/ListPayments``).
        caller: The authenticated caller.
    """
    token = _scope.set(f"{method}\x1f{caller}")
    try:
        yield
    finally:
        _scope.reset(token)


def _filters_digest(filters: Mapping[str, object]) -> str:
    blob = json.dumps({"filters": {k: str(v) for k, v in filters.items()}, "scope": _scope.get()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode_token(cursor: str, filters: Mapping[str, object], secret: bytes) -> str:
    """Builds the token for the page after ``cursor``; empty cursor gives an empty token."""
    if not cursor:
        return ""
    body = json.dumps({"c": cursor, "f": _filters_digest(filters)}, separators=(",", ":")).encode()
    mac = hmac.new(secret, body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")


def decode_token(token: str, filters: Mapping[str, object], secret: bytes) -> str | None:
    """Returns the cursor inside ``token`` (None for the first page).

    Raises:
        InvalidArgument: The token was not issued by us, or for another list, caller or
            filters.
    """
    if not token:
        return None
    bad = InvalidArgument.field("page_token", "is not a page token issued for this list", reason="INVALID_PAGE_TOKEN")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        raise bad from None
    mac, body = raw[:16], raw[16:]
    if len(token) > 1024 or not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()[:16]):
        raise bad
    data = json.loads(body)
    if data.get("f") != _filters_digest(filters):
        raise InvalidArgument.field(
            "page_token", "was issued for another list, another caller or other filters", reason="INVALID_PAGE_TOKEN"
        )
    cursor = data.get("c")
    if not isinstance(cursor, str):
        raise bad
    return cursor
