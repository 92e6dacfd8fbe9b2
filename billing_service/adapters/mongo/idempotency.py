"""Idempotency records on MongoDB (mixed into ``MongoBillingStore``).

A request key's record (collection ``idempotency``) holds the lease, the allocated
resource id and the final result, and it is its own *fence*: it names the executor whose
commits may land. It is written **only inside transactions** — created by the request's
first commit (or by a claim of its own just before a processor call), matched on
``{_id, owner}`` by every later commit, completed by the commit of the outcome, taken over,
renewed and released in transactions of their own. So:

- a commit and a concurrent takeover are two transactions writing one document: one of
  them fails with a write conflict at once, and a commit after a takeover matches nothing
  and is refused;
- no plain write ever meets the record while a transaction holds it. A write outside a
  transaction that meets a document held by an open transaction waits for it, and behind
  a crashed executor's transaction that wait lasts as long as the server keeps the
  transaction (on the embedded store we saw it never end). Transactions meeting it fail
  at once with a write conflict instead, and reads never wait.

Releases before this layout kept the fence in a separate ``fences`` collection. A takeover
still moves that fence too, so an executor of an older release that is still running
during a rolling upgrade cannot land a commit after its request was taken over.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Binary
from pymongo.asynchronous.collection import AsyncCollection

from billing_service.adapters.mongo.budget import unavailable
from billing_service.adapters.mongo.writes import Write
from billing_service.domain.errors import RequestInProgress, StoreUnavailable
from billing_service.service_layer.ports import (
    ClaimConflict,
    Fence,
    HoldOutcome,
    IdempotencyOutcome,
    IdempotencyRecord,
    StoredResult,
    request_key,
)

log = logging.getLogger(__name__)

Doc = dict[str, Any]

IDEMPOTENCY = "idempotency"
#: The fences of releases before fences moved onto the records (see the module docstring).
FENCES = "fences"
FENCE_TTL = timedelta(days=7)
# A lease that ended before any clock reading: a released claim is taken over at once.
LEASE_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)


def idempotency_key(caller: str, method: str, request_id: str) -> str:
    """Returns the stored key of (caller, method, request_id) (``ports.request_key``)."""
    return request_key(caller, method, request_id)


def _result_fields(result: StoredResult) -> Doc:
    return {
        "state": "completed",
        "response": None if result.response is None else Binary(result.response),
        "error": result.error,
    }


def fence_write(fence: Fence) -> Write:
    """The write a commit makes on the idempotency record of a request it is made for."""
    if fence.claim is not None:
        doc = _document(fence.claim)
        if fence.result is not None:
            doc.update(_result_fields(fence.result))
        # Inserted, or put in place of a record past its TTL that the TTL monitor has not
        # reaped yet; a live record makes the upsert meet the unique _id: ClaimConflict.
        return Write(
            IDEMPOTENCY, "replace", doc, filter={"_id": fence.key, "expires_at": {"$lte": fence.at}}, upsert=True,
            duplicate=ClaimConflict("another execution of this request claimed it first"),
        )  # fmt: skip
    update: Doc = {"fenced_at": fence.at}
    if fence.result is not None:
        update.update(_result_fields(fence.result))
    return Write(
        IDEMPOTENCY, "update", {"$set": update}, filter={"_id": fence.key, "owner": fence.owner},
        unmatched=RequestInProgress(
            "another execution of this request took over; this execution's writes were refused"
        ),
    )  # fmt: skip


class MongoIdempotencyRecords:
    """The idempotency part of the ``BillingStore`` port (see the module docstring)."""

    def _coll(self, name: str) -> AsyncCollection[Doc]:
        raise NotImplementedError

    async def _transact(self, writes: list[Write]) -> None:
        raise NotImplementedError

    async def idempotency_get(
        self, *, caller: str, method: str, request_id: str, now: datetime
    ) -> IdempotencyRecord | None:
        """Reads a request key's record; None when absent or past its TTL (see the port)."""
        async with unavailable("idempotency_get"):
            doc = await self._coll(IDEMPOTENCY).find_one({"_id": idempotency_key(caller, method, request_id)})
        if doc is None or doc["expires_at"] <= now:
            return None
        return _record(doc)

    async def idempotency_take_over(
        self, record: IdempotencyRecord, *, owner: str, now: datetime, lease_seconds: float, ttl_seconds: float
    ) -> tuple[IdempotencyOutcome, IdempotencyRecord]:
        """Takes over a lapsed in-progress record, keeping its resource id (see the port)."""
        taken = replace(
            record, owner=owner, lease_until=now + timedelta(seconds=lease_seconds), attempts=record.attempts + 1,
            expires_at=max(now + timedelta(seconds=ttl_seconds), record.expires_at or now),
        )  # fmt: skip
        fields = {k: getattr(taken, k) for k in ("owner", "lease_until", "attempts", "expires_at")}
        if await self._move(record, fields, now):
            return IdempotencyOutcome.STARTED, taken
        current = await self._current(record.key)
        if current is None:
            raise StoreUnavailable("idempotency record vanished during a takeover; try again")
        if current.state == "completed":
            return IdempotencyOutcome.COMPLETED, current
        return IdempotencyOutcome.IN_PROGRESS, current

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
        """Claims a request key at once (a transaction of its own), or reports who holds it."""
        fresh = IdempotencyRecord(
            key=idempotency_key(caller, method, request_id), caller=caller, method=method, request_id=request_id,
            fingerprint=fingerprint, resource_id=resource_id, owner=owner, state="in_progress", created_at=now,
            lease_until=now + timedelta(seconds=lease_seconds), expires_at=now + timedelta(seconds=ttl_seconds),
        )  # fmt: skip
        # A few rounds: the record we collide with may vanish (released, expired) under us.
        for _ in range(5):
            existing = await self.idempotency_get(caller=caller, method=method, request_id=request_id, now=now)
            if existing is None:
                try:
                    await self._transact([fence_write(Fence(fresh.key, owner, now, claim=fresh))])
                except ClaimConflict:
                    continue
                return IdempotencyOutcome.STARTED, fresh
            if existing.fingerprint != fingerprint:
                return IdempotencyOutcome.MISMATCH, existing
            if existing.state == "completed":
                return IdempotencyOutcome.COMPLETED, existing
            if existing.lease_until > now:
                return IdempotencyOutcome.IN_PROGRESS, existing
            return await self.idempotency_take_over(
                existing, owner=owner, now=now, lease_seconds=lease_seconds, ttl_seconds=ttl_seconds
            )
        raise StoreUnavailable("idempotency record kept changing under us; try again")

    async def idempotency_complete(
        self, key: str, owner: str, *, response: bytes | None, error: dict[str, Any] | None
    ) -> None:
        """Stores the final result if we still own the key; a lost lease is logged, not raised."""
        fence = Fence(key, owner, datetime.now(UTC), result=StoredResult(response, error))
        try:
            await self._transact([fence_write(fence)])
        except RequestInProgress:
            log.warning("idempotency record %s no longer owned by %s; result not stored", key, owner)

    async def idempotency_release(self, key: str, owner: str) -> None:
        """Ends our lease at once so the next retry takes over.

        The record is kept, not deleted: the retry must reuse its ``resource_id`` (and so
        the same processor keys) to resume the work instead of creating a twin resource.
        """
        await self._update_own(key, owner, {"$set": {"lease_until": LEASE_RELEASED}})

    async def idempotency_renew(self, key: str, owner: str, *, lease_until: datetime) -> bool:
        """Extends our lease (never shortens it); False when the record is no longer ours."""
        return await self._update_own(key, owner, {"$max": {"lease_until": lease_until}})

    async def idempotency_hold(
        self, *, caller: str, method: str, request_id: str, owner: str, now: datetime, lease_seconds: float
    ) -> tuple[HoldOutcome, IdempotencyRecord | None]:
        """Takes over another request's lapsed in-progress record (see the port's docstring)."""
        for _ in range(5):
            existing = await self.idempotency_get(caller=caller, method=method, request_id=request_id, now=now)
            if existing is None:
                return HoldOutcome.ABSENT, None
            if existing.state == "completed":
                return HoldOutcome.COMPLETED, existing
            if existing.lease_until > now:
                return HoldOutcome.BUSY, existing
            until = now + timedelta(seconds=lease_seconds)
            if await self._move(existing, {"owner": owner, "lease_until": until}, now):
                return HoldOutcome.HELD, replace(existing, owner=owner, lease_until=until)
        raise StoreUnavailable("idempotency record kept changing under us; try again")

    async def _move(self, record: IdempotencyRecord, fields: Doc, now: datetime) -> bool:
        """Points an in-progress record whose lease lapsed at a new owner; False if it changed first.

        Matched on the previous owner and lease, in a transaction that also moves the fence
        older releases check (see the module docstring).
        """
        lost = _Lost()
        writes = [
            Write(
                IDEMPOTENCY, "update", {"$set": fields},
                filter={"_id": record.key, "owner": record.owner, "state": "in_progress",
                        "lease_until": record.lease_until},
                unmatched=lost,
            ),
            Write(FENCES, "update", {"$set": {"owner": fields["owner"], "expires_at": now + FENCE_TTL}},
                  filter={"_id": record.key}, upsert=True),
        ]  # fmt: skip
        try:
            await self._transact(writes)
        except _Lost:
            return False
        return True

    async def _update_own(self, key: str, owner: str, update: Doc) -> bool:
        lost = _Lost()
        write = Write(IDEMPOTENCY, "update", update, filter={"_id": key, "owner": owner, "state": "in_progress"},
                      unmatched=lost)  # fmt: skip
        try:
            await self._transact([write])
        except _Lost:
            return False
        return True

    async def _current(self, key: str) -> IdempotencyRecord | None:
        async with unavailable("idempotency_get"):
            doc = await self._coll(IDEMPOTENCY).find_one({"_id": key})
        return None if doc is None else _record(doc)


class _Lost(Exception):
    """Internal: a conditional write on a record matched nothing; aborts its transaction."""


def _document(record: IdempotencyRecord) -> Doc:
    return {
        "_id": record.key,
        "caller": record.caller,
        "method": record.method,
        "request_id": record.request_id,
        "fingerprint": record.fingerprint,
        "resource_id": record.resource_id,
        "owner": record.owner,
        "state": record.state,
        "created_at": record.created_at,
        "lease_until": record.lease_until,
        "expires_at": record.expires_at,
        "attempts": record.attempts,
        "response": None if record.response is None else Binary(record.response),
        "error": record.error,
    }


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
        expires_at=doc.get("expires_at"),
    )
