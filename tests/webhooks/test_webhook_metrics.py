"""Webhook metrics: a real sidecar process scraped on its metrics port, and the worker's
outcome counters (failed, dead, processed with lag) and log request id in process."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing_service.domain.common import Processor
from billing_service.entrypoints.webhooks.cli import bind
from billing_service.entrypoints.webhooks.worker import InboxWorkers, WorkerSettings
from billing_service.observability.logging import current_request_id
from billing_service.observability.metrics import WebhookMetrics
from billing_service.service_layer.ports import WebhookStatus
from tests.imitations.stripe_api import StripeImitation
from tests.webhooks.conftest import SidecarFactory, process_env, stripe_event, stripe_headers

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MeteredProcess:
    proc: subprocess.Popen[str]
    url: str
    metrics_url: str

    def scrape(self) -> Samples:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture
def metered_process(mongo_uri: str, stripe_api: StripeImitation) -> Iterator[MeteredProcess]:
    """``billing-service webhooks serve`` with one worker and its metrics on a free port."""
    env = process_env(
        mongo_uri,
        f"whm_{uuid.uuid4().hex}",
        stripe_api,
        BILLING_WEBHOOK_WORKERS="1",
        BILLING_WEBHOOK_METRICS_PORT=str(_free_port()),
        BILLING_WEBHOOK_MAX_BODY_BYTES="2048",
    )
    full = {**os.environ, **env, "BILLING_WEBHOOK_ADDRESS": "127.0.0.1:0", "BILLING_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "billing_service", "webhooks", "serve"],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = metrics_url = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (url and metrics_url):
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("billing webhook sidecar on "):
            url = line.split()[4]
        elif line.startswith("webhook metrics (Prometheus): "):
            metrics_url = line.split()[-1]
    try:
        assert url and metrics_url == f"http://127.0.0.1:{env['BILLING_WEBHOOK_METRICS_PORT']}/metrics", (
            f"sidecar did not announce itself and its metrics (exit {proc.poll()})"
        )
        yield MeteredProcess(proc, url, metrics_url)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_for(process: MeteredProcess, name: str, labels: dict[str, str], value: float) -> Samples:
    key = (name, tuple(sorted(labels.items())))
    deadline = time.monotonic() + 15
    while True:
        samples = await asyncio.to_thread(process.scrape)
        if samples.get(key) == value:
            return samples
        assert time.monotonic() < deadline, f"{key} = {samples.get(key)}, wanted {value}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_sidecar_process_counts_deliveries_on_its_metrics_port(metered_process: MeteredProcess) -> None:
    event = stripe_event("payment_intent.succeeded")
    body = json.dumps(event).encode()
    forged = json.dumps(stripe_event("payment_intent.succeeded")).encode()
    not_an_event = json.dumps({"object": "list", "data": []}).encode()
    oversized = json.dumps({**stripe_event("charge.refunded"), "padding": "x" * 4096}).encode()
    url = f"{metered_process.url}/webhooks/stripe"
    plain = {**stripe_headers(body), "Content-Type": "text/plain"}
    async with httpx.AsyncClient(timeout=10) as http:
        statuses = [
            (await http.post(url, content=body, headers=stripe_headers(body))).status_code,
            (await http.post(url, content=body, headers=stripe_headers(body))).status_code,  # redelivery
            (await http.post(url, content=forged, headers=stripe_headers(forged, secret="whsec_wrong"))).status_code,
            (await http.post(url, content=oversized, headers=stripe_headers(oversized))).status_code,
            (await http.post(url, content=body, headers=plain)).status_code,
            (await http.post(url, content=not_an_event, headers=stripe_headers(not_an_event))).status_code,
        ]  # fmt: skip
    assert statuses == [200, 200, 400, 413, 415, 400]

    stripe = {"processor": "stripe"}
    samples = await _wait_for(
        metered_process,
        "billing_webhooks_processed_total",
        {**stripe, "event_type": "payment_intent.succeeded"},
        1.0,
    )
    assert samples[("billing_webhooks_received_total", (("processor", "stripe"),))] == 6
    assert samples[("billing_webhooks_duplicate_total", (("processor", "stripe"),))] == 1
    rejected = {
        dict(labels)["cause"]: value
        for (name, labels), value in samples.items()
        if name == "billing_webhooks_rejected_total"
    }
    assert rejected == {"bad_signature": 1, "too_large": 1, "bad_content_type": 1, "bad_event": 1}
    assert samples[("billing_webhook_lag_seconds_count", ())] == 1
    assert 0 <= samples[("billing_webhook_lag_seconds_sum", ())] < 15
    # Nothing failed or died; the gauges exist (the inbox drains to 0 once processed).
    assert not any(name in ("billing_webhooks_failed_total", "billing_webhooks_dead_total") for name, _ in samples)
    await _wait_for(metered_process, "billing_webhook_inbox_depth", {}, 0.0)
    assert ("billing_webhook_inbox_oldest_age_seconds", ()) in samples


@pytest.fixture
async def receive_only(make_sidecar: SidecarFactory) -> AsyncIterator[Any]:
    yield await make_sidecar(workers=0)


async def test_worker_counts_outcomes_and_sets_the_request_id(receive_only: Any) -> None:
    sidecar = receive_only
    metrics = WebhookMetrics()
    seen: list[str] = []

    async def succeeds(deps: Any, ctx: Any, event: Any) -> WebhookStatus:
        seen.append(current_request_id.get())
        return WebhookStatus.PROCESSED

    async def breaks(deps: Any, ctx: Any, event: Any) -> WebhookStatus:
        seen.append(current_request_id.get())
        raise RuntimeError("handler bug")

    handlers = {(Processor.STRIPE, "payment_intent.succeeded"): succeeds, (Processor.STRIPE, "charge.refunded"): breaks}
    workers = InboxWorkers(
        sidecar.runtime.deps,
        sidecar.inbox,
        WorkerSettings(workers=0, max_attempts=2, retry_base_seconds=0.01, retry_max_seconds=0.01),
        handlers=handlers,
        metrics=metrics,
    )
    good, bad = stripe_event("payment_intent.succeeded"), stripe_event("charge.refunded")
    for event in (good, bad):
        assert (await sidecar.post_stripe(event)).status_code == 200

    for _ in range(20):
        if not await workers.run_once("test-owner"):
            if await sidecar.inbox.collection.count_documents({"status": WebhookStatus.DEAD.value}):
                break
            await asyncio.sleep(0.02)

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("billing_webhooks_processed_total", processor="stripe", event_type="payment_intent.succeeded") == 1
    assert value("billing_webhooks_failed_total", processor="stripe", event_type="charge.refunded") == 2
    assert value("billing_webhooks_dead_total", processor="stripe", event_type="charge.refunded") == 1
    assert value("billing_webhook_lag_seconds_count") == 1
    assert seen == [good["id"], bad["id"], bad["id"]]
    assert current_request_id.get() == ""  # reset after each event


async def test_sidecar_connections_have_tcp_nodelay() -> None:
    """Without it every response's body waited for the client's delayed ACK (+40 ms)."""
    accepted: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    sock = bind("127.0.0.1:0")
    server = await asyncio.start_server(on_connect, sock=sock)
    try:
        _, client = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        for _ in range(100):
            if accepted:
                break
            await asyncio.sleep(0.01)
        conn = accepted[0].get_extra_info("socket")
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client.close()
        accepted[0].close()
    finally:
        server.close()
        await server.wait_closed()
