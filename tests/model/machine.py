"""The model's state and the rules every processor shares: requests, retries, in-flight
calls (release, crash, deadline), webhooks, the clock and reconciliation; the invariants
after every step and after quiescence.

Payment and subscription rules live in ``rules_payments`` and ``rules_subscriptions``;
``test_model`` combines them into one machine per processor.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, ClassVar, TypeVar

import grpc
from google.protobuf.message import Message
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from billing_service.domain.common import Processor
from billing_service.domain.payments import Payment, Refund
from billing_service.domain.subscriptions import Subscription
from tests.model.known_defects import is_open
from tests.model.processors import DashboardStripe, Hold
from tests.model.truth import Finding, drift, everything, fake_truth, step_violations, stripe_truth
from tests.model.world import LEASE_SECONDS, Event, Outcome, World, processor_key

F = TypeVar("F", bound=Callable[..., Any])
RETRY_WINDOW = timedelta(hours=23)
PATIENCE = 10.0  # seconds (real time) a rule waits for an answer before letting the call go on alone
LEASE = timedelta(seconds=LEASE_SECONDS)


@dataclass
class Stats:
    """What a run explored, for the closing figure (examples x steps, rules fired)."""

    examples: int = 0
    steps: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    webhooks_delivered: int = 0
    reconcile_passes: int = 0
    inbox: Counter[str] = field(default_factory=Counter)
    findings: Counter[str] = field(default_factory=Counter)  # survey runs only
    samples: dict[str, str] = field(default_factory=dict)  # the first detail of each finding kind
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per rule (for sizing runs)
    wall_seconds: float = 0.0  # the whole run

    def timed(self, name: str, seconds: float) -> None:
        """Adds to the time spent in ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def found(self, finding: Finding) -> None:
        """Counts a finding of a survey run (keeps the first detail of each kind)."""
        self.findings[finding.kind] += 1
        self.samples.setdefault(finding.kind, finding.detail)

    def record(self) -> dict[str, Any]:
        """The figures as JSON-ready data."""
        return {
            "examples": self.examples, "steps": self.steps, "rules": dict(self.rules),
            "webhooks_delivered": self.webhooks_delivered, "reconcile_passes": self.reconcile_passes,
            "inbox": dict(self.inbox), "findings": dict(self.findings), "wall_seconds": round(self.wall_seconds, 1),
        }  # fmt: skip

    def line(self, name: str) -> str:
        """One line for the test report."""
        fired = ", ".join(f"{k} {v}" for k, v in sorted(self.rules.items()))
        inbox = ", ".join(f"{k} {v}" for k, v in sorted(self.inbox.items()))
        return (
            f"model[{name}]: {self.examples} examples, {self.steps} steps in {self.wall_seconds:.0f} s, "
            f"{self.webhooks_delivered} webhook deliveries, {self.reconcile_passes} reconciliation passes; "
            f"inbox outcomes: {inbox}; rules fired: {fired}"
            + "".join(f"\n  found {n}x {kind}: {self.samples[kind]}" for kind, n in self.findings.most_common())
        )


@dataclass
class Env:
    """What the pytest side hands the machine (set on the machine class before a run)."""

    loop: asyncio.AbstractEventLoop
    mongo_uri: str
    stripe_api: DashboardStripe | None
    stats: Stats
    survey: bool = False  # record findings and go on (BILLING_MODEL_SURVEY=1), instead of failing


@dataclass
class Req:
    """One mutating request the model sent, kept for retries and replay checks."""

    label: str
    method: str
    rpc: Callable[..., Any]
    request: Message
    verb: str  # the processor verb the request's work calls (for the gate)
    step: str  # the processor key step of that call
    sent: datetime
    first_final: tuple[Any, ...] | None = None
    answers: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return processor_key(self.method, self.request.request_id, self.step)  # type: ignore[attr-defined]


@dataclass
class InFlight:
    """A request whose processor call sits at the gate."""

    req: Req
    task: asyncio.Task[Outcome]
    hold: Hold
    started: datetime
    crashed: bool = False


def counted(fn: F) -> F:
    """Counts each firing of a rule in the run's stats."""

    @wraps(fn)
    def wrapper(self: ModelBase, *args: Any, **kwargs: Any) -> Any:
        self.env.stats.rules[fn.__name__] += 1
        start = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self.env.stats.timed(fn.__name__, time.perf_counter() - start)

    return wrapper  # type: ignore[return-value]


class ModelBase(RuleBasedStateMachine):
    """State, shared rules and invariants; subclasses choose the processor."""

    processor: ClassVar[Processor]
    env: ClassVar[Env]

    def __init__(self) -> None:
        super().__init__()
        self.world = World(self.env.loop, self.processor, self.env.mongo_uri, self.env.stripe_api)
        self.world.run(self.world.start())
        self.env.stats.examples += 1
        self.requests: list[Req] = []
        self.inflight: list[InFlight] = []
        self.payments: list[Payment] = []
        self.refunds: list[Refund] = []
        self.subscriptions: list[Subscription] = []
        # Calls whose answer did not come while their rule waited.
        self.waiting: list[tuple[Req, asyncio.Task[Outcome]]] = []

    # -- sending and checking answers ---------------------------------------------------------

    def new_req(self, label: str, method: str, rpc: Any, request: Message, verb: str, step: str) -> Req:
        """Records a request the model is about to send (for retries and the replay check)."""
        req = Req(label, method, rpc, request, verb, step, self.world.clock.now())
        self.requests.append(req)
        return req

    def observe(self, req: Req, outcome: Outcome) -> Outcome:
        """Checks one answer: never INTERNAL/UNKNOWN, and a request's final answer never changes."""
        req.answers.append(str(outcome))
        bad = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
        if outcome.code in bad:
            self.violation(Finding("internal_error", f"{req.label} answered {outcome} (a bug)"))
        if outcome.final:
            signature = outcome.signature()
            if req.first_final is None:
                req.first_final = signature
            elif signature != req.first_final:
                request_id = req.request.request_id  # type: ignore[attr-defined]
                detail = f"{req.label} {request_id}: a retry answered {outcome}, the first final answer was "
                self.violation(Finding("replay_differs", detail + str(req.first_final[:3])))
        return outcome

    def violation(self, *found: Finding) -> None:
        """Fails the example (in a survey, only records what was found and goes on)."""
        if not found:
            return
        if self.env.survey:
            for f in found:
                self.env.stats.found(f)
            return
        raise AssertionError("\n".join(map(str, found)))

    def send(self, req: Req) -> Outcome | None:
        """Sends ``req``; its answer, or None when it did not come within ``PATIENCE`` (the call
        goes on in the background, e.g. waiting for a held call, and is checked when it ends)."""
        return self.send_copies(req, 1)[0]

    def send_duplicates(self, req: Req) -> None:
        """The same request twice at once (two tasks that overlap on the loop)."""
        self.send_copies(req, 2)

    def send_copies(self, req: Req, copies: int) -> list[Outcome | None]:
        tasks = [self.world.spawn(self.world.call(req.rpc, req.request)) for _ in range(copies)]

        async def answered() -> None:
            await asyncio.wait(tasks, timeout=PATIENCE)

        self.world.run(answered())
        outcomes: list[Outcome | None] = []
        for task in tasks:
            if task.done():
                outcomes.append(self.observe(req, task.result()))
            else:
                self.waiting.append((req, task))
                outcomes.append(None)
        return outcomes

    def observe_waiting(self) -> None:
        """Checks the answers of background calls that ended."""
        for req, task in [w for w in self.waiting if w[1].done()]:
            self.waiting.remove((req, task))
            if not task.cancelled():
                self.observe(req, task.result())

    def send_held(self, req: Req, phase: str) -> None:
        """Sends ``req`` and stops its processor call at the gate (``before``/``after`` the effect)."""
        hold = self.world.gate.arm(req.verb, req.key, phase)
        task = self.world.spawn(self.world.call(req.rpc, req.request))
        self.world.run(self.world.settle(task, hold, limit=PATIENCE))
        if hold.arrived.is_set():
            self.inflight.append(InFlight(req, task, hold, self.world.clock.now()))
            return
        self.world.gate.disarm(hold)  # refused before it reached the processor, or waiting elsewhere
        if task.done():
            self.observe(req, task.result())
        else:
            self.waiting.append((req, task))

    def send_lost_response(self, req: Req, stripe_path: str) -> None:
        """The processor acts, then its answer is lost (every attempt of the adapter's retries)."""
        from billing_service.domain.errors import ProcessorError

        if self.world.fake is not None:
            error = ProcessorError("connection lost after the effect", reason="PROCESSOR_UNREACHABLE", retryable=True)
            self.world.fake.fail_next(req.verb, error, after_effect=True)
        else:
            assert self.world.stripe_api is not None
            self.world.stripe_api.lose_responses_next(stripe_path, times=2)
        try:
            self.send(req)
        finally:
            self.world.clear_faults()

    def dispatch(self, req: Req, mode: str, stripe_path: str = "") -> None:
        """Sends ``req`` the way ``mode`` says."""
        if mode == "plain":
            self.send(req)
        elif mode == "dup":
            self.send_duplicates(req)
        elif mode in ("before", "after"):
            self.send_held(req, mode)
        elif mode == "lost":
            self.send_lost_response(req, stripe_path)
        else:
            raise AssertionError(mode)

    def lease_lapsed(self, flight: InFlight) -> bool:
        """True once a retry may have taken the held request over."""
        return self.world.clock.now() - flight.started >= LEASE

    def flight_of(self, req: Req) -> InFlight | None:
        return next((f for f in self.inflight if f.req is req), None)

    # -- shared rules ------------------------------------------------------------------------------

    def retryable(self) -> list[Req]:
        # The contract keeps a request's answer for at least 24 h; a caller retries within that.
        oldest = self.world.clock.now() - RETRY_WINDOW
        return [r for r in self.requests if r.sent > oldest]

    @precondition(lambda self: self.retryable())
    @rule(i=st.integers(0, 10_000))
    @counted
    def retry(self, i: int) -> None:
        """The caller retries a request with its request_id (maybe while the first is still running)."""
        req = self.pick(self.retryable(), i)
        held = self.flight_of(req)
        outcome = self.send(req)
        leased = held is not None and not held.crashed and self.world.clock.now() - held.started < LEASE
        if outcome and leased and (outcome.code, outcome.reason) != (grpc.StatusCode.ABORTED, "REQUEST_IN_PROGRESS"):
            self.violation(Finding("duplicate_not_refused", f"a duplicate of {req.label} in flight: {outcome}"))

    @precondition(lambda self: self.inflight)
    @rule(i=st.integers(0, 10_000), action=st.sampled_from(["release", "crash", "deadline"]))
    @counted
    def in_flight(self, i: int, action: str) -> None:
        """A call held at the processor goes on (release), its executor dies and its lease runs out
        (crash), or its caller gives up and the server cancels it (deadline)."""
        flight = self.pick(self.inflight, i)
        if action == "crash":
            if not flight.crashed:
                flight.crashed = True
                self.advance(timedelta(seconds=LEASE_SECONDS + 1))
            return
        if action == "release" and flight.crashed:
            return  # a dead executor never acts again
        self.inflight.remove(flight)
        if action == "release":
            flight.hold.release()
            self.world.run(self.world.settle(flight.task, limit=PATIENCE))
            if flight.task.done():
                self.observe(flight.req, flight.task.result())
            else:
                self.waiting.append((flight.req, flight.task))
            return
        flight.task.cancel()

        async def unwound() -> None:  # the server cancels the executor at its gate
            await asyncio.wait([flight.task, asyncio.ensure_future(flight.hold.finished.wait())], timeout=10)

        self.world.run(unwound())

    @rule(seconds=st.sampled_from([30, LEASE_SECONDS + 1, 180, 86_400, 24 * 3600 + 60, 15 * 86_400]))
    @counted
    def time_passes(self, seconds: float) -> None:
        """Time passes: leases lapse, reconciliation's stale window, key windows, renewals."""
        self.advance(timedelta(seconds=seconds))
        if self.world.fake is not None:
            self.world.run(self.world.fake.process_renewals())

    def advance(self, delta: timedelta) -> None:
        """Moves the clock on. A call held at the processor for longer than the adapter's
        timeouts (the lease's term: 3 attempts of 20 s at Stripe) times out when released: no
        live executor's call outlasts them, and while it lasts, its heartbeat (which runs on
        real time, not on the model's clock) would renew its lease."""
        self.world.clock.advance(delta)
        for flight in self.inflight:
            if self.lease_lapsed(flight):
                flight.hold.timed_out = True

    @rule(replicas=st.sampled_from([1, 2]))
    @counted
    def reconcile(self, replicas: int) -> None:
        """A reconciliation pass runs (two at once: ``billing-service reconcile`` beside the loop)."""

        async def passes() -> None:
            await asyncio.gather(*(self.world.reconcile() for _ in range(replicas)))

        self.world.run(passes())
        self.env.stats.reconcile_passes += replicas

    @rule(i=st.integers(0, 10_000), copies=st.sampled_from([0, 1, 1, 2, 3]), process=st.sampled_from([0, 1, 100]))
    @counted
    def webhooks(self, i: int, copies: int, process: int) -> None:
        """The processor delivers one of its events (any order, any number of times, maybe late), and
        the sidecar's worker processes some of what is due."""
        if self.world.events:
            event = self.pick(self.world.events, i)
            for _ in range(copies):
                self.world.run(self.world.deliver(event))
            self.env.stats.webhooks_delivered += copies
        self.world.run(self.world.process_webhooks(process))

    # -- invariants ---------------------------------------------------------------------------------

    @invariant()
    def after_every_step(self) -> None:
        """Money never goes negative and refunds never exceed captures, at any moment."""
        self.env.stats.steps += 1
        start = time.perf_counter()
        self.observe_waiting()
        self.world.collect_events()
        store = self.world.store
        self.payments = self.world.run(everything(store, Payment))
        self.refunds = self.world.run(everything(store, Refund))
        self.subscriptions = self.world.run(everything(store, Subscription))
        self.env.stats.timed("after_every_step", time.perf_counter() - start)
        self.violation(*step_violations(self.payments, self.refunds))

    def teardown(self) -> None:
        """Quiescence, one reconciliation pass, then our store must equal the processor's truth."""
        start = time.perf_counter()
        try:
            findings = self.world.run(self.quiesce_and_compare(), timeout=120)
            if findings and not self.env.survey:
                raise AssertionError(
                    "drift after quiescence and one reconciliation pass:\n" + "\n".join(map(str, findings))
                )
            self.violation(*findings)
        finally:
            self.world.run(self.world.stop())
            self.env.stats.timed("teardown", time.perf_counter() - start)

    async def quiesce_and_compare(self) -> list[Finding]:
        """Lets everything in flight finish (or stay dead), runs one pass and compares with the truth."""
        world = self.world
        world.clear_faults()
        # Every held call goes on, but crashed executors, which never do anything again: their
        # callers are gone (the server cancels them at their gate). Then nothing is in flight.
        for flight in self.inflight:
            if flight.crashed:
                flight.task.cancel()
            else:
                flight.hold.release()
        await asyncio.gather(*(f.task for f in self.inflight), return_exceptions=True)
        # The server side of a cancelled call unwinds on its own time.
        if self.inflight:
            await asyncio.wait([asyncio.ensure_future(f.hold.finished.wait()) for f in self.inflight], timeout=10)
        for flight in self.inflight:
            if not flight.task.cancelled() and not flight.crashed:
                self.observe(flight.req, flight.task.result())
        self.inflight.clear()
        if self.waiting:
            await asyncio.wait([task for _, task in self.waiting], timeout=60)
        self.observe_waiting()
        assert not self.waiting, f"calls still without an answer: {[r.label for r, _ in self.waiting]}"
        world.collect_events()
        # Past every lease and reconciliation's stale window. Events are delivered only if a rule
        # delivered them: an undelivered event is a lost webhook.
        world.clock.advance(timedelta(seconds=LEASE_SECONDS + 180))
        await world.drain_webhooks()
        errors: list[str] = []
        await world.reconcile(errors)
        self.env.stats.reconcile_passes += 1
        # What the pass fed from the processor's event list (Stripe) is processed, as the sidecar's workers do.
        await world.drain_webhooks()
        if world.fake is not None and is_open("dashboard_refund_lost_webhook"):
            await self.redeliver_refund_events()
        for status, n in (await world.inbox_statuses()).items():
            self.env.stats.inbox[status] += n
        truth = await fake_truth(world.fake) if world.fake is not None else stripe_truth(self.stripe_api)
        findings = await drift(world.store, truth)
        if errors:
            findings.append(Finding("reconcile_errors", f"the final pass failed on {'; '.join(errors)}"))
        return findings

    async def redeliver_refund_events(self) -> None:
        """Every refund event reaches the service once more, after the pass linked every payment
        (an operator's ``webhooks replay`` for those that arrived too early)."""
        for event in self.world.events:
            if not event.type.startswith("refund."):
                continue
            if event.delivered:
                await self.world.inbox.replay(self.processor, event.event_id, now=self.world.clock.now())
            else:
                await self.world.deliver(event)
        await self.world.drain_webhooks()

    @property
    def stripe_api(self) -> DashboardStripe:
        assert self.env.stripe_api is not None
        return self.env.stripe_api

    # -- helpers for the rule modules ------------------------------------------------------------------

    def pick(self, items: list[Any], i: int) -> Any:
        return items[i % len(items)]

    def undelivered(self) -> list[Event]:
        return [e for e in self.world.events if not e.delivered]


__all__ = ["Env", "ModelBase", "Req", "Stats", "counted"]
