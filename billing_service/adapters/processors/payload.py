"""Lenient readers of event payloads: a missing or oddly shaped field reads as absent.

Stored events are verified JSON, but nothing guarantees every field a translation looks
at is there; a missing id then simply finds no record of ours (ORPHAN), it never raises.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


def dig(obj: Any, *path: str | int) -> Any:
    """Reads a nested field, or None when any step is missing or of the wrong shape."""
    for step in path:
        if isinstance(step, int):
            obj = obj[step] if isinstance(obj, list) and -len(obj) <= step < len(obj) else None
        else:
            obj = obj.get(step) if isinstance(obj, dict) else None
        if obj is None:
            return None
    return obj


def text(obj: Any, *path: str | int) -> str:
    """A nested string field, or "" (an expanded object yields its ``id``)."""
    value = dig(obj, *path)
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


def section(obj: Any, *path: str | int) -> Json:
    """A nested object, or {} when it is missing or not an object."""
    value = dig(obj, *path)
    return value if isinstance(value, dict) else {}
