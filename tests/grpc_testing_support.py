"""Servicer tests without sockets: grpc.aio handlers and interceptors under ``grpc_testing``.

``grpc_testing`` drives a *synchronous* servicer: it calls each method in a thread with
its own ``ServicerContext`` and reads back the response, code, details and trailing
metadata. Our handlers are ``async`` and abort with ``abort_with_status`` (which the
testing context does not implement), so :func:`sync_servicer` wraps each one: it runs the
server interceptors and the handler on an event loop of its own, over :class:`AioContext`,
which turns ``abort_with_status`` into the testing context's code, details and trailers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import grpc
import grpc_testing
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from billing_service.service_layer.core import Deps


class _Aborted(Exception):
    """Raised by :meth:`AioContext.abort_with_status`, as grpc.aio's abort raises."""


class AioContext:
    """The parts of ``grpc.aio.ServicerContext`` our handlers and interceptors use."""

    def __init__(self, context: Any, *, peer: str = "ipv4:127.0.0.1:40000") -> None:
        self._context = context
        self._peer = peer
        self._code: grpc.StatusCode | None = None

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()  # type: ignore[no-any-return]

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # no TLS under grpc_testing

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort_with_status(self, status: grpc.Status) -> None:
        self._context.set_trailing_metadata(status.trailing_metadata)  # type: ignore[attr-defined]
        self._context.set_code(status.code)  # type: ignore[attr-defined]
        self._context.set_details(status.details)  # type: ignore[attr-defined]
        self._code = status.code  # type: ignore[attr-defined]
        raise _Aborted

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self._context.set_code(code)
        self._context.set_details(details)
        self._code = code
        raise _Aborted


@dataclass(frozen=True)
class _CallDetails:
    method: str
    invocation_metadata: Any


def sync_servicer(descriptor: ServiceDescriptor, servicer: object, interceptors: Sequence[Any] = ()) -> object:
    """A synchronous servicer for ``grpc_testing`` running ``servicer``'s async handlers.

    Args:
        descriptor: The service whose RPCs to expose.
        servicer: An object with one ``async def Name(request, context)`` per RPC.
        interceptors: ``grpc.aio.ServerInterceptor``s, outermost first (as the server
            takes them).
    """

    class _Sync:
        pass

    out = _Sync()
    for method in descriptor.methods:
        full = f"/{descriptor.full_name}/{method.name}"
        setattr(out, method.name, _method(full, getattr(servicer, method.name), interceptors))
    return out


def _method(
    full: str, behavior: Callable[[Any, Any], Awaitable[Any]], interceptors: Sequence[Any]
) -> Callable[[Any, Any], Any]:
    def call(request: Any, context: Any) -> Any:
        async def run() -> Any:
            async def terminal(_details: Any) -> Any:
                return grpc.unary_unary_rpc_method_handler(behavior)

            continuation: Callable[[Any], Awaitable[Any]] = terminal
            for interceptor in reversed(interceptors):
                continuation = functools.partial(interceptor.intercept_service, continuation)
            handler = await continuation(_CallDetails(full, context.invocation_metadata()))
            try:
                return await handler.unary_unary(request, AioContext(context))
            except _Aborted:
                return None

        return asyncio.run(run())

    return call


@dataclass
class Outcome:
    """What a unary call ended with, status details decoded."""

    response: Any
    code: grpc.StatusCode
    details: str
    reason: str = ""
    domain: str = ""
    error_infos: int = 0
    metadata: dict[str, str] | None = None
    violations: list[tuple[str, str]] | None = None
    retry_delay_ms: int | None = None


def invoke(
    server: grpc_testing.Server,
    descriptor: ServiceDescriptor,
    method: str,
    request: Message,
    *,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float | None = 10,
) -> Outcome:
    """Calls one unary RPC on a ``grpc_testing`` server and decodes its status details."""
    rpc = server.invoke_unary_unary(descriptor.methods_by_name[method], tuple(metadata), request, timeout)
    response, trailing, code, details = rpc.termination()
    out = Outcome(response, code, details)
    for key, value in trailing or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                out.reason, out.domain, out.metadata = info.reason, info.domain, dict(info.metadata)
                out.error_infos += 1
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                out.violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                out.retry_delay_ms = retry.retry_delay.ToMilliseconds()
    return out


def socketless_server(services: dict[ServiceDescriptor, object], *, fake_time: bool = False) -> grpc_testing.Server:
    """A ``grpc_testing`` server over sync servicers.

    Args:
        fake_time: Use a frozen clock for ``grpc_testing``'s own deadline (it then never
            cancels a call itself), so the handler's reaction to its deadline is observed.
    """
    time = grpc_testing.strict_fake_time(0.0) if fake_time else grpc_testing.strict_real_time()
    return grpc_testing.server_from_dictionary(services, time)


class _NoStore:
    """The one store call the runner makes itself: bounding store work by the caller's deadline."""

    def deadline(self, seconds: float, *, cleanup_seconds: float = 0.0) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


def deps_without_ports() -> Deps:
    """Deps for tests where no use case may reach a port (schema checks, error mapping)."""
    return cast(Deps, SimpleNamespace(store=_NoStore()))
