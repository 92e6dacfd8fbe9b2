"""The inbox dispatcher: events stored here are claimed by id, the rest by the poll query."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import pytest

from billing_service.adapters.mongo.inbox import MongoWebhookInbox
from billing_service.adapters.mongo.store import MongoBillingStore
from billing_service.domain.common import Processor
from billing_service.entrypoints.webhooks.worker import InboxWorkers, WorkerSettings
from billing_service.service_layer.clock import SystemClock
from billing_service.service_layer.core import Deps
from billing_service.service_layer.ports import InboxEvent, WebhookStatus

EVENT = "payment_intent.succeeded"


class CountingInbox(MongoWebhookInbox):
    """The real inbox, counting which claim verbs the workers use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    async def claim_due(self, owner: str, *, now: datetime, lease_seconds: float, limit: int) -> list[InboxEvent]:
        self.calls["claim_due"] += 1
        return await super().claim_due(owner, now=now, lease_seconds=lease_seconds, limit=limit)

    async def claim_stored(
        self, owner: str, events: Sequence[InboxEvent], *, now: datetime, lease_seconds: float
    ) -> list[InboxEvent]:
        self.calls["claim_stored"] += 1
        return await super().claim_stored(owner, events, now=now, lease_seconds=lease_seconds)


class Recorder:
    """A handler that records each event it runs and how many ran at once."""

    def __init__(self, delay: float = 0.02) -> None:
        self.seen: Counter[str] = Counter()
        self.running = 0
        self.most = 0
        self.delay = delay

    async def __call__(self, deps: Deps, ctx: Any, event: dict[str, Any]) -> WebhookStatus:
        self.seen[ctx.request_id] += 1
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(self.delay)
        self.running -= 1
        return WebhookStatus.PROCESSED


@pytest.fixture
async def inbox(store: MongoBillingStore) -> AsyncIterator[CountingInbox]:
    box = CountingInbox(store.database.client, store.database.name)
    await box.ensure_indexes()
    yield box


def workers_for(
    store: MongoBillingStore, inbox: MongoWebhookInbox, recorder: Recorder, **settings: Any
) -> InboxWorkers:
    # The handlers here never call a processor; it only has to be configured.
    configured: Any = object()
    deps = Deps(
        store=store, processors={Processor.STRIPE: configured}, default_processor=Processor.STRIPE, clock=SystemClock()
    )
    return InboxWorkers(deps, inbox, WorkerSettings(**settings), handlers={(Processor.STRIPE, EVENT): recorder})


async def settle(inbox: MongoWebhookInbox, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while await inbox.collection.count_documents({"status": WebhookStatus.PROCESSED.value}) < count:
        assert time.monotonic() < deadline, "events were not processed in time"
        await asyncio.sleep(0.02)


async def store_events(inbox: MongoWebhookInbox, workers: InboxWorkers | None, n: int) -> list[str]:
    ids = [f"evt_{uuid.uuid4().hex[:16]}" for _ in range(n)]
    for event_id in ids:
        assert await inbox.insert(Processor.STRIPE, event_id, EVENT, b"{}", now=datetime.now().astimezone())
        if workers is not None:
            workers.wake()  # what the sidecar does after each stored delivery
    return ids


async def test_events_stored_here_are_claimed_by_id_without_a_query(
    store: MongoBillingStore, inbox: CountingInbox
) -> None:
    recorder = Recorder()
    workers = workers_for(store, inbox, recorder, workers=4, poll_seconds=30)
    workers.start()
    try:
        await asyncio.sleep(0.2)  # the first round looks for work left from before, once
        ids = await store_events(inbox, workers, 24)
        await settle(inbox, 24)
    finally:
        await workers.stop()
    assert recorder.seen == Counter({i: 1 for i in ids})
    assert inbox.calls["claim_due"] == 1
    assert inbox.calls["claim_stored"] >= 1
    assert 1 < recorder.most <= 4  # concurrent, within the configured limit
    docs = await inbox.collection.find({}).to_list()
    assert {(d["attempts"], d["processed_by"].split("-")[0]) for d in docs} == {
        (1, docs[0]["processed_by"].split("-")[0])
    }


async def test_events_stored_by_another_process_are_found_by_the_poll(
    store: MongoBillingStore, inbox: CountingInbox
) -> None:
    recorder = Recorder(delay=0.0)
    workers = workers_for(store, inbox, recorder, workers=2, poll_seconds=0.05)
    elsewhere = MongoWebhookInbox(store.database.client, store.database.name)  # nobody listens to it
    workers.start()
    try:
        ids = await store_events(elsewhere, None, 10)
        await settle(inbox, 10)
    finally:
        await workers.stop()
    assert recorder.seen == Counter({i: 1 for i in ids})
    assert inbox.calls["claim_stored"] == 0


async def test_a_full_queue_of_stored_events_is_left_to_the_query(
    store: MongoBillingStore, inbox: CountingInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from billing_service.entrypoints.webhooks import worker

    monkeypatch.setattr(worker, "_OFFERED_MAX", 3)
    recorder = Recorder(delay=0.05)
    workers = workers_for(store, inbox, recorder, workers=1, poll_seconds=30)
    workers.start()
    try:
        ids = await store_events(inbox, workers, 12)
        await settle(inbox, 12)
    finally:
        await workers.stop()
    assert recorder.seen == Counter({i: 1 for i in ids})
    assert inbox.calls["claim_due"] > 1  # the overflow asked for a query
