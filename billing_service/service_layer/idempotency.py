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

The claim, the lease and its heartbeat, the fences on every commit and holds on other
requests' records live in ``executions``. With ``defer_claim`` (what the gRPC runner uses)
a fresh request's claim rides in its first commit, and its answer in its last one, so a
request that records an intent, calls a processor and records the outcome writes two
transactions in all.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
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
from billing_service.service_layer.executions import (
    Execution,
    Hold,
    Lease,
    ensure_leases,
    executing,
    held_fences,
    hold_request,
)
from billing_service.service_layer.ports import (
    BillingStore,
    ClaimConflict,
    Clock,
    IdempotencyOutcome,
    IdempotencyRecord,
    StoredResult,
    request_key,
)

__all__ = [
    "Hold",
    "Idempotency",
    "Lease",
    "RequestContext",
    "context_of",
    "ensure_leases",
    "error_from_record",
    "error_to_record",
    "held_fences",
    "hold_request",
    "is_final",
    "validate_request_id",
]

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
        answer: Callable[[Any], bytes] | None = None,
        defer_claim: bool = False,
    ) -> bytes:
        """Executes ``work`` once for this key, or replays its stored result.

        Args:
            fingerprint: Digest of the request without its request_id.
            resource_prefix: Prefix of the id to reserve (``pay``, ``re``, ...).
            work: The use case plus response serialization.
            answer: Serializes the use case's result exactly as ``work`` does; given, a
                commit that passes its result as the answer stores it on the record in
                the same transaction (``core.commit``), and no separate completion is
                written when ``work`` returns that very answer.
            defer_claim: Claim a fresh key with the request's first commit (or right
                before its first processor write) instead of in a transaction of its own
                first (see ``executions``). Concurrent duplicates may then both run the
                read-only start of the use case; only one claims.

        Returns:
            The serialized response.

        Raises:
            IdempotencyKeyReused: The key was used for another request.
            RequestInProgress: The key is being executed elsewhere right now.
            BillingError: The request's final error (also on replay).
        """
        key = request_key(caller, method, request_id)
        # A few rounds: a concurrent duplicate may claim the key between our read and our claim.
        for _ in range(5):
            owner = secrets.token_hex(12)
            now = self._clock.now()
            if defer_claim:
                record = await self._store.idempotency_get(caller=caller, method=method, request_id=request_id, now=now)
                if record is None:
                    pending = IdempotencyRecord(
                        key=key, caller=caller, method=method, request_id=request_id, fingerprint=fingerprint,
                        resource_id=new_id(resource_prefix), owner=owner, state="in_progress", created_at=now,
                        lease_until=now, expires_at=now + timedelta(seconds=self._ttl),
                    )  # fmt: skip
                    outcome = IdempotencyOutcome.STARTED
                else:
                    pending = None
                    found = _classify(record, fingerprint, now)
                    if found is not None:
                        outcome = found
                    else:  # its executor stopped renewing its lease (crashed or hung): take over
                        outcome, record = await self._store.idempotency_take_over(
                            record, owner=owner, now=now, lease_seconds=self._lease, ttl_seconds=self._ttl
                        )
            else:
                pending = None
                outcome, record = await self._store.idempotency_begin(
                    caller=caller, method=method, request_id=request_id, fingerprint=fingerprint,
                    resource_id=new_id(resource_prefix), owner=owner, now=now, lease_seconds=self._lease,
                    ttl_seconds=self._ttl,
                )  # fmt: skip
            if outcome is not IdempotencyOutcome.STARTED:
                assert record is not None
                return _answer(outcome, record, method, request_id)
            execution = Execution(self._store, self._clock, key, owner, self._lease, pending=pending)
            if pending is None:
                assert record is not None
                execution.claimed(record.lease_until)
                resource_id, attempt = record.resource_id, record.attempts
            else:
                resource_id, attempt = pending.resource_id, 1
            if answer is not None:
                execution.answer = functools.partial(_stored_answer, answer)
            if attempt > 1:
                log.info("resuming request after takeover", extra={"request_id": request_id, "attempt": attempt})
            ctx = RequestContext(caller, method, request_id, resource_id, attempt)
            try:
                return await self._execute(execution, ctx, work)
            except ClaimConflict:
                continue  # nothing was written: look again (replay, wait or take over)
        raise StoreUnavailable("idempotency record kept changing under us; try again")

    async def _execute(
        self, execution: Execution, ctx: RequestContext, work: Callable[[RequestContext], Awaitable[bytes]]
    ) -> bytes:
        try:
            with executing(execution):
                try:
                    response = await work(ctx)
                finally:
                    await execution.stop()
                await self._finish(execution, StoredResult(response=response))
                return response
        except ClaimConflict:
            raise
        except BillingError as exc:
            if is_final(exc):
                await self._finish(execution, StoredResult(error=error_to_record(exc)))
            else:
                await self._release_quietly(execution)
            raise
        except BaseException:
            # A bug or a cancelled call (deadline): let a retry take over and resume.
            await self._release_quietly(execution)
            raise

    async def _finish(self, execution: Execution, result: StoredResult) -> None:
        """Stores the request's answer unless its outcome commit already did."""
        if execution.stored == result:
            return  # written with the outcome
        if execution.stored is not None:
            log.warning("a request's answer differs from the one its last commit stored; storing the final one")
        if execution.pending is not None:
            # Nothing was written for the request (e.g. a final error before any change):
            # claim and complete the record at once. When a concurrent duplicate claimed it
            # first, its answer stands and this one's is never returned: ClaimConflict makes
            # ``run`` look the record up again and replay it (or answer IN_PROGRESS). Without
            # that, a duplicate that read the resource after the winner changed it (a capture
            # seeing SUCCEEDED) would answer an error the first request never got.
            await self._store.commit([], [], fences=[execution.claim_fence(self._clock.now(), result)])
            return
        await asyncio.shield(
            self._store.idempotency_complete(execution.key, execution.owner, response=result.response,
                                             error=result.error)
        )  # fmt: skip

    async def _release_quietly(self, execution: Execution) -> None:
        if execution.pending is not None and not execution.claim_sent:
            return  # never claimed: nothing to release
        # Matched on our owner: a no-op when the claim never landed. Shielded: a call cut by
        # its deadline is often cancelled again while it cleans up, and an unreleased lease
        # keeps the caller's retries waiting for a whole term.
        try:
            await asyncio.shield(self._store.idempotency_release(execution.key, execution.owner))
        except Exception:  # the lease lapses anyway; never mask the original error
            log.warning("could not release idempotency lease", exc_info=True)


def _classify(record: IdempotencyRecord, fingerprint: str, now: datetime) -> IdempotencyOutcome | None:
    """What an existing record means for a new execution; None when it may be taken over."""
    if record.fingerprint != fingerprint:
        return IdempotencyOutcome.MISMATCH
    if record.state == "completed":
        return IdempotencyOutcome.COMPLETED
    if record.lease_until > now:
        return IdempotencyOutcome.IN_PROGRESS
    return None


def _stored_answer(encode: Callable[[Any], bytes], result: object) -> StoredResult:
    if isinstance(result, BillingError):
        return StoredResult(error=error_to_record(result))
    return StoredResult(response=encode(result))


def _answer(outcome: IdempotencyOutcome, record: IdempotencyRecord, method: str, request_id: str) -> bytes:
    """The answer to a request that does not execute: the stored one, or why not."""
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
    if record.error is not None:
        raise error_from_record(record.error)
    assert record.response is not None
    return record.response
