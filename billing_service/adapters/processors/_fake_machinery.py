"""What makes the fake processor behave like a processor between its verbs.

Idempotency keys (a repeat returns the first outcome, a reused key with other parameters
is refused, a key is forgotten after ``key_retention``), injected faults (``fail_next``),
and the transactions that load and save its records through a ``FakeStateStore`` so
processes sharing one store see one processor. ``fake.FakePaymentProcessor`` builds its
verbs on :class:`FakeMachinery`.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar, cast

from billing_service.adapters.processors._fake_billing import FakeLedger
from billing_service.adapters.processors._fake_records import invalid, processor_error
from billing_service.adapters.processors._fake_state import (
    FakeStateStore,
    LedgerPersistence,
    Table,
    decode_outcome,
    encode_outcome,
)
from billing_service.domain.errors import BillingError, ProcessorError
from billing_service.service_layer.clock import SystemClock
from billing_service.service_layer.ports import Clock

T = TypeVar("T")
# Reload-and-redo rounds when another process keeps saving the shared state first.
_STATE_ATTEMPTS = 5

# Verbs ``fail_next`` accepts: the port's verbs, so a typo in a test fails loudly.
_VERBS = frozenset(
    {
        "create_customer", "update_customer", "attach_payment_method", "detach_payment_method",
        "create_payment", "get_payment", "capture_payment", "cancel_payment", "create_refund",
        "get_refund", "find_payment", "find_refund", "create_plan", "archive_plan", "create_subscription",
        "get_subscription",
        "update_subscription", "cancel_subscription", "pause_subscription", "resume_subscription",
        "list_invoices",
    }
)  # fmt: skip


def _canonical(value: object) -> object:
    """A stable, order-independent form of request parameters for fingerprinting."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, [(f.name, _canonical(getattr(value, f.name))) for f in dataclasses.fields(value)])
    if isinstance(value, Mapping):
        return sorted((str(k), _canonical(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return repr(value)


def _fingerprint(operation: str, params: object) -> str:
    # A digest rather than the parameters themselves: nothing a caller sent is retained.
    return hashlib.sha256(repr((operation, _canonical(params))).encode()).hexdigest()


@dataclass
class _Stored:
    """The first outcome of an idempotency key: a result or a final error."""

    fingerprint: str
    result: object = None
    error: BillingError | None = None
    at: datetime | None = None  # when the key was first used; forgotten after key_retention


@dataclass(frozen=True)
class _Fault:
    error: ProcessorError
    after_effect: bool


class FakeMachinery:
    """Idempotent writes, injected faults and state transactions for the fake's verbs.

    Attributes:
        effects: How many times each write verb actually executed; replays of a stored
            idempotency key and faults injected before the effect are not counted.
    """

    #: Like Stripe: a key is remembered for 24 hours (on the injected clock), then forgotten.
    key_retention = timedelta(hours=24)

    def __init__(self, clock: Clock | None = None, *, state: FakeStateStore | None = None) -> None:
        """Creates the machinery, empty or with what ``state`` holds.

        Args:
            clock: Time source for subscriptions and timestamps; a ``ManualClock`` makes
                renewals controllable with ``advance_clock_to``.
            state: Where records, id counters and idempotency keys are kept (None: memory).
        """
        self._clock: Clock = clock or SystemClock()
        self._ledger = FakeLedger(self._clock)
        self._lock = asyncio.Lock()
        self._idempotency: Table[_Stored] = Table()
        self._persistence = (
            None
            if state is None
            else LedgerPersistence(
                state,
                # ``at`` travels too: a restart must not make the fake remember a key forever.
                lambda o: {**encode_outcome(o.fingerprint, o.result, o.error), "at": o.at},
                lambda doc: _Stored(*decode_outcome(doc), at=doc.get("at")),
            )
        )
        self._faults: defaultdict[str, deque[_Fault]] = defaultdict(deque)
        self.effects: Counter[str] = Counter()

    def _take_fault(self, operation: str) -> _Fault | None:
        queue = self._faults.get(operation)
        return queue.popleft() if queue else None

    async def _transact(self, step: Callable[[], T]) -> T:
        """Runs ``step`` on the records under the lock, loading and saving them with a state store.

        What ``step`` changed is saved even when it raises (a decline is a result). If
        another process saved first, the state is reloaded and ``step`` runs again.
        """
        async with self._lock:
            if self._persistence is None:
                return step()
            for _ in range(_STATE_ATTEMPTS):
                await self._persistence.refresh(self._ledger, self._idempotency)
                try:
                    result = step()
                except BaseException:
                    if await self._persistence.save(self._ledger, self._idempotency):
                        raise
                    continue
                if await self._persistence.save(self._ledger, self._idempotency):
                    return result
        raise ProcessorError(
            "the fake processor's state kept changing under us", reason="PROCESSOR_UNAVAILABLE", retryable=True
        )

    async def _write(self, operation: str, key: str, params: object, effect: Callable[[], T]) -> T:
        """Runs ``effect`` once per idempotency key, replaying its first outcome afterwards."""
        if not key:
            raise invalid(f"{operation} needs an idempotency key")
        fault = self._take_fault(operation)
        if fault is not None and not fault.after_effect:
            raise fault.error  # the request never reached the processor
        fingerprint = _fingerprint(operation, params)

        def step() -> _Stored:
            stored = self._idempotency.get(key)
            if stored is not None and stored.at is not None and self._clock.now() - stored.at > self.key_retention:
                stored = None  # forgotten, as Stripe forgets keys after 24 hours: the write runs again
            if stored is None:
                return self._execute(operation, key, fingerprint, effect)
            if stored.fingerprint != fingerprint:
                raise processor_error(
                    "IDEMPOTENCY_KEY_REUSED_AT_PROCESSOR",
                    f"idempotency key was already used for another operation or other {operation} parameters",
                    idempotency_key=key,
                )
            # Copies, so neither the caller nor a later replay can alter what is stored.
            return _Stored(fingerprint, copy.deepcopy(stored.result), copy.deepcopy(stored.error))

        outcome = await self._transact(step)
        if fault is not None:
            raise fault.error  # the effect happened, then the connection dropped
        if outcome.error is not None:
            raise outcome.error
        return cast(T, outcome.result)

    def _execute(self, operation: str, key: str, fingerprint: str, effect: Callable[[], object]) -> _Stored:
        self.effects[operation] += 1
        try:
            # A copy: the caller must not share mutable parts with the fake's records.
            outcome = _Stored(fingerprint, result=copy.deepcopy(effect()))
        except BillingError as exc:  # declines and refusals are final results too, as at Stripe
            outcome = _Stored(fingerprint, error=exc)
            if isinstance(exc, ProcessorError) and exc.retryable:
                return outcome  # transient failures are not remembered: a retry runs again
        remembered = copy.deepcopy(outcome)
        remembered.at = self._clock.now()
        self._idempotency[key] = remembered
        return outcome

    async def _read(self, operation: str, read: Callable[[], T]) -> T:
        fault = self._take_fault(operation)
        if fault is not None:
            raise fault.error
        return await self._transact(lambda: copy.deepcopy(read()))

    def fail_next(self, operation: str, error: ProcessorError, *, after_effect: bool = False) -> None:
        """Makes the next call of ``operation`` raise ``error``.

        Args:
            operation: A port verb, e.g. ``create_payment``. Calls queue up per verb.
            error: What to raise (set ``retryable`` as a real failure would).
            after_effect: Apply the effect and store the idempotent result first, then raise:
                "charged, then the connection dropped". A retry with the same key gets the
                stored result.
        """
        if operation not in _VERBS:
            raise ValueError(f"unknown processor verb {operation!r}")
        self._faults[operation].append(_Fault(error, after_effect))
