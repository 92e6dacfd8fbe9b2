"""``MongoBillingStore``: the ``BillingStore`` port over PyMongo's async API.

Every state change and its audit events are written in one multi-document transaction,
with optimistic concurrency on each document's ``version``. Any driver failure is turned
into ``StoreUnavailable`` here, so no PyMongo type crosses the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from bson import Binary
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError, ServerSelectionTimeoutError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from billing_service.adapters.mongo.codecs import decode, encode, encode_filter_value
from billing_service.domain.common import AuditEvent
from billing_service.domain.customers import Customer, PaymentMethod
from billing_service.domain.disputes import Dispute
from billing_service.domain.errors import ConcurrencyConflict, StoreUnavailable
from billing_service.domain.payments import Payment, Refund
from billing_service.domain.subscriptions import Invoice, Plan, Subscription
from billing_service.service_layer.ports import (
    Change,
    E,
    Entity,
    IdempotencyOutcome,
    IdempotencyRecord,
    Insert,
    Page,
)

__all__ = ["COLLECTIONS", "MongoBillingStore"]

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
# A lease that ended before any clock reading: a released claim is taken over at once.
_LEASE_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)
_IDEMPOTENCY = "idempotency"
_META = "meta"
_PAGE_SECRET_ID = "page_token_secret"  # noqa: S105 - a document id, not a secret

# Whole-transaction attempts on TransientTransactionError (write conflicts, elections).
_TXN_ATTEMPTS = 5
# commitTransaction retries on UnknownTransactionCommitResult (safe: commit is idempotent).
_COMMIT_ATTEMPTS = 3
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
    ],
    # Reconciliation and the subscription gauges find work by status: indexed, so their cost
    # follows what is open, not everything ever stored.
    "plans": [IndexModel([("status", ASCENDING), ("_id", DESCENDING)], name="status__id")],
    "refunds": [
        IndexModel([("payment_id", ASCENDING)], name="payment_id"),
        IndexModel([("status", ASCENDING), ("_id", DESCENDING)], name="status__id"),
        # One record per processor refund, even when a refund made outside the service is
        # mirrored from two events (refund.created and charge.refunded) at once.
        IndexModel(_BY_PROCESSOR_ID, name="processor_id_unique", unique=True, partialFilterExpression=_NON_EMPTY),
    ],
    "subscriptions": [
        IndexModel([("customer_id", ASCENDING)], name="customer_id"),
        IndexModel([("status", ASCENDING), ("_id", DESCENDING)], name="status__id"),
        IndexModel(
            _BY_PROCESSOR_ID,
            name="processor_id",
            partialFilterExpression=_NON_EMPTY,
        ),
    ],
    "invoices": [
        IndexModel([("subscription_id", ASCENDING)], name="subscription_id"),
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
        # One record per processor dispute, even when created and closed events race.
        IndexModel(_BY_PROCESSOR_ID, name="processor_id_unique", unique=True, partialFilterExpression=_NON_EMPTY),
    ],
    "audit_events": [IndexModel([("resource_id", ASCENDING), ("_id", ASCENDING)], name="resource_id__id")],
    _IDEMPOTENCY: [IndexModel([("expires_at", ASCENDING)], name="expires_at_ttl", expireAfterSeconds=0)],
}


def _collection_name(kind: type[Any]) -> str:
    try:
        return COLLECTIONS[kind]
    except KeyError:
        raise TypeError(f"{kind!r} is not a stored entity type") from None


def idempotency_key(caller: str, method: str, request_id: str) -> str:
    """Returns the stored key of (caller, method, request_id): a fixed-size sha256 hex digest."""
    raw = "\x1f".join((caller, method, request_id))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@asynccontextmanager
async def _unavailable(what: str) -> AsyncIterator[None]:
    """Turns any driver failure into ``StoreUnavailable``."""
    try:
        yield
    except PyMongoError as exc:
        log.warning("store %s failed: %s", what, exc)
        raise StoreUnavailable(f"store {what} failed: {type(exc).__name__}") from exc


class _Conflict(Exception):
    """Internal: an Update lost its version check; aborts the transaction."""

    def __init__(self, entity: Entity) -> None:
        super().__init__(entity.id)
        self.entity = entity


class MongoBillingStore:
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
        async with _unavailable("ensure_indexes"):
            for name, models in _INDEXES.items():
                await self._coll(name).create_indexes(models)

    async def ping(self) -> None:
        """Raises ``StoreUnavailable`` unless the server answers."""
        async with _unavailable("ping"):
            await self._client.admin.command("ping")

    # ------------------------------------------------------------------ reads

    async def get(self, kind: type[E], entity_id: str) -> E | None:
        """Loads one entity by id."""
        async with _unavailable("get"):
            doc = await self._coll(_collection_name(kind)).find_one({"_id": entity_id})
        return None if doc is None else decode(kind, doc)

    async def find_one(self, kind: type[E], filters: Mapping[str, Any]) -> E | None:
        """Loads the newest entity whose attributes equal ``filters``."""
        query = self._query(kind, filters)
        async with _unavailable("find_one"):
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
        return dict(encode_filter_value(kind, name, value) for name, value in filters.items())

    async def _page(self, collection: str, query: Doc, direction: int, limit: int) -> list[Doc]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        async with _unavailable("list"):
            # One extra document tells whether another page exists.
            cursor = self._coll(collection).find(query).sort("_id", direction).limit(limit + 1)
            return await cursor.to_list()

    @staticmethod
    def _to_page(kind: type[Any], docs: list[Doc], limit: int) -> Page[Any]:
        items = [decode(kind, d) for d in docs[:limit]]
        next_cursor = str(docs[limit - 1]["_id"]) if len(docs) > limit else ""
        return Page(items=items, next_cursor=next_cursor)

    # ----------------------------------------------------------------- writes

    async def commit(self, changes: Sequence[Change], events: Sequence[AuditEvent]) -> None:
        """Writes all changes and audit events in one transaction.

        In-memory versions are bumped only once the transaction has committed.

        Raises:
            ConcurrencyConflict: An Update lost its version check or an Insert's id (or a
                unique key) exists; nothing was written.
            StoreUnavailable: The server failed. The transaction is all-or-nothing; only a
                commit whose outcome stayed unknown after retries may have been applied.
        """
        if not changes and not events:
            return
        try:
            await self._run_transaction(changes, events)
        except _Conflict as exc:
            raise ConcurrencyConflict(
                f"{type(exc.entity).__name__} {exc.entity.id} was changed concurrently",
                metadata={"resource_id": exc.entity.id},
            ) from None
        except DuplicateKeyError as exc:
            raise ConcurrencyConflict("a resource with the same id or unique key already exists") from exc
        except OperationFailure as exc:
            if exc.code == _WRITE_CONFLICT:
                raise ConcurrencyConflict("concurrent write conflict") from exc
            raise StoreUnavailable(f"store commit failed: {type(exc).__name__}") from exc
        except PyMongoError as exc:
            log.warning("store commit failed: %s", exc)
            raise StoreUnavailable(f"store commit failed: {type(exc).__name__}") from exc
        for change in changes:
            change.entity.version = 1 if isinstance(change, Insert) else change.entity.version + 1

    async def _run_transaction(self, changes: Sequence[Change], events: Sequence[AuditEvent]) -> None:
        # Documents are encoded once, before any I/O, so a codec bug cannot half-run a txn.
        writes: list[tuple[Change, str, Doc]] = []
        for change in changes:
            doc = encode(change.entity)
            doc["version"] = 1 if isinstance(change, Insert) else change.entity.version + 1
            writes.append((change, _collection_name(type(change.entity)), doc))
        audit_docs = [encode(e) for e in events]

        async with self._client.start_session() as session:
            for attempt in range(1, _TXN_ATTEMPTS + 1):
                await session.start_transaction(
                    read_concern=ReadConcern("snapshot"), write_concern=WriteConcern(w="majority")
                )
                try:
                    await self._apply(session, writes, audit_docs)
                    await self._commit_with_retry(session)
                    return
                except BaseException as exc:
                    if session.in_transaction:
                        try:
                            await session.abort_transaction()
                        except PyMongoError:
                            log.debug("abort_transaction failed", exc_info=True)
                    if (
                        isinstance(exc, PyMongoError)
                        and exc.has_error_label("TransientTransactionError")
                        # A selection timeout already waited the full budget: report it now.
                        and not isinstance(exc, ServerSelectionTimeoutError)
                        and attempt < _TXN_ATTEMPTS
                    ):
                        # Write conflicts and failovers: rerun the whole transaction. A lost
                        # version check then surfaces as a clean conflict on the next pass.
                        await asyncio.sleep(0.005 * attempt)
                        continue
                    raise

    async def _apply(
        self, session: AsyncClientSession, writes: list[tuple[Change, str, Doc]], audit_docs: list[Doc]
    ) -> None:
        for change, coll_name, doc in writes:
            coll = self._coll(coll_name)
            if isinstance(change, Insert):
                await coll.insert_one(doc, session=session)
            else:
                result = await coll.replace_one(
                    {"_id": change.entity.id, "version": change.entity.version}, doc, session=session
                )
                if result.matched_count == 0:
                    raise _Conflict(change.entity)
        if audit_docs:
            await self._coll(COLLECTIONS[AuditEvent]).insert_many(audit_docs, ordered=True, session=session)

    async def _commit_with_retry(self, session: AsyncClientSession) -> None:
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                await session.commit_transaction()
                return
            except PyMongoError as exc:
                if exc.has_error_label("UnknownTransactionCommitResult") and attempt < _COMMIT_ATTEMPTS:
                    continue
                raise

    # ------------------------------------------------------------ idempotency

    async def idempotency_begin(
        self,
        *,
        caller: str,
        method: str,
        request_id: str,
        fingerprint: str,
        resource_id: str,
        owner: str,
        now: datetime,
        lease_seconds: float,
        ttl_seconds: float,
    ) -> tuple[IdempotencyOutcome, IdempotencyRecord]:
        """Claims a request key, or reports who holds it (see the port's docstring)."""
        key = idempotency_key(caller, method, request_id)
        coll = self._coll(_IDEMPOTENCY)
        lease_until = now + timedelta(seconds=lease_seconds)
        expires_at = now + timedelta(seconds=ttl_seconds)
        fresh: Doc = {
            "_id": key,
            "caller": caller,
            "method": method,
            "request_id": request_id,
            "fingerprint": fingerprint,
            "resource_id": resource_id,
            "owner": owner,
            "state": "in_progress",
            "created_at": now,
            "lease_until": lease_until,
            "expires_at": expires_at,
            "attempts": 1,
        }
        async with _unavailable("idempotency_begin"):
            # A few rounds: the record we collide with may vanish (released, expired) under us.
            for _ in range(5):
                try:
                    await coll.insert_one(fresh)
                    return IdempotencyOutcome.STARTED, _record(fresh)
                except DuplicateKeyError:
                    pass
                existing = await coll.find_one({"_id": key})
                if existing is None:
                    continue
                if existing["expires_at"] <= now:
                    # Past its TTL but not yet reaped by the TTL monitor: treat as absent.
                    await coll.delete_one({"_id": key, "expires_at": existing["expires_at"]})
                    continue
                if existing["fingerprint"] != fingerprint:
                    return IdempotencyOutcome.MISMATCH, _record(existing)
                if existing["state"] == "completed":
                    return IdempotencyOutcome.COMPLETED, _record(existing)
                if existing["lease_until"] > now:
                    return IdempotencyOutcome.IN_PROGRESS, _record(existing)
                # The executor's lease ran out (it crashed or hung): take over, keeping
                # the original resource_id so a re-execution does not create a twin.
                taken = await coll.find_one_and_update(
                    {"_id": key, "owner": existing["owner"], "state": "in_progress", "lease_until": {"$lte": now}},
                    {
                        "$set": {
                            "owner": owner,
                            "lease_until": lease_until,
                            "expires_at": max(expires_at, existing["expires_at"]),
                        },
                        "$inc": {"attempts": 1},
                    },
                    return_document=ReturnDocument.AFTER,
                )
                if taken is not None:
                    return IdempotencyOutcome.STARTED, _record(taken)
                current = await coll.find_one({"_id": key})
                if current is None:
                    continue
                if current["state"] == "completed":
                    return IdempotencyOutcome.COMPLETED, _record(current)
                return IdempotencyOutcome.IN_PROGRESS, _record(current)
        raise StoreUnavailable("idempotency record kept changing under us; try again")

    async def idempotency_complete(
        self, key: str, owner: str, *, response: bytes | None, error: dict[str, Any] | None
    ) -> None:
        """Stores the final result if we still own the key; a lost lease is logged, not raised."""
        async with _unavailable("idempotency_complete"):
            result = await self._coll(_IDEMPOTENCY).update_one(
                {"_id": key, "owner": owner, "state": "in_progress"},
                {
                    "$set": {
                        "state": "completed",
                        "response": None if response is None else Binary(response),
                        "error": error,
                    }
                },
            )
        if result.matched_count == 0:
            log.warning("idempotency record %s no longer owned by %s; result not stored", key, owner)

    async def idempotency_release(self, key: str, owner: str) -> None:
        """Ends our lease at once so the next retry takes over.

        The record is kept, not deleted: the retry must reuse its ``resource_id`` (and so
        the same processor keys) to resume the work instead of creating a twin resource.
        """
        async with _unavailable("idempotency_release"):
            await self._coll(_IDEMPOTENCY).update_one(
                {"_id": key, "owner": owner, "state": "in_progress"}, {"$set": {"lease_until": _LEASE_RELEASED}}
            )

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
        async with _unavailable("page_token_secret"):
            doc = await coll.find_one({"_id": _PAGE_SECRET_ID})
            if doc is None:
                # Another replica may win the insert race; then we read its secret.
                with contextlib.suppress(DuplicateKeyError):
                    await coll.insert_one({"_id": _PAGE_SECRET_ID, "value": Binary(os.urandom(32))})
                doc = await coll.find_one({"_id": _PAGE_SECRET_ID})
        if doc is None:
            raise StoreUnavailable("page token secret vanished")
        return bytes(doc["value"])


def _record(doc: Mapping[str, Any]) -> IdempotencyRecord:
    response = doc.get("response")
    return IdempotencyRecord(
        key=doc["_id"],
        caller=doc["caller"],
        method=doc["method"],
        request_id=doc["request_id"],
        fingerprint=doc["fingerprint"],
        resource_id=doc["resource_id"],
        owner=doc["owner"],
        state=doc["state"],
        created_at=doc["created_at"],
        lease_until=doc["lease_until"],
        response=None if response is None else bytes(response),
        error=doc.get("error"),
        attempts=doc.get("attempts", 1),
    )
