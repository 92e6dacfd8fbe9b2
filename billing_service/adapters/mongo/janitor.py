"""The janitor: removes history that only grows, by indexed batched deletes, under a lease.

Three kinds of documents outlive their use:

* **finished webhook events** (PROCESSED, IGNORED, ORPHAN) past the inbox retention
  (``purge_at``, set when the event finished; ``BILLING_WEBHOOK_RETENTION_DAYS``);
* **idempotency records** past ``expires_at`` (at least ``BILLING_IDEMPOTENCY_TTL_HOURS``
  after the request; a record past it is already treated as absent);
* **leases** not renewed for a day (a job nobody holds any more), unless they keep state.

On a MongoDB server the TTL monitor removes the first two as well (TTL indexes on
``purge_at`` and ``expires_at``). The janitor sweeps anyway, on any server: it bounds the
work per pass, it covers leases (no TTL index), and it does not depend on how a server
runs its TTL monitor. (SecantusDB 0.7.0b3 does run one, every 60 s, but by reading every
document of each TTL-indexed collection while holding its lock; its ``ttl_sweep_seconds``
setting is not passed on by its command line, so it cannot be turned off. Keeping those
collections small is what bounds that stall.) Each batch reads ids by an index and
deletes exactly those ids, re-checking the expiry, so two janitors at once (the lease
lapsed mid-pass) only find less to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from billing_service.adapters.mongo.idempotency import FENCES, IDEMPOTENCY
from billing_service.adapters.mongo.inbox import MongoWebhookInbox
from billing_service.adapters.mongo.leases import MongoLeases
from billing_service.domain.errors import StoreUnavailable

__all__ = ["LEASE_NAME", "MongoJanitor", "SweepReport", "sweep_expired_idempotency"]

log = logging.getLogger(__name__)

LEASE_NAME = "janitor"
_LEASES = "leases"
_LEASE_GRACE = timedelta(days=1)

Doc = dict[str, Any]


@dataclass
class SweepReport:
    """What one pass removed (``skipped``: another replica holds the lease)."""

    webhook_events: int = 0
    idempotency_records: int = 0
    leases: int = 0
    skipped: bool = False

    @property
    def total(self) -> int:
        """Documents removed in all."""
        return self.webhook_events + self.idempotency_records + self.leases


async def _sweep(
    coll: AsyncCollection[Doc],
    field: str,
    cutoff: datetime,
    *,
    batch: int,
    max_batches: int,
    unless: Doc | None = None,
) -> int:
    """Deletes documents whose ``field`` is at or before ``cutoff`` (and match ``unless``), ``batch`` ids at a time."""
    due = {field: {"$lte": cutoff}, **(unless or {})}
    removed = 0
    for _ in range(max_batches):
        cursor = coll.find(due, projection={"_id": 1}, limit=batch)
        ids = [doc["_id"] for doc in await cursor.to_list()]
        if not ids:
            break
        result = await coll.delete_many({"_id": {"$in": ids}, **due})
        removed += result.deleted_count
        if len(ids) < batch:
            break
    return removed


async def sweep_expired_idempotency(
    client: AsyncMongoClient[Doc], database: str, *, now: datetime, batch: int = 500, max_batches: int = 100
) -> int:
    """Deletes idempotency records and release fences past ``expires_at`` (TTL-indexed); returns how many.

    A record past its expiry is already treated as absent by a new claim (its upsert
    replaces it), so removing it changes no answer; likewise an expired fence.
    """
    try:
        removed = 0
        for name in (IDEMPOTENCY, FENCES):
            removed += await _sweep(client[database][name], "expires_at", now, batch=batch, max_batches=max_batches)
        return removed
    except PyMongoError as exc:
        raise StoreUnavailable(f"idempotency sweep failed: {type(exc).__name__}") from exc


class MongoJanitor:
    """One sweep of everything above, optionally under the ``janitor`` lease.

    Args:
        client: The store's client.
        database: Database name.
        inbox: The webhook inbox (it knows its retention field).
        batch: Documents deleted per statement.
        max_batches: Statements per kind per pass (a backlog is worked off over passes).
    """

    def __init__(
        self,
        client: AsyncMongoClient[Doc],
        database: str,
        inbox: MongoWebhookInbox,
        *,
        batch: int = 500,
        max_batches: int = 100,
    ) -> None:
        self._client = client
        self._database = database
        self._inbox = inbox
        self._leases = MongoLeases(client, database)
        self._batch = batch
        self._max_batches = max_batches
        self._indexed = False

    async def ensure_indexes(self) -> None:
        """The index the lease sweep reads by (the other two collections bring theirs)."""
        try:
            await self._client[self._database][_LEASES].create_indexes(
                [IndexModel([("until", ASCENDING)], name="until")]
            )
        except PyMongoError as exc:
            raise StoreUnavailable(f"janitor indexes: {type(exc).__name__}") from exc
        self._indexed = True

    async def sweep_once(self, *, now: datetime) -> SweepReport:
        """Removes what is due now, whoever else is sweeping."""
        report = SweepReport()
        report.webhook_events = await self._inbox.purge_finished(
            now=now, batch=self._batch, max_batches=self._max_batches
        )
        report.idempotency_records = await sweep_expired_idempotency(
            self._client, self._database, now=now, batch=self._batch, max_batches=self._max_batches
        )
        try:
            report.leases = await _sweep(
                self._client[self._database][_LEASES], "until", now - _LEASE_GRACE,
                batch=self._batch, max_batches=self._max_batches,
                # A lease that keeps state (the reconciler's cursors) is kept: losing the
                # cursors would restart its sweeps and event feed from the beginning.
                unless={"state": {"$exists": False}},
            )  # fmt: skip
        except PyMongoError as exc:
            raise StoreUnavailable(f"lease sweep failed: {type(exc).__name__}") from exc
        return report

    async def sweep_with_lease(self, *, owner: str, now: datetime, lease_seconds: float) -> SweepReport:
        """Sweeps only while holding the ``janitor`` lease (one replica at a time)."""
        if not self._indexed:
            await self.ensure_indexes()
        if not await self._leases.acquire(LEASE_NAME, owner, now=now, ttl_seconds=lease_seconds):
            return SweepReport(skipped=True)
        report = await self.sweep_once(now=now)
        if report.total:
            log.info(
                "janitor pass",
                extra={
                    "webhook_events": report.webhook_events,
                    "idempotency_records": report.idempotency_records,
                    "leases": report.leases,
                },
            )
        return report
