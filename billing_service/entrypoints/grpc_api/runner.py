"""Declarative RPCs and the one runner that executes them.

Each RPC is one entry: a :class:`Read` (permission, use case, response encoder), a
:class:`Write` (also a request decoder, the id prefix of what it creates and, for the
creating RPCs, a ``validate_only`` preview) or a :class:`Stream` (a server stream: the
use case yields the messages). The runner gives every entry the same pipeline, so adding
an RPC is the proto, one use case and one entry:

- reads: schema checks (:mod:`.field_behavior`), the use case, the encoder;
- writes: card data refused first (nothing is stored, logged or echoed), schema checks,
  request_id checks, the decoder (domain validation, before anything is stored); then
  either the preview (``validate_only``: no writes, no processor, no request_id used) or
  the use case exactly once per (caller, method, request_id) through :class:`Idempotency`;
- streams: schema checks, then each message the use case yields, written as the caller
  reads (a slow reader slows only its own stream); no store deadline, since a stream
  lives as long as its caller wants;
- all: every error mapped to a rich status by ``errors.py`` (reads and writes within the
  caller's deadline).

Permissions live in the same entries; ``auth.METHOD_PERMISSIONS`` is read from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from billing_service.domain.card_data import refuse_card_data
from billing_service.domain.errors import BillingError, StoreUnavailable
from billing_service.entrypoints.grpc_api import errors
from billing_service.entrypoints.grpc_api.base import (
    Ctx,
    fingerprint,
    string_fields,
    without_client_secrets,
)
from billing_service.entrypoints.grpc_api.field_behavior import enforce
from billing_service.observability.context import current_caller
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import Idempotency, RequestContext, validate_request_id
from billing_service.service_layer.pagination import token_scope

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Cmd = TypeVar("Cmd")
Out = TypeVar("Out")


@dataclass(frozen=True)
class Read(Generic[Req, Out, Resp]):
    """A read-only RPC.

    Attributes:
        name: The RPC's name in its service (``GetPayment``).
        request_type: Its request message class.
        permission: The permission group a caller needs (see ``auth.py``).
        run: Reads the request and calls the use case.
        encode: Builds the response from the use case's result.
    """

    name: str
    request_type: type[Req]
    permission: str
    run: Callable[[Deps, Req], Awaitable[Out]]
    encode: Callable[[Out], Resp]


@dataclass(frozen=True)
class Write(Generic[Req, Cmd, Out, Resp]):
    """A mutating RPC, run at most once per request_id.

    Attributes:
        name: The RPC's name in its service (``CreatePayment``).
        request_type: Its request message class (it has a ``request_id``).
        permission: The permission group a caller needs (see ``auth.py``).
        resource_prefix: Prefix of the id reserved for what the request creates.
        decode: Parses and validates the request into a command, raising
            ``InvalidArgument`` before anything is stored.
        run: The use case.
        encode: Builds the response from the use case's result.
        preview: The use case's checks without its effects, for ``validate_only``;
            required when the request has a ``validate_only`` field.
        on_replay: Completes a replayed answer, which was stored without its client
            secrets (they are never kept): e.g. reads the live one from the processor.
    """

    name: str
    request_type: type[Req]
    permission: str
    resource_prefix: str
    decode: Callable[[Req], Cmd]
    run: Callable[[Deps, RequestContext, Cmd], Awaitable[Out]]
    encode: Callable[[Out], Resp]
    preview: Callable[[Deps, Cmd], Awaitable[Out]] | None = None
    on_replay: Callable[[Deps, Resp], Awaitable[Resp]] | None = None


@dataclass(frozen=True)
class Stream(Generic[Req, Resp]):
    """A server-streaming RPC (read-only).

    Attributes:
        name: The RPC's name in its service (``WatchEvents``).
        request_type: Its request message class.
        permission: The permission group a caller needs (see ``auth.py``).
        run: Reads the request and yields the stream's messages; the runner writes each
            before asking for the next, so the caller's reading paces it.
    """

    name: str
    request_type: type[Req]
    permission: str
    run: Callable[[Deps, Req], AsyncIterator[Resp]]


Rpc = Read[Any, Any, Any] | Write[Any, Any, Any, Any] | Stream[Any, Any]


def _entry(rpc: object) -> Rpc:
    if not isinstance(rpc, Read | Write | Stream):
        raise TypeError(f"an RPC entry must be a Read, a Write or a Stream, not {type(rpc).__name__}")
    return rpc


class Service:
    """Every RPC of one gRPC service, checked against its descriptor when built.

    Args:
        descriptor: The service's descriptor.
        rpcs: One :class:`Read` or :class:`Write` per RPC. (Typed ``object`` on purpose:
            with no expected type around them, mypy infers each entry's own request and
            response types and checks its lambdas against them.)

    Raises:
        ValueError: An RPC of the descriptor has no entry (or two), an entry names no RPC,
            or an entry's request type or validate_only preview does not fit its RPC.
    """

    def __init__(self, descriptor: ServiceDescriptor, rpcs: Sequence[object]) -> None:
        self.descriptor = descriptor
        self.rpcs: tuple[Rpc, ...] = tuple(_entry(rpc) for rpc in rpcs)
        by_name = {rpc.name: rpc for rpc in self.rpcs}
        declared = {m.name for m in descriptor.methods}
        if len(by_name) != len(self.rpcs) or set(by_name) != declared:
            raise ValueError(f"{descriptor.full_name}: entries {sorted(by_name)} != RPCs {sorted(declared)}")
        for method in descriptor.methods:
            rpc = by_name[method.name]
            if rpc.request_type.DESCRIPTOR.full_name != method.input_type.full_name:
                raise ValueError(f"{method.full_name}: request type {rpc.request_type.__name__} does not match")
            if isinstance(rpc, Stream) != bool(method.server_streaming) or method.client_streaming:
                raise ValueError(f"{method.full_name}: Stream entries are for server-streaming RPCs only")
            fields = method.input_type.fields_by_name
            if isinstance(rpc, Write) and "request_id" not in fields:
                raise ValueError(f"{method.full_name}: a Write entry needs a request_id field")
            if isinstance(rpc, Write) and ("validate_only" in fields) != (rpc.preview is not None):
                raise ValueError(f"{method.full_name}: validate_only and preview must come together")

    def method(self, rpc: Rpc) -> str:
        """The full method name of ``rpc`` (``/billing.v1.BillingService/GetPayment``)."""
        return f"/{self.descriptor.full_name}/{rpc.name}"

    def permissions(self) -> Mapping[str, str]:
        """Full method name -> permission group."""
        return {self.method(rpc): rpc.permission for rpc in self.rpcs}


# Of a caller's deadline, the store's operations get all but this share (at most 0.5 s),
# so a store that does not answer ends the call UNAVAILABLE before the deadline does. Half
# of it is left for cleanup (releasing the request's lease) after a timed-out operation.
_STORE_RESERVE_SHARE = 0.25
_STORE_RESERVE_MAX = 0.5


def _store_is_serving() -> bool:
    return True


class Runner:
    """Runs declared RPCs against the use cases.

    Args:
        deps: Ports for the use cases.
        idempotency: Runs mutating requests at most once per request_id.
        store_serving: False while the health probe finds the store down: calls then fail
            at once with ``UNAVAILABLE`` and ``RetryInfo`` instead of waiting for it.
    """

    def __init__(
        self, deps: Deps, idempotency: Idempotency, store_serving: Callable[[], bool] = _store_is_serving
    ) -> None:
        self.deps = deps
        self.idem = idempotency
        self._store_serving = store_serving

    def bind(self, servicer: object, service: Service) -> None:
        """Sets one async handler per RPC of ``service`` on ``servicer`` (by RPC name)."""
        for rpc in service.rpcs:
            setattr(servicer, rpc.name, self._handler(service.method(rpc), rpc, service))

    def _handler(self, method: str, rpc: Rpc, service: Service) -> Callable[[Message, Ctx], Any]:
        if isinstance(rpc, Stream):
            return self._stream_handler(method, rpc)
        output = service.descriptor.methods_by_name[rpc.name].output_type
        response_type: type[Message] = message_factory.GetMessageClass(output)

        async def handle(request: Message, context: Ctx) -> Message:
            return await self._guard(context, method, lambda: self._call(method, rpc, request, response_type))

        handle.__name__ = handle.__qualname__ = rpc.name
        return handle

    def _stream_handler(self, method: str, rpc: Stream[Any, Any]) -> Callable[[Message, Ctx], AsyncIterator[Message]]:
        async def stream(request: Message, context: Ctx) -> AsyncIterator[Message]:
            try:
                if not self._store_serving():
                    raise StoreUnavailable("the store is not answering (health probe); retry after the delay")
                clean = type(request)()
                clean.CopyFrom(request)
                enforce(clean)
                async with contextlib.aclosing(
                    cast(AsyncGenerator[Message, None], rpc.run(self.deps, clean))
                ) as messages:
                    async for message in messages:
                        yield message
            except BillingError as exc:
                await context.abort_with_status(errors.to_status(exc))  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                raise
            except Exception:
                if context.code() is not None and context.code() != grpc.StatusCode.OK:
                    raise  # an abort already in flight
                log.exception("unexpected error", extra={"method": method})
                await context.abort_with_status(errors.internal_status(method))  # type: ignore[attr-defined]

        stream.__name__ = stream.__qualname__ = rpc.name
        return stream

    async def _call(self, method: str, rpc: Rpc, request: Message, response_type: type[Message]) -> Message:
        # A copy: the schema checks clear output-only fields, and the caller's object is not ours.
        clean = type(request)()
        clean.CopyFrom(request)
        assert not isinstance(rpc, Stream)
        if isinstance(rpc, Read):
            enforce(clean)
            # Page tokens are bound to this list and this caller.
            with token_scope(method, current_caller.get()):
                response: Message = rpc.encode(await rpc.run(self.deps, clean))
            return response
        return await self._write(method, rpc, clean, response_type)

    async def _write(
        self, method: str, rpc: Write[Any, Any, Any, Any], request: Message, response_type: type[Message]
    ) -> Message:
        # Card data is refused before anything else looks at the request, so it is never
        # stored, logged or echoed back.
        refuse_card_data(string_fields(request))
        enforce(request)
        request_id = validate_request_id(getattr(request, "request_id", ""))
        command = rpc.decode(request)
        if rpc.preview is not None and getattr(request, "validate_only", False):
            preview: Message = rpc.encode(await rpc.preview(self.deps, command))
            return preview

        fresh: list[Message] = []

        def stored(response: Message) -> bytes:
            # The stored answer keeps no client secret; the first caller gets it.
            return without_client_secrets(response).SerializeToString(deterministic=True)

        async def work(ctx: RequestContext) -> bytes:
            response: Message = rpc.encode(await rpc.run(self.deps, ctx, command))
            fresh.append(response)
            return stored(response)

        data = await self.idem.run(
            caller=current_caller.get(),
            method=method,
            request_id=request_id,
            fingerprint=fingerprint(request),
            resource_prefix=rpc.resource_prefix,
            work=work,
            # The use case's last commit may store its answer (and the first claims the key).
            answer=lambda result: stored(rpc.encode(result)),
            defer_claim=True,
        )
        if fresh:
            return fresh[0]
        replayed = response_type.FromString(data)
        if rpc.on_replay is None:
            return replayed
        completed: Message = await rpc.on_replay(self.deps, replayed)
        return completed

    async def _guard(self, context: Ctx, method: str, call: Callable[[], Awaitable[Message]]) -> Message:
        """Runs ``call`` within the caller's deadline and maps its errors to rich statuses.

        Store operations are bounded by the deadline minus a reserve, so a dead store
        answers ``UNAVAILABLE`` (retry with the same request_id) within the deadline.
        """
        remaining = context.time_remaining()
        try:
            if not self._store_serving():
                raise StoreUnavailable("the store is not answering (health probe); retry after the delay")
            if remaining is None:
                return await call()
            reserve = min(_STORE_RESERVE_MAX, remaining * _STORE_RESERVE_SHARE)
            with self.deps.store.deadline(remaining - reserve, cleanup_seconds=reserve / 2):
                async with asyncio.timeout(max(remaining, 0.001)):
                    return await call()
        except BillingError as exc:
            await context.abort_with_status(errors.to_status(exc))  # type: ignore[attr-defined]
        except TimeoutError:
            await context.abort_with_status(errors.deadline_status(method))  # type: ignore[attr-defined]
        except asyncio.CancelledError:
            raise
        except Exception:
            if context.code() is not None and context.code() != grpc.StatusCode.OK:
                raise  # an abort already in flight
            log.exception("unexpected error", extra={"method": method})
            await context.abort_with_status(errors.internal_status(method))  # type: ignore[attr-defined]
        raise AssertionError("unreachable")  # abort_with_status always raises
