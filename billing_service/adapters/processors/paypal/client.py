"""The PayPal SDK client: worker threads, the shared OAuth token, retries and raw requests.

The official SDK (``paypal-server-sdk``) is synchronous, so every call runs in a bounded
thread pool owned by the adapter; the event loop never blocks. The SDK owns transport,
OAuth and the base URL. Catalog products are missing from SDK 2.4.0, and its
plan-deactivate and subscription suspend/activate/cancel/revise methods cannot send
``PayPal-Request-Id``, so those few endpoints go through the SDK's own request builder
(``_raw``: same auth, base URL, timeouts and error types) instead of a second HTTP client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests

from billing_service.adapters.processors.paypal import errors, wire
from billing_service.adapters.processors.paypal.wire import Json
from billing_service.adapters.processors.retry import (
    RetryPolicy,
    bad_response,
    call_with_retries,
    is_retryable_http_status,
    parsed,
)
from billing_service.domain.errors import BillingError, ProcessorConfigurationError, ProcessorError

T = TypeVar("T")

#: ``Prefer`` header value asking PayPal to answer writes with the full resource.
REPRESENTATION = "return=representation"


@dataclass(frozen=True)
class PayPalSettings:
    """How to reach PayPal.

    Attributes:
        client_id: REST app client id.
        client_secret: REST app secret; never part of ``repr``.
        environment: ``sandbox`` or ``live``.
        base_url: Overrides the environment's API host (tests point it at an imitation).
        max_workers: Threads running SDK calls, which bounds concurrent PayPal requests.
        max_attempts: Attempts per call, including the first.
        timeout_seconds: Per-request connect and read timeout.
        webhook_id: Id of our webhook at PayPal, used to verify webhook deliveries (none:
            every delivery is refused).
        webhook_ca_file: Roots a delivery's signing certificate must chain to (PEM);
            certifi's CA bundle when None.
        catalog_product_id: Our id for the one catalog product every plan belongs to
            (PayPal revises subscriptions only between plans of one product).
    """

    client_id: str
    client_secret: str = field(repr=False)
    environment: str = "sandbox"
    base_url: str | None = None
    max_workers: int = 8
    max_attempts: int = 3
    timeout_seconds: float = 20
    webhook_id: str = ""
    webhook_ca_file: Path | None = None
    catalog_product_id: str = "billing-subscriptions"

    def __post_init__(self) -> None:
        if self.environment not in ("sandbox", "live"):
            raise ValueError("PayPal environment must be 'sandbox' or 'live'")
        if not self.client_id or not self.client_secret:
            raise ValueError("PayPal client_id and client_secret are required")
        if self.max_workers < 1 or self.max_attempts < 1 or self.timeout_seconds <= 0:
            raise ValueError("PayPal max_workers, max_attempts and timeout_seconds must be positive")


class _DomainErrorCarrier(ProcessorError):
    """Lets a non-processor domain error (a decline) through ``call_with_retries``.

    ``call_with_retries`` only knows ``ProcessorError``; the adapter unwraps this one.
    """

    def __init__(self, error: BillingError) -> None:
        super().__init__(error.message, reason=error.reason, retryable=False, metadata=error.metadata)
        self.error = error


def read_answer(what: str, read: Callable[..., T], *args: Any, ids: Mapping[str, str] | None = None) -> T:
    """Reads a PayPal answer; one we cannot read is PayPal's fault (retryable), never the caller's."""
    return parsed("paypal", what, read, *args, ids=ids)


class PayPalConnection:
    """The SDK client, the worker threads running its calls, the OAuth token and the retries.

    The verbs (``payments``, ``lookups``, ``subscriptions``, ``events``) build on it.
    """

    def __init__(
        self,
        settings: PayPalSettings,
        *,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Builds the SDK client and the worker pool; performs no I/O.

        Args:
            settings: Credentials and limits.
            retry_policy: Backoff override (tests use tiny delays).
            sleep: Injected for tests.
        """
        self._settings = settings
        self._policy = retry_policy or RetryPolicy(max_attempts=settings.max_attempts)
        self._sleep = sleep
        self._pool = ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="paypal-sdk")
        self._token_lock = threading.Lock()
        self._token: Any = None
        # Caches of the verbs: payment-source kind per vault token, and whether our one
        # catalog product exists (see ``payments`` and ``subscriptions``).
        self._token_kinds: dict[str, str] = {}
        self._product_ready = False
        self._client = self._build_client()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._settings!r})"

    def _build_client(self) -> Any:
        from paypalserversdk.configuration import Configuration, Environment, Server
        from paypalserversdk.http.auth.o_auth_2 import ClientCredentialsAuthCredentials
        from paypalserversdk.paypal_serversdk_client import PaypalServersdkClient

        environment = Environment.PRODUCTION if self._settings.environment == "live" else Environment.SANDBOX
        credentials = ClientCredentialsAuthCredentials(
            o_auth_client_id=self._settings.client_id,
            o_auth_client_secret=self._settings.client_secret,
            o_auth_token_provider=self._provide_token,
            o_auth_clock_skew=60,  # renew a minute early rather than send a dying token
        )
        config = Configuration(
            timeout=self._settings.timeout_seconds,
            max_retries=0,  # call_with_retries is the one retry decision
            environment=environment,
            client_credentials_auth_credentials=credentials,
        )
        if self._settings.base_url:
            # Instance attribute shadows the class table that get_base_uri reads.
            config.environments = {environment: {Server.DEFAULT: self._settings.base_url.rstrip("/")}}
        return PaypalServersdkClient(config=config)

    def _provide_token(self, _last: Any, auth_manager: Any) -> Any:
        """SDK token provider: one token shared by all threads until it (nearly) expires.

        The SDK caches a token on its own but not under a lock, so concurrent first calls
        would each fetch one; the lock makes the fetch happen once.
        """
        with self._token_lock:
            token = self._token
            if token is not None and not auth_manager.is_token_expired(token):
                return token
            token = auth_manager.fetch_token()
            self._token = token
            return token

    def _expire_token(self, rejected: Any) -> None:
        with self._token_lock:
            # Only the token PayPal refused: another thread may already hold a fresh one.
            if self._token is not None and self._token is rejected:
                self._token.expiry = 0  # the SDK checks expiry before every request

    def _run(self, fn: Callable[[], T]) -> T:
        """Runs one SDK call on a worker thread; renews a token PayPal stopped accepting once."""
        from paypalserversdk.exceptions.api_exception import ApiException
        from paypalserversdk.exceptions.o_auth_provider_exception import OAuthProviderException

        used = self._token
        try:
            return fn()
        except ApiException as exc:
            if exc.response_code != 401 or isinstance(exc, OAuthProviderException) or used is None:
                raise
            self._expire_token(used)
            return fn()

    async def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """Runs ``fn`` off the loop with retries; raises only domain errors."""
        loop = asyncio.get_running_loop()

        async def attempt() -> T:
            return await loop.run_in_executor(self._pool, self._run, fn)

        try:
            return await call_with_retries(
                f"paypal.{operation}", attempt, self._classify, policy=self._policy, sleep=self._sleep
            )
        except _DomainErrorCarrier as carrier:
            raise carrier.error from carrier.__cause__

    async def _get_order(self, order_id: str) -> Json:
        """Reads an order (payments, refunds and lookups all start from one)."""
        orders = self._client.orders
        return await self._json("orders.get", lambda: orders.get_order({"id": order_id}))

    async def _json(self, operation: str, fn: Callable[[], Any]) -> Json:
        response = await self._call(operation, fn)
        try:
            return wire.body(response)
        except ValueError as exc:
            raise bad_response("paypal", operation, detail="the body is not JSON") from exc

    def _classify(self, exc: Exception) -> ProcessorError:
        from apimatic_core.exceptions.auth_validation_exception import AuthValidationException
        from paypalserversdk.exceptions.api_exception import ApiException

        if isinstance(exc, ApiException):
            try:
                payload = wire.body(exc.response)
            except ValueError:
                payload = {}
            retry_after = None
            header = (getattr(exc.response, "headers", None) or {}).get("Retry-After")
            if header and str(header).isdigit():
                retry_after = float(header)
            err = errors.PayPalApiError(int(exc.response_code), payload, retry_after)
            error = errors.translate_api_error(err, retryable=is_retryable_http_status(err.status))
            return error if isinstance(error, ProcessorError) else _DomainErrorCarrier(error)
        if isinstance(exc, requests.RequestException):
            return ProcessorError(
                f"PayPal unreachable: {type(exc).__name__}",
                reason="PROCESSOR_UNAVAILABLE",
                retryable=is_retryable_http_status(None),
                metadata={"processor": "paypal"},
            )
        if isinstance(exc, AuthValidationException):
            return ProcessorConfigurationError("PayPal issued no usable OAuth token", metadata={"processor": "paypal"})
        return ProcessorError(
            f"unexpected PayPal SDK failure: {type(exc).__name__}",
            reason="PROCESSOR_ERROR",
            metadata={"processor": "paypal"},
        )

    def _raw(
        self,
        method: str,
        path: str,
        *,
        request_id: str = "",
        body: Any = None,
        query: Mapping[str, str] | None = None,
        **template: str,
    ) -> Any:
        """A call through the SDK's own HTTP layer, for endpoints the SDK lacks or cannot key.

        Writes carry ``request_id`` as ``PayPal-Request-Id``; reads (``GET``) need none.
        """
        from apimatic_core.authentication.multiple.single_auth import Single
        from apimatic_core.request_builder import RequestBuilder
        from apimatic_core.response_handler import ResponseHandler
        from apimatic_core.types.parameter import Parameter
        from paypalserversdk.api_helper import APIHelper
        from paypalserversdk.configuration import Server
        from paypalserversdk.controllers.base_controller import BaseController
        from paypalserversdk.exceptions.error_exception import ErrorException
        from paypalserversdk.http.http_method_enum import HttpMethodEnum

        builder = RequestBuilder().server(Server.DEFAULT).path(path).http_method(getattr(HttpMethodEnum, method))
        for key, value in template.items():
            builder = builder.template_param(Parameter().key(key).value(value).should_encode(True))
        for key, value in (query or {}).items():
            builder = builder.query_param(Parameter().key(key).value(value))
        if request_id:
            builder = builder.header_param(Parameter().key("PayPal-Request-Id").value(request_id)).header_param(
                Parameter().key("Prefer").value(REPRESENTATION)
            )
        builder = builder.header_param(Parameter().key("accept").value("application/json")).auth(Single("Oauth2"))
        if body is not None:
            builder = (
                builder.header_param(Parameter().key("Content-Type").value("application/json"))
                .body_param(Parameter().value(body))
                .body_serializer(APIHelper.json_serialize)
            )
        handler = ResponseHandler().is_api_response(True).local_error("default", "PayPal error", ErrorException)
        controller = BaseController(self._client.global_configuration)
        return controller.new_api_call_builder.request(builder).response(handler).execute()

    async def aclose(self) -> None:
        """Stops the worker threads and closes the SDK's HTTP session."""
        await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)
        session = getattr(self._client.config.http_client, "session", None)
        if session is not None:
            session.close()
