"""gRPC metrics and the server interceptor that records them.

:class:`MetricsInterceptor` (which also sets the request id for the JSON logs) records:
    ``billing_grpc_requests_total{method,code}``,
    ``billing_grpc_request_duration_seconds{method}`` (histogram).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from billing_service.observability.logging import current_request_id
from billing_service.observability.metrics.registry import LATENCY_BUCKETS, MetricGroup

__all__ = ["MetricsInterceptor", "RpcMetrics"]


class RpcMetrics(MetricGroup):
    """The served RPCs: calls by method and status code, and their latency.

    Args:
        registry: Where the metrics live (a fresh registry by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.rpc_requests = Counter(
            "billing_grpc_requests", "gRPC calls served, by method and status code", ["method", "code"], registry=r
        )
        self.rpc_duration = Histogram(
            "billing_grpc_request_duration_seconds",
            "gRPC call latency",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )


def _code_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code: Any = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    for member in grpc.StatusCode:  # some grpc versions return the numeric code
        if member.value[0] == code:
            return member.name
    return "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts unary RPCs by method and code, times them, and sets the log request id.

    The request id is the ``x-request-id`` metadata when the caller sent one, else the
    request's ``request_id`` field (the idempotency key of writes), else a random one.
    Streaming RPCs (reflection, health Watch) pass through uncounted.

    Args:
        metrics: Where the RPC metrics live (``BillingMetrics`` is one).
    """

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics
        # Wrapped handlers by the identity of the handler they wrap (handlers of generic
        # services are static, so this stays small); bounded in case a later interceptor
        # builds handlers per call.
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wraps the unary handler of the called method."""
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        cached = self._wrapped.get(id(handler))
        if cached is not None and cached[0] is handler:
            wrapped = cached[1]
        else:
            wrapped = self._wrap(handler, handler_call_details.method)
            if len(self._wrapped) < 1024:
                self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        behavior: Any = handler.unary_unary
        duration = self._metrics.rpc_duration.labels(method)
        ok = self._metrics.rpc_requests.labels(method, "OK")
        requests = self._metrics.rpc_requests

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request_id = ""
            for key, value in context.invocation_metadata() or ():
                if key == "x-request-id" and isinstance(value, str):
                    request_id = value[:128]
                    break
            token = current_request_id.set(request_id or getattr(request, "request_id", "") or secrets.token_hex(8))
            start = time.perf_counter()
            try:
                response = await behavior(request, context)
            except asyncio.CancelledError:
                requests.labels(method, "CANCELLED").inc()
                raise
            except BaseException:
                code = _code_name(context)
                requests.labels(method, "UNKNOWN" if code == "OK" else code).inc()
                raise
            else:
                code = _code_name(context)
                (ok if code == "OK" else requests.labels(method, code)).inc()
                return response
            finally:
                duration.observe(time.perf_counter() - start)
                current_request_id.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
