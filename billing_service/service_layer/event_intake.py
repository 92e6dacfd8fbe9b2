"""Taking processor events in: storing verified ones once, and fetching the ones we missed.

Two ways in, one inbox: the webhook sidecar stores each delivery its processor's adapter
verified (:func:`record`), and a backfill (``webhooks backfill``, and the reconciler's
event feed) lists what each processor created since a time through the same adapter
(:func:`backfill_into`). Either way the inbox keeps the event once per (processor, event
id), as the processor sent it minus what must never be stored, and the sidecar's workers
process it later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from billing_service.domain.common import Processor
from billing_service.domain.processor_events import VerifiedEvent
from billing_service.service_layer.ports import Clock, PaymentProcessor, WebhookInbox
from billing_service.service_layer.reconcile import EventFeed

log = logging.getLogger("billing_service.webhooks")

BACKFILL_PAGE = 100

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


async def record(inbox: WebhookInbox, clock: Clock, processor: Processor, event: VerifiedEvent, body: bytes) -> bool:
    """Stores a verified delivery once; returns False for a duplicate delivery.

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


async def backfill_into(
    inbox: WebhookInbox,
    source: PaymentProcessor,
    since: datetime,
    *,
    now: Callable[[], datetime],
    page_size: int = BACKFILL_PAGE,
) -> tuple[int, int]:
    """Inserts every event ``source`` lists since ``since`` into the inbox (duplicates are skipped).

    Events come from the processor's own event list through its adapter (its credentials,
    base URL and retry policy), so they need no signature: we fetched them ourselves. The
    body stored is the event's JSON as the processor sent it: amounts stay integers or
    decimal strings, never floats (``json.dumps`` refuses anything it cannot write exactly).

    Returns:
        (inserted, seen).

    Raises:
        NotSupportedByProcessor: ``source`` keeps no event list.
    """
    processor = source.name
    inserted = seen = 0
    async for event in source.list_events(since, page_size=page_size):
        seen += 1
        body = scrub_payload(json.dumps(event.payload, separators=(",", ":")).encode())
        if await inbox.insert(processor, event.event_id, event.type, body, now=now()):
            inserted += 1
            log.info(
                "webhook backfilled: processor=%s event_id=%s type=%s", processor.value, event.event_id, event.type
            )
    return inserted, seen


def event_feed(sources: Mapping[Processor, PaymentProcessor], inbox: WebhookInbox, clock: Clock) -> EventFeed | None:
    """The reconciler's event feed: each source's events since a time, into the inbox.

    The sidecar's workers then process them like delivered webhooks, deduplicated by event
    id, which is how a dispute or a dashboard refund whose webhook was lost reaches us.

    Returns:
        The feed (it returns how many events were new), or None without sources.
    """
    if not sources:
        return None
    feeding = list(sources.values())

    async def feed(since: datetime) -> int:
        inserted = 0
        for source in feeding:
            added, _ = await backfill_into(inbox, source, since, now=clock.now)
            inserted += added
        return inserted

    return feed
