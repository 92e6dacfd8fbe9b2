"""Processor events: a verified delivery, and what it means in our terms.

A processor tells us that something changed by sending an event (a webhook delivery, or
an entry of the event list it keeps). Its adapter verifies a delivery and reads its
envelope into a :class:`VerifiedEvent`, which the webhook inbox stores as sent; later it
translates the stored event into a :class:`ProcessorEvent`: which kind of our records it
is about and which ids find them. Everything vendor-specific happens in the adapter; the
sidecar, the backfill and the reconciler only see these types.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from billing_service.domain.disputes import ProcessorDisputeState

MAX_EVENT_ID = 255
MAX_EVENT_TYPE = 128
# Real Stripe and PayPal events nest about ten levels; anything far deeper is hostile.
MAX_DEPTH = 64
# Processor event ids and types are printable ASCII (evt_..., WH-..., payment_intent.succeeded).
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


class WebhookRefused(Exception):
    """A delivery the sidecar does not store (answered 400 without details)."""


class SignatureError(WebhookRefused):
    """The delivery is not provably from the processor (or its webhooks are not configured here)."""


class BadEvent(WebhookRefused):
    """A verified body that is not a usable event."""


@dataclass(frozen=True)
class VerifiedEvent:
    """An event provably from its processor: a delivery whose signature matched, or one we
    listed from the processor's API ourselves.

    Attributes:
        event_id: The processor's event id, unique per processor.
        type: The processor's event type (its own vocabulary).
        payload: The event as the processor sent it.

    Raises:
        BadEvent: The id or type is too long or not printable ASCII.
    """

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


class EventKind(StrEnum):
    """What happened, in our terms: which use case converges our records on it."""

    PAYMENT_CHANGED = "payment_changed"  # a payment's status or money moved
    PAYMENT_REFUNDED = "payment_refunded"  # money of a payment was refunded (refunds listed)
    REFUND_CHANGED = "refund_changed"  # a refund (ours, one made elsewhere, or a reversal)
    SUBSCRIPTION_CHANGED = "subscription_changed"  # a subscription or one of its invoices
    DISPUTE_CHANGED = "dispute_changed"  # a dispute was opened or advanced


@dataclass(frozen=True)
class ProcessorEvent:
    """A processor event translated into our terms.

    An event only says *that* something changed: the use cases find our record by these
    ids and re-fetch the object from the processor (``get_payment``, ``get_refund``,
    ``get_subscription``), except for disputes, whose facts come with the event.

    Attributes:
        kind: What happened.
        processor_id: The processor's id of the object to converge (payment, refund,
            subscription, dispute); "" when the event names none.
        our_id: Our id, when the processor echoed it back (metadata, custom id).
        refund_ids: For PAYMENT_REFUNDED, the processor's ids of the refunds it lists.
        dispute: For DISPUTE_CHANGED, the dispute as reported; None when the event holds
            nothing we could mirror.
    """

    kind: EventKind
    processor_id: str = ""
    our_id: str = ""
    refund_ids: tuple[str, ...] = ()
    dispute: ProcessorDisputeState | None = None
