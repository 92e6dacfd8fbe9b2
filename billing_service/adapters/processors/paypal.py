"""PayPal adapter: Orders v2, Payments v2, Vault v3, Catalog and Subscriptions v1.

The official SDK (``paypal-server-sdk``) is synchronous, so every call runs in a bounded
thread pool owned by the adapter; the event loop never blocks. The SDK owns transport,
OAuth and the base URL; request bodies and responses are PayPal's documented JSON (see
``paypal_mapping``). Catalog products are missing from SDK 2.4.0, and its plan-deactivate
and subscription suspend/activate/cancel/revise methods cannot send ``PayPal-Request-Id``,
so those few endpoints go through the SDK's own request builder (same auth, base URL,
timeouts and error types) instead of a second HTTP client.

What PayPal cannot do, and how the adapter answers (the ``NOT_SUPPORTED_BY_PROCESSOR``
list is in ``NOT_SUPPORTED``):

* No customer object: ``create_customer`` derives a Vault ``customer.id`` from our id
  (no I/O); ``update_customer`` is a no-op.
* No order cancel: cancelling an order the buyer has not paid marks it canceled in its
  ``custom_id`` (PATCH) so the adapter never completes it later, and lets PayPal expire it.
* Approved orders wait for the merchant: ``create_payment`` (vaulted methods) and
  ``get_payment`` complete an APPROVED order (capture or authorize) under one request id
  derived from the order id, so whoever completes it, and however often, money is taken
  once; "already captured/authorized" means someone did, and the order is read instead.
* No order search: ``find_payment`` (a lost create, looked up by our id) goes through the
  Transaction Search API, which lists captures and authorizations (never an order nobody
  paid) and lags: PayPal says up to three hours. Absence is proven only once its data is
  refreshed past the moment no create can still reach PayPal; before that the answer is
  UNKNOWN. The app needs the Transaction Search permission. ``find_refund`` reads the
  order, whose payments list its refunds with our ``custom_id``.
* Order request ids are kept 6 hours (``key_retention``), so an order create is never
  re-sent later than that.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import requests

from billing_service.adapters.processors import paypal_mapping as m
from billing_service.adapters.processors.retry import (
    RetryPolicy,
    bad_response,
    call_with_retries,
    is_retryable_http_status,
    parsed,
)
from billing_service.domain.common import Processor
from billing_service.domain.customers import Customer
from billing_service.domain.errors import (
    BillingError,
    FailedPrecondition,
    NotSupportedByProcessor,
    PaymentDeclined,
    ProcessorConfigurationError,
    ProcessorError,
)
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    CaptureMethod,
    PaymentStatus,
    ProcessorPaymentState,
    ProcessorRefundState,
    RefundReason,
)
from billing_service.domain.subscriptions import (
    Plan,
    ProcessorInvoiceState,
    ProcessorSubscriptionState,
    ProrationBehavior,
    SubscriptionStatus,
)
from billing_service.service_layer.ports import (
    AttachedPaymentMethod,
    LookupOutcome,
    PaymentLookup,
    PaymentLookupResult,
    PaymentRequest,
    RefundLookup,
    RefundLookupResult,
    RefundRequest,
    SubscriptionChange,
    SubscriptionRequest,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

NOT_SUPPORTED = (
    "cancel a subscription at period end (PayPal cancels immediately only)",
    "ALWAYS_INVOICE proration on plan or quantity changes (PayPal bills the new price from the next cycle)",
    "a per-subscription trial on a plan without a trial cycle (PayPal trials are plan billing cycles)",
    "currencies PayPal does not settle (e.g. KWD, BHD) and fractional HUF/TWD amounts"
    " (InvalidArgument, reason AMOUNT_NOT_SUPPORTED_BY_PROCESSOR)",
)

_CANCELED_MARK = ":canceled"
_NOTE_TO_PAYER = {
    RefundReason.DUPLICATE: "Refund of a duplicate charge",
    RefundReason.FRAUDULENT: "Refund of a fraudulent charge",
    RefundReason.REQUESTED_BY_CUSTOMER: "Refund requested by you",
}
_REPRESENTATION = "return=representation"
_ALREADY_COMPLETED = frozenset({"ORDER_ALREADY_CAPTURED", "ORDER_ALREADY_AUTHORIZED"})
# Transaction Search: its documented maximum lag, the widest range one call may cover, and
# how far our clock and PayPal's may disagree.
_SEARCH_LAG = timedelta(hours=3)
_SEARCH_MAX_RANGE = timedelta(days=31)
_CLOCK_SLACK = timedelta(minutes=10)
_SEARCH_PAGE = 500


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
        webhook_id: Id of our webhook at PayPal, used by the webhook sidecar to verify.
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


def paypal_customer_id(customer_id: str) -> str:
    """A stable Vault ``customer.id`` for our customer (PayPal allows 22 characters)."""
    return hashlib.sha256(customer_id.encode()).hexdigest()[:22]


def _read(what: str, read: Callable[..., T], *args: Any, ids: Mapping[str, str] | None = None) -> T:
    """Reads a PayPal answer; one we cannot read is PayPal's fault (retryable), never the caller's."""
    return parsed("paypal", what, read, *args, ids=ids)


def _order_state(order: m.Json) -> ProcessorPaymentState:
    return _read("an order", m.payment_state, order, ids={"processor_payment_id": m.text_id(order)})


def _iso(moment: datetime) -> str:
    """RFC 3339 with milliseconds, as PayPal writes timestamps."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class PayPalPaymentProcessor:
    """``PaymentProcessor`` over PayPal's REST APIs via the official SDK."""

    name = Processor.PAYPAL
    #: Orders v2 keeps PayPal-Request-Id values for 6 hours (72 on request to PayPal).
    key_retention = timedelta(hours=6)

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
        self._token_kinds: dict[str, str] = {}
        self._product_ready = False
        self._client = self._build_client()

    def __repr__(self) -> str:
        return f"PayPalPaymentProcessor({self._settings!r})"

    # ------------------------------------------------------------------ plumbing

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

    async def _json(self, operation: str, fn: Callable[[], Any]) -> m.Json:
        response = await self._call(operation, fn)
        try:
            return m.body(response)
        except ValueError as exc:
            raise bad_response("paypal", operation, detail="the body is not JSON") from exc

    def _classify(self, exc: Exception) -> ProcessorError:
        from apimatic_core.exceptions.auth_validation_exception import AuthValidationException
        from paypalserversdk.exceptions.api_exception import ApiException

        if isinstance(exc, ApiException):
            try:
                payload = m.body(exc.response)
            except ValueError:
                payload = {}
            retry_after = None
            header = (getattr(exc.response, "headers", None) or {}).get("Retry-After")
            if header and str(header).isdigit():
                retry_after = float(header)
            err = m.PayPalApiError(int(exc.response_code), payload, retry_after)
            error = m.translate_api_error(err, retryable=is_retryable_http_status(err.status))
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
                Parameter().key("Prefer").value(_REPRESENTATION)
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

    # ------------------------------------------------------------------ events (webhook backfill)

    async def iter_events(self, since: datetime, *, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Yields the webhook events PayPal created since ``since`` (newest first), as PayPal sent them.

        ``GET /v1/notifications/webhooks-events`` bounded by ``start_time`` and an ``end_time``
        fixed at the first page, so pages do not shift while new events arrive; pages are
        followed through PayPal's ``next`` link, whose query is PayPal's to define.
        """
        query: dict[str, str] = {
            "page_size": str(max(1, min(page_size, 300))),
            "start_time": _iso(since),
            "end_time": _iso(datetime.now(UTC)),
        }
        path = "/v1/notifications/webhooks-events"
        seen: set[str] = set()
        while True:
            listed = await self._json("webhooks_events.list", partial(self._raw, "GET", path, query=dict(query)))
            for event in listed.get("events") or []:
                event_id = str(event.get("id", ""))
                if isinstance(event, dict) and event_id and event_id not in seen:
                    seen.add(event_id)
                    yield event
            following = m.link(listed, "next")
            if not following or not listed.get("events"):
                return
            query = m.link_query(following)

    # ------------------------------------------------------------------ customers, methods

    async def create_customer(self, customer: Customer, *, idempotency_key: str) -> str:
        """PayPal has no customer object; returns the Vault ``customer.id`` we will use."""
        del idempotency_key
        return paypal_customer_id(customer.id)

    async def update_customer(self, processor_customer_id: str, customer: Customer, *, idempotency_key: str) -> None:
        """No-op: PayPal keeps no customer profile of ours to update."""
        del processor_customer_id, customer, idempotency_key

    async def attach_payment_method(
        self, processor_customer_id: str, token: str, *, idempotency_key: str
    ) -> AttachedPaymentMethod:
        """Turns a front-end setup token into a Vault payment token."""
        request: m.Json = {"payment_source": {"token": {"id": token, "type": "SETUP_TOKEN"}}}
        if processor_customer_id:
            request["customer"] = {"id": processor_customer_id}
        vault = self._client.vault
        created = await self._json(
            "vault.create_payment_token",
            lambda: vault.create_payment_token({"body": request, "paypal_request_id": idempotency_key}),
        )
        attached = _read("a payment token", m.attached_method, created, ids={"processor_id": m.text_id(created)})
        self._token_kinds[attached.processor_id] = m.token_source_kind(created)
        return attached

    async def detach_payment_method(self, processor_payment_method_id: str, *, idempotency_key: str) -> None:
        """Deletes the Vault token. DELETE is idempotent: an already deleted token is fine."""
        del idempotency_key  # PayPal's DELETE takes no request id; repeating it is harmless
        vault = self._client.vault
        try:
            await self._call(
                "vault.delete_payment_token", lambda: vault.delete_payment_token(processor_payment_method_id)
            )
        except ProcessorError as err:
            if err.reason != "PROCESSOR_RESOURCE_NOT_FOUND":
                raise
        self._token_kinds.pop(processor_payment_method_id, None)

    async def _token_kind(self, token_id: str) -> str:
        kind = self._token_kinds.get(token_id)
        if kind is None:
            vault = self._client.vault
            token = await self._json("vault.get_payment_token", lambda: vault.get_payment_token(token_id))
            if len(self._token_kinds) > 10_000:  # a cache, not a registry
                self._token_kinds.clear()
            kind = self._token_kinds[token_id] = m.token_source_kind(token)
        return kind

    # ------------------------------------------------------------------ payments

    async def _get_order(self, order_id: str) -> m.Json:
        orders = self._client.orders
        return await self._json("orders.get", lambda: orders.get_order({"id": order_id}))

    async def _complete(self, order: m.Json) -> m.Json:
        """Captures or authorizes an APPROVED order (PayPal waits for the merchant to do so).

        One ``PayPal-Request-Id`` per order, whoever completes it (the create that made it, a
        webhook's re-read, reconciliation): a second completion is PayPal's replay of the
        first, never a second capture. An order that someone else already completed under
        another key (``ORDER_ALREADY_CAPTURED``/``_AUTHORIZED``) is not a failure: the
        order is read again and its truth returned.
        """
        order_id = _read("an order", m.required_id, order)
        orders = self._client.orders
        options = {"id": order_id, "paypal_request_id": f"{order_id}:complete", "prefer": _REPRESENTATION}
        try:
            if order.get("intent") == "AUTHORIZE":
                return await self._json("orders.authorize", lambda: orders.authorize_order(options))
            return await self._json("orders.capture", lambda: orders.capture_order(options))
        except ProcessorError as err:
            if err.reason not in _ALREADY_COMPLETED:
                raise
            log.info("paypal order already completed elsewhere; reading it", extra={"processor_payment_id": order_id})
            return await self._get_order(order_id)

    async def create_payment(self, request: PaymentRequest, *, idempotency_key: str) -> ProcessorPaymentState:
        """Creates an order; with a vaulted token it completes at once, else the buyer approves."""
        unit: m.Json = {
            "reference_id": "default",
            "custom_id": request.payment_id[:127],
            "amount": m.paypal_amount(request.amount),
        }
        if request.description:
            unit["description"] = request.description[:127]
        order_request: m.Json = {
            "intent": "CAPTURE" if request.capture_method is CaptureMethod.AUTOMATIC else "AUTHORIZE",
            "purchase_units": [unit],
        }
        vault_id = request.processor_payment_method_id
        if vault_id:
            kind = await self._token_kind(vault_id)
            source: m.Json = {"vault_id": vault_id}
            if kind == "card":
                source["stored_credential"] = {
                    "payment_initiator": "MERCHANT" if request.off_session else "CUSTOMER",
                    "payment_type": "UNSCHEDULED",
                    "usage": "SUBSEQUENT",
                }
            order_request["payment_source"] = {kind: source}
        elif request.return_url:
            order_request["payment_source"] = {
                "paypal": {
                    "experience_context": {
                        "return_url": request.return_url,
                        "cancel_url": request.return_url,
                        "user_action": "PAY_NOW",
                        "shipping_preference": "NO_SHIPPING",
                    }
                }
            }
        orders = self._client.orders
        order = await self._json(
            "orders.create",
            lambda: orders.create_order(
                {"body": order_request, "paypal_request_id": idempotency_key, "prefer": _REPRESENTATION}
            ),
        )
        if vault_id and order.get("status") == "APPROVED":
            try:
                order = await self._complete(order)
            except ProcessorError as err:
                if err.retryable:  # the order exists: name it, so our record can keep it
                    err.metadata.setdefault("processor_payment_id", m.text_id(order))
                raise
        state = _order_state(order)
        if state.status is PaymentStatus.FAILED and state.failure is not None:
            raise PaymentDeclined(
                f"PayPal declined order {state.processor_id}",
                metadata={
                    "processor": "paypal",
                    "processor_payment_id": state.processor_id,
                    "decline_code": state.failure.decline_code,
                },
            )
        return state

    async def get_payment(self, processor_payment_id: str) -> ProcessorPaymentState:
        """Reads the order; completes it if the buyer approved it (see module docstring)."""
        order = await self._get_order(processor_payment_id)
        ids = {"processor_payment_id": processor_payment_id}
        unit, _, _ = _read("an order", m.purchase_payments, order, ids=ids)
        canceled = str(unit.get("custom_id", "")).endswith(_CANCELED_MARK)
        if order.get("status") == "APPROVED" and not canceled:
            order = await self._complete(order)
        if canceled and order.get("status") != "COMPLETED":
            return ProcessorPaymentState(processor_payment_id, PaymentStatus.CANCELED)
        return _order_state(order)

    async def capture_payment(
        self, processor_payment_id: str, amount: Money, *, idempotency_key: str
    ) -> ProcessorPaymentState:
        """Captures (part of) the authorization as the final capture; PayPal releases the rest."""
        value = m.paypal_amount(amount)
        order = await self._get_order(processor_payment_id)
        ids = {"processor_payment_id": processor_payment_id}
        auth = _read("an order", m.open_authorization, order, ids=ids)
        if auth is None:
            state = _order_state(order)
            if state.status is PaymentStatus.SUCCEEDED:
                return state  # a retry after the capture already happened
            raise FailedPrecondition(
                f"PayPal order {processor_payment_id} has no open authorization",
                reason="PAYMENT_NOT_CAPTURABLE",
                metadata={"processor": "paypal", "processor_payment_id": processor_payment_id},
            )
        payments = self._client.payments
        options = {
            "authorization_id": _read("an authorization", m.required_id, auth, ids=ids),
            "paypal_request_id": idempotency_key,
            "prefer": _REPRESENTATION,
            "body": {"amount": value, "final_capture": True},
        }
        await self._call("payments.capture_authorization", lambda: payments.capture_authorized_payment(options))
        return _order_state(await self._get_order(processor_payment_id))

    async def cancel_payment(self, processor_payment_id: str, *, idempotency_key: str) -> ProcessorPaymentState:
        """Voids the authorization, or marks an unpaid order canceled (PayPal cannot cancel orders)."""
        order = await self._get_order(processor_payment_id)
        ids = {"processor_payment_id": processor_payment_id}
        status = order.get("status")
        if status in ("CREATED", "PAYER_ACTION_REQUIRED", "APPROVED", "SAVED"):
            unit, _, _ = _read("an order", m.purchase_payments, order, ids=ids)
            custom_id = str(unit.get("custom_id", ""))
            if not custom_id.endswith(_CANCELED_MARK):
                patch = [
                    {
                        "op": "replace",
                        "path": "/purchase_units/@reference_id=='default'/custom_id",
                        "value": (custom_id[: 127 - len(_CANCELED_MARK)] + _CANCELED_MARK),
                    }
                ]
                orders = self._client.orders
                await self._call(
                    "orders.patch", lambda: orders.patch_order({"id": processor_payment_id, "body": patch})
                )
            return ProcessorPaymentState(processor_payment_id, PaymentStatus.CANCELED)
        auth = _read("an order", m.open_authorization, order, ids=ids)
        if auth is not None:
            payments = self._client.payments
            options = {
                "authorization_id": _read("an authorization", m.required_id, auth, ids=ids),
                "paypal_request_id": idempotency_key,
                "prefer": _REPRESENTATION,
            }
            await self._call("payments.void", lambda: payments.void_payment(options))
            order = await self._get_order(processor_payment_id)
        return _order_state(order)

    # ------------------------------------------------------------------ refunds

    async def create_refund(self, request: RefundRequest, *, idempotency_key: str) -> ProcessorRefundState:
        """Refunds (part of) the order's capture."""
        refund_request: m.Json = {"amount": m.paypal_amount(request.amount), "custom_id": request.refund_id[:127]}
        note = _NOTE_TO_PAYER.get(request.reason)
        if note:
            refund_request["note_to_payer"] = note
        order = await self._get_order(request.processor_payment_id)
        ids = {"processor_payment_id": request.processor_payment_id}
        capture = _read("an order", m.first_capture, order, ids=ids)
        if capture is None:
            raise FailedPrecondition(
                f"PayPal order {request.processor_payment_id} has no capture to refund",
                reason="PAYMENT_NOT_REFUNDABLE",
                metadata={"processor": "paypal", "processor_payment_id": request.processor_payment_id},
            )
        payments = self._client.payments
        options = {
            "capture_id": _read("a capture", m.required_id, capture, ids=ids),
            "paypal_request_id": idempotency_key,
            "prefer": _REPRESENTATION,
            "body": refund_request,
        }
        refund = await self._json("payments.refund_capture", lambda: payments.refund_captured_payment(options))
        return _read(
            "a refund",
            partial(
                m.refund_state,
                processor_payment_id=request.processor_payment_id,
                payment_custom_id=str(capture.get("custom_id") or ""),
            ),
            refund,
            ids={**ids, "processor_refund_id": m.text_id(refund)},
        )

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefundState:
        """Reads a refund, and the capture and order it belongs to.

        A refund names only its capture (its ``up`` link); the capture names its order. Both
        are needed to mirror a refund made in PayPal's dashboard, or a reversal, onto our
        payment (whose processor id is the order id).
        """
        payments = self._client.payments
        refund = await self._json(
            "payments.get_refund", lambda: payments.get_refund({"refund_id": processor_refund_id})
        )
        ids = {"processor_refund_id": processor_refund_id}
        capture_id = _read("a refund", lambda r: m.resource_id(m.link(r, "up"), "captures"), refund, ids=ids)
        if not capture_id:
            return _read("a refund", m.refund_state, refund, ids=ids)
        capture = await self._json(
            "payments.get_capture", lambda: payments.get_captured_payment({"capture_id": capture_id})
        )
        order_id = _read("a capture", m.related_order_id, capture, ids=ids)
        authorization_id = _read("a capture", lambda c: m.resource_id(m.link(c, "up"), "authorizations"), capture)
        if not order_id and authorization_id:
            authorization = await self._json(
                "payments.get_authorization",
                lambda: payments.get_authorized_payment({"authorization_id": authorization_id}),
            )
            order_id = _read("an authorization", m.related_order_id, authorization, ids=ids)
        custom_id = str(capture.get("custom_id") or "")
        read = partial(m.refund_state, processor_payment_id=order_id, payment_custom_id=custom_id)
        return _read("a refund", read, refund, ids={**ids, "processor_payment_id": order_id})

    # ------------------------------------------------------------------ lookups by our id

    async def find_payment(self, lookup: PaymentLookup) -> PaymentLookupResult:
        """Finds the order created for our payment id through Transaction Search (see the module docstring)."""
        start = lookup.created_at - _CLOCK_SLACK
        end = min(lookup.quiet_since + _CLOCK_SLACK, start + _SEARCH_MAX_RANGE, datetime.now(UTC))
        value = m.paypal_value(lookup.amount).replace(".", "")  # "lower denominations", e.g. 10.05 -> 1005
        wanted = {lookup.payment_id[:127], lookup.payment_id[: 127 - len(_CANCELED_MARK)] + _CANCELED_MARK}
        search = self._client.transaction_search
        page, refreshed = 1, None
        while True:
            options = {
                "start_date": _iso(start), "end_date": _iso(end),
                "transaction_currency": lookup.amount.currency, "transaction_amount": f"[{value} TO {value}]",
                "fields": "transaction_info", "balance_affecting_records_only": "N",
                "page_size": _SEARCH_PAGE, "page": page,
            }  # fmt: skip
            listed = await self._json("transactions.search", partial(search.search_transactions, options))
            refreshed = m.parse_time(listed.get("last_refreshed_datetime")) or refreshed
            for detail in listed.get("transaction_details") or []:
                info = detail.get("transaction_info") or {}
                if str(info.get("custom_field", "")) in wanted and info.get("transaction_id"):
                    return await self._found_order(str(info["transaction_id"]), str(info.get("transaction_event_code")))
            if page >= int(listed.get("total_pages") or 1):
                break
            page += 1
        if refreshed is not None and refreshed >= lookup.quiet_since:
            return PaymentLookupResult(LookupOutcome.ABSENT)
        return PaymentLookupResult(LookupOutcome.UNKNOWN, retry_after=lookup.quiet_since + _SEARCH_LAG)

    async def _found_order(self, transaction_id: str, event_code: str) -> PaymentLookupResult:
        """The order behind a capture (T00xx) or an authorization (T13xx) found by Transaction Search."""
        payments = self._client.payments
        if event_code.startswith("T13"):
            resource = await self._json(
                "payments.get_authorization",
                lambda: payments.get_authorized_payment({"authorization_id": transaction_id}),
            )
        else:
            resource = await self._json(
                "payments.get_capture", lambda: payments.get_captured_payment({"capture_id": transaction_id})
            )
        order_id = str(((resource.get("supplementary_data") or {}).get("related_ids") or {}).get("order_id", ""))
        if not order_id:
            raise ProcessorError(
                f"PayPal transaction {transaction_id} names no order",
                reason="PROCESSOR_BAD_RESPONSE",
                retryable=True,
                metadata={"processor": "paypal"},
            )
        order = await self._get_order(order_id)
        unit, _, _ = m.purchase_payments(order)
        if str(unit.get("custom_id", "")).endswith(_CANCELED_MARK) and order.get("status") != "COMPLETED":
            return PaymentLookupResult(LookupOutcome.FOUND, ProcessorPaymentState(order_id, PaymentStatus.CANCELED))
        return PaymentLookupResult(LookupOutcome.FOUND, _order_state(order))

    async def find_refund(self, lookup: RefundLookup) -> RefundLookupResult:
        """Reads the order and matches our refund id in its refunds' ``custom_id``."""
        if not lookup.processor_payment_id:
            return RefundLookupResult(LookupOutcome.ABSENT)
        order = await self._get_order(lookup.processor_payment_id)
        for unit in order.get("purchase_units") or []:
            for refund in (unit.get("payments") or {}).get("refunds") or []:
                if str(refund.get("custom_id", "")) == lookup.refund_id[:127]:
                    read = partial(m.refund_state, processor_payment_id=lookup.processor_payment_id)
                    state = _read("a refund", read, refund, ids={"processor_payment_id": lookup.processor_payment_id})
                    return RefundLookupResult(LookupOutcome.FOUND, replace(state, refund_id=lookup.refund_id))
        return RefundLookupResult(LookupOutcome.ABSENT)

    # ------------------------------------------------------------------ plans

    async def _ensure_product(self, idempotency_key: str) -> str:
        product_id = self._settings.catalog_product_id
        if not self._product_ready:
            try:
                await self._call(
                    "catalogs.create_product",
                    lambda: self._raw(
                        "POST",
                        "/v1/catalogs/products",
                        request_id=f"{idempotency_key}:product",
                        body=m.product_body(product_id),
                    ),
                )
            except ProcessorError as err:
                if err.reason != "DUPLICATE_RESOURCE_IDENTIFIER":  # made by an earlier plan
                    raise
            self._product_ready = True
        return product_id

    async def create_plan(self, plan: Plan, *, idempotency_key: str) -> dict[str, str]:
        """Creates a billing plan (under our one catalog product); returns both ids."""
        m.paypal_value(plan.price, field_path="price")  # refuse before creating anything
        product_id = await self._ensure_product(idempotency_key)
        plan_request = m.plan_body(plan, product_id)
        subscriptions = self._client.subscriptions
        created = await self._json(
            "billing.create_plan",
            lambda: subscriptions.create_billing_plan(
                {"body": plan_request, "paypal_request_id": f"{idempotency_key}:plan", "prefer": _REPRESENTATION}
            ),
        )
        return {"paypal": _read("a billing plan", m.required_id, created), "paypal_product": product_id}

    async def archive_plan(self, plan: Plan, *, idempotency_key: str) -> None:
        """Deactivates the billing plan; existing subscriptions keep it."""
        plan_id = plan.processor_refs.get("paypal")
        if not plan_id:
            return
        try:
            await self._call(
                "billing.deactivate_plan",
                lambda: self._raw("POST", "/v1/billing/plans/{id}/deactivate", request_id=idempotency_key, id=plan_id),
            )
        except ProcessorError as err:
            if err.reason != "PLAN_STATUS_INVALID":  # already inactive
                raise

    # ------------------------------------------------------------------ subscriptions

    async def _get_subscription_json(self, subscription_id: str) -> m.Json:
        subscriptions = self._client.subscriptions
        return await self._json("subscriptions.get", lambda: subscriptions.get_subscription({"id": subscription_id}))

    async def _subscription_action(
        self, subscription_id: str, action: str, reason: str, idempotency_key: str, done: set[SubscriptionStatus]
    ) -> ProcessorSubscriptionState:
        try:
            await self._call(
                f"subscriptions.{action}",
                lambda: self._raw(
                    "POST",
                    f"/v1/billing/subscriptions/{{id}}/{action}",
                    request_id=idempotency_key,
                    body={"reason": reason},
                    id=subscription_id,
                ),
            )
        except ProcessorError as err:
            if err.reason != "SUBSCRIPTION_STATUS_INVALID":
                raise
            state = await self.get_subscription(subscription_id)
            if state.status not in done:
                raise
            return state  # already there (a retry, or a webhook beat us)
        return await self.get_subscription(subscription_id)

    async def create_subscription(
        self, request: SubscriptionRequest, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Creates a subscription the buyer must approve (status INCOMPLETE, approval_url set)."""
        plan_id = request.plan.processor_refs.get("paypal")
        if not plan_id:
            raise FailedPrecondition(
                f"plan {request.plan.id} has not been created at PayPal",
                reason="PLAN_NOT_AT_PROCESSOR",
                metadata={"processor": "paypal", "plan_id": request.plan.id},
            )
        if request.trial_end is not None and request.plan.trial_period_days == 0:
            raise NotSupportedByProcessor(
                "PayPal trials come from the plan's trial cycle; this plan has none",
                metadata={"processor": "paypal", "feature": "subscription_trial_end"},
            )
        body: m.Json = {"plan_id": plan_id, "quantity": str(request.quantity), "custom_id": request.subscription_id}
        context: m.Json = {"user_action": "SUBSCRIBE_NOW", "shipping_preference": "NO_SHIPPING"}
        if request.return_url:
            context |= {"return_url": request.return_url, "cancel_url": request.return_url}
        body["application_context"] = context
        subscriptions = self._client.subscriptions
        created = await self._json(
            "subscriptions.create",
            lambda: subscriptions.create_subscription(
                {"body": body, "paypal_request_id": idempotency_key, "prefer": _REPRESENTATION}
            ),
        )
        return _read(
            "a subscription", m.subscription_state, created, ids={"processor_subscription_id": m.text_id(created)}
        )

    async def get_subscription(self, processor_subscription_id: str) -> ProcessorSubscriptionState:
        """Reads a subscription."""
        sub = await self._get_subscription_json(processor_subscription_id)
        return _read(
            "a subscription", m.subscription_state, sub, ids={"processor_subscription_id": processor_subscription_id}
        )

    async def update_subscription(
        self, processor_subscription_id: str, change: SubscriptionChange, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Revises plan and/or quantity; PayPal applies the new price from the next cycle.

        PayPal never prorates, which is ``NONE``. ``CREATE_PRORATIONS`` is accepted because
        the API's unset value arrives as it (see the report on ``ProrationBehavior``);
        ``ALWAYS_INVOICE`` is refused. A PayPal-wallet buyer must re-consent through the
        returned ``approval_url``; until then PayPal keeps billing the old plan.
        """
        if change.proration is ProrationBehavior.ALWAYS_INVOICE:
            raise NotSupportedByProcessor(
                "PayPal cannot invoice a plan or quantity change immediately;"
                " it bills the new price from the next cycle",
                metadata={"processor": "paypal", "feature": "proration_always_invoice"},
            )
        revision: m.Json = {}
        if change.plan is not None:
            plan_id = change.plan.processor_refs.get("paypal")
            if not plan_id:
                raise FailedPrecondition(
                    f"plan {change.plan.id} has not been created at PayPal",
                    reason="PLAN_NOT_AT_PROCESSOR",
                    metadata={"processor": "paypal", "plan_id": change.plan.id},
                )
            revision["plan_id"] = plan_id
        if change.quantity is not None:
            revision["quantity"] = str(change.quantity)
        if not revision:
            return await self.get_subscription(processor_subscription_id)
        revised = await self._json(
            "subscriptions.revise",
            lambda: self._raw(
                "POST",
                "/v1/billing/subscriptions/{id}/revise",
                request_id=idempotency_key,
                body=revision,
                id=processor_subscription_id,
            ),
        )
        state = await self.get_subscription(processor_subscription_id)
        state.approval_url = _read("a revision", m.link, revised, "approve") or state.approval_url
        return state

    async def cancel_subscription(
        self, processor_subscription_id: str, *, at_period_end: bool, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Cancels now; PayPal has no cancel-at-period-end."""
        if at_period_end:
            raise NotSupportedByProcessor(
                "PayPal cannot cancel a subscription at period end; cancel it now instead",
                metadata={"processor": "paypal", "feature": "cancel_at_period_end"},
            )
        return await self._subscription_action(
            processor_subscription_id,
            "cancel",
            "Canceled by the merchant",
            idempotency_key,
            {SubscriptionStatus.CANCELED},
        )

    async def pause_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Suspends billing."""
        return await self._subscription_action(
            processor_subscription_id, "suspend", "Paused by the merchant", idempotency_key, {SubscriptionStatus.PAUSED}
        )

    async def resume_subscription(
        self, processor_subscription_id: str, *, idempotency_key: str
    ) -> ProcessorSubscriptionState:
        """Reactivates a suspended subscription."""
        return await self._subscription_action(
            processor_subscription_id,
            "activate",
            "Resumed by the merchant",
            idempotency_key,
            {SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING, SubscriptionStatus.PAST_DUE},
        )

    async def list_invoices(self, processor_subscription_id: str) -> list[ProcessorInvoiceState]:
        """Maps the subscription's transactions (since it was created) to invoices, newest first."""
        sub = await self._get_subscription_json(processor_subscription_id)
        ids = {"processor_subscription_id": processor_subscription_id}
        created = _read("a subscription", m.parse_time, sub.get("create_time") or sub.get("start_time"), ids=ids)
        start = created or datetime(2000, 1, 1, tzinfo=UTC)
        options = {"id": processor_subscription_id, "start_time": _iso(start), "end_time": _iso(datetime.now(UTC))}
        subscriptions = self._client.subscriptions
        listed = await self._json(
            "subscriptions.transactions", lambda: subscriptions.list_subscription_transactions(options)
        )
        transactions = listed.get("transactions") or []
        return _read(
            "subscription transactions", m.transaction_invoices, processor_subscription_id, transactions, ids=ids
        )
