"""Push delivery of billing events: endpoints, deliveries, the retry schedule and URL rules.

An **endpoint** is a URL that receives the events whose types it subscribes to, signed
with its active secrets (:mod:`billing_service.domain.event_signing`; the secrets
themselves are derived from the deployment's key, never stored). A **delivery** is one
event for one endpoint: pending until the endpoint answers 2xx (succeeded), or until its
retry window of :data:`RETRY_WINDOW` has passed with every attempt failed (dead-lettered).

Pure: the caller passes the time and the jitter; nothing here reads a clock, the
environment or the network.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from billing_service.domain.common import validate_metadata, validate_text
from billing_service.domain.errors import InvalidArgument
from billing_service.domain.event_catalog import matches, validate_type_patterns
from billing_service.domain.event_signing import SecretSlot

__all__ = [
    "CLAIM_SECONDS",
    "ENDPOINT_BACKOFF_AFTER",
    "MAX_URL_LENGTH",
    "RETRY_STEPS",
    "RETRY_WINDOW",
    "DeliveryError",
    "DeliveryState",
    "EventDelivery",
    "EventEndpoint",
    "delivery_id",
    "endpoint_backoff",
    "is_forbidden_address",
    "next_attempt_at",
    "retry_delay",
    "validate_endpoint_types",
    "validate_url",
]

#: How long a delivery is retried, from when it was queued (or replayed).
RETRY_WINDOW: Final = timedelta(hours=72)
#: The wait after the 1st, 2nd, ... failed attempt; after the last, :data:`LATER_STEP`.
RETRY_STEPS: Final = (
    timedelta(seconds=30),
    timedelta(minutes=1),
    timedelta(minutes=2),
    timedelta(minutes=5),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(hours=4),
    timedelta(hours=8),
)
LATER_STEP: Final = timedelta(hours=12)
#: A claimed delivery is due again after this long: the claim is the lease, so a crashed
#: worker's delivery is retried by another one. Longer than an attempt's timeout.
CLAIM_SECONDS: Final = 30.0
#: Failed attempts in a row after which an endpoint backs off (one attempt at a time).
ENDPOINT_BACKOFF_AFTER: Final = 5
_MAX_ENDPOINT_BACKOFF: Final = timedelta(hours=1)
MAX_URL_LENGTH: Final = 2048
MAX_DESCRIPTION_LENGTH: Final = 500


class DeliveryState(StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"


class DeliveryError(StrEnum):
    """Why an attempt failed (``EventDelivery.last_error``); the receiver's body is never kept."""

    TIMEOUT = "timeout"
    CONNECTION_FAILED = "connection_failed"
    TLS_FAILED = "tls_failed"
    REDIRECT = "redirect"
    HTTP_STATUS = "http_status"
    #: The URL's name resolved to a link-local address (cloud metadata services live there).
    ADDRESS_REFUSED = "address_refused"
    #: The event was deleted by retention before it could be delivered (a late replay).
    EVENT_EXPIRED = "event_expired"
    #: The window ended while the endpoint was disabled or backing off, without an attempt.
    ENDPOINT_UNAVAILABLE = "endpoint_unavailable"


@dataclass
class EventEndpoint:
    """A push endpoint.

    Attributes:
        id: ``ep_...``.
        url: Where events are POSTed.
        event_types: Type filters (``payment.succeeded``, ``payment.*`` or ``*``).
        secrets: The signing secrets by id and lifetime, newest first (never the secrets).
        consecutive_failures: Failed attempts in a row; 0 after a success.
        backoff_until: While backing off, no attempt starts before this time.
        created_at: Also the first ``sequence_time`` of the events it receives.
        version: Optimistic concurrency.
    """

    id: str
    url: str
    event_types: list[str]
    secrets: list[SecretSlot]
    created_at: datetime
    updated_at: datetime
    description: str = ""
    disabled: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    consecutive_failures: int = 0
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    backoff_until: datetime | None = None
    version: int = 1

    def wants(self, event_type: str, sequence_time: datetime) -> bool:
        """True if an event of this type that entered the log at ``sequence_time`` is queued here.

        Events that entered the log before the endpoint existed are not (replay them).
        """
        return not self.disabled and sequence_time >= self.created_at and matches(self.event_types, event_type)

    def backing_off(self) -> bool:
        """True while the endpoint's attempts go one at a time (see :func:`endpoint_backoff`)."""
        return self.consecutive_failures >= ENDPOINT_BACKOFF_AFTER


@dataclass
class EventDelivery:
    """One event for one endpoint.

    Attributes:
        id: ``dlv_...``, from :func:`delivery_id` (so the fan-out can repeat inserts).
        seq: The event's number in the event log.
        replay_id: The ``ReplayEvents`` request that queued it; empty for the fan-out's own.
        attempt_count: Attempts made (a claim counts as one).
        step: Position in the retry schedule within the current window: failed attempts,
            plus steps skipped while the endpoint was backing off.
        next_attempt_at: When the delivery is due; while claimed, when the claim ends.
        lease_owner: The worker holding the claim; empty when not claimed.
        window_start: When the retry window started (creation, or the replay).
        expire_at: When a finished delivery is deleted (TTL).
        rev: Bumped by every write; a claim or a move is conditional on the value read.
    """

    id: str
    endpoint_id: str
    event_id: str
    seq: int
    event_type: str
    state: DeliveryState
    create_time: datetime
    update_time: datetime
    window_start: datetime
    next_attempt_at: datetime | None
    replay_id: str = ""
    attempt_count: int = 0
    step: int = 0
    lease_owner: str = ""
    last_attempt_at: datetime | None = None
    last_status_code: int = 0
    last_error: str = ""
    expire_at: datetime | None = None
    rev: int = 0


def delivery_id(endpoint_id: str, seq: int, replay_id: str = "") -> str:
    """The deterministic id of the delivery of event ``seq`` to an endpoint (per replay)."""
    digest = hashlib.sha256(f"{endpoint_id}\x1f{seq}\x1f{replay_id}".encode()).hexdigest()
    return f"dlv_{digest[:26]}"


def retry_delay(step: int) -> timedelta:
    """The wait after the ``step``-th failure of a window (1-based)."""
    if step < 1:
        raise ValueError("step starts at 1")
    return RETRY_STEPS[step - 1] if step <= len(RETRY_STEPS) else LATER_STEP


def next_attempt_at(window_start: datetime, step: int, *, now: datetime, jitter: float) -> datetime | None:
    """When to try again after the ``step``-th failure (or skipped step), or None to dead-letter.

    The wait is :func:`retry_delay` with ``jitter`` (a fraction, -0.1 to 0.1) applied, and
    never beyond the window's end, so the last attempt is made when the window ends.

    Args:
        window_start: When the delivery's retry window started.
        step: Failures and skipped steps in this window, this one included.
        now: When the attempt failed.
        jitter: The caller's random fraction, so endpoints' retries do not line up.
    """
    if not -0.1 <= jitter <= 0.1:
        raise ValueError("jitter must be between -0.1 and 0.1")
    end = window_start + RETRY_WINDOW
    if now >= end:
        return None
    return min(now + retry_delay(step) * (1 + jitter), end)


def endpoint_backoff(consecutive_failures: int) -> timedelta | None:
    """How long a failing endpoint waits before its next probe; None while not backing off.

    30 s after the 5th failure in a row, doubling with each further one, at most an hour.
    """
    if consecutive_failures < ENDPOINT_BACKOFF_AFTER:
        return None
    doublings = min(consecutive_failures - ENDPOINT_BACKOFF_AFTER, 20)
    wait: timedelta = timedelta(seconds=30) * (1 << doublings)
    return min(wait, _MAX_ENDPOINT_BACKOFF)


def validate_url(url: str, field_path: str, *, allow_http: bool) -> str:
    """Checks an endpoint URL: https (http only where allowed), a host, no credentials.

    Raises:
        InvalidArgument: Naming ``field_path``.
    """
    if not url:
        raise InvalidArgument.field(field_path, "is required")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument.field(field_path, f"must be at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise InvalidArgument.field(field_path, "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidArgument.field(field_path, "is not a valid URL") from None
    del port
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise InvalidArgument.field(field_path, "must be an https URL" + (" (or http)" if allow_http else ""))
    if not parts.hostname:
        raise InvalidArgument.field(field_path, "must name a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument.field(field_path, "must not contain a user name or password")
    if parts.fragment:
        raise InvalidArgument.field(field_path, "must not contain a fragment (#...)")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None and is_forbidden_address(literal):
        raise InvalidArgument.field(field_path, "must not point to a link-local address")
    return url


def is_forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Link-local addresses (169.254.0.0/16, fe80::/10) are never POSTed to: cloud metadata lives there."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address.is_link_local or (mapped is not None and mapped.is_link_local)


def validate_endpoint_types(patterns: list[str], field_path: str) -> list[str]:
    """The endpoint's type filters: at least one; types, ``<resource>.*`` or ``*``."""
    if not patterns:
        raise InvalidArgument.field(field_path, 'needs at least one entry ("*" for every type)')
    return list(validate_type_patterns(patterns, field_path, allow_all=True))


def validate_endpoint_fields(description: str, metadata: dict[str, str], prefix: str = "") -> None:
    """Checks the free-form fields of an endpoint."""
    validate_text(description, f"{prefix}description", max_len=MAX_DESCRIPTION_LENGTH)
    validate_metadata(metadata, field_path=f"{prefix}metadata")
