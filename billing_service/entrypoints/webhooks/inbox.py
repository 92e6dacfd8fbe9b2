"""Receiving side of the inbox: what a verified delivery becomes before it is stored.

The HTTP handler verifies the signature on the raw body, parses just enough to know the
event's id and type (``ParsedEvent``), then :func:`record` inserts the raw body into the
inbox. Only then is the delivery acknowledged; workers process it later.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from billing_service.domain.common import Processor
from billing_service.service_layer.ports import Clock, WebhookInbox

log = logging.getLogger("billing_service.webhooks")

MAX_EVENT_ID = 255
MAX_EVENT_TYPE = 128
# Real Stripe and PayPal events nest about ten levels; anything far deeper is hostile.
MAX_DEPTH = 64
# Processor event ids and types are printable ASCII (evt_..., WH-..., payment_intent.succeeded).
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


class SignatureError(Exception):
    """The delivery is not provably from the processor (answered 400 without details)."""


class BadEvent(Exception):
    """A verified body that is not a usable event (answered 400 without details)."""


@dataclass(frozen=True)
class ParsedEvent:
    """The parts of a delivery the sidecar needs before storing it."""

    event_id: str
    type: str
    payload: dict[str, Any]

    def __post_init__(self) -> None:
        if len(self.event_id) > MAX_EVENT_ID or len(self.type) > MAX_EVENT_TYPE:
            raise BadEvent("event id or type too long")
        if not (_PRINTABLE.match(self.event_id) and _PRINTABLE.match(self.type)):
            raise BadEvent("event id or type is not printable ASCII")


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _deeper_than(value: object, limit: int) -> bool:
    """True when ``value`` nests containers more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values() if isinstance(child, dict | list))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
    return False


def load_json_object(body: bytes) -> dict[str, Any]:
    """Parses a verified body strictly: one UTF-8 JSON object of bounded depth.

    Raises:
        BadEvent: Not UTF-8 (or led by a BOM), not JSON (NaN and Infinity included),
            nested deeper than ``MAX_DEPTH`` (the parser's ``RecursionError`` too), or not
            an object.
    """
    try:
        payload: Any = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BadEvent("not JSON") from None
    if not isinstance(payload, dict):
        raise BadEvent("not a JSON object")
    if _deeper_than(payload, MAX_DEPTH):
        raise BadEvent("nested too deeply")
    return payload


# Fields a stored event must never keep: they let a browser finish a payment (PaymentIntent
# client secrets) and our handlers re-fetch the object from the processor anyway.
_SCRUBBED_KEYS = frozenset({"client_secret"})


def _scrub(value: object) -> object:
    if isinstance(value, dict):
        return {k: ("[scrubbed]" if k in _SCRUBBED_KEYS and v else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def scrub_payload(body: bytes) -> bytes:
    """The event as stored: verified JSON without secrets (the signature was checked on ``body``)."""
    return json.dumps(_scrub(json.loads(body)), separators=(",", ":")).encode()


async def record(inbox: WebhookInbox, clock: Clock, processor: Processor, event: ParsedEvent, body: bytes) -> bool:
    """Stores the raw event once; returns False for a duplicate delivery.

    The log line carries only the processor, the event id and type (never the body).
    """
    created = await inbox.insert(processor, event.event_id, event.type, scrub_payload(body), now=clock.now())
    log.info(
        "webhook %s: processor=%s event_id=%s type=%s",
        "received" if created else "duplicate",
        processor.value,
        event.event_id,
        event.type,
    )
    return created
