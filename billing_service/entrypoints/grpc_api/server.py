"""The grpc.aio server: both services, reflection, health and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, cast

import grpc
from billing.v1 import (
    billing_service_pb2,
    billing_service_pb2_grpc,
    event_service_pb2,
    event_service_pb2_grpc,
    subscription_service_pb2,
    subscription_service_pb2_grpc,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from billing_service.domain.errors import StoreUnavailable
from billing_service.entrypoints.grpc_api.billing import BillingServicer
from billing_service.entrypoints.grpc_api.decoding import MalformedRequestGuard
from billing_service.entrypoints.grpc_api.event_service import EventServicer
from billing_service.entrypoints.grpc_api.subscriptions import SubscriptionServicer
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import Idempotency

log = logging.getLogger(__name__)

# A health ping gets at least this long (test servers probe every 0.2 s).
_MIN_PING_SECONDS = 0.5

SERVICE_NAMES = (
    billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
    subscription_service_pb2.DESCRIPTOR.services_by_name["SubscriptionService"].full_name,
    event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
)


class GrpcServer:
    """Runs the billing API on one address.

    Health is SERVING only while the store answers. Every half ``health_interval`` a probe
    asks the store client whether it already lost the store (a killed server: noticed at
    once) and pings it within half an interval (a hung one), so a dead store turns every
    service NOT_SERVING within one interval; while it is, calls fail at once with
    ``UNAVAILABLE`` and ``RetryInfo``.

    Args:
        deps: Ports for the use cases.
        idempotency: The request de-duplicator.
        address: ``host:port`` to bind (port 0 picks a free one).
        reflection_enabled: Serve gRPC reflection (for grpcurl).
        max_message_bytes: Largest request accepted.
        health_interval: Seconds between store probes.
        interceptors: Server interceptors (authentication, metrics...).
    """

    def __init__(
        self,
        deps: Deps,
        idempotency: Idempotency,
        *,
        address: str,
        reflection_enabled: bool = True,
        max_message_bytes: int = 1024 * 1024,
        health_interval: float = 2.0,
        interceptors: Sequence[Any] = (),
        so_reuseport: bool = False,
    ) -> None:
        self.deps = deps
        self._address = address
        self._health_interval = health_interval
        self.health = HealthServicer()
        self.server = grpc.aio.server(
            # The malformed-request guard runs last, next to the servicer (after authentication).
            interceptors=[*interceptors, MalformedRequestGuard()],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.so_reuseport", 1 if so_reuseport else 0),
                ("grpc.keepalive_permit_without_calls", 1),
                # Pings find dead WatchEvents callers (a stream may stay silent for minutes).
                ("grpc.keepalive_time_ms", 30_000),
            ],
        )
        self._store_serving = True
        # The servicers' handlers are bound from their RPC tables at run time (see runner.py).
        billing_service_pb2_grpc.add_BillingServiceServicer_to_server(
            cast(Any, BillingServicer(deps, idempotency, self._serving)), self.server
        )
        subscription_service_pb2_grpc.add_SubscriptionServiceServicer_to_server(
            cast(Any, SubscriptionServicer(deps, idempotency, self._serving)), self.server
        )
        if deps.events is not None:
            event_service_pb2_grpc.add_EventServiceServicer_to_server(
                cast(Any, EventServicer(deps, idempotency, self._serving)), self.server
            )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if reflection_enabled:
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
                self.server,
            )
        self.port = 0
        self._probe: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, credentials: grpc.ServerCredentials | None = None) -> int:
        """Binds and starts serving; returns the bound port."""
        if credentials is None:
            self.port = self.server.add_insecure_port(self._address)
        else:
            self.port = self.server.add_secure_port(self._address, credentials)
        if self.port == 0:
            raise RuntimeError(f"could not bind {self._address}")
        await self.server.start()
        await self._set_health(await self._store_ok())
        self._probe = asyncio.create_task(self._probe_store(), name="store-health-probe")
        return self.port

    def _serving(self) -> bool:
        return self._store_serving

    async def _store_ok(self) -> bool:
        try:
            # Half an interval, but never so short that a busy moment looks like an outage.
            with self.deps.store.deadline(max(self._health_interval / 2, _MIN_PING_SECONDS)):
                await self.deps.store.ping()
        except StoreUnavailable:
            return False
        return True

    async def _set_health(self, ok: bool) -> None:
        self._store_serving = ok
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _probe_store(self) -> None:
        last: bool | None = None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            if last and not self.deps.store.seems_reachable():
                # The driver already lost the store: say so now; the ping below (which
                # waits for it) is what notices it coming back.
                log.warning("store health changed", extra={"serving": False})
                await self._set_health(False)
                last = False
            ok = await self._store_ok()
            if ok != last:
                if last is not None:
                    log.warning("store health changed", extra={"serving": ok})
                await self._set_health(ok)
                last = ok
            # A ping starts every half interval and is bounded by half an interval: a store
            # that dies right after a good ping is noticed within one interval.
            await asyncio.sleep(max(0.0, started + self._health_interval / 2 - loop.time()))

    async def stop(self, grace: float) -> None:
        """Stops accepting calls, lets in-flight ones finish for ``grace`` seconds."""
        self._stopping = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

    async def wait(self) -> None:
        """Blocks until the server stops."""
        await self.server.wait_for_termination()
