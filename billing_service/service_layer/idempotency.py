"""Idempotent execution of mutating requests (AIP-155, Stripe's semantics).

A request is keyed by (caller, method, request_id). The first execution claims the key
with a lease and allocates the id of the resource it creates; the key's record then holds
the serialized response (or the final error) for at least 24 hours.

- Same key, same request, finished: the stored result is returned, nothing runs again.
- Same key, different request: ``IdempotencyKeyReused``.
- Same key while the first execution holds a live lease: ``RequestInProgress``.
- The executor crashed or failed retryably: the lease lapses and the next retry takes
  over, reusing the allocated resource id and the same processor idempotency keys, so it
  resumes the work instead of doing it twice.

A live executor renews its lease (a heartbeat every third of the lease), so a request that
chains several slow processor calls is never taken over while it runs. Its writes are
fenced: every commit made on its behalf checks, in the same transaction, that the
request's fence still names this execution, and is refused once another execution took
over; before each money-moving processor call ``ensure_leases`` refuses to go on when the
heartbeat has not confirmed the lease recently (the store may be unreachable while another
replica takes over). The same leases let a cancel or the reconciler *hold* another
request's lapsed record (``hold_request``) so that request cannot resume meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from billing_service.domain.card_data import contains_card_number
from billing_service.domain.common import RequestOrigin
from billing_service.domain.errors import (
    BillingError,
    CardDataNotAllowed,
    ConcurrencyConflict,
    FieldViolation,
    IdempotencyKeyReused,
    InvalidArgument,
    NotFound,
    ProcessorError,
    RequestInProgress,
    StoreUnavailable,
)
from billing_service.domain.ids import new_id
from billing_service.service_layer.ports import (
    BillingStore,
    Clock,
    Fence,
    HoldOutcome,
    IdempotencyOutcome,
)

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,254}$")
_FIELD_RE = re.compile(r"^[\w.\[\]-]{0,200}$")


def validate_request_id(request_id: str) -> str:
    """Checks the caller's idempotency key (a UUID is recommended)."""
    if not request_id:
        raise InvalidArgument.field("request_id", "is required on every mutating request (use a UUID)")
    if not _REQUEST_ID.match(request_id):
        raise InvalidArgument.field(
            "request_id", "must be 1-255 characters of letters, digits and . _ : - (use a UUID)"
        )
    # Anywhere in the id (x4242..., req-4242-4242-...): the id is stored and logged.
    if contains_card_number(request_id):
        raise CardDataNotAllowed(
            "request_id looks like a card number; use a UUID",
            violations=[FieldViolation("request_id", "looks like a card number")],
        )
    return request_id


@dataclass(frozen=True)
class RequestContext:
    """What a use case knows about the request it executes.

    Attributes:
        caller: Authenticated identity of the calling service.
        method: Full gRPC method name (or a webhook/reconcile pseudo-method).
        request_id: The caller's idempotency key.
        resource_id: Id reserved for a resource this request creates; stable across a
            crash-and-retry of the same request.
        attempt: 1 for the first execution, more after a takeover.
    """

    caller: str
    method: str
    request_id: str
    resource_id: str
    attempt: int = 1

    @property
    def origin(self) -> RequestOrigin:
        """This request as the resources it creates remember it."""
        return RequestOrigin(self.caller, self.method, self.request_id)

    def processor_key(self, step: str) -> str:
        """Idempotency key for one processor call of this request.

        Derived from (caller, method, request_id) so every retry sends the same key to
        Stripe (``Idempotency-Key``) or PayPal (``PayPal-Request-Id``).
        """
        digest = hashlib.sha256(f"{self.caller}\x1f{self.method}\x1f{self.request_id}".encode()).hexdigest()
        return f"billing-{digest[:40]}-{step}"


def context_of(origin: RequestOrigin, resource_id: str, attempt: int = 2) -> RequestContext:
    """The context of a resource's creating request, to resume or verify its work later."""
    return RequestContext(origin.caller, origin.method, origin.request_id, resource_id, attempt)


# ---------------------------------------------------------------------------
# Leases held by the running task (the executor's own, and any it holds for others)
# ---------------------------------------------------------------------------


@dataclass
class Lease:
    """An idempotency record this task holds.

    Attributes:
        valid_until: Until when the lease is known to be ours: the ``lease_until`` of the
            last successful claim or heartbeat.
        lost: Another execution took the record over; nothing more may be done for it.
    """

    key: str
    owner: str
    lease_seconds: float
    valid_until: datetime
    lost: bool = False

    def fence(self, now: datetime) -> Fence:
        """The fence a commit made now carries."""
        return Fence(self.key, self.owner, now)


_LEASES: ContextVar[tuple[Lease, ...]] = ContextVar("billing_held_leases", default=())


def held_fences(now: datetime) -> list[Fence]:
    """Fences for a commit made now on behalf of the current task's requests."""
    return [lease.fence(now) for lease in _LEASES.get()]


def ensure_leases(now: datetime) -> None:
    """Raises unless every lease the current task holds is certainly still ours.

    Called before each money-moving processor call: a lease whose heartbeat has not been
    confirmed for two beats (a third of its term left) may have been taken over by a
    replica that could not see our renewals, so the call must not be sent.

    Raises:
        RequestInProgress: A lease was lost or could not be confirmed in time.
    """
    for lease in _LEASES.get():
        margin = timedelta(seconds=lease.lease_seconds / 3)
        if lease.lost or now >= lease.valid_until - margin:
            raise RequestInProgress(
                "this execution could not confirm its lease on the request; another execution may have "
                "taken it over, so nothing more is sent; retry with the same request_id"
            )


async def _heartbeat(store: BillingStore, clock: Clock, lease: Lease) -> None:
    """Renews ``lease`` every third of its term until cancelled or lost."""
    interval = lease.lease_seconds / 3
    while True:
        await asyncio.sleep(interval)
        until = clock.now() + timedelta(seconds=lease.lease_seconds)
        try:
            renewed = await store.idempotency_renew(lease.key, lease.owner, lease_until=until)
        except Exception:  # the store is down: ensure_leases stops the work if this lasts
            log.warning("idempotency lease heartbeat failed", exc_info=True)
            continue
        if not renewed:
            lease.lost = True
            log.warning("idempotency lease lost to another execution", extra={"key": lease.key})
            return
        lease.valid_until = max(lease.valid_until, until)


@contextlib.asynccontextmanager
async def _holding(store: BillingStore, clock: Clock, lease: Lease) -> AsyncIterator[Lease]:
    """Makes ``lease`` the current task's (fences, guards) and keeps it alive meanwhile."""
    token = _LEASES.set((*_LEASES.get(), lease))
    beat = asyncio.create_task(_heartbeat(store, clock, lease), name="idempotency-heartbeat")
    try:
        yield lease
    finally:
        # Stop renewing before anyone releases or completes the record: a late beat must
        # not extend a lease that was just handed back.
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        _LEASES.reset(token)


@dataclass(frozen=True)
class Hold:
    """The result of ``hold_request``.

    Attributes:
        outcome: HELD (we hold it), COMPLETED or ABSENT (nothing can resume the request),
            or BUSY (its executor is alive; nothing was taken).
        retry_after: For BUSY, when its current lease ends.
    """

    outcome: HoldOutcome
    retry_after: datetime | None = None

    @property
    def quiet(self) -> bool:
        """True when no execution of the request can run while the hold lasts."""
        return self.outcome is not HoldOutcome.BUSY


@contextlib.asynccontextmanager
async def hold_request(
    store: BillingStore, clock: Clock, origin: RequestOrigin, *, lease_seconds: float
) -> AsyncIterator[Hold]:
    """Holds another request's idempotency record so it cannot execute meanwhile.

    Used by a cancel racing its payment's create and by reconciliation before it resumes
    or settles a request's work. While HELD, the record's retries answer IN_PROGRESS, its
    stale executor's commits are refused by their fences, and this task's own commits are
    fenced by the hold (and renewed by a heartbeat). On exit the record is released so the
    request's next retry takes over at once and finds the settled resource.
    """
    owner = f"hold-{secrets.token_hex(10)}"
    outcome, record = await store.idempotency_hold(
        caller=origin.caller,
        method=origin.method,
        request_id=origin.request_id,
        owner=owner,
        now=clock.now(),
        lease_seconds=lease_seconds,
    )
    if outcome is not HoldOutcome.HELD or record is None:
        busy_until = record.lease_until if outcome is HoldOutcome.BUSY and record is not None else None
        yield Hold(outcome, busy_until)
        return
    lease = Lease(record.key, owner, lease_seconds, record.lease_until)
    try:
        async with _holding(store, clock, lease):
            yield Hold(outcome)
    finally:
        try:
            await store.idempotency_release(record.key, owner)
        except Exception:  # the hold lapses by itself
            log.warning("could not release a held idempotency record", exc_info=True)


def error_to_record(error: BillingError) -> dict[str, Any]:
    """Serializes a final error so a replay raises the same one."""
    record: dict[str, Any] = {
        "class": type(error).__name__,
        "reason": error.reason,
        "message": error.message,
        "metadata": dict(error.metadata),
    }
    if isinstance(error, InvalidArgument):
        record["violations"] = [[v.field, v.description] for v in error.violations]
    if isinstance(error, NotFound):
        record["field_path"] = error.field_path
    return record


def error_from_record(record: dict[str, Any]) -> BillingError:
    """Rebuilds a stored error with the same class, reason and metadata."""
    from billing_service.domain import errors

    cls = getattr(errors, str(record.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, BillingError)):
        cls = errors.FailedPrecondition
    error = cls.__new__(cls)
    BillingError.__init__(error, record["message"], metadata=record.get("metadata"), reason=record["reason"])
    if isinstance(error, InvalidArgument):
        error.violations = [FieldViolation(f, d) for f, d in record.get("violations", [])]
    if isinstance(error, ProcessorError):
        error.retryable = False
        error.retry_after_seconds = 0
    if isinstance(error, NotFound):
        # __init__ was bypassed: restore what the status mapping reads (found by fuzzing:
        # a replayed NotFound used to fail with AttributeError -> UNKNOWN).
        error.resource_type = error.metadata.get("resource_type", "")
        error.resource_id = error.metadata.get("resource_id", "")
        error.field_path = str(record.get("field_path", ""))
    return error


def is_final(error: BillingError) -> bool:
    """True when the error is the request's final answer (stored and replayed).

    Transient failures (store or processor unavailable, write conflicts) are not final:
    the caller's retry executes again, resuming where the first attempt stopped.
    """
    if isinstance(error, StoreUnavailable | ConcurrencyConflict | RequestInProgress):
        return False
    return not (isinstance(error, ProcessorError) and error.retryable)


class Idempotency:
    """Runs mutating requests at most once per (caller, method, request_id).

    Args:
        store: Holds the idempotency records.
        clock: Time source for leases.
        lease_seconds: How long an execution may run before a retry may take over. Longer
            than any processor call with its retries.
        ttl_seconds: How long a finished result is kept (at least 24 h).
    """

    def __init__(
        self, store: BillingStore, clock: Clock, *, lease_seconds: float = 60.0, ttl_seconds: float = 48 * 3600
    ) -> None:
        if ttl_seconds < 24 * 3600:
            raise ValueError("idempotency records must be kept for at least 24 hours")
        self._store = store
        self._clock = clock
        self._lease = lease_seconds
        self._ttl = ttl_seconds

    async def run(
        self,
        *,
        caller: str,
        method: str,
        request_id: str,
        fingerprint: str,
        resource_prefix: str,
        work: Callable[[RequestContext], Awaitable[bytes]],
    ) -> bytes:
        """Executes ``work`` once for this key, or replays its stored result.

        Args:
            fingerprint: Digest of the request without its request_id.
            resource_prefix: Prefix of the id to reserve (``pay``, ``re``, ...).
            work: The use case plus response serialization.

        Returns:
            The serialized response.

        Raises:
            IdempotencyKeyReused: The key was used for another request.
            RequestInProgress: The key is being executed elsewhere right now.
            BillingError: The request's final error (also on replay).
        """
        owner = secrets.token_hex(12)
        outcome, record = await self._store.idempotency_begin(
            caller=caller,
            method=method,
            request_id=request_id,
            fingerprint=fingerprint,
            resource_id=new_id(resource_prefix),
            owner=owner,
            now=self._clock.now(),
            lease_seconds=self._lease,
            ttl_seconds=self._ttl,
        )
        if outcome is IdempotencyOutcome.MISMATCH:
            raise IdempotencyKeyReused(
                f"request_id {request_id!r} was already used for a different {method.rsplit('/', 1)[-1]} request",
                metadata={"request_id": request_id},
            )
        if outcome is IdempotencyOutcome.IN_PROGRESS:
            raise RequestInProgress(
                f"a request with request_id {request_id!r} is still in progress; retry shortly",
                metadata={"request_id": request_id},
            )
        if outcome is IdempotencyOutcome.COMPLETED:
            if record.error is not None:
                raise error_from_record(record.error)
            assert record.response is not None
            return record.response

        ctx = RequestContext(caller, method, request_id, record.resource_id, record.attempts)
        if record.attempts > 1:
            log.info("resuming request after takeover", extra={"request_id": request_id, "attempt": record.attempts})
        lease = Lease(record.key, owner, self._lease, record.lease_until)
        try:
            async with _holding(self._store, self._clock, lease):
                response = await work(ctx)
        except BillingError as exc:
            if is_final(exc):
                await self._store.idempotency_complete(record.key, owner, response=None, error=error_to_record(exc))
            else:
                await self._release_quietly(record.key, owner)
            raise
        except BaseException:
            # A bug or a cancelled call (deadline): let a retry take over and resume.
            await self._release_quietly(record.key, owner)
            raise
        await self._store.idempotency_complete(record.key, owner, response=response, error=None)
        return response

    async def _release_quietly(self, key: str, owner: str) -> None:
        try:
            await self._store.idempotency_release(key, owner)
        except Exception:  # the lease lapses anyway; never mask the original error
            log.warning("could not release idempotency lease", exc_info=True)
