"""The janitor as ``serve`` builds it: the composition root's loop sweeps under its lease with
the configured inbox retention."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from billing_service.adapters.mongo.janitor import SweepReport
from billing_service.bootstrap import bootstrap, build_janitor
from billing_service.config import Settings
from billing_service.domain.common import Processor
from billing_service.service_layer.clock import ManualClock
from billing_service.service_layer.ports import WebhookStatus


async def test_build_janitor_sweeps_with_the_settings_retention(mongo_uri: str) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    clock = ManualClock(start)
    settings = Settings(mongodb_database=f"jan_{uuid.uuid4().hex}", webhook_retention_days=40, enable_fake=False)
    runtime = await bootstrap(settings, clock=clock, processors={}, mongodb_uri=mongo_uri)
    try:
        inbox = runtime.inbox
        assert await inbox.insert(Processor.STRIPE, "evt_j", "charge.refunded", b"{}", now=start)
        [event] = await inbox.claim_due("w", now=start, lease_seconds=60, limit=1)
        assert await inbox.complete(event.id, "w", WebhookStatus.PROCESSED, now=start)
        doc = await inbox.collection.find_one({"_id": event.id})
        assert doc is not None and doc["purge_at"] == start + timedelta(days=40)

        janitor = build_janitor(runtime, interval=60)
        clock.advance(timedelta(days=39))
        assert await janitor.run_once() == SweepReport()  # within retention: nothing to remove
        clock.advance(timedelta(days=2))
        report = await janitor.run_once()
        assert isinstance(report, SweepReport) and report.webhook_events == 1 and not report.skipped
        assert await inbox.get(Processor.STRIPE, "evt_j") is None
        await janitor.stop()  # never started: a no-op
    finally:
        await runtime.store.database.client.drop_database(settings.mongodb_database)
        await runtime.aclose()
