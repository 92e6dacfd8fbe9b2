"""Shared plumbing of the servicers: error mapping, deadlines and idempotent writes."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message

from billing_service.domain.card_data import contains_card_number, refuse_card_data
from billing_service.domain.errors import BillingError, InvalidArgument, StoreUnavailable
from billing_service.entrypoints.grpc_api import errors
from billing_service.service_layer.core import Deps
from billing_service.service_layer.idempotency import Idempotency, RequestContext, validate_request_id
from billing_service.service_layer.pagination import token_scope

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Ctx = grpc.aio.ServicerContext[Any, Any]
else:
    Ctx = grpc.aio.ServicerContext

R = TypeVar("R", bound=Message)
T = TypeVar("T")

# Set by the authentication interceptor; "anonymous" when auth is off.
current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("current_caller", default="anonymous")


def fingerprint(request: Message) -> str:
    """Digest of the request without its request_id (what makes two requests 'the same')."""
    clone = type(request)()
    clone.CopyFrom(request)
    clone.ClearField("request_id")  # type: ignore[arg-type]
    return hashlib.sha256(clone.SerializeToString(deterministic=True)).hexdigest()


def string_fields(message: Message, prefix: str = "") -> list[tuple[str, str]]:
    """Every string in ``message`` (nested messages and maps included) with its field path."""
    out: list[tuple[str, str]] = []
    for desc, value in message.ListFields():
        path = f"{prefix}{desc.name}"
        if path == "request_id":
            continue  # checked whole by validate_request_id (a UUID's digit groups are not a card)
        if desc.message_type is not None and desc.message_type.GetOptions().map_entry:
            for key, item in value.items():
                name = str(key)
                # A field path must never echo card data back: a suspicious key is named by its map.
                entry = f"{path}[{name}]" if len(name) < 64 and not contains_card_number(name) else path
                out.append((path, name))
                if isinstance(item, str):
                    out.append((entry, item))
        elif desc.type == desc.TYPE_STRING:
            values = value if desc.is_repeated else [value]
            out.extend((path, v) for v in values)
        elif desc.type == desc.TYPE_MESSAGE:
            items = value if desc.is_repeated else [value]
            for item in items:
                out.extend(string_fields(item, f"{path}."))
    return out


def without_client_secrets(message: R) -> R:
    """A copy of ``message`` with every ``client_secret`` cleared (what may be stored)."""
    clone = type(message)()
    clone.CopyFrom(message)
    _clear_client_secrets(clone)
    return clone


def _clear_client_secrets(message: Message) -> None:
    for desc, value in message.ListFields():
        if desc.message_type is None:
            if desc.name == "client_secret":
                message.ClearField(desc.name)  # type: ignore[arg-type]
        elif not desc.message_type.GetOptions().map_entry:
            for item in value if desc.is_repeated else [value]:
                _clear_client_secrets(item)


# Of a caller's deadline, the store's operations get all but this share (at most 0.5 s),
# so a store that does not answer ends the call UNAVAILABLE before the deadline does. Half
# of it is left for cleanup (releasing the request's lease) after a timed-out operation.
_STORE_RESERVE_SHARE = 0.25
_STORE_RESERVE_MAX = 0.5


def _store_is_serving() -> bool:
    return True


class Servicer:
    """Base of both servicers.

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

    async def _guard(self, context: Ctx, method: str, call: Callable[[], Awaitable[T]]) -> T:
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

    async def _read(self, context: Ctx, method: str, call: Callable[[], Awaitable[R]]) -> R:
        """Runs a read-only use case; page tokens are bound to this method and caller."""
        with token_scope(method, current_caller.get()):
            return await self._guard(context, method, call)

    async def _mutate(
        self,
        context: Ctx,
        request: Message,
        *,
        method: str,
        resource_prefix: str,
        response_type: type[R],
        prepare: Callable[[], Callable[[RequestContext], Awaitable[R]]],
        on_replay: Callable[[R], Awaitable[R]] | None = None,
    ) -> R:
        """Runs a mutating use case exactly once per (caller, method, request_id).

        ``prepare`` parses and validates the request (raising ``InvalidArgument`` before
        anything is stored) and returns the work to execute. The stored answer has its
        client secrets cleared (they are never kept); the first caller gets them, and
        ``on_replay`` may restore live ones on a replayed answer.
        """

        async def run() -> R:
            # Card data is refused before anything else looks at the request, so it is
            # never stored, logged or echoed back.
            refuse_card_data(string_fields(request))
            request_id = validate_request_id(getattr(request, "request_id", ""))
            execute = prepare()

            fresh: list[R] = []

            async def work(ctx: RequestContext) -> bytes:
                response = await execute(ctx)
                fresh.append(response)
                return without_client_secrets(response).SerializeToString(deterministic=True)

            data = await self.idem.run(
                caller=current_caller.get(),
                method=method,
                request_id=request_id,
                fingerprint=fingerprint(request),
                resource_prefix=resource_prefix,
                work=work,
            )
            if fresh:
                return fresh[0]
            replayed = response_type.FromString(data)
            return replayed if on_replay is None else await on_replay(replayed)

        return await self._guard(context, method, run)


def require(value: str, field_path: str) -> str:
    """Raises InvalidArgument when a required string field is empty."""
    if not value:
        raise InvalidArgument.field(field_path, "is required")
    return value
