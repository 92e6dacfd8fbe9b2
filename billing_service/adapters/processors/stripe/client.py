"""The Stripe client of the adapter: settings, the SDK client, retries and idempotency keys.

The adapter owns one ``stripe.StripeClient`` with an async HTTPX transport; it never
touches the SDK's global configuration. The SDK's own retries are off
(``max_network_retries=0``): ``retry.call_with_retries`` is the one retry decision, and it
reuses the caller's idempotency key on every attempt. Stripe exceptions stop here: they
are translated into domain errors by ``mapping.classify_stripe_error``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal, NoReturn, TypeVar, cast

import stripe

from billing_service.adapters.processors.retry import RetryPolicy, call_with_retries, parsed
from billing_service.adapters.processors.stripe import mapping
from billing_service.domain.errors import NotSupportedByProcessor, ProcessorConfigurationError
from billing_service.domain.payments import ProcessorPaymentState, ProcessorRefundState
from billing_service.domain.subscriptions import ProcessorSubscriptionState

T = TypeVar("T")
Listed = TypeVar("Listed", bound=stripe.StripeObject)

_KEY_MODES = {"sk_test_": "test", "rk_test_": "test", "sk_live_": "live", "rk_live_": "live"}


def _mask(secret: str) -> str:
    """Keeps a recognisable prefix (``sk_test_``, ``whsec_``) and hides the rest."""
    for prefix in (*_KEY_MODES, "whsec_"):
        if secret.startswith(prefix):
            return f"{prefix}***"
    return "***"


@dataclass(frozen=True, repr=False)
class StripeSettings:
    """How to reach Stripe.

    Attributes:
        secret_key: Secret (``sk_``) or restricted (``rk_``) API key. Never printed.
        api_base: Base URL of the API; tests point it at a local imitation.
        max_attempts: Attempts per call, including the first (retry policy default).
        timeout_seconds: Per-request HTTP timeout.
        webhook_secrets: Endpoint signing secrets (``whsec_...``); several during rotation.
            None: webhook deliveries are refused.
        webhook_tolerance_seconds: Maximum age of a delivery's signed timestamp.
    """

    secret_key: str
    api_base: str = "https://api.stripe.com"
    max_attempts: int = 3
    timeout_seconds: float = 20
    webhook_secrets: tuple[str, ...] = ()
    webhook_tolerance_seconds: int = 300

    @property
    def mode(self) -> Literal["test", "live"]:
        """``test`` or ``live``, from the key's prefix.

        Raises:
            ProcessorConfigurationError: The key is not a Stripe secret or restricted key.
        """
        for prefix, mode in _KEY_MODES.items():
            if self.secret_key.startswith(prefix):
                return cast(Literal["test", "live"], mode)
        raise ProcessorConfigurationError(
            "STRIPE secret key must start with sk_test_, rk_test_, sk_live_ or rk_live_",
            metadata={"processor": "stripe"},
        )

    def __repr__(self) -> str:
        secrets = ", ".join(_mask(s) for s in self.webhook_secrets)
        return (
            f"StripeSettings(secret_key={_mask(self.secret_key)!r}, api_base={self.api_base!r}, "
            f"max_attempts={self.max_attempts}, timeout_seconds={self.timeout_seconds}, "
            f"webhook_secrets=({secrets}), webhook_tolerance_seconds={self.webhook_tolerance_seconds})"
        )

    __str__ = __repr__


def object_id(obj: object) -> str:
    """The Stripe object's ``id``, or "" (for error metadata)."""
    value = mapping.field(obj, "id", "")
    return value if isinstance(value, str) else ""


# Every answer is read through ``parsed``: one we cannot read is Stripe's fault (retryable
# PROCESSOR_BAD_RESPONSE naming the object), never the caller's INVALID_ARGUMENT.
def payment_state(pi: stripe.PaymentIntent) -> ProcessorPaymentState:
    """A PaymentIntent in our terms."""
    return parsed("stripe", "a PaymentIntent", mapping.payment_state, pi, ids={"processor_payment_id": object_id(pi)})


def refund_state(refund: stripe.Refund) -> ProcessorRefundState:
    """A Refund in our terms."""
    return parsed("stripe", "a Refund", mapping.refund_state, refund, ids={"processor_refund_id": object_id(refund)})


def subscription_state(sub: stripe.Subscription) -> ProcessorSubscriptionState:
    """A Subscription in our terms."""
    return parsed(
        "stripe", "a Subscription", mapping.subscription_state, sub, ids={"processor_subscription_id": object_id(sub)}
    )


def metadata_id(obj: object, key: str) -> str:
    """Our id that the object carries in ``metadata[key]``, or ""."""
    return str(mapping.field(mapping.field(obj, "metadata"), key, "") or "")


def unsupported(what: str) -> NoReturn:
    """Raises ``NotSupportedByProcessor`` for what Stripe (or billing on Stripe) cannot do."""
    raise NotSupportedByProcessor(f"Stripe: {what}", metadata={"processor": "stripe"})


class StripeConnection:
    """The SDK client and the retries the verbs (``payments``, ``subscriptions``, ``events``) share."""

    def __init__(self, settings: StripeSettings, *, retry_policy: RetryPolicy | None = None) -> None:
        """Builds the client; no I/O happens until the first call.

        Raises:
            ProcessorConfigurationError: The secret key is not a Stripe key.
        """
        self.mode = settings.mode
        self._settings = settings
        self._policy = retry_policy or RetryPolicy(max_attempts=settings.max_attempts)
        self._http = stripe.HTTPXClient(timeout=settings.timeout_seconds, allow_sync_methods=False)
        self._client = stripe.StripeClient(
            settings.secret_key,
            base_addresses={"api": settings.api_base},
            http_client=self._http,
            max_network_retries=0,
        )
        self._v1 = self._client.v1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._settings!r})"

    async def aclose(self) -> None:
        """Closes the HTTP connection pool."""
        # stripe-python leaves close_async unannotated.
        close = cast(Callable[[], Awaitable[None]], self._http.close_async)
        await close()

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call_with_retries(f"stripe.{operation}", call, mapping.classify_stripe_error, policy=self._policy)

    async def _find_by_metadata(
        self,
        operation: str,
        list_page: Callable[[str | None], Awaitable[stripe.ListObject[Listed]]],
        key: str,
        our_id: str,
    ) -> Listed | None:
        """Pages through a Stripe list for the object whose ``metadata[key]`` is ``our_id``.

        ``list_page(starting_after)`` fetches one page. Stripe's list endpoints read its
        primary data (unlike Search, which lags), so None proves that no listed object
        carries our id.
        """
        after: str | None = None
        while True:
            page = await self._call(operation, partial(list_page, after))
            for obj in page.data:
                if metadata_id(obj, key) == our_id:
                    return obj
            if not page.has_more or not page.data:
                return None
            after = str(page.data[-1]["id"])

    @staticmethod
    def _key(idempotency_key: str, suffix: str = "") -> stripe.RequestOptions:
        # A verb that makes several writes derives one key per write: Stripe refuses a key
        # reused for a different request.
        return {"idempotency_key": f"{idempotency_key}:{suffix}" if suffix else idempotency_key}
