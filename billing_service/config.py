"""Settings: one frozen object built from the environment in ``__main__``.

Nothing here reads the environment at import time. Secrets are wrapped in
:class:`Secret`, whose repr never shows the value.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from billing_service.domain.common import Processor


class ConfigError(Exception):
    """The settings are unusable; the message says which variable and why (never a secret)."""


#: ``BILLING_AUTH_MODE`` values; see ``entrypoints/grpc_api/auth.py``.
AUTH_MODES = ("none", "token", "mtls", "mtls+token", "any")

# A caller's name: the client certificate's subject CN or the name before a token.
CALLER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PERMISSION = re.compile(r"^[a-z]+(:[a-z]+)?$")
MIN_TOKEN_LENGTH = 32
# Shannon estimate of a token's characters, in bits. 32 random hex characters (128 bits)
# measure 93 bits at worst over 100,000 draws; a 32-character token over 5 letters, 74.
MIN_TOKEN_BITS = 80
#: Finished webhook events are kept at least this long (Stripe's Events API reaches back 30 days).
MIN_WEBHOOK_RETENTION_DAYS = 31


@dataclass(frozen=True)
class Secret:
    """A secret value that never shows up in logs, reprs or tracebacks."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('****')" if self.value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to start. See the README's settings table."""

    grpc_address: str = "127.0.0.1:50051"
    mongodb_uri: Secret = Secret("")
    mongodb_database: str = "billing"
    embedded_data_dir: Path = Path("var/mongo")
    default_processor: Processor = Processor.FAKE
    environment: str = "development"
    enable_fake: bool = True
    stripe_secret_key: Secret = Secret("")
    stripe_api_base: str = "https://api.stripe.com"
    stripe_webhook_secrets: tuple[Secret, ...] = ()
    stripe_max_attempts: int = 3
    paypal_client_id: str = ""
    paypal_client_secret: Secret = Secret("")
    paypal_environment: str = "sandbox"
    paypal_base_url: str = ""
    paypal_webhook_id: str = ""
    idempotency_ttl_hours: float = 48.0
    idempotency_lease_seconds: float = 60.0
    shutdown_grace_seconds: float = 10.0
    health_interval_seconds: float = 2.0
    max_message_bytes: int = 1024 * 1024
    reflection: bool = True
    log_level: str = "INFO"
    webhook_address: str = "127.0.0.1:8081"
    webhook_max_body_bytes: int = 512 * 1024
    webhook_workers: int = 16
    webhook_max_attempts: int = 8
    webhook_lease_seconds: float = 60.0
    webhook_retry_base_seconds: float = 2.0
    webhook_retry_max_seconds: float = 600.0
    webhook_poll_seconds: float = 1.0
    stripe_webhook_tolerance_seconds: int = 300
    paypal_cert_ca_file: Path | None = None
    metrics_port: int = 0
    reconcile_interval_seconds: float = 300.0
    janitor_interval_seconds: float = 300.0
    webhook_retention_days: float = 35.0
    webhook_metrics_port: int = 0
    auth_mode: str = "none"
    auth_tokens: tuple[tuple[str, Secret], ...] = ()
    caller_permissions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    webhook_tls_cert: Path | None = None
    webhook_tls_key: Path | None = None
    fake_state: str = "store"
    events_retention_days: float = 30.0
    events_ring_size: int = 10_000
    events_secret_key: Secret = Secret("")
    events_push: bool = True
    events_delivery_timeout_seconds: float = 10.0
    events_delivery_concurrency: int = 16

    @property
    def stripe_mode(self) -> str:
        """``live``, ``test`` or ``off`` from the key's prefix."""
        key = self.stripe_secret_key.value
        if not key:
            return "off"
        if key.startswith(("sk_live_", "rk_live_")):
            return "live"
        if key.startswith(("sk_test_", "rk_test_")):
            return "test"
        raise ConfigError("STRIPE_SECRET_KEY must start with sk_test_, sk_live_, rk_test_ or rk_live_")

    @property
    def live(self) -> bool:
        """True when real money can move."""
        return self.stripe_mode == "live" or (bool(self.paypal_client_id) and self.paypal_environment == "live")

    @property
    def events_key(self) -> bytes:
        """``BILLING_EVENTS_SECRET_KEY`` decoded (empty when unset).

        Raises:
            ConfigError: Not base64, or shorter than 32 bytes (the message never shows it).
        """
        raw = self.events_secret_key.value
        if not raw:
            return b""
        try:
            key = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_" if "-" in raw or "_" in raw else None,
                                   validate=True)  # fmt: skip
        except (ValueError, binascii.Error):
            raise ConfigError("BILLING_EVENTS_SECRET_KEY must be base64 (e.g. openssl rand -base64 32)") from None
        if len(key) < 32:
            raise ConfigError("BILLING_EVENTS_SECRET_KEY must decode to at least 32 bytes (openssl rand -base64 32)")
        return key

    @property
    def push_allows_http(self) -> bool:
        """Plain http push endpoints are accepted only outside production and live mode."""
        return not self.live and self.environment != "production"

    @property
    def enabled_processors(self) -> list[Processor]:
        """Processors this deployment can use."""
        out = []
        if self.enable_fake:
            out.append(Processor.FAKE)
        if self.stripe_secret_key:
            out.append(Processor.STRIPE)
        if self.paypal_client_id:
            out.append(Processor.PAYPAL)
        return out

    def validate(self) -> None:
        """Refuses settings that would be unsafe or cannot work.

        Raises:
            ConfigError: Naming the variable at fault.
        """
        _ = self.stripe_mode  # validates the key prefix
        if self.paypal_environment not in ("sandbox", "live"):
            raise ConfigError("PAYPAL_ENVIRONMENT must be sandbox or live")
        if self.paypal_client_id and not self.paypal_client_secret:
            raise ConfigError("PAYPAL_CLIENT_SECRET is required when PAYPAL_CLIENT_ID is set")
        if self.default_processor not in self.enabled_processors:
            raise ConfigError(
                f"BILLING_PROCESSOR={self.default_processor.value} is not configured "
                f"(enabled: {', '.join(p.value for p in self.enabled_processors) or 'none'})"
            )
        if self.live:
            if self.enable_fake:
                raise ConfigError("the fake processor cannot be enabled in live mode (set BILLING_ENABLE_FAKE=false)")
            if self.stripe_mode == "live" and not self.stripe_webhook_secrets:
                raise ConfigError("live mode requires STRIPE_WEBHOOK_SECRET (webhooks must be verified)")
            if self.paypal_environment == "live" and self.paypal_client_id and not self.paypal_webhook_id:
                raise ConfigError("live mode requires PAYPAL_WEBHOOK_ID (webhooks must be verified)")
            if not self.mongodb_uri:
                raise ConfigError("live mode requires MONGODB_URI (the embedded store is for development)")
        if not 1 <= self.events_retention_days <= 3650:
            raise ConfigError("BILLING_EVENTS_RETENTION_DAYS must be between 1 and 3650")
        if not 100 <= self.events_ring_size <= 1_000_000:
            raise ConfigError("BILLING_EVENTS_RING_SIZE must be between 100 and 1000000")
        if self.fake_state not in ("store", "memory"):
            raise ConfigError("BILLING_FAKE_STATE must be store or memory")
        if self.idempotency_ttl_hours < 24:
            raise ConfigError("BILLING_IDEMPOTENCY_TTL_HOURS must be at least 24")
        self._validate_webhooks()
        self._validate_auth()
        self._validate_events()

    def _validate_events(self) -> None:
        """Refuses push delivery settings that are unsafe or cannot work."""
        _ = self.events_key  # validates the key's encoding and length
        if self.live and self.events_push and not self.events_secret_key:
            raise ConfigError(
                "live mode with push delivery requires BILLING_EVENTS_SECRET_KEY (or BILLING_EVENTS_PUSH=false)"
            )
        if not 0 < self.events_delivery_timeout_seconds <= 25:
            raise ConfigError("BILLING_EVENTS_DELIVERY_TIMEOUT_SECONDS must be between 0 and 25 (a claim lasts 30 s)")
        if self.events_delivery_concurrency < 1:
            raise ConfigError("BILLING_EVENTS_DELIVERY_CONCURRENCY must be at least 1")

    def _validate_webhooks(self) -> None:
        """Refuses webhook sidecar settings that cannot work."""
        if self.webhook_max_body_bytes < 1024:
            raise ConfigError("BILLING_WEBHOOK_MAX_BODY_BYTES must be at least 1024")
        if self.webhook_workers < 0:
            raise ConfigError("BILLING_WEBHOOK_WORKERS must not be negative")
        if self.webhook_max_attempts < 1:
            raise ConfigError("BILLING_WEBHOOK_MAX_ATTEMPTS must be at least 1")
        if self.webhook_lease_seconds < 1 or self.webhook_poll_seconds <= 0:
            raise ConfigError("BILLING_WEBHOOK_LEASE_SECONDS and BILLING_WEBHOOK_POLL_SECONDS must be positive")
        # A purged event's id no longer blocks a redelivery, so the inbox keeps finished events
        # longer than Stripe keeps events for backfill (30 days) and any processor retries.
        if self.webhook_retention_days < MIN_WEBHOOK_RETENTION_DAYS:
            raise ConfigError(f"BILLING_WEBHOOK_RETENTION_DAYS must be at least {MIN_WEBHOOK_RETENTION_DAYS}")
        if self.janitor_interval_seconds < 0:
            raise ConfigError("BILLING_JANITOR_INTERVAL_SECONDS must not be negative")
        if not 0 < self.webhook_retry_base_seconds <= self.webhook_retry_max_seconds:
            raise ConfigError("BILLING_WEBHOOK_RETRY_BASE_SECONDS must be positive and at most ..._MAX_SECONDS")
        if not 0 < self.stripe_webhook_tolerance_seconds <= 3600:
            raise ConfigError("STRIPE_WEBHOOK_TOLERANCE_SECONDS must be between 1 and 3600")
        if bool(self.webhook_tls_cert) != bool(self.webhook_tls_key):
            raise ConfigError("BILLING_WEBHOOK_TLS_CERT and BILLING_WEBHOOK_TLS_KEY must be set together")

    def _validate_auth(self) -> None:
        """Refuses caller-authentication settings that are unsafe or incomplete."""
        if self.auth_mode not in AUTH_MODES:
            raise ConfigError(f"BILLING_AUTH_MODE must be one of {', '.join(AUTH_MODES)}")
        if self.live and self.auth_mode == "none":
            raise ConfigError("live mode requires caller authentication (set BILLING_AUTH_MODE)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("BILLING_TLS_CERT and BILLING_TLS_KEY must be set together")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("BILLING_TLS_CLIENT_CA requires BILLING_TLS_CERT and BILLING_TLS_KEY")
        if self.auth_mode in ("mtls", "mtls+token") and not self.tls_client_ca:
            raise ConfigError(
                f"BILLING_AUTH_MODE={self.auth_mode} requires BILLING_TLS_CERT, BILLING_TLS_KEY "
                "and BILLING_TLS_CLIENT_CA"
            )
        if self.auth_mode in ("token", "mtls+token") and not self.auth_tokens:
            raise ConfigError(f"BILLING_AUTH_MODE={self.auth_mode} requires BILLING_AUTH_TOKENS")
        if self.auth_mode == "any" and not (self.auth_tokens or self.tls_client_ca):
            raise ConfigError("BILLING_AUTH_MODE=any requires BILLING_AUTH_TOKENS and/or BILLING_TLS_CLIENT_CA")
        if self.live and self.auth_tokens and not self.tls_cert:
            raise ConfigError("live mode sends bearer tokens only over TLS (set BILLING_TLS_CERT and BILLING_TLS_KEY)")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Builds and validates settings from environment variables."""

        def get(name: str, default: str = "") -> str:
            return env.get(name, default).strip()

        def number(name: str, default: float) -> float:
            raw = get(name)
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ConfigError(f"{name} must be a number") from None

        def flag(name: str, default: bool) -> bool:
            raw = get(name).lower()
            if not raw:
                return default
            if raw in ("1", "true", "yes", "on"):
                return True
            if raw in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name} must be true or false")

        try:
            default_processor = Processor(get("BILLING_PROCESSOR", "fake").lower())
        except ValueError:
            raise ConfigError("BILLING_PROCESSOR must be one of fake, stripe, paypal") from None
        secrets = [s.strip() for s in get("STRIPE_WEBHOOK_SECRET").split(",") if s.strip()]
        environment = get("BILLING_ENV", "development")
        settings = cls(
            grpc_address=get("BILLING_GRPC_ADDRESS", "127.0.0.1:50051"),
            mongodb_uri=Secret(get("MONGODB_URI")),
            mongodb_database=get("BILLING_MONGODB_DATABASE", "billing"),
            embedded_data_dir=Path(get("BILLING_EMBEDDED_DATA_DIR", "var/mongo")),
            default_processor=default_processor,
            environment=environment,
            enable_fake=flag("BILLING_ENABLE_FAKE", environment != "production"),
            stripe_secret_key=Secret(get("STRIPE_SECRET_KEY")),
            stripe_api_base=get("STRIPE_API_BASE", "https://api.stripe.com"),
            stripe_webhook_secrets=tuple(Secret(s) for s in secrets),
            stripe_max_attempts=int(number("STRIPE_MAX_ATTEMPTS", 3)),
            paypal_client_id=get("PAYPAL_CLIENT_ID"),
            paypal_client_secret=Secret(get("PAYPAL_CLIENT_SECRET")),
            paypal_environment=get("PAYPAL_ENVIRONMENT", "sandbox").lower(),
            paypal_base_url=get("PAYPAL_BASE_URL"),
            paypal_webhook_id=get("PAYPAL_WEBHOOK_ID"),
            idempotency_ttl_hours=number("BILLING_IDEMPOTENCY_TTL_HOURS", 48),
            idempotency_lease_seconds=number("BILLING_IDEMPOTENCY_LEASE_SECONDS", 60),
            shutdown_grace_seconds=number("BILLING_SHUTDOWN_GRACE_SECONDS", 10),
            health_interval_seconds=number("BILLING_HEALTH_INTERVAL_SECONDS", 2),
            max_message_bytes=int(number("BILLING_MAX_MESSAGE_BYTES", 1024 * 1024)),
            reflection=flag("BILLING_REFLECTION", True),
            log_level=get("BILLING_LOG_LEVEL", "INFO").upper(),
            webhook_address=get("BILLING_WEBHOOK_ADDRESS", "127.0.0.1:8081"),
            webhook_max_body_bytes=int(number("BILLING_WEBHOOK_MAX_BODY_BYTES", 512 * 1024)),
            webhook_workers=int(number("BILLING_WEBHOOK_WORKERS", 16)),
            webhook_max_attempts=int(number("BILLING_WEBHOOK_MAX_ATTEMPTS", 8)),
            webhook_lease_seconds=number("BILLING_WEBHOOK_LEASE_SECONDS", 60),
            webhook_retry_base_seconds=number("BILLING_WEBHOOK_RETRY_BASE_SECONDS", 2),
            webhook_retry_max_seconds=number("BILLING_WEBHOOK_RETRY_MAX_SECONDS", 600),
            webhook_poll_seconds=number("BILLING_WEBHOOK_POLL_SECONDS", 1),
            stripe_webhook_tolerance_seconds=int(number("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300)),
            paypal_cert_ca_file=Path(get("PAYPAL_CERT_CA_FILE")) if get("PAYPAL_CERT_CA_FILE") else None,
            metrics_port=int(number("BILLING_METRICS_PORT", 0)),
            reconcile_interval_seconds=number("BILLING_RECONCILE_INTERVAL_SECONDS", 300),
            janitor_interval_seconds=number("BILLING_JANITOR_INTERVAL_SECONDS", 300),
            webhook_retention_days=number("BILLING_WEBHOOK_RETENTION_DAYS", 35),
            webhook_metrics_port=int(number("BILLING_WEBHOOK_METRICS_PORT", 0)),
            auth_mode=get("BILLING_AUTH_MODE", "none").lower(),
            auth_tokens=parse_auth_tokens(get("BILLING_AUTH_TOKENS")),
            caller_permissions=parse_caller_permissions(get("BILLING_CALLER_PERMISSIONS")),
            tls_cert=Path(get("BILLING_TLS_CERT")) if get("BILLING_TLS_CERT") else None,
            tls_key=Path(get("BILLING_TLS_KEY")) if get("BILLING_TLS_KEY") else None,
            tls_client_ca=Path(get("BILLING_TLS_CLIENT_CA")) if get("BILLING_TLS_CLIENT_CA") else None,
            webhook_tls_cert=Path(get("BILLING_WEBHOOK_TLS_CERT")) if get("BILLING_WEBHOOK_TLS_CERT") else None,
            webhook_tls_key=Path(get("BILLING_WEBHOOK_TLS_KEY")) if get("BILLING_WEBHOOK_TLS_KEY") else None,
            events_retention_days=number("BILLING_EVENTS_RETENTION_DAYS", 30),
            events_ring_size=int(number("BILLING_EVENTS_RING_SIZE", 10_000)),
            fake_state=get("BILLING_FAKE_STATE", "store").lower(),
            events_secret_key=Secret(get("BILLING_EVENTS_SECRET_KEY")),
            events_push=flag("BILLING_EVENTS_PUSH", True),
            events_delivery_timeout_seconds=number("BILLING_EVENTS_DELIVERY_TIMEOUT_SECONDS", 10),
            events_delivery_concurrency=int(number("BILLING_EVENTS_DELIVERY_CONCURRENCY", 16)),
        )
        settings.validate()
        return settings


def parse_auth_tokens(raw: str) -> tuple[tuple[str, Secret], ...]:
    """Parses ``BILLING_AUTH_TOKENS``: ``caller:token,caller:token``.

    A caller may have several tokens (rotation); a token belongs to one caller. Error
    messages name the caller or position, never the token.
    """
    out: list[tuple[str, Secret]] = []
    seen: set[str] = set()
    for position, item in enumerate((i.strip() for i in raw.split(",")), start=1):
        if not item:
            continue
        caller, sep, token = item.partition(":")
        caller, token = caller.strip(), token.strip()
        if not sep or not CALLER_NAME.match(caller):
            raise ConfigError(
                f"BILLING_AUTH_TOKENS entry {position} must be caller:token (caller: letters, digits . _ -)"
            )
        if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise ConfigError(
                f"BILLING_AUTH_TOKENS token of {caller!r} must be at least {MIN_TOKEN_LENGTH} characters "
                "without spaces (e.g. openssl rand -hex 32)"
            )
        weakness = token_weakness(token)
        if weakness:
            raise ConfigError(
                f"BILLING_AUTH_TOKENS token of {caller!r} is not random ({weakness}); "
                "generate one, e.g. openssl rand -hex 32"
            )
        if token in seen:
            raise ConfigError(f"BILLING_AUTH_TOKENS token of {caller!r} is also given to another entry")
        seen.add(token)
        out.append((caller, Secret(token)))
    return tuple(out)


def token_weakness(token: str) -> str:
    """Why ``token`` is obviously not random, or "" (the message never shows the token).

    Catches what people type instead of generating: few distinct characters or a small
    alphabet (too little entropy by character frequencies), runs counting up or down
    (``0123...``, ``abcd...``) and a repeated pattern (``password`` x 4, a half repeated).
    Random tokens of 32+ characters from ``openssl rand``/``secrets`` always pass.
    """
    n = len(token)
    counts = Counter(token)
    bits = max(0.0, -sum(c * math.log2(c / n) for c in counts.values()))
    if bits < MIN_TOKEN_BITS:
        return f"about {bits:.0f} bits of character entropy, at least {MIN_TOKEN_BITS} needed"
    steps = [ord(b) - ord(a) for a, b in pairwise(token)]
    # Three quarters, not half: a random hex token has a step of -1, 0 or +1 about one time
    # in five, so "more than half" refused about one random token in 100,000.
    if sum(step in (-1, 0, 1) for step in steps) * 4 > 3 * len(steps):
        return "mostly characters counting up or down"
    for period in range(1, n // 2 + 1):
        same = sum(token[i] == token[i + period] for i in range(n - period))
        if same >= 0.9 * (n - period):
            return "a repeated pattern"
    return ""


def parse_caller_permissions(raw: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Parses ``BILLING_CALLER_PERMISSIONS``: ``caller=perm+perm;caller=perm``.

    Permission names are checked against the method table by the gRPC auth module.
    """
    out: dict[str, tuple[str, ...]] = {}
    for item in (i.strip() for i in raw.split(";")):
        if not item:
            continue
        caller, sep, perms = item.partition("=")
        caller = caller.strip()
        names = tuple(p.strip() for p in perms.split("+") if p.strip())
        if not sep or not CALLER_NAME.match(caller) or not names:
            raise ConfigError(f"BILLING_CALLER_PERMISSIONS entry {item!r} must be caller=permission+permission")
        if caller in out:
            raise ConfigError(f"BILLING_CALLER_PERMISSIONS names {caller!r} twice")
        bad = [p for p in names if not _PERMISSION.match(p)]
        if bad:
            raise ConfigError(f"BILLING_CALLER_PERMISSIONS has a malformed permission {bad[0]!r} for {caller!r}")
        out[caller] = names
    return tuple(out.items())
