"""Transactions and the writes inside them, in as few round trips as the server allows.

A commit is a list of :class:`Write` across collections. On a server that has MongoDB
8.0's ``bulkWrite`` command (wire version 25+) the whole list goes in one command, so a
transaction costs two round trips (the writes, the commit) whatever it touches; on an
older server each write (and each run of inserts into one collection) is its own command.
Both paths check the same things and raise the same errors.

Transactions start without a read concern and on sessions without causal consistency.
They read nothing but the documents their own conditional writes match, and a write to a
document that changed after the transaction's snapshot fails with a write conflict
whatever the read concern, so ``snapshot`` would add nothing; their commits are
``w: majority``. (SecantusDB 0.7.0b3 also refuses ``bulkWrite`` carrying a
``readConcern``, which a causally consistent session would add.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from pymongo import AsyncMongoClient, InsertOne, ReplaceOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    ClientBulkWriteException,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.write_concern import WriteConcern

log = logging.getLogger(__name__)

Doc = dict[str, Any]

#: The first wire version with the ``bulkWrite`` command (MongoDB 8.0).
BULK_WRITE_WIRE_VERSION = 25
# Whole-transaction attempts on TransientTransactionError (write conflicts, elections).
_TXN_ATTEMPTS = 5
# commitTransaction retries on UnknownTransactionCommitResult (safe: commit is idempotent).
_COMMIT_ATTEMPTS = 3
_DUPLICATE_KEY = 11000


@dataclass(frozen=True)
class Write:
    """One write of a transaction.

    Attributes:
        collection: The collection written.
        op: ``insert`` (``doc`` is the document), ``replace`` (``doc`` replaces the
            document ``filter`` matches) or ``update`` (``doc`` is the update).
        unmatched: Raised (aborting the transaction) when ``filter`` matched nothing.
        duplicate: Raised instead of ``DuplicateKeyError`` when the write meets a unique key.
    """

    collection: str
    op: Literal["insert", "replace", "update"]
    doc: Doc
    filter: Doc | None = None
    upsert: bool = False
    unmatched: Exception | None = None
    duplicate: Exception | None = None


def supports_bulk_write(client: AsyncMongoClient[Doc]) -> bool:
    """True when the server the client writes to is known to have ``bulkWrite`` (no I/O)."""
    for server in client.topology_description.server_descriptions().values():
        if server.is_writable:
            return server.max_wire_version >= BULK_WRITE_WIRE_VERSION
    return False


async def in_transaction(client: AsyncMongoClient[Doc], apply: Callable[[AsyncClientSession], Awaitable[None]]) -> None:
    """Runs ``apply`` in a transaction and commits it, rerunning it on transient errors."""
    async with client.start_session(causal_consistency=False) as session:
        for attempt in range(1, _TXN_ATTEMPTS + 1):
            await session.start_transaction(write_concern=WriteConcern(w="majority"))
            try:
                await apply(session)
                await _commit_with_retry(session)
                return
            except BaseException as exc:
                if session.in_transaction:
                    try:
                        # Shielded: a caller cancelled again meanwhile must not leave its
                        # transaction open on the server (holding its documents until reaped).
                        await asyncio.shield(session.abort_transaction())
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


async def _commit_with_retry(session: AsyncClientSession) -> None:
    for attempt in range(1, _COMMIT_ATTEMPTS + 1):
        try:
            await session.commit_transaction()
            return
        except PyMongoError as exc:
            if exc.has_error_label("UnknownTransactionCommitResult") and attempt < _COMMIT_ATTEMPTS:
                continue
            raise


async def apply_writes(
    db: AsyncDatabase[Doc], session: AsyncClientSession, writes: Sequence[Write], *, bulk: bool
) -> None:
    """Applies ``writes`` in order inside the session's transaction (one command when ``bulk``).

    Raises:
        Exception: A write's ``unmatched`` or ``duplicate`` error; ``DuplicateKeyError``
            for another unique-key violation; the driver's error otherwise.
    """
    if not writes:
        return
    if bulk:
        await _bulk(db, session, writes)
    else:
        await _one_by_one(db, session, writes)


async def _bulk(db: AsyncDatabase[Doc], session: AsyncClientSession, writes: Sequence[Write]) -> None:
    models: list[InsertOne[Doc] | ReplaceOne[Doc] | UpdateOne] = []
    for w in writes:
        ns = f"{db.name}.{w.collection}"
        if w.op == "insert":
            models.append(InsertOne(w.doc, namespace=ns))
        elif w.op == "replace":
            models.append(ReplaceOne(w.filter or {}, w.doc, upsert=w.upsert, namespace=ns))
        else:
            models.append(UpdateOne(w.filter or {}, w.doc, upsert=w.upsert, namespace=ns))
    try:
        result = await db.client.bulk_write(models, session=session, ordered=True, verbose_results=True)
    except ClientBulkWriteException as exc:
        if isinstance(exc.error, PyMongoError):
            raise exc.error from exc  # the command failed: keeps its labels (transient conflicts)
        # Typed as WriteError, but the driver hands the server's error documents over as is.
        for error in cast(list[Mapping[str, Any]], exc.write_errors or []):
            w = writes[int(error.get("idx", 0))]
            if error.get("code") == _DUPLICATE_KEY:
                if w.duplicate is not None:
                    raise w.duplicate from exc
                raise DuplicateKeyError(str(error.get("errmsg", "")), _DUPLICATE_KEY, error) from exc
            raise OperationFailure(str(error.get("errmsg", "")), error.get("code"), error) from exc
        raise
    for index, w in enumerate(writes):
        if w.unmatched is None:
            continue
        outcome = result.update_results.get(index)
        if outcome is None or outcome.matched_count == 0:
            raise w.unmatched


async def _one_by_one(db: AsyncDatabase[Doc], session: AsyncClientSession, writes: Sequence[Write]) -> None:
    i = 0
    while i < len(writes):
        w = writes[i]
        coll = db[w.collection]
        try:
            if w.op == "insert":
                # A run of inserts into one collection (audit events) is one command.
                run = [w.doc]
                while i + 1 < len(writes) and writes[i + 1].op == "insert" and writes[i + 1].collection == w.collection:
                    i += 1
                    run.append(writes[i].doc)
                if len(run) == 1:
                    await coll.insert_one(w.doc, session=session)
                else:
                    await coll.insert_many(run, ordered=True, session=session)
                matched = 1
            elif w.op == "replace":
                matched = (
                    await coll.replace_one(w.filter or {}, w.doc, upsert=w.upsert, session=session)
                ).matched_count
            else:
                matched = (await coll.update_one(w.filter or {}, w.doc, upsert=w.upsert, session=session)).matched_count
        except DuplicateKeyError:
            if w.duplicate is not None:
                raise w.duplicate from None
            raise
        if matched == 0 and w.unmatched is not None:
            raise w.unmatched
        i += 1
