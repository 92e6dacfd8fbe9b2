"""Event cursors: a position in one event log, ``<number as 16 hex digits>-<log id>``.

Encoded and checked here only. Fixed width makes a later position compare greater as a
string; the log id makes a cursor from another deployment (or from a log that was reset)
fail with ``INVALID_EVENT_CURSOR`` instead of silently meaning another position. Cursors
are not signed: a forged one only selects events the caller may read anyway.
"""

from __future__ import annotations

import re
from typing import Final

from billing_service.domain.event_errors import InvalidEventCursor

__all__ = ["LOG_ID_ALPHABET", "LOG_ID_LENGTH", "decode_cursor", "encode_cursor"]

LOG_ID_ALPHABET: Final = "0123456789abcdefghjkmnpqrstvwxyz"
LOG_ID_LENGTH: Final = 8
_CURSOR = re.compile(r"^([0-9a-f]{16})-([0-9a-hjkmnp-tv-z]{8})$")
_MAX: Final = 2**63 - 1


def encode_cursor(seq: int, log_id: str) -> str:
    """The cursor of position ``seq`` (0 = before the first event) in log ``log_id``."""
    if not 0 <= seq <= _MAX:
        raise ValueError(f"position out of range: {seq}")
    return f"{seq:016x}-{log_id}"


def decode_cursor(cursor: str, log_id: str, field_path: str) -> int:
    """The position a cursor names.

    Args:
        cursor: As a client sent it.
        log_id: This deployment's log id.
        field_path: The request field, for the error.

    Raises:
        InvalidEventCursor: Malformed, or issued by another log.
    """
    match = _CURSOR.match(cursor) if len(cursor) <= 32 else None
    if match is None:
        raise InvalidEventCursor.field(field_path, "is not an event cursor (BillingEvent.cursor or Heartbeat.cursor)")
    if match.group(2) != log_id:
        raise InvalidEventCursor.field(field_path, "was issued by another event log (another deployment, or a reset)")
    seq = int(match.group(1), 16)
    if seq > _MAX:
        raise InvalidEventCursor.field(field_path, "is out of range")
    return seq
