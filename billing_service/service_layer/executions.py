"""The running task's hold on idempotency records: its own request's, and any it holds for others.

An execution of a mutating request (``Idempotency.run``) owns its request's record from
its *claim* on. A fresh request's claim is not written on its own: it rides in the
request's first commit (the intent: one transaction creates the record and the resource),
or, when the request calls a processor before it commits anything, in a transaction of
its own just before that call (:func:`claim_before_writes`). Nothing is sent anywhere
before the claim is durable, and nothing is written without it.

Once claimed, the lease is renewed by a heartbeat every third of its term, so a request
that chains several slow processor calls is never taken over while it runs, and every
commit made on its behalf is fenced: it writes the record in the same transaction, matched
on this execution's owner, and is refused once another execution took over. Before each
money-moving processor call ``ensure_leases`` refuses to go on when the heartbeat has not
confirmed the lease recently (the store may be unreachable while another replica takes
over). The same leases let a cancel or the reconciler *hold* another request's lapsed
record (:func:`hold_request`) so that request cannot resume meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from billing_service.domain.common import RequestOrigin
from billing_service.domain.errors import RequestInProgress
from billing_service.service_layer.ports import (
    BillingStore,
    Clock,
    Fence,
    HoldOutcome,
    IdempotencyRecord,
    PaymentProcessor,
    StoredResult,
)

log = logging.getLogger(__name__)

# The processor port's verbs that may move money or change an object at the processor
# (every coroutine of the port but its reads): a fresh request's claim is written before
# any of them is called.
_READ_VERBS = frozenset(
    {
        "get_payment",
        "get_refund",
        "find_payment",
        "find_refund",
        "get_subscription",
        "find_subscription",
        "list_invoices",
        "aclose",
    }
)
_WRITE_VERBS = (
    frozenset(name for name, verb in vars(PaymentProcessor).items() if inspect.iscoroutinefunction(verb)) - _READ_VERBS
)


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


@dataclass
class Execution:
    """The current task's execution of its own request (set by ``Idempotency.run``).

    Attributes:
        pending: The record a fresh execution has not written (as far as it knows) yet.
        lease: The lease once claimed (or taken over).
        answer: Turns the use case's result (or final error) into the stored answer.
        stored: The answer a commit already stored on the record, if any.
    """

    store: BillingStore
    clock: Clock
    key: str
    owner: str
    lease_seconds: float
    pending: IdempotencyRecord | None = None
    lease: Lease | None = None
    answer: Callable[[object], StoredResult] | None = None
    stored: StoredResult | None = None
    #: A commit carrying the claim was sent: whether it landed may be unknown (the call was
    #: cancelled, the store timed out), so a release must be tried even while ``pending``.
    claim_sent: bool = False
    _beat: asyncio.Task[None] | None = None
    _claiming: asyncio.Lock = field(default_factory=asyncio.Lock)

    def claimed(self, lease_until: datetime) -> None:
        """Records that the claim (or a takeover) is durable, and starts the heartbeat."""
        self.pending = None
        self.lease = Lease(self.key, self.owner, self.lease_seconds, lease_until)
        self._beat = asyncio.create_task(_heartbeat(self.store, self.clock, self.lease), name="idempotency-heartbeat")

    def answered(self, result: StoredResult) -> None:
        """Records that a commit stored the request's answer: the record is complete, so its
        lease needs no more renewing (a renewal would find it no longer in progress)."""
        self.stored = result
        if self._beat is not None:
            self._beat.cancel()

    async def stop(self) -> None:
        """Stops renewing: called before anyone completes or releases the record, so a late
        beat cannot extend a lease that was just handed back."""
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None

    def claim_fence(self, now: datetime, result: StoredResult | None = None) -> Fence:
        """The fence that writes the pending claim (and, with ``result``, completes it)."""
        assert self.pending is not None
        record = replace(self.pending, created_at=now, lease_until=now + timedelta(seconds=self.lease_seconds))
        return Fence(self.key, self.owner, now, claim=record, result=result)


_EXECUTION: ContextVar[Execution | None] = ContextVar("billing_execution", default=None)


def current_execution() -> Execution | None:
    """The execution the current task runs, if it runs one."""
    return _EXECUTION.get()


@contextlib.contextmanager
def executing(execution: Execution) -> Iterator[Execution]:
    """Makes ``execution`` the current task's for the block."""
    token = _EXECUTION.set(execution)
    try:
        yield execution
    finally:
        _EXECUTION.reset(token)


@contextlib.asynccontextmanager
async def fenced(now: datetime, answer: object | None = None) -> AsyncIterator[list[Fence]]:
    """The fences of a commit made now, for the current task's requests.

    Every lease the task holds fences the commit. The task's own execution adds its
    claim when it has not been written yet (and the commit then creates the record), or
    a fence on its record otherwise. With ``answer`` the same write stores the request's
    answer. Commit inside the block; the claim counts as written once it exits cleanly.
    """
    fences = [lease.fence(now) for lease in _LEASES.get()]
    execution = _EXECUTION.get()
    if execution is None:
        yield fences
        return
    result = execution.answer(answer) if answer is not None and execution.answer is not None else None
    async with execution._claiming:  # one commit at a time may carry the claim
        if execution.pending is not None:
            fence = execution.claim_fence(now, result)
            execution.claim_sent = True
            yield [*fences, fence]
            assert fence.claim is not None
            execution.claimed(fence.claim.lease_until)
        else:
            yield [*fences, Fence(execution.key, execution.owner, now, result=result)]
    if result is not None:
        execution.answered(result)


async def claim_now() -> None:
    """Writes the current execution's pending claim, in a transaction of its own.

    Raises:
        ClaimConflict: Another execution of the request claimed it first.
    """
    execution = _EXECUTION.get()
    if execution is None or execution.pending is None:
        return
    async with fenced(execution.clock.now()) as fences:
        await execution.store.commit([], [], fences=fences)


def unwritten(resource_id: str) -> bool:
    """True when ``resource_id`` is the id the current execution reserved and has not claimed yet.

    Nothing can exist under it: the id was drawn by this execution and is stored nowhere
    until its claim is, so a use case need not read it to see whether a previous attempt
    created the resource. Anything else (a takeover, a direct call) must read.
    """
    execution = _EXECUTION.get()
    return (
        execution is not None
        and execution.pending is not None
        and not execution.claim_sent
        and execution.pending.resource_id == resource_id
    )


def claim_before_writes(adapter: PaymentProcessor) -> PaymentProcessor:
    """``adapter``, or a view of it that writes the pending claim before any processor write."""
    execution = _EXECUTION.get()
    if execution is None or execution.pending is None:
        return adapter
    return cast(PaymentProcessor, _ClaimFirst(adapter))


class _ClaimFirst:
    """Forwards everything to the adapter; its writes first make the request's claim durable."""

    def __init__(self, adapter: PaymentProcessor) -> None:
        self._adapter = adapter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._adapter, name)
        if name not in _WRITE_VERBS:
            return attr

        @functools.wraps(attr)
        async def claimed_first(*args: Any, **kwargs: Any) -> Any:
            await claim_now()
            return await attr(*args, **kwargs)

        return claimed_first


def held_fences(now: datetime) -> list[Fence]:
    """Fences on the records the current task holds for other requests (not its own)."""
    return [lease.fence(now) for lease in _LEASES.get()]


def ensure_leases(now: datetime) -> None:
    """Raises unless every lease the current task holds is certainly still ours.

    Called before each money-moving processor call: a lease whose heartbeat has not been
    confirmed for two beats (a third of its term left) may have been taken over by a
    replica that could not see our renewals, so the call must not be sent. A claim not
    written yet holds no lease to lose: it is written (and its lease starts) right before
    the processor call.

    Raises:
        RequestInProgress: A lease was lost or could not be confirmed in time.
    """
    execution = _EXECUTION.get()
    own = (execution.lease,) if execution is not None and execution.lease is not None else ()
    for lease in (*_LEASES.get(), *own):
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
        except Exception:  # the store is down (or a commit conflicted): ensure_leases stops the work if this lasts
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

    A request whose first commit has not landed has no record, and has written nothing
    (not even the resource a cancel or the reconciler would act on): ABSENT.
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
