"""Resource identifiers: a type prefix plus a time-ordered random part (ULID layout)."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """Returns ``<prefix>_<26 chars>``: 48 bits of milliseconds then 80 random bits.

    Ids sort by creation time, which keeps list pagination and index locality cheap.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return f"{prefix}_{''.join(reversed(chars))}"
