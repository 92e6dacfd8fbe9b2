"""Idempotency records and their fences on MongoDB (mixed into ``MongoBillingStore``).

A request key's record (collection ``idempotency``) holds the lease, the allocated
resource id and the final result. It is written only *outside* transactions: claim,
takeover, heartbeat, completion, release.

Its *fence* (collection ``fences``, same ``_id``) names the executor whose commits may
land, and is written only *inside* transactions: every commit made on behalf of a request
updates it matched on ``{_id, owner}`` (an upsert, so a fence naming someone else makes
the commit fail with a duplicate key), and a takeover points it at the new executor in a
transaction of its own before that executor runs. A concurrent commit and takeover are
two transactions writing one document, so one of them fails with a write conflict at
once. Keeping the two documents apart matters: a write outside a transaction that meets
a document held by an open transaction waits for it, and behind a crashed executor's
transaction that wait lasts as long as the server keeps the transaction (on the embedded
store we saw it never end).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Binary
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from billing_service.adapters.mongo.budget import unavailable
from billing_service.domain.errors import StoreUnavailable
from billing_service.service_layer.ports import HoldOutcome, IdempotencyOutcome, IdempotencyRecord

log = logging.getLogger(__name__)

Doc = dict[str, Any]

IDEMPOTENCY = "idempotency"
FENCES = "fences"
#: Fences outlive any idempotency record they guard (records are kept 24-72 hours).
FENCE_TTL = timedelta(days=7)
# A lease that ended before any clock reading: a released claim is taken over at once.
LEASE_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)


def idempotency_key(caller: str, method: str, request_id: str) -> str:
    """Returns the stored key of (caller, method, request_id): a fixed-size sha256 hex digest."""
    raw = "\x1f".join((caller, method, request_id))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class MongoIdempotencyRecords:
    """The idempotency part of the ``BillingStore`` port (see the module docstring)."""

    def _coll(self, name: str) -> AsyncCollection[Doc]:
        raise NotImplementedError

    async def _in_transaction(self, apply: Callable[[AsyncClientSession], Awaitable[None]]) -> None:
        raise NotImplementedError

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
        coll = self._coll(IDEMPOTENCY)
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
        async with unavailable("idempotency_begin"):
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
                # the original resource_id so a re-execution does not create a twin. An
                # update_one matched on the previous owner and lease (not findAndModify,
                # whose cost grows with the collection on the embedded store).
                taken = {
                    **existing,
                    "owner": owner,
                    "lease_until": lease_until,
                    "expires_at": max(expires_at, existing["expires_at"]),
                    "attempts": existing.get("attempts", 1) + 1,
                }
                result = await coll.update_one(
                    {"_id": key, "owner": existing["owner"], "state": "in_progress",
                     "lease_until": existing["lease_until"]},
                    {"$set": {k: taken[k] for k in ("owner", "lease_until", "expires_at", "attempts")}},
                )  # fmt: skip
                if result.matched_count == 1:
                    await self._claim_fence(key, owner, now)
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
        async with unavailable("idempotency_complete"):
            result = await self._coll(IDEMPOTENCY).update_one(
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
        async with unavailable("idempotency_release"):
            await self._coll(IDEMPOTENCY).update_one(
                {"_id": key, "owner": owner, "state": "in_progress"}, {"$set": {"lease_until": LEASE_RELEASED}}
            )

    async def idempotency_renew(self, key: str, owner: str, *, lease_until: datetime) -> bool:
        """Extends our lease (never shortens it); False when the record is no longer ours."""
        async with unavailable("idempotency_renew"):
            result = await self._coll(IDEMPOTENCY).update_one(
                {"_id": key, "owner": owner, "state": "in_progress"}, {"$max": {"lease_until": lease_until}}
            )
        return result.matched_count == 1

    async def idempotency_hold(
        self, *, caller: str, method: str, request_id: str, owner: str, now: datetime, lease_seconds: float
    ) -> tuple[HoldOutcome, IdempotencyRecord | None]:
        """Takes over another request's lapsed in-progress record (see the port's docstring)."""
        key = idempotency_key(caller, method, request_id)
        coll = self._coll(IDEMPOTENCY)
        async with unavailable("idempotency_hold"):
            for _ in range(5):
                existing = await coll.find_one({"_id": key})
                if existing is None or existing["expires_at"] <= now:
                    return HoldOutcome.ABSENT, None
                if existing["state"] == "completed":
                    return HoldOutcome.COMPLETED, _record(existing)
                if existing["lease_until"] > now:
                    return HoldOutcome.BUSY, _record(existing)
                held = {**existing, "owner": owner, "lease_until": now + timedelta(seconds=lease_seconds)}
                result = await coll.update_one(
                    {"_id": key, "owner": existing["owner"], "state": "in_progress",
                     "lease_until": existing["lease_until"]},
                    {"$set": {"owner": owner, "lease_until": held["lease_until"]}},
                )  # fmt: skip
                if result.matched_count == 1:
                    await self._claim_fence(key, owner, now)
                    return HoldOutcome.HELD, _record(held)
        raise StoreUnavailable("idempotency record kept changing under us; try again")

    async def _claim_fence(self, key: str, owner: str, now: datetime) -> None:
        """Points the request's fence at its new executor, so the previous one's commits fail.

        Runs after winning the record; if it cannot complete (the previous executor's dead
        transaction still holds the fence), the record is handed back and the caller retries.
        """
        fences = self._coll(FENCES)

        async def claim(session: AsyncClientSession) -> None:
            await fences.update_one(
                {"_id": key}, {"$set": {"owner": owner, "expires_at": now + FENCE_TTL}}, upsert=True, session=session
            )

        try:
            await self._in_transaction(claim)
        except BaseException:
            with contextlib.suppress(PyMongoError):
                await self._coll(IDEMPOTENCY).update_one(
                    {"_id": key, "owner": owner, "state": "in_progress"}, {"$set": {"lease_until": LEASE_RELEASED}}
                )
            raise


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
