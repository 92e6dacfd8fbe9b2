"""Settings: one frozen object built from the environment in ``__main__``.

Nothing here reads the environment at import time. Secrets are wrapped in
:class:`Secret`, whose repr never shows the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from billing_service.domain.common import Processor


class ConfigError(Exception):
    """The settings are unusable; the message says which variable and why (never a secret)."""


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
    metrics_port: int = 0

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
        if self.idempotency_ttl_hours < 24:
            raise ConfigError("BILLING_IDEMPOTENCY_TTL_HOURS must be at least 24")

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
            metrics_port=int(number("BILLING_METRICS_PORT", 0)),
        )
        settings.validate()
        return settings
