"""The billing event types: the one documented list, and the rule that picks an event's types.

A committed change of one resource yields one or more :class:`BillingEvent` types, derived
from facts the commit already holds (whether the resource was inserted, its status before
and after, and the actions of its audit events):

1. ``<resource>.created`` when the resource was inserted;
2. ``<resource>.<status>`` when the change moved the resource into ``status``, and also at
   insertion when the resource was created in a status other than its initial one (an
   invoice first seen already paid yields ``invoice.created`` then ``invoice.paid``);
3. a named type for the few audit actions that matter without a status move
   (``subscription.cancel_scheduled``, ``invoice.payment_failed``);
4. ``<resource>.updated`` when none of the above applies.

The mechanical rule keeps the list predictable: every status of every resource is an event
type. ``docs/EVENTS.md`` lists the same types (``tests/unit/test_event_catalog.py`` keeps the
two equal, and fails when a domain status enum grows a value this list lacks). A status the
list does not know yields ``<resource>.updated`` rather than failing the commit: an event is
never a reason to refuse a money movement.

Nothing here reads a clock or does I/O; the outbox writer (issue 12) calls
:func:`event_types` once per changed resource of a commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from billing_service.domain.errors import InvalidArgument

__all__ = [
    "EVENT_TYPES",
    "INITIAL_STATUS",
    "MAX_TYPE_PATTERNS",
    "NAMED_ACTIONS",
    "RESOURCE_TYPES",
    "EventType",
    "event_types",
    "matches",
    "validate_type_patterns",
]

#: Every kind of resource that has events, in the order the documentation lists them.
RESOURCE_TYPES: Final = (
    "customer",
    "payment_method",
    "payment",
    "refund",
    "plan",
    "subscription",
    "invoice",
    "dispute",
)

#: The status a resource normally has when it is created (a customer has no status; its
#: audit events say "active"). Creation in another status also yields the status's type.
INITIAL_STATUS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "customer": "active",
        "payment_method": "attached",
        "payment": "pending",
        "refund": "pending",
        "plan": "active",
        "subscription": "incomplete",
        "invoice": "draft",
        "dispute": "needs_response",
    }
)

#: Audit actions that yield a named event type although the status may not move.
NAMED_ACTIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "subscription.cancel_scheduled": "subscription.cancel_scheduled",
        "invoice.payment_failed": "invoice.payment_failed",
    }
)

#: Most filters name a handful of types; this bounds the work of matching one event.
MAX_TYPE_PATTERNS: Final = 50


@dataclass(frozen=True)
class EventType:
    """One documented event type.

    Attributes:
        name: The type, ``<resource_type>.<what>``.
        resource_type: The kind of resource whose change it reports.
        follows: When it is emitted, in the words of docs/EVENTS.md.
    """

    name: str
    resource_type: str
    follows: str


def _status(resource: str, status: str, follows: str) -> EventType:
    return EventType(f"{resource}.{status}", resource, follows)


def _created(resource: str, what: str) -> EventType:
    return EventType(f"{resource}.created", resource, what)


def _updated(resource: str, examples: str) -> EventType:
    return EventType(f"{resource}.updated", resource, f"any other change ({examples})")


_TYPES: Final = (
    _created("customer", "CreateCustomer"),
    _updated("customer", "UpdateCustomer; the customer created at a processor"),
    _created("payment_method", "AttachPaymentMethod (status attached)"),
    _status("payment_method", "detached", "attached -> detached (DetachPaymentMethod)"),
    _updated("payment_method", "none today; reserved for processor-side card updates"),
    _created("payment", "CreatePayment records the payment (status pending)"),
    _status(
        "payment",
        "requires_action",
        "pending -> requires_action: the buyer must authenticate (3-D Secure) or approve (PayPal)",
    ),
    _status(
        "payment",
        "processing",
        "pending or requires_action -> processing: the final answer comes later, usually by webhook",
    ),
    _status(
        "payment",
        "requires_capture",
        "pending or requires_action -> requires_capture: authorized, capture_method MANUAL",
    ),
    _status(
        "payment", "succeeded", "-> succeeded: captured (automatic capture, CapturePayment, or the processor's webhook)"
    ),
    _status("payment", "failed", "-> failed: declined or errored (payment.failure says why)"),
    _status("payment", "canceled", "-> canceled: CancelPayment, or canceled or expired at the processor"),
    _updated("payment", "UpdatePayment; refund amounts reserved or settled; a dispute opened; processor id linked"),
    _created(
        "refund", "CreateRefund (status pending); a refund made at the processor, mirrored (then refund.succeeded too)"
    ),
    _status("refund", "succeeded", "pending -> succeeded"),
    _status("refund", "failed", "pending or succeeded -> failed (a bank refund that bounced)"),
    _status("refund", "canceled", "pending -> canceled"),
    _updated("refund", "processor id linked"),
    _created("plan", "CreatePlan"),
    _status("plan", "archived", "active -> archived (ArchivePlan)"),
    _updated("plan", "the plan created at a processor"),
    _created("subscription", "CreateSubscription (status incomplete)"),
    _status(
        "subscription",
        "trialing",
        "-> trialing: created with a trial (after subscription.created), or resumed into one",
    ),
    _status(
        "subscription",
        "active",
        "-> active: first payment made, trial ended and paid, recovered from past_due, resumed",
    ),
    _status(
        "subscription",
        "past_due",
        "active or trialing -> past_due: a renewal payment failed and the processor retries it",
    ),
    _status("subscription", "paused", "active, trialing or past_due -> paused (PauseSubscription)"),
    _status("subscription", "canceled", "-> canceled: CancelSubscription, refused at creation, or ended at period end"),
    EventType(
        "subscription.cancel_scheduled",
        "subscription",
        "CancelSubscription with at_period_end (status unchanged, cancel_at_period_end set)",
    ),
    _updated("subscription", "plan or quantity changed; a new period started; processor id linked"),
    _created("invoice", "an invoice of the processor is first mirrored (any status)"),
    _status("invoice", "open", "draft -> open (finalized)"),
    _status("invoice", "paid", "draft, open or uncollectible -> paid; or created paid (after invoice.created)"),
    _status("invoice", "void", "draft, open or uncollectible -> void"),
    _status("invoice", "uncollectible", "open -> uncollectible (payment attempts exhausted)"),
    EventType(
        "invoice.payment_failed",
        "invoice",
        "a payment attempt failed: attempt_count rose on an unpaid invoice (status unchanged, or open -> "
        "uncollectible); Stripe and the fake, not PayPal (no invoice for a failed cycle)",
    ),
    _updated("invoice", "amounts or lines changed"),
    _created("dispute", "a processor opened a dispute (status needs_response)"),
    _status("dispute", "under_review", "needs_response -> under_review (evidence submitted)"),
    _status("dispute", "won", "needs_response or under_review -> won: decided for the merchant"),
    _status("dispute", "lost", "needs_response or under_review -> lost: the disputed amount went back to the buyer"),
    _status("dispute", "warning_closed", "-> warning_closed: an inquiry closed without becoming a chargeback"),
    _updated("dispute", "amount or reason changed"),
)

#: Every documented event type by name, in the order of docs/EVENTS.md.
EVENT_TYPES: Final[Mapping[str, EventType]] = MappingProxyType({t.name: t for t in _TYPES})


def event_types(
    resource_type: str,
    *,
    created: bool,
    previous_status: str,
    status: str,
    actions: Iterable[str] = (),
) -> list[str]:
    """The types of the events one committed change of one resource yields, in order.

    Args:
        resource_type: One of :data:`RESOURCE_TYPES`.
        created: The commit inserted the resource.
        previous_status: Its status before the commit (ignored when ``created``).
        status: Its status after the commit.
        actions: The actions of the commit's audit events about this resource.

    Returns:
        One or more documented types, never empty and without repeats.

    Raises:
        ValueError: ``resource_type`` has no events (a programming error).
    """
    if resource_type not in INITIAL_STATUS:
        raise ValueError(f"no events for resource type {resource_type!r}")
    out: list[str] = []
    if created:
        out.append(f"{resource_type}.created")
    moved = status != (INITIAL_STATUS[resource_type] if created else previous_status)
    if moved and status:
        name = f"{resource_type}.{status}"
        # An undocumented status never blocks a commit: it is reported as an update.
        out.append(name if name in EVENT_TYPES else f"{resource_type}.updated")
    for action in actions:
        named = NAMED_ACTIONS.get(action)
        if named is not None and named.startswith(f"{resource_type}.") and named not in out:
            out.append(named)
    if not out:
        out.append(f"{resource_type}.updated")
    return list(dict.fromkeys(out))


def validate_type_patterns(patterns: Sequence[str], field_path: str, *, allow_all: bool = True) -> tuple[str, ...]:
    """Checks a list of type filters: exact types, ``<resource_type>.*``, or ``*``.

    Args:
        patterns: The filters as the caller sent them.
        field_path: The request field, for the error.
        allow_all: Whether ``*`` is accepted.

    Returns:
        The patterns, without repeats, in the caller's order.

    Raises:
        InvalidArgument: An unknown type or resource, a malformed pattern, or too many.
    """
    if len(patterns) > MAX_TYPE_PATTERNS:
        raise InvalidArgument.field(field_path, f"at most {MAX_TYPE_PATTERNS} entries are allowed")
    for index, pattern in enumerate(patterns):
        path = f"{field_path}[{index}]"
        if pattern == "*":
            if not allow_all:
                raise InvalidArgument.field(path, '"*" is not accepted here')
        elif pattern.endswith(".*"):
            if pattern[:-2] not in INITIAL_STATUS:
                raise InvalidArgument.field(path, f"names no resource type (one of {', '.join(RESOURCE_TYPES)})")
        elif pattern not in EVENT_TYPES:
            raise InvalidArgument.field(path, "is not an event type (see docs/EVENTS.md)")
    return tuple(dict.fromkeys(patterns))


def matches(patterns: Sequence[str], event_type: str) -> bool:
    """True if ``event_type`` passes the (validated) filters; no filters pass everything."""
    if not patterns:
        return True
    resource_all = event_type.split(".", 1)[0] + ".*"
    return any(p in ("*", event_type, resource_all) for p in patterns)
