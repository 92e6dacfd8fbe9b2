"""The outbox documents of one commit: what ``MongoBillingStore.commit`` adds to its transaction.

For each change the store is about to write: its event resource type, id, the version and
document it writes, and its customer; then ``event_derivation.derive_events`` with the
commit's audit events, and one ``event_outbox`` document per event carrying the document
exactly as written (docs/EVENTS.md, "The outbox, written with the change").

Two facts are read before the transaction, both safe outside it:

- a refund's or dispute's customer is its payment's, which never changes (taken from the
  commit's own payment when it writes one, as most refund and dispute commits do);
- a bookkeeping update (``Update(bookkeeping=True)``) is checked against the stored
  document at the version it replaces: versions move on every write, so if the version
  still matches inside the transaction, it is that document; if not, the transaction
  fails its version check anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from pymongo.asynchronous.database import AsyncDatabase

from billing_service.adapters.mongo.budget import unavailable
from billing_service.adapters.mongo.event_log import RESOURCE_TYPE_OF, outbox_documents
from billing_service.domain.common import AuditEvent
from billing_service.domain.customers import Customer
from billing_service.domain.disputes import Dispute
from billing_service.domain.event_derivation import ChangedResource, derive_events
from billing_service.domain.ids import new_id
from billing_service.domain.payments import Payment, Refund
from billing_service.service_layer.ports import Change, Insert, Update

__all__ = ["BOOKKEEPING_FIELDS", "OutboxWriter"]

log = logging.getLogger(__name__)

Doc = dict[str, Any]

#: Stored fields no RPC returns: an update that changes only these (and the version) is
#: bookkeeping, with no audit event and no billing event.
BOOKKEEPING_FIELDS: Final = frozenset({"lookup_after", "version"})


def _without_bookkeeping(doc: Doc) -> Doc:
    return {k: v for k, v in doc.items() if k not in BOOKKEEPING_FIELDS}


def _same(stored: Doc, written: Doc) -> bool:
    # Stored dates come back at millisecond precision; compare what the store keeps.
    def norm(value: Any) -> Any:
        if isinstance(value, datetime):
            value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
            return value.replace(microsecond=value.microsecond // 1000 * 1000)
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return value

    return bool(norm(_without_bookkeeping(stored)) == norm(_without_bookkeeping(written)))


class OutboxWriter:
    """Derives a commit's outbox documents.

    Args:
        db: The store's database.

    Attributes:
        unaudited_changes: Changes committed without an audit event about them so far (each
            is logged as an error; the tests keep it at 0).
    """

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self._db = db
        self.unaudited_changes = 0

    async def documents(self, writes: Sequence[tuple[Change, str, Doc]], events: Sequence[AuditEvent]) -> list[Doc]:
        """The outbox documents of a commit (none for bookkeeping-only writes).

        Args:
            writes: (change, collection, document to write with its new version), in order.
            events: The commit's audit events.
        """
        payments = {c.entity.id: c.entity for c, _, _ in writes if isinstance(c.entity, Payment)}
        resources: list[ChangedResource] = []
        snapshots: list[Doc] = []
        for change, collection, doc in writes:
            entity = change.entity
            if isinstance(change, Update) and change.bookkeeping and await self._only_bookkeeping(collection, doc):
                continue
            resources.append(
                ChangedResource(
                    resource_type=RESOURCE_TYPE_OF[type(entity)],
                    resource_id=entity.id,
                    created=isinstance(change, Insert),
                    version=int(doc["version"]),
                    customer_id=await self._customer_of(entity, payments),
                )
            )
            snapshots.append(doc)
        derived = derive_events(resources, events, now=datetime.now(UTC))
        if derived.unaudited:
            self.unaudited_changes += len(derived.unaudited)
            log.error("committed change without an audit event", extra={"resource_ids": derived.unaudited})
        return outbox_documents(derived, snapshots, new_id("cmt"))

    async def _only_bookkeeping(self, collection: str, doc: Doc) -> bool:
        async with unavailable("bookkeeping check"):
            stored = await self._db[collection].find_one({"_id": doc["_id"], "version": doc["version"] - 1})
        if stored is None:
            return True  # the version check fails inside the transaction: nothing is written
        if _same(stored, doc):
            return True
        log.error("a bookkeeping update changes returned fields; it gets an event", extra={"resource_id": doc["_id"]})
        return False

    async def _customer_of(self, entity: Any, payments: dict[str, Payment]) -> str:
        if isinstance(entity, Customer):
            return entity.id
        if isinstance(entity, Refund | Dispute):
            payment = payments.get(entity.payment_id)
            if payment is not None:
                return payment.customer_id
            async with unavailable("event customer"):
                found = await self._db["payments"].find_one({"_id": entity.payment_id}, {"customer_id": 1})
            return str((found or {}).get("customer_id", ""))
        return str(getattr(entity, "customer_id", ""))
