"""A store killed under a running ``billing-service serve`` (issue 11, item 6).

Callers with deadlines of 5 s or less must get ``UNAVAILABLE`` with ``RetryInfo`` inside
their deadline (never ``DEADLINE_EXCEEDED`` because the driver waited 5 s for a server),
health must say NOT_SERVING within one probe interval (2 s, the README's promise), and
everything works again once the store is back on the same address.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from billing_service.adapters.mongo.embedded import EmbeddedMongo
from tests.e2e.test_server_process import ServeProcess
from tests.helpers import rich, rid

pytestmark = pytest.mark.slow

PROBE_INTERVAL = 2.0  # the default BILLING_HEALTH_INTERVAL_SECONDS
SERVING = health_pb2.HealthCheckResponse.SERVING


async def status(health: health_pb2_grpc.HealthStub) -> int:
    return (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status  # type: ignore[no-any-return]


def _kill(store: EmbeddedMongo) -> None:
    proc = store._proc
    assert proc is not None
    proc.kill()  # SIGKILL: no goodbye to connected clients
    proc.wait(10)


async def test_a_killed_store_fails_calls_fast_and_health_within_one_interval(tmp_path: Path) -> None:
    store = EmbeddedMongo(tmp_path / "db", extra_args=("--sync-on-commit",))
    await store.start()
    port = store.port
    served = await asyncio.to_thread(
        ServeProcess,
        store.uri,
        BILLING_HEALTH_INTERVAL_SECONDS=str(PROBE_INTERVAL),
        BILLING_RECONCILE_INTERVAL_SECONDS="0",
    )
    revived: EmbeddedMongo | None = None
    try:
        async with grpc.aio.insecure_channel(served.target) as channel:
            billing = billing_service_pb2_grpc.BillingServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            created = await billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid()), timeout=10)
            assert await status(health) == SERVING

            _kill(store)
            killed_at = time.monotonic()

            async def not_serving_after() -> float:
                while await status(health) == SERVING:
                    await asyncio.sleep(0.05)
                return time.monotonic() - killed_at

            watcher = asyncio.create_task(not_serving_after())

            # Right after the kill (health may not know yet), then again later: every call
            # ends UNAVAILABLE with a retry delay, inside its deadline.
            outcomes = []
            for deadline in (5.0, 2.0, 1.0, 5.0, 0.5):
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await billing.GetCustomer(pb.GetCustomerRequest(customer_id=created.customer.id), timeout=deadline)
                info = rich(err.value)
                outcomes.append((deadline, info.code, info.reason, info.retry_delay_ms is not None))
                assert time.monotonic() - started < deadline + 0.5
            assert outcomes == [(d, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", True) for d, *_ in outcomes]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await billing.CreateCustomer(pb.CreateCustomerRequest(request_id=rid()), timeout=3)
            assert (rich(err.value).code, rich(err.value).reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")

            noticed_after = await watcher
            assert noticed_after <= PROBE_INTERVAL + 0.75, f"NOT_SERVING after {noticed_after:.2f}s"

            # The store comes back on the same address: health and calls recover.
            revived = EmbeddedMongo(tmp_path / "db", port=port, extra_args=("--sync-on-commit",))
            await revived.start()
            for _ in range(100):
                if await status(health) == SERVING:
                    break
                await asyncio.sleep(0.1)
            assert await status(health) == SERVING
            got = await billing.GetCustomer(pb.GetCustomerRequest(customer_id=created.customer.id), timeout=10)
            assert got.customer.id == created.customer.id
    finally:
        await asyncio.to_thread(served.stop)
        store.stop()
        if revived is not None:
            revived.stop()
