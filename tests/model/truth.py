"""The invariants of the model test: our store against the processor's own records.

The processor's truth is read from the processor itself (the fake's ledger, the Stripe
imitation's stored objects), never through our adapters, and Stripe amounts are converted
with this module's own table: a bug in the adapters' mapping must show up as drift, not be
repeated by the oracle.

``drift`` is the invariant after quiescence (every payment, refund and subscription equals
its processor object; nothing charged is CANCELED or FAILED; refunded <= captured; one
processor object per request). ``step_violations`` is what must hold after every step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from billing_service.domain.common import AuditEvent
from billing_service.domain.payments import Payment, PaymentStatus, Refund, RefundStatus
from billing_service.domain.subscriptions import Plan, Subscription, SubscriptionStatus
from billing_service.service_layer.idempotency import RequestContext
from billing_service.service_layer.ports import BillingStore, E
from tests.model.processors import DashboardFake, DashboardStripe

CREATE_PAYMENT = "/billing.v1.BillingService/CreatePayment"

# Stripe's minor unit where it differs from ISO 4217's (docs.stripe.com/currencies): kept
# here on purpose instead of importing the adapter's table.
STRIPE_SCALE = {"isk": 100}
_STRIPE_PAYMENT = {
    "requires_payment_method": PaymentStatus.FAILED,  # we always confirm: back here means it failed
    "requires_confirmation": PaymentStatus.PENDING,
    "requires_action": PaymentStatus.REQUIRES_ACTION,
    "processing": PaymentStatus.PROCESSING,
    "requires_capture": PaymentStatus.REQUIRES_CAPTURE,
    "succeeded": PaymentStatus.SUCCEEDED,
    "canceled": PaymentStatus.CANCELED,
}
_STRIPE_SUBSCRIPTION = {
    "incomplete": SubscriptionStatus.INCOMPLETE,
    "incomplete_expired": SubscriptionStatus.CANCELED,
    "trialing": SubscriptionStatus.TRIALING,
    "active": SubscriptionStatus.ACTIVE,
    "past_due": SubscriptionStatus.PAST_DUE,
    "unpaid": SubscriptionStatus.PAST_DUE,
    "canceled": SubscriptionStatus.CANCELED,
    "paused": SubscriptionStatus.PAUSED,
}


@dataclass
class PaymentTruth:
    """A processor payment in our minor units."""

    processor_id: str
    status: PaymentStatus
    captured: int
    capturable: int
    refunded: int = 0
    refund_pending: int = 0
    our_id: str = ""  # our payment id as the processor carries it (Stripe metadata)
    key: str = ""  # the idempotency key that created it (the fake's charge log)


@dataclass
class RefundTruth:
    """A processor refund in our minor units."""

    processor_id: str
    processor_payment_id: str
    status: RefundStatus
    amount: int
    our_id: str = ""


@dataclass
class SubscriptionTruth:
    """A processor subscription."""

    processor_id: str
    status: SubscriptionStatus
    current_period_end: datetime | None
    cancel_at_period_end: bool
    price_id: str
    quantity: int
    our_id: str = ""


@dataclass
class Truth:
    """Everything the processor holds, by processor id."""

    payments: dict[str, PaymentTruth] = field(default_factory=dict)
    refunds: dict[str, RefundTruth] = field(default_factory=dict)
    subscriptions: dict[str, SubscriptionTruth] = field(default_factory=dict)
    price_ref: str = ""  # the key of a plan's processor_refs that names the processor price


async def fake_truth(fake: DashboardFake) -> Truth:
    """Reads the fake's ledger (after it bills what is due, as any read of it does)."""
    await fake.process_renewals()
    ledger = fake.ledger
    keys = {c.processor_payment_id: c.idempotency_key for c in ledger.charges}
    truth = Truth(price_ref="fake")
    for p in ledger.payments.values():
        truth.payments[p.id] = PaymentTruth(
            p.id, p.status, p.amount_captured, p.amount_capturable, p.amount_refunded, p.amount_refund_pending,
            our_id=p.our_id, key=keys.get(p.id, ""),
        )  # fmt: skip
    for r in ledger.refunds.values():
        truth.refunds[r.id] = RefundTruth(r.id, r.payment_id, r.status, r.amount.amount_minor, our_id=r.our_id)
    for s in ledger.subscriptions.values():
        truth.subscriptions[s.id] = SubscriptionTruth(
            s.id, s.status, s.period_end, s.cancel_at_period_end, s.price.id, s.quantity
        )
    return truth


def _ours(amount: int | None, currency: str) -> int:
    return (amount or 0) // STRIPE_SCALE.get(currency, 1)


def _when(ts: int | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def stripe_truth(api: DashboardStripe) -> Truth:
    """Reads the Stripe imitation's objects."""
    truth = Truth(price_ref="stripe")
    for r in api.objects("refund"):
        refund_status = {"succeeded": RefundStatus.SUCCEEDED, "failed": RefundStatus.FAILED}.get(
            r["status"], RefundStatus.CANCELED if r["status"] == "canceled" else RefundStatus.PENDING
        )
        truth.refunds[r["id"]] = RefundTruth(
            r["id"], r["payment_intent"], refund_status, _ours(r["amount"], r["currency"]),
            our_id=r["metadata"].get("billing_refund_id", ""),
        )  # fmt: skip
    for pi in api.objects("payment_intent"):
        cur = pi["currency"]
        status = _STRIPE_PAYMENT[pi["status"]]
        refunds = [r for r in truth.refunds.values() if r.processor_payment_id == pi["id"]]
        truth.payments[pi["id"]] = PaymentTruth(
            pi["id"], status, _ours(pi["amount_received"], cur),
            _ours(pi["amount_capturable"], cur) if status is PaymentStatus.REQUIRES_CAPTURE else 0,
            refunded=sum(r.amount for r in refunds if r.status is RefundStatus.SUCCEEDED),
            refund_pending=sum(r.amount for r in refunds if r.status is RefundStatus.PENDING),
            our_id=pi["metadata"].get("billing_payment_id", ""),
        )  # fmt: skip
    for sub in api.objects("subscription"):
        sub_status = _STRIPE_SUBSCRIPTION[sub["status"]]
        if sub["pause_collection"] is not None and sub_status is not SubscriptionStatus.CANCELED:
            sub_status = SubscriptionStatus.PAUSED
        item = sub["items"]["data"][0]
        truth.subscriptions[sub["id"]] = SubscriptionTruth(
            sub["id"], sub_status, _when(item["current_period_end"]), bool(sub["cancel_at_period_end"]),
            item["price"]["id"], int(item["quantity"]), our_id=sub["metadata"].get("billing_subscription_id", ""),
        )  # fmt: skip
    return truth


async def everything(store: BillingStore, kind: type[E]) -> list[E]:
    """Every stored ``kind`` (the model's databases are small)."""
    out: list[E] = []
    cursor: str | None = None
    while True:
        page = await store.list_page(kind, {}, limit=500, after=cursor)
        out.extend(page.items)
        if not page.next_cursor:
            return out
        cursor = page.next_cursor


async def creation_key(store: BillingStore, payment: Payment) -> str:
    """The processor key of the request that created ``payment`` (from its audit trail)."""
    trail = await store.list_audit_events(payment.id, limit=5, after=None)
    created: AuditEvent | None = next((e for e in trail.items if e.action == "payment.created"), None)
    if created is None:
        return ""
    return RequestContext(created.caller, CREATE_PAYMENT, created.request_id, payment.id).processor_key("payment")


@dataclass(frozen=True)
class Finding:
    """One invariant violation: a stable ``kind`` and the details."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.detail}"


def step_violations(payments: Iterable[Payment], refunds: Iterable[Refund]) -> list[Finding]:
    """What must hold after every step: no negative money, refunded + pending <= captured <= amount."""
    out: list[Finding] = []
    for p in payments:
        amounts = (p.amount_captured, p.amount_capturable, p.amount_refunded, p.amount_refund_pending)
        if min(amounts) < 0:
            out.append(Finding("negative_amount", f"payment {p.id}: {amounts}"))
        if p.amount_refunded + p.amount_refund_pending > p.amount_captured:
            out.append(
                Finding(
                    "refunded_exceeds_captured",
                    f"payment {p.id} ({p.status.value}): refunded {p.amount_refunded} + pending "
                    f"{p.amount_refund_pending} > captured {p.amount_captured} {p.currency}",
                )
            )
        if p.amount_captured > p.amount.amount_minor:
            out.append(Finding("captured_exceeds_amount", f"payment {p.id}: {p.amount_captured} > {p.amount}"))
    for r in refunds:
        if r.amount.amount_minor <= 0:
            out.append(Finding("negative_amount", f"refund {r.id}: {r.amount}"))
    return out


async def drift(store: BillingStore, truth: Truth) -> list[Finding]:
    """Every way our store differs from the processor's truth (empty: converged)."""
    payments = await everything(store, Payment)
    refunds = await everything(store, Refund)
    subs = await everything(store, Subscription)
    plans = {p.id: p for p in await everything(store, Plan)}
    out = step_violations(payments, refunds)
    out += await _payment_drift(store, payments, truth)
    out += _refund_drift(payments, refunds, truth)
    out += _subscription_drift(subs, plans, truth)
    return out


async def _payment_drift(store: BillingStore, payments: list[Payment], truth: Truth) -> list[Finding]:
    out: list[Finding] = []
    by_key: defaultdict[str, list[str]] = defaultdict(list)
    by_our_id: defaultdict[str, list[str]] = defaultdict(list)
    for t in truth.payments.values():
        if t.key:
            by_key[t.key].append(t.processor_id)
        if t.our_id:
            by_our_id[t.our_id].append(t.processor_id)
    linked = {p.processor_id for p in payments if p.processor_id}
    for p in payments:
        key = await creation_key(store, p)
        objects = sorted(set(by_key.get(key, [])) | set(by_our_id.get(p.id, [])))
        if len(objects) > 1:
            out.append(Finding("twin_processor_payments", f"payment {p.id}: one request, processor objects {objects}"))
        if not p.processor_id:
            if objects:
                t = truth.payments[objects[0]]
                kind = "charged_but_canceled_or_failed" if _charged(t) and p.status in _DEAD else "payment_unlinked"
                out.append(
                    Finding(
                        kind,
                        f"payment {p.id} is {p.status.value} without a processor id, but {t.processor_id} "
                        f"is {t.status.value} (captured {t.captured}, capturable {t.capturable})",
                    )
                )
            elif p.status not in _DEAD:
                out.append(
                    Finding("payment_unsettled", f"payment {p.id} is {p.status.value}, never reached a processor")
                )
            continue
        found = truth.payments.get(p.processor_id)
        if found is None:
            out.append(Finding("payment_missing_at_processor", f"payment {p.id}: no {p.processor_id} at the processor"))
            continue
        t = found
        if p.status in _DEAD and _charged(t):
            out.append(
                Finding(
                    "charged_but_canceled_or_failed",
                    f"payment {p.id} is {p.status.value} but {t.processor_id} is {t.status.value} "
                    f"(captured {t.captured}, capturable {t.capturable})",
                )
            )
        elif p.status is not t.status and not (p.status in _DEAD and t.status in _DEAD):
            # (FAILED and CANCELED are one to us when no money moved: Stripe lets an operator cancel
            # a PaymentIntent whose confirmation was declined.)
            out.append(Finding("payment_status", f"payment {p.id}: ours {p.status.value}, processor {t.status.value}"))
        ours = (p.amount_captured, p.amount_capturable if p.status is PaymentStatus.REQUIRES_CAPTURE else 0)
        if ours != (t.captured, t.capturable):
            out.append(
                Finding(
                    "payment_amounts",
                    f"payment {p.id} ({p.status.value}): captured/capturable ours {ours}, processor "
                    f"{(t.captured, t.capturable)} {p.currency}",
                )
            )
        if (p.amount_refunded, p.amount_refund_pending) != (t.refunded, t.refund_pending):
            out.append(
                Finding(
                    "payment_refund_totals",
                    f"payment {p.id}: refunded/pending ours {(p.amount_refunded, p.amount_refund_pending)}, "
                    f"processor {(t.refunded, t.refund_pending)} {p.currency}",
                )
            )
    for t in truth.payments.values():
        if t.our_id and t.processor_id not in linked and not any(p.id == t.our_id for p in payments):
            out.append(Finding("processor_payment_unknown", f"{t.processor_id} names payment {t.our_id}, not stored"))
    return out


_DEAD = (PaymentStatus.CANCELED, PaymentStatus.FAILED)


def _charged(t: PaymentTruth) -> bool:
    return t.captured > 0 or t.capturable > 0


def _refund_drift(payments: list[Payment], refunds: list[Refund], truth: Truth) -> list[Finding]:
    out: list[Finding] = []
    by_id = {p.id: p for p in payments}
    ours_by_processor: defaultdict[str, list[Refund]] = defaultdict(list)
    for r in refunds:
        if r.processor_id:
            ours_by_processor[r.processor_id].append(r)
    our_processor_payments = {p.processor_id: p for p in payments if p.processor_id}
    for t in truth.refunds.values():
        mirrored = ours_by_processor.get(t.processor_id, [])
        if t.processor_payment_id in our_processor_payments and not mirrored:
            payment = our_processor_payments[t.processor_payment_id]
            out.append(
                Finding(
                    "refund_not_recorded",
                    f"processor refund {t.processor_id} ({t.status.value}, {t.amount}) of payment {payment.id} "
                    f"has no refund record{f' (it names our refund {t.our_id})' if t.our_id else ''}",
                )
            )
        if len(mirrored) > 1:
            out.append(Finding("refund_recorded_twice", f"{t.processor_id}: {[r.id for r in mirrored]}"))
    twins: defaultdict[str, list[str]] = defaultdict(list)
    for t in truth.refunds.values():
        if t.our_id:
            twins[t.our_id].append(t.processor_id)
    for our_id, objects in twins.items():
        if len(objects) > 1:
            out.append(Finding("twin_processor_refunds", f"refund {our_id}: processor refunds {objects}"))
    for r in refunds:
        owner = by_id.get(r.payment_id)
        if not r.processor_id:
            if r.status is not RefundStatus.FAILED:
                out.append(Finding("refund_unsettled", f"refund {r.id} is {r.status.value} without a processor id"))
            continue
        refund_truth = truth.refunds.get(r.processor_id)
        if refund_truth is None:
            out.append(Finding("refund_missing_at_processor", f"refund {r.id}: no {r.processor_id}"))
            continue
        t = refund_truth
        if r.status is not t.status:
            out.append(Finding("refund_status", f"refund {r.id}: ours {r.status.value}, processor {t.status.value}"))
        if r.amount.amount_minor != t.amount:
            out.append(
                Finding("refund_amount", f"refund {r.id}: ours {r.amount}, processor {t.amount} (our minor units)")
            )
        if owner is not None and owner.processor_id != t.processor_payment_id:
            detail = f"refund {r.id}: payment {owner.processor_id} vs {t.processor_payment_id}"
            out.append(Finding("refund_payment", detail))
    for p in payments:
        mine = [r for r in refunds if r.payment_id == p.id]
        succeeded = sum(r.amount.amount_minor for r in mine if r.status is RefundStatus.SUCCEEDED)
        pending = sum(r.amount.amount_minor for r in mine if r.status is RefundStatus.PENDING)
        if (succeeded, pending) != (p.amount_refunded, p.amount_refund_pending):
            out.append(
                Finding(
                    "refund_records_vs_payment",
                    f"payment {p.id}: refund records sum to {(succeeded, pending)}, the payment says "
                    f"{(p.amount_refunded, p.amount_refund_pending)}",
                )
            )
    return out


def _subscription_drift(subs: list[Subscription], plans: dict[str, Plan], truth: Truth) -> list[Finding]:
    out: list[Finding] = []
    linked = {s.processor_id for s in subs if s.processor_id}
    for s in subs:
        if not s.processor_id:
            continue  # never reached the processor, or its object is reported below as unlinked
        t = truth.subscriptions.get(s.processor_id)
        if t is None:
            out.append(Finding("subscription_missing_at_processor", f"subscription {s.id}: no {s.processor_id}"))
            continue
        plan = plans.get(s.plan_id)
        price = plan.processor_refs.get(truth.price_ref, "") if plan else ""
        ours: tuple[Any, ...] = (s.status, s.cancel_at_period_end, s.current_period_end, price, s.quantity)
        theirs: tuple[Any, ...] = (t.status, t.cancel_at_period_end, t.current_period_end, t.price_id, t.quantity)
        names = ("status", "cancel_at_period_end", "current_period_end", "price", "quantity")
        for name, a, b in zip(names, ours, theirs, strict=True):
            if a != b:
                kind = "subscription_plan" if name in ("price", "quantity") else f"subscription_{name}"
                out.append(Finding(kind, f"subscription {s.id}: {name} ours {a}, processor {b}"))
    for t in truth.subscriptions.values():
        if t.processor_id not in linked:
            named = f" (it names our subscription {t.our_id})" if t.our_id else ""
            detail = f"processor subscription {t.processor_id} ({t.status.value}) is not linked to any of ours{named}"
            out.append(Finding("subscription_unlinked", detail))
    return out
