"""``MongoBillingStore``: the ``BillingStore`` port over PyMongo's async API.

Every state change and its audit events are written in one multi-document transaction,
with optimistic concurrency on each document's ``version``. Any driver failure is turned
into ``StoreUnavailable`` here, so no PyMongo type crosses the port.

Operations run inside :meth:`MongoBillingStore.deadline` are bounded by the caller's
budget with the driver's client-side operation timeout (``pymongo.timeout``), so a dead
store fails them with ``StoreUnavailable`` in time instead of after the driver's 5 s
server selection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC
from typing import Any, Final

from bson import Binary
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from billing_service.adapters.mongo.budget import budget, time_limit, unavailable
from billing_service.adapters.mongo.codecs import decode, encode, encode_filter_value
from billing_service.adapters.mongo.event_consumers import MongoEventConsumers
from billing_service.adapters.mongo.event_log import OUTBOX, MongoEventLog
from billing_service.adapters.mongo.idempotency import (
    FENCES,
    IDEMPOTENCY,
    MongoIdempotencyRecords,
    fence_write,
    idempotency_key,
)
from billing_service.adapters.mongo.outbox import OutboxWriter
from billing_service.adapters.mongo.writes import Write, apply_writes, in_transaction, supports_bulk_write
from billing_service.domain.common import AuditEvent
from billing_service.domain.customers import Customer, PaymentMethod
from billing_service.domain.disputes import Dispute
from billing_service.domain.errors import ConcurrencyConflict, StoreUnavailable
from billing_service.domain.payments import Payment, Refund
from billing_service.domain.subscriptions import Invoice, Plan, Subscription
from billing_service.service_layer.ports import (
    E2,
    Between,
    Change,
    E,
    Fence,
    Insert,
    Page,
)

__all__ = ["COLLECTIONS", "MongoBillingStore", "idempotency_key"]

log = logging.getLogger(__name__)

Doc = dict[str, Any]

#: One collection per entity class.
COLLECTIONS: Final[Mapping[type[Any], str]] = {
    Customer: "customers",
    PaymentMethod: "payment_methods",
    Payment: "payments",
    Refund: "refunds",
    Plan: "plans",
    Subscription: "subscriptions",
    Invoice: "invoices",
    Dispute: "disputes",
    AuditEvent: "audit_events",
}
_META = "meta"
# The fields ``get_pair`` joins the second entity by (removed before decoding).
_PAIR_KEY = "__pair_id"
_PAIR = "__pair"
_PAGE_SECRET_ID = "page_token_secret"  # noqa: S105 - a document id, not a secret

_WRITE_CONFLICT = 112

_NON_EMPTY = {"processor_id": {"$gt": ""}}
# processor_id leads (it is the selective key). Besides, SecantusDB 0.7.0b3 answers a query
# on a partial index's non-leading key alone ({"processor_id": x} with (processor,
# processor_id)) from that index and misses every document; with processor_id leading,
# every equality query that can use the partial index uses its prefix.
_BY_PROCESSOR_ID = [("processor_id", ASCENDING), ("processor", ASCENDING)]

_INDEXES: Final[Mapping[str, list[IndexModel]]] = {
    "customers": [IndexModel([("email", ASCENDING)], name="email")],
    "payment_methods": [IndexModel([("customer_id", ASCENDING)], name="customer_id")],
    "plans": [IndexModel([("status", ASCENDING), ("_id", DESCENDING)], name="status__id")],
    "payments": [
        IndexModel([("customer_id", ASCENDING), ("_id", DESCENDING)], name="customer_id__id"),
        IndexModel(
            [("customer_id", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)], name="customer_status__id"
        ),
        IndexModel([("status", ASCENDING), ("_id", DESCENDING)], name="status__id"),
        IndexModel(
            _BY_PROCESSOR_ID,
            name="processor_id",
            partialFilterExpression=_NON_EMPTY,
        ),
        # Reconciliation's "due for a lookup by our id" query (almost always empty).
        IndexModel([("lookup_after", ASCENDING)], name="lookup_after"),
    ],
    "refunds": [
        IndexModel([("payment_id", ASCENDING)], name="payment_id"),
        IndexModel([("status", ASCENDING), ("_id", DESCENDING)], name="status__id"),
        IndexModel([("lookup_after", ASCENDING)], name="lookup_after"),
        # One record per processor refund, even when a refund made outside the service is
        # mirrored from two events (refund.created and charge.refunded) at once.
        IndexModel(_BY_PROCESSOR_ID, name="processor_id_unique", unique=True, partialFilterExpression=_NON_EMPTY),
    ],
    "subscriptions": [
        IndexModel([("customer_id", ASCENDING)], name="customer_id"),
        # List filters (status alone, or customer and status), newest first.
        IndexModel([("status", ASCENDING), ("_id", DESCENDING)], name="status__id"),
        IndexModel(
            [("customer_id", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)], name="customer_status__id"
        ),
        IndexModel(
            _BY_PROCESSOR_ID,
            name="processor_id",
            partialFilterExpression=_NON_EMPTY,
        ),
        # Reconciliation's sweeps: by status (rotating slice), and renewals due by status.
        IndexModel([("status", ASCENDING), ("_id", DESCENDING)], name="status__id"),
        IndexModel([("status", ASCENDING), ("current_period_end", ASCENDING)], name="status_period_end"),
    ],
    "invoices": [
        IndexModel([("subscription_id", ASCENDING)], name="subscription_id"),
        IndexModel([("status", ASCENDING), ("_id", DESCENDING)], name="status__id"),
        IndexModel([("customer_id", ASCENDING)], name="customer_id"),
        # A processor invoice is mirrored once; empty processor ids stay out of the index.
        IndexModel(
            _BY_PROCESSOR_ID,
            name="processor_id_unique",
            unique=True,
            partialFilterExpression=_NON_EMPTY,
        ),
    ],
    "disputes": [
        IndexModel([("payment_id", ASCENDING)], name="payment_id"),
        IndexModel([("status", ASCENDING), ("_id", DESCENDING)], name="status__id"),
        # One record per processor dispute, even when created and closed events race.
        IndexModel(_BY_PROCESSOR_ID, name="processor_id_unique", unique=True, partialFilterExpression=_NON_EMPTY),
    ],
    "audit_events": [IndexModel([("resource_id", ASCENDING), ("_id", ASCENDING)], name="resource_id__id")],
    IDEMPOTENCY: [IndexModel([("expires_at", ASCENDING)], name="expires_at_ttl", expireAfterSeconds=0)],
    FENCES: [IndexModel([("expires_at", ASCENDING)], name="expires_at_ttl", expireAfterSeconds=0)],
}


def _collection_name(kind: type[Any]) -> str:
    try:
        return COLLECTIONS[kind]
    except KeyError:
        raise TypeError(f"{kind!r} is not a stored entity type") from None


class MongoBillingStore(MongoIdempotencyRecords):
    """The billing store over MongoDB (or any MongoDB-wire server with transactions).

    Args:
        client: An ``AsyncMongoClient`` created with ``tz_aware=True``.
        database: Database name.
        owns_client: Close ``client`` in :meth:`aclose` (set by :meth:`connect`).
    """

    def __init__(self, client: AsyncMongoClient[Doc], database: str, *, owns_client: bool = False) -> None:
        self._client = client
        self._owns_client = owns_client
        self._db: AsyncDatabase[Doc] = client.get_database(
            database, write_concern=WriteConcern(w="majority"), read_concern=ReadConcern("majority")
        )
        self._secret: bytes | None = None
        self._secret_lock = asyncio.Lock()
        self._outbox = OutboxWriter(self._db)
        #: The event log and durable consumers on the same database (EventService).
        self.events = MongoEventLog(client, database)
        self.consumers = MongoEventConsumers(client, database)
        #: Called after every commit that wrote events (wakes a local sequencer).
        self.on_events: Callable[[], None] | None = None

    @classmethod
    def connect(cls, uri: str, database: str, *, timeout_ms: int = 5000) -> MongoBillingStore:
        """Builds a store with its own client; no I/O happens until the first call.

        Args:
            uri: MongoDB connection string.
            database: Database name.
            timeout_ms: Server selection and connect timeout; socket reads get 4x that.
        """
        client: AsyncMongoClient[Doc] = AsyncMongoClient(
            uri,
            tz_aware=True,
            tzinfo=UTC,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=timeout_ms * 4,
            retryWrites=True,
            retryReads=True,
            appname="billing-service",
        )
        return cls(client, database, owns_client=True)

    @property
    def database(self) -> AsyncDatabase[Doc]:
        """The underlying database (for tests and admin tooling)."""
        return self._db

    def _coll(self, name: str) -> AsyncCollection[Doc]:
        return self._db[name]

    async def aclose(self) -> None:
        """Closes the client if this store created it."""
        if self._owns_client:
            await self._client.close()

    async def ensure_indexes(self) -> None:
        """Creates every collection index; safe to call on every start."""
        async with unavailable("ensure_indexes"):
            for name, models in _INDEXES.items():
                await self._coll(name).create_indexes(models)
        await self.events.ensure_indexes()
        await self.consumers.ensure_indexes()

    @property
    def unaudited_changes(self) -> int:
        """Changes committed without an audit event about them (each logged as an error)."""
        return self._outbox.unaudited_changes

    @contextmanager
    def deadline(self, seconds: float, *, cleanup_seconds: float = 0.0) -> Iterator[None]:
        """Every store operation started in the block ends within ``seconds`` from now.

        An operation that would overrun fails with ``StoreUnavailable`` (the driver's
        client-side operation timeout: server selection, connection and the server's
        ``maxTimeMS`` alike). Operations started after the end still get
        ``cleanup_seconds`` each, or a second while the driver still sees the store.
        """
        with budget(seconds, cleanup_seconds, self.seems_reachable):
            yield

    def seems_reachable(self) -> bool:
        """False when the driver already knows it has no writable server (no I/O).

        The driver's monitor sees a killed server's connection close at once; a hung one
        is only found by a timed-out ``ping``.
        """
        return self._client.topology_description.has_writable_server()

    async def ping(self) -> None:
        """Raises ``StoreUnavailable`` unless the server answers."""
        async with unavailable("ping"):
            await self._client.admin.command("ping")

    # ------------------------------------------------------------------ reads

    async def get(self, kind: type[E], entity_id: str) -> E | None:
        """Loads one entity by id."""
        async with unavailable("get"):
            doc = await self._coll(_collection_name(kind)).find_one({"_id": entity_id})
        return None if doc is None else decode(kind, doc)

    async def get_pair(
        self, first: type[E], first_id: str, second: type[E2], second_id: str
    ) -> tuple[E | None, E2 | None]:
        """Loads two entities by id in one aggregate (each side read through its ``_id`` index).

        The second is joined to the first with a ``$lookup`` on ``_id`` (an equality join,
        which reads the foreign ``_id`` index on MongoDB and on SecantusDB alike; a
        ``$unionWith`` sub-pipeline, which would also return the second without the
        first, is a full scan of the second collection on SecantusDB 0.7.0b3, so its cost
        grew with the number of stored payment methods). When the first is missing, the
        second is read by itself (an error path: one more command).
        """
        pipeline: list[Doc] = [
            {"$match": {"_id": first_id}},
            {"$addFields": {_PAIR_KEY: second_id}},
            {"$lookup": {"from": _collection_name(second), "localField": _PAIR_KEY, "foreignField": "_id",
                         "as": _PAIR}},
        ]  # fmt: skip
        async with unavailable("get"):
            cursor = await self._coll(_collection_name(first)).aggregate(pipeline)
            docs = await cursor.to_list()
            if not docs:
                alone = await self._coll(_collection_name(second)).find_one({"_id": second_id})
                return None, (None if alone is None else decode(second, alone))
        doc = docs[0]
        doc.pop(_PAIR_KEY, None)
        joined = doc.pop(_PAIR, None) or []
        return decode(first, doc), (decode(second, joined[0]) if joined else None)

    async def find_one(self, kind: type[E], filters: Mapping[str, Any]) -> E | None:
        """Loads the newest entity whose attributes equal ``filters``."""
        query = self._query(kind, filters)
        async with unavailable("find_one"):
            doc = await self._coll(_collection_name(kind)).find_one(query, sort=[("_id", DESCENDING)])
        return None if doc is None else decode(kind, doc)

    async def list_page(self, kind: type[E], filters: Mapping[str, Any], *, limit: int, after: str | None) -> Page[E]:
        """Lists entities newest first; the cursor is the last returned id."""
        query = self._query(kind, filters)
        if after:
            query["_id"] = {"$lt": after}
        docs = await self._page(_collection_name(kind), query, DESCENDING, limit)
        return self._to_page(kind, docs, limit)

    async def list_audit_events(self, resource_id: str, *, limit: int, after: str | None) -> Page[AuditEvent]:
        """Lists a resource's audit events oldest first."""
        query: Doc = {"resource_id": resource_id}
        if after:
            query["_id"] = {"$gt": after}
        docs = await self._page(COLLECTIONS[AuditEvent], query, ASCENDING, limit)
        return self._to_page(AuditEvent, docs, limit)

    @staticmethod
    def _query(kind: type[Any], filters: Mapping[str, Any]) -> Doc:
        _collection_name(kind)
        query: Doc = {}
        for name, value in filters.items():
            if isinstance(value, Between):
                query.update(_between(kind, name, value))
            else:
                key, encoded = encode_filter_value(kind, name, value)
                query[key] = encoded
        return query

    async def _page(self, collection: str, query: Doc, direction: int, limit: int) -> list[Doc]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        async with unavailable("list"):
            # One extra document tells whether another page exists.
            cursor = self._coll(collection).find(query).sort("_id", direction).limit(limit + 1)
            return await cursor.to_list()

    @staticmethod
    def _to_page(kind: type[Any], docs: list[Doc], limit: int) -> Page[Any]:
        items = [decode(kind, d) for d in docs[:limit]]
        next_cursor = str(docs[limit - 1]["_id"]) if len(docs) > limit else ""
        return Page(items=items, next_cursor=next_cursor)

    # ----------------------------------------------------------------- writes

    async def commit(
        self, changes: Sequence[Change], events: Sequence[AuditEvent], *, fences: Sequence[Fence] = ()
    ) -> None:
        """Writes all changes, their audit events, their billing events and fences in one transaction.

        The billing events (``event_outbox``) are derived here from the changes and audit
        events (``adapters.mongo.outbox``), so every committed change has its events and
        no event exists without its committed change.

        In-memory versions are bumped only once the transaction has committed. Each fence
        is one write on its request's idempotency record (see ``adapters.mongo.idempotency``),
        first in the transaction. On a server with ``bulkWrite`` the whole transaction is
        two round trips (see ``adapters.mongo.writes``).

        Raises:
            ConcurrencyConflict: An Update lost its version check or an Insert's id (or a
                unique key) exists; nothing was written.
            ClaimConflict: A fence's claim found its record already claimed.
            RequestInProgress: A fence's record was taken over by another execution.
            StoreUnavailable: The server failed. The transaction is all-or-nothing; only a
                commit whose outcome stayed unknown after retries may have been applied.
        """
        if not changes and not events and not fences:
            return
        # Documents are encoded once, before any I/O, so a codec bug cannot half-run a txn.
        writes = [fence_write(f) for f in fences]
        for change in changes:
            doc = encode(change.entity)
            name = _collection_name(type(change.entity))
            if isinstance(change, Insert):
                doc["version"] = 1
                writes.append(Write(name, "insert", doc))
            else:
                doc["version"] = change.entity.version + 1
                conflict = ConcurrencyConflict(
                    f"{type(change.entity).__name__} {change.entity.id} was changed concurrently",
                    metadata={"resource_id": change.entity.id},
                )
                writes.append(
                    Write(name, "replace", doc, filter={"_id": change.entity.id, "version": change.entity.version},
                          unmatched=conflict)
                )  # fmt: skip
        writes.extend(Write(COLLECTIONS[AuditEvent], "insert", encode(e)) for e in events)
        # The commit's billing events, derived from the very documents it writes.
        written = writes[len(fences) : len(fences) + len(changes)]
        entity_writes = [(c, w.collection, w.doc) for c, w in zip(changes, written, strict=True)]
        outbox = await self._outbox.documents(entity_writes, events)
        writes.extend(Write(OUTBOX, "insert", doc) for doc in outbox)
        await self._transact(writes)
        for change in changes:
            change.entity.version = 1 if isinstance(change, Insert) else change.entity.version + 1
        if outbox and self.on_events is not None:
            self.on_events()

    async def _transact(self, writes: list[Write]) -> None:
        """Applies ``writes`` in one transaction, mapping driver errors to the port's."""
        bulk = supports_bulk_write(self._client)

        async def apply(session: AsyncClientSession) -> None:
            await apply_writes(self._db, session, writes, bulk=bulk)

        try:
            with time_limit():
                await in_transaction(self._client, apply)
        except DuplicateKeyError as exc:
            raise ConcurrencyConflict("a resource with the same id or unique key already exists") from exc
        except OperationFailure as exc:
            if exc.code == _WRITE_CONFLICT:
                raise ConcurrencyConflict("concurrent write conflict") from exc
            raise StoreUnavailable(f"store commit failed: {type(exc).__name__}") from exc
        except PyMongoError as exc:
            log.warning("store commit failed: %s", exc)
            raise StoreUnavailable(f"store commit failed: {type(exc).__name__}") from exc

    # ------------------------------------------------------------------- meta

    async def page_token_secret(self) -> bytes:
        """Returns the shared page-token secret, creating it on first use."""
        if self._secret is not None:
            return self._secret
        async with self._secret_lock:
            if self._secret is None:
                self._secret = await self._load_or_create_secret()
            return self._secret

    async def _load_or_create_secret(self) -> bytes:
        coll = self._coll(_META)
        async with unavailable("page_token_secret"):
            doc = await coll.find_one({"_id": _PAGE_SECRET_ID})
            if doc is None:
                # Another replica may win the insert race; then we read its secret.
                with contextlib.suppress(DuplicateKeyError):
                    await coll.insert_one({"_id": _PAGE_SECRET_ID, "value": Binary(os.urandom(32))})
                doc = await coll.find_one({"_id": _PAGE_SECRET_ID})
        if doc is None:
            raise StoreUnavailable("page token secret vanished")
        return bytes(doc["value"])


def _between(kind: type[Any], name: str, window: Between) -> Doc:
    """The range condition of one :class:`Between` filter (an open window matches all)."""
    bounds: Doc = {}
    key = name
    for bound, op in (
        (window.lower, "$gte" if window.lower_inclusive else "$gt"),
        (window.upper, "$lte" if window.upper_inclusive else "$lt"),
    ):
        if bound is not None:
            key, bounds[op] = encode_filter_value(kind, name, bound)
    if not bounds:
        encode_filter_value(kind, name, None)  # still refuses an unknown field name
        return {}
    return {key: bounds}
