"""Requests that are not valid protobuf get INVALID_ARGUMENT, not grpcio's UNKNOWN.

grpcio deserializes the request before any servicer code runs; when that fails (corrupt
wire format, a string field with bad UTF-8) it answers ``UNKNOWN`` with the parser's
exception text. This interceptor makes the deserializer tolerant and lets the method
answer with the service's own error: ``INVALID_ARGUMENT``, reason ``MALFORMED_REQUEST``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, cast

import grpc
from google.protobuf.message import DecodeError

from billing_service.domain.errors import InvalidArgument
from billing_service.entrypoints.grpc_api import errors

if TYPE_CHECKING:
    Ctx = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Ctx = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.aio.ServerInterceptor

log = logging.getLogger(__name__)

MALFORMED_REQUEST: Final = "MALFORMED_REQUEST"


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""


_UNDECODABLE: Final = _Undecodable()


class MalformedRequestGuard(_Interceptor):
    """Answers undecodable unary requests with INVALID_ARGUMENT (MALFORMED_REQUEST).

    Args:
        prefixes: Method-name prefixes to guard (the billing services).
    """

    def __init__(self, prefixes: tuple[str, ...] = ("/billing.v1.",)) -> None:
        self._prefixes = prefixes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        """Wraps unary-unary handlers of the guarded services."""
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if (
            handler is None
            or handler.unary_unary is None
            or handler.request_deserializer is None
            or not method.startswith(self._prefixes)
        ):
            return handler
        parse = handler.request_deserializer
        behavior = cast(Callable[[Any, Ctx], Awaitable[Any]], handler.unary_unary)

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError:
                return _UNDECODABLE

        async def guarded(request: Any, context: Ctx) -> Any:
            if request is _UNDECODABLE:
                log.info("malformed request refused", extra={"method": method})
                error = InvalidArgument(
                    f"the request is not a valid {method.rsplit('/', 1)[-1]} message",
                    reason=MALFORMED_REQUEST,
                    metadata={"method": method},
                )
                # grpc-stubs lacks abort_with_status on the aio context.
                await cast(Any, context).abort_with_status(errors.to_status(error))
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=tolerant, response_serializer=handler.response_serializer
        )
