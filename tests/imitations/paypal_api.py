"""A local imitation of PayPal's REST API for integration tests.

It speaks PayPal's JSON shapes, status codes, HATEOAS links, OAuth client-credentials
flow and ``PayPal-Request-Id`` idempotency closely enough that the real SDK (and our
adapter on top of it) cannot tell the difference for the flows we use. It runs a
Starlette app under uvicorn on a free loopback port in a background thread::

    api = PayPalImitation().start()
    ... PayPalSettings(client_id=api.client_id, client_secret=api.client_secret, base_url=api.base_url)
    api.stop()

Outcomes are driven by data, like PayPal's sandbox: a vault token made from a setup
token whose id contains ``declined`` is declined on every charge; orders paid with a
``vault_id`` complete at once; other orders wait for ``approve_order``. Faults:
``fail_next`` (an error status before any effect) and ``timeout_after_effect_next`` (the
effect happens and is stored for idempotent replay, then the answer stalls past the
client's timeout). Every request is logged with its headers.

Transaction Search (``GET /v1/reporting/transactions``) lists the captures (T0006),
authorizations (T1300, not balance-affecting) and refunds (T1107) made here, with
``custom_field`` and ``last_refreshed_datetime``; like PayPal's it only shows what was made
before its last refresh: ``reporting_refreshed_at`` (None: now minus ``reporting_lag``).

Deliberately independent of ``billing_service``: amounts are parsed here on their own, so
a formatting bug in the adapter shows up as a PayPal-style 422.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Json = dict[str, Any]

CURRENCY_DECIMALS = {
    "AUD": 2, "BRL": 2, "CAD": 2, "CNY": 2, "CZK": 2, "DKK": 2, "EUR": 2, "HKD": 2, "HUF": 0, "ILS": 2,
    "JPY": 0, "MYR": 2, "MXN": 2, "TWD": 0, "NZD": 2, "NOK": 2, "PHP": 2, "PLN": 2, "GBP": 2, "SGD": 2,
    "SEK": 2, "CHF": 2, "THB": 2, "USD": 2,
}  # fmt: skip
INTERVAL_MAX = {"DAY": 365, "WEEK": 52, "MONTH": 12, "YEAR": 1}


class ApiError(Exception):
    """An error answer in PayPal's shape."""

    def __init__(self, status: int, name: str, message: str, issue: str = "", description: str = "", field: str = ""):
        super().__init__(message)
        self.status = status
        self.payload: Json = {"name": name, "message": message, "debug_id": secrets.token_hex(6)}
        if issue:
            detail = {"issue": issue, "description": description or message}
            if field:
                detail["field"] = field
            self.payload["details"] = [detail]
        self.payload["links"] = [
            {"href": f"https://developer.paypal.com/docs/api/v2/errors/#{issue or name}", "rel": "information_link"}
        ]


def unprocessable(issue: str, description: str) -> ApiError:
    return ApiError(
        422,
        "UNPROCESSABLE_ENTITY",
        "The requested action could not be performed, semantically incorrect, or failed business validation.",
        issue,
        description,
    )


def invalid(issue: str, description: str, field: str = "") -> ApiError:
    return ApiError(
        400, "INVALID_REQUEST", "Request is not well-formed, syntactically incorrect, or violates schema.",
        issue, description, field,
    )  # fmt: skip


def not_found(what: str) -> ApiError:
    return ApiError(
        404, "RESOURCE_NOT_FOUND", "The specified resource does not exist.", "INVALID_RESOURCE_ID", f"{what} not found"
    )


def _public(value: Any) -> Any:
    """A deep copy without the imitation's bookkeeping keys (``_refunded``, ``_declined``)."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def now_iso(moment: datetime | None = None, *, millis: bool = False) -> str:
    moment = moment or datetime.now(UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def units(amount: Json, field_path: str = "amount") -> tuple[str, int]:
    """Validates a PayPal amount object; returns (currency, value in PayPal's smallest unit)."""
    currency = str(amount.get("currency_code", ""))
    value = amount.get("value")
    if currency not in CURRENCY_DECIMALS:
        raise unprocessable("CURRENCY_NOT_SUPPORTED", f"Currency code {currency!r} is not supported.")
    if not isinstance(value, str):
        raise invalid("INVALID_PARAMETER_SYNTAX", "amount value must be a string", f"{field_path}/value")
    decimals = CURRENCY_DECIMALS[currency]
    pattern = r"^\d{1,10}$" if decimals == 0 else rf"^\d{{1,10}}(\.\d{{1,{decimals}}})?$"
    if not re.match(pattern, value):
        raise unprocessable("DECIMAL_PRECISION", f"{currency} does not support {value!r}.")
    whole, _, frac = value.partition(".")
    return currency, int(whole) * 10**decimals + (int(frac.ljust(decimals, "0")) if decimals else 0)


def units_signed(amount: Json) -> int:
    """A reported amount (refunds are negative) in PayPal's smallest unit."""
    value = str(amount["value"])
    _, magnitude = units({**amount, "value": value.lstrip("-")})
    return -magnitude if value.startswith("-") else magnitude


def fmt(currency: str, amount_units: int) -> Json:
    decimals = CURRENCY_DECIMALS[currency]
    if decimals == 0:
        return {"currency_code": currency, "value": str(amount_units)}
    major, minor = divmod(amount_units, 10**decimals)
    return {"currency_code": currency, "value": f"{major}.{minor:0{decimals}d}"}


@dataclass
class LoggedRequest:
    """One request as the imitation saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any

    @property
    def request_id(self) -> str | None:
        return self.headers.get("paypal-request-id")


@dataclass
class _Fault:
    prefix: str
    status: int
    name: str
    times: int


@dataclass
class _Subscription:
    data: Json
    plan: Json
    pending_revision: Json | None = None
    transactions: list[Json] = field(default_factory=list)


class PayPalImitation:
    """PayPal REST imitation; see the module docstring.

    Attributes:
        token_requests: OAuth token requests answered with a token.
        captures_created: Captures that moved money (orders and authorizations).
        refunds_created: Refunds created.
        requests: Every request received, in order.
        strict_request_id: Refuse POSTs without ``PayPal-Request-Id`` (400).
        complete_vaulted_orders: Orders paid with a ``vault_id`` complete at once; when False they
            come back APPROVED and wait for the merchant's capture or authorize call.
        webhook_events: Every event PayPal would have sent, oldest first (listed at
            ``/v1/notifications/webhooks-events``).
        stall_seconds: How long ``timeout_after_effect_next`` holds the answer.
    """

    def __init__(
        self,
        client_id: str = "imitation-client-id",
        client_secret: str = "imitation-client-secret",
        *,
        strict_request_id: bool = True,
        token_ttl_seconds: int = 32400,
        stall_seconds: float = 1.5,
        complete_vaulted_orders: bool = True,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.strict_request_id = strict_request_id
        self.token_ttl_seconds = token_ttl_seconds
        self.stall_seconds = stall_seconds
        self._vaulted_default = complete_vaulted_orders
        self._lock = threading.RLock()
        self.reset()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, Any]]]] = []
        self._build_routes()

    # ------------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        """Forgets every resource, token, fault, counter and logged request."""
        with self._lock:
            self.token_requests = 0
            self.captures_created = 0
            self.refunds_created = 0
            self.requests: list[LoggedRequest] = []
            self._tokens: dict[str, float] = {}
            self._faults: list[_Fault] = []
            self._stalls: list[str] = []
            self._garbles: list[tuple[str, Callable[[Any], Any]]] = []
            self.webhook_events: list[Json] = []
            self.complete_vaulted_orders = self._vaulted_default
            self._idempotent: dict[tuple[str, str], tuple[int, Any]] = {}
            self.orders: dict[str, Json] = {}
            self.authorizations: dict[str, tuple[str, Json]] = {}  # id -> (order id, authorization)
            self.captures: dict[str, tuple[str, Json]] = {}
            self.refunds: dict[str, Json] = {}
            self.setup_tokens: dict[str, Json] = {}
            self.payment_tokens: dict[str, Json] = {}
            self.products: dict[str, Json] = {}
            self.plans: dict[str, Json] = {}
            self.subscriptions: dict[str, _Subscription] = {}
            self.reporting_lag = timedelta(0)
            self.reporting_refreshed_at: datetime | None = None

    def __enter__(self) -> PayPalImitation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> PayPalImitation:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PATCH", "DELETE"])])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("PayPal imitation did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ knobs and helpers

    def fail_next(self, path_prefix: str, status: int = 503, name: str = "SERVICE_UNAVAILABLE", times: int = 1) -> None:
        """The next ``times`` requests under ``path_prefix`` fail with ``status`` before any effect."""
        with self._lock:
            self._faults.append(_Fault(path_prefix, status, name, times))

    def timeout_after_effect_next(self, path_prefix: str) -> None:
        """The next write under ``path_prefix`` takes effect, is stored, then stalls."""
        with self._lock:
            self._stalls.append(path_prefix)

    def garble_next(self, path_prefix: str, garble: Callable[[Any], Any]) -> None:
        """The next answer under ``path_prefix`` is passed through ``garble`` on its way out.

        The effect and the stored idempotent answer are untouched: what a client receives once
        is something it cannot read (a proxy, a new field format), and a retry replays the
        real answer.
        """
        with self._lock:
            self._garbles.append((path_prefix, garble))

    def dashboard_refund(self, capture_id: str, value: str) -> Json:
        """A refund made in PayPal's dashboard: no request id, no ``custom_id`` of ours."""
        with self._lock:
            _, refund = self._refund(
                capture_id, {"amount": {"currency_code": self._capture_currency(capture_id), "value": value}}
            )
            self._emit("PAYMENT.CAPTURE.REFUNDED", "refund", refund, "A capture payment was refunded")
            return refund

    def reverse_capture(self, capture_id: str, value: str, reason: str = "CHARGEBACK") -> Json:
        """PayPal takes captured money back (a chargeback): a refund PayPal made, announced
        as ``PAYMENT.CAPTURE.REVERSED``; the capture's ``status_details.reason`` says why."""
        with self._lock:
            capture = self._capture(capture_id)[1]
            _, refund = self._refund(
                capture_id, {"amount": {"currency_code": self._capture_currency(capture_id), "value": value}}
            )
            capture["status_details"] = {"reason": reason}
            self._emit("PAYMENT.CAPTURE.REVERSED", "refund", refund, "A capture payment was reversed")
            return refund

    def _capture_currency(self, capture_id: str) -> str:
        return str(self._capture(capture_id)[1]["amount"]["currency_code"])

    def revoke_tokens(self) -> None:
        """Invalidates every access token issued so far (PayPal rotated them)."""
        with self._lock:
            self._tokens.clear()

    def posts(self) -> list[LoggedRequest]:
        """Logged POSTs other than the OAuth token endpoint."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path != "/v1/oauth2/token"]

    def create_setup_token(self, kind: str = "paypal", *, declined: bool = False, customer_id: str = "") -> str:
        """What the front end would produce after the buyer saved a method (already approved)."""
        source: Json
        if kind == "card":
            source = {"card": {"brand": "VISA", "last_digits": "4242", "expiry": "2030-07", "name": "Ada Lovelace"}}
        else:
            source = {"paypal": {"email_address": "buyer@example.com", "payer_id": "PAYER" + self._new_id("")}}
        token_id = ("declined-" if declined else "") + self._new_id("ST")
        with self._lock:
            self.setup_tokens[token_id] = {
                "id": token_id,
                "customer": {"id": customer_id or self._new_id("")},
                "status": "APPROVED",
                "payment_source": source,
                "links": [self._link(f"/v3/vault/setup-tokens/{token_id}", "self", "GET")],
            }
        return token_id

    def approve_order(self, order_id: str) -> None:
        """The buyer approves the order on PayPal's page."""
        with self._lock:
            order = self.orders[order_id]
            if order["status"] not in ("CREATED", "PAYER_ACTION_REQUIRED"):
                raise RuntimeError(f"order {order_id} is {order['status']}")
            order["status"] = "APPROVED"
            order["payer"] = {"email_address": "buyer@example.com", "payer_id": "BUYER1"}
            order["update_time"] = now_iso()
            self._emit("CHECKOUT.ORDER.APPROVED", "checkout-order", order, "An order has been approved by buyer")

    def approve_subscription(self, subscription_id: str) -> None:
        """The buyer approves; the subscription activates and bills its first regular cycle unless on trial."""
        with self._lock:
            sub = self.subscriptions[subscription_id]
            start = datetime.now(UTC)
            cycles = sub.plan["billing_cycles"]
            sub.data["status"] = "ACTIVE"
            sub.data["status_update_time"] = now_iso(start)
            sub.data["subscriber"] = {"email_address": "buyer@example.com", "payer_id": "BUYER1"}
            sub.data["billing_info"] = {
                "outstanding_balance": fmt(self._plan_currency(sub.plan), 0),
                "cycle_executions": [
                    {
                        "tenure_type": c["tenure_type"],
                        "sequence": c["sequence"],
                        "cycles_completed": 0,
                        "cycles_remaining": c["total_cycles"],
                        "current_pricing_scheme_version": 1,
                        "total_cycles": c["total_cycles"],
                    }
                    for c in cycles
                ],
                "failed_payments_count": 0,
            }
            trial = next((c for c in cycles if c["tenure_type"] == "TRIAL"), None)
            if trial is not None:
                execution = sub.data["billing_info"]["cycle_executions"][0]
                execution["cycles_completed"], execution["cycles_remaining"] = 1, trial["total_cycles"] - 1
                days = trial["frequency"]["interval_count"] * trial["total_cycles"]
                sub.data["billing_info"]["next_billing_time"] = now_iso(start + timedelta(days=days))
            else:
                self.bill_subscription_cycle(subscription_id, at=start)
            self._emit("BILLING.SUBSCRIPTION.ACTIVATED", "subscription", sub.data, "Subscription activated")

    def bill_subscription_cycle(self, subscription_id: str, *, at: datetime | None = None) -> str:
        """PayPal collects one regular cycle; returns the transaction id."""
        with self._lock:
            sub = self.subscriptions[subscription_id]
            moment = at or datetime.now(UTC)
            regular = next(c for c in sub.plan["billing_cycles"] if c["tenure_type"] == "REGULAR")
            price = regular["pricing_scheme"]["fixed_price"]
            currency, price_units = units(price)
            gross = price_units * int(sub.data.get("quantity", "1"))
            tx_id = self._new_id("")
            sub.transactions.append(
                {
                    "status": "COMPLETED",
                    "id": tx_id,
                    "amount_with_breakdown": {
                        "gross_amount": fmt(currency, gross),
                        "fee_amount": fmt(currency, 0),
                        "net_amount": fmt(currency, gross),
                    },
                    "payer_name": {"given_name": "Ada", "surname": "Lovelace"},
                    "payer_email": "buyer@example.com",
                    "time": now_iso(moment, millis=True),
                }
            )
            info = sub.data["billing_info"]
            for execution in info["cycle_executions"]:
                if execution["tenure_type"] == "REGULAR":
                    execution["cycles_completed"] += 1
            info["last_payment"] = {"amount": fmt(currency, gross), "time": now_iso(moment, millis=True)}
            unit = {"DAY": 1, "WEEK": 7, "MONTH": 30, "YEAR": 365}[regular["frequency"]["interval_unit"]]
            info["next_billing_time"] = now_iso(moment + timedelta(days=unit * regular["frequency"]["interval_count"]))
            major = fmt(currency, gross)["value"]
            sale = {
                "id": tx_id, "state": "completed", "amount": {"total": major, "currency": currency},
                "billing_agreement_id": subscription_id, "custom": sub.data.get("custom_id", ""),
                "create_time": now_iso(moment), "update_time": now_iso(moment),
            }  # fmt: skip
            self._emit("PAYMENT.SALE.COMPLETED", "sale", sale, "Payment completed")
            return tx_id

    def approve_revision(self, subscription_id: str) -> None:
        """The buyer re-consents to a revised plan or quantity."""
        with self._lock:
            sub = self.subscriptions[subscription_id]
            if sub.pending_revision:
                if "plan_id" in sub.pending_revision:
                    sub.plan = self.plans[sub.pending_revision["plan_id"]]
                    sub.data["plan_id"] = sub.plan["id"]
                if "quantity" in sub.pending_revision:
                    sub.data["quantity"] = sub.pending_revision["quantity"]
                sub.pending_revision = None
                sub.data["update_time"] = now_iso()
                self._emit("BILLING.SUBSCRIPTION.UPDATED", "subscription", sub.data, "Subscription updated")

    # ------------------------------------------------------------------ webhook events

    def _emit(self, event_type: str, resource_type: str, resource: Json, summary: str) -> Json:
        """Records the event PayPal would send (and keeps listing at /v1/notifications/webhooks-events)."""
        event_id = f"WH-{self._new_id('')}-{self._new_id('')}"
        base = f"/v1/notifications/webhooks-events/{event_id}"
        event = {
            "id": event_id,
            "event_version": "1.0",
            "create_time": now_iso(millis=True),
            "resource_type": resource_type,
            "resource_version": "2.0" if not event_type.startswith("PAYMENT.SALE") else "1.0",
            "event_type": event_type,
            "summary": summary,
            "resource": _public(resource),
            "links": [self._link(base, "self"), self._link(f"{base}/resend", "resend", "POST")],
        }
        self.webhook_events.append(event)
        return event

    def _list_webhook_events(self, *, query: dict[str, str], **_: Any) -> tuple[int, Json]:
        """Newest first; ``start_time``/``end_time`` bound ``create_time`` (inclusive).

        PayPal pages with HATEOAS links whose query is opaque to clients; here ``next`` carries
        an offset, and a client must follow the link rather than build it.
        """
        size = query.get("page_size", "10")
        if not size.isdigit() or not 1 <= int(size) <= 300:
            raise invalid("INVALID_PARAMETER_VALUE", "page_size must be between 1 and 300", "page_size")
        bounds = []
        for name in ("start_time", "end_time"):
            try:
                bounds.append(_parse_time(query[name]) if query.get(name) else None)
            except ValueError:
                raise invalid("INVALID_PARAMETER_SYNTAX", f"{name} must be RFC 3339", name) from None
        start, end = bounds
        picked = [
            e for e in reversed(self.webhook_events)
            if (start is None or _parse_time(e["create_time"]) >= start)
            and (end is None or _parse_time(e["create_time"]) <= end)
        ]  # fmt: skip
        offset = int(query.get("offset", "0") or 0)
        page = picked[offset : offset + int(size)]
        path = "/v1/notifications/webhooks-events"
        kept = {k: v for k, v in query.items() if k in ("page_size", "start_time", "end_time", "event_type")}
        links = [self._link(f"{path}?{urlencode(kept | {'offset': str(offset)})}", "self")]
        if offset + int(size) < len(picked):
            following = kept | {"offset": str(offset + int(size)), "move_to": "next"}
            links.append(self._link(f"{path}?{urlencode(following)}", "next"))
        return 200, {"events": page, "count": len(page), "links": links}

    def _get_webhook_event(self, event_id: str, **_: Any) -> tuple[int, Json]:
        for event in self.webhook_events:
            if event["id"] == event_id:
                return 200, event
        raise not_found(f"webhook event {event_id}")

    # ------------------------------------------------------------------ HTTP plumbing

    def _new_id(self, prefix: str) -> str:
        raw = "".join(secrets.choice("0123456789ABCDEFGHJKLMNPRSTUVWXY") for _ in range(17))
        return f"{prefix}-{raw}" if prefix else raw

    def _link(self, path: str, rel: str, method: str = "GET") -> Json:
        return {"href": f"{self.base_url}{path}", "rel": rel, "method": method}

    async def _handle(self, request: Request) -> Response:
        path = request.url.path
        raw = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            parsed: Any = json.loads(raw) if raw and "json" in headers.get("content-type", "") else raw.decode()
        except ValueError:
            parsed = raw.decode(errors="replace")
        stall = False
        request_id = headers.get("paypal-request-id")
        with self._lock:
            self.requests.append(LoggedRequest(request.method, path, dict(request.query_params), headers, parsed))
            try:
                if path == "/v1/oauth2/token" and request.method == "POST":
                    return self._json(*self._token(headers, raw.decode()))
                self._authenticate(headers)
                fault = next((f for f in self._faults if path.startswith(f.prefix) and f.times > 0), None)
                if fault is not None:
                    fault.times -= 1
                    injected = ApiError(fault.status, fault.name, "Injected failure.")
                    return self._json(injected.status, injected.payload)  # no effect, nothing stored
                if request.method == "POST":
                    if not request_id and self.strict_request_id:
                        raise invalid(
                            "MISSING_REQUEST_ID", "PayPal-Request-Id header is required.", "PayPal-Request-Id"
                        )
                    if request_id and (path, request_id) in self._idempotent:
                        return self._json(*self._idempotent[(path, request_id)])
                if not isinstance(parsed, dict | list) and request.method in ("POST", "PATCH") and parsed:
                    raise invalid("MALFORMED_REQUEST_JSON", "The request JSON is not well formed.")
                body = parsed if isinstance(parsed, dict | list) else {}
                status, answer = self._dispatch(request.method, path, body, headers, dict(request.query_params))
            except ApiError as err:
                status, answer = err.status, err.payload
            # Effects and business refusals are replayed for the same key; malformed or
            # unauthenticated requests had no effect and are not.
            if request.method == "POST" and request_id and (status < 400 or status == 422):
                # A snapshot: PayPal replays the answer it gave, not the resource as it is now.
                self._idempotent[(path, request_id)] = (status, _public(answer))
            garble = next((g for g in self._garbles if path.startswith(g[0])), None)
            if garble is not None and status < 400:
                self._garbles.remove(garble)
                answer = garble[1](json.loads(json.dumps(_public(answer))))
            stall_prefix = next((p for p in self._stalls if path.startswith(p)), None)
            if stall_prefix is not None and request.method == "POST" and status < 400:
                self._stalls.remove(stall_prefix)
                stall = True
        if stall:
            await asyncio.sleep(self.stall_seconds)
        return self._json(status, answer)

    @staticmethod
    def _json(status: int, answer: Any) -> Response:
        if status == 204 or answer is None:
            return Response(status_code=status)
        return Response(json.dumps(_public(answer)), status_code=status, media_type="application/json")

    def _token(self, headers: dict[str, str], form: str) -> tuple[int, Json]:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if headers.get("authorization") != f"Basic {expected}":
            return 401, {"error": "invalid_client", "error_description": "Client Authentication failed"}
        if "grant_type=client_credentials" not in form:
            return 400, {"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"}
        self.token_requests += 1
        token = "A21AA" + secrets.token_urlsafe(24)
        self._tokens[token] = time.time() + self.token_ttl_seconds
        return 200, {
            "scope": "https://uri.paypal.com/services/payments/payment",
            "access_token": token,
            "token_type": "Bearer",
            "app_id": "APP-80W284485P519543T",
            "expires_in": self.token_ttl_seconds,
            "nonce": secrets.token_hex(8),
        }

    def _authenticate(self, headers: dict[str, str]) -> None:
        auth = headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or self._tokens.get(token, 0) < time.time():
            raise ApiError(
                401,
                "AUTHENTICATION_FAILURE",
                "Authentication failed due to invalid authentication credentials or a missing Authorization header.",
            )

    def _build_routes(self) -> None:
        id_ = r"([^/]+)"
        table: list[tuple[str, str, Callable[..., tuple[int, Any]]]] = [
            ("POST", "/v2/checkout/orders", self._create_order),
            ("GET", f"/v2/checkout/orders/{id_}", self._get_order),
            ("PATCH", f"/v2/checkout/orders/{id_}", self._patch_order),
            ("POST", f"/v2/checkout/orders/{id_}/capture", self._capture_order),
            ("POST", f"/v2/checkout/orders/{id_}/authorize", self._authorize_order),
            ("GET", f"/v2/payments/authorizations/{id_}", self._get_authorization),
            ("POST", f"/v2/payments/authorizations/{id_}/capture", self._capture_authorization),
            ("POST", f"/v2/payments/authorizations/{id_}/void", self._void_authorization),
            ("GET", f"/v2/payments/captures/{id_}", self._get_capture),
            ("POST", f"/v2/payments/captures/{id_}/refund", self._refund_capture),
            ("GET", f"/v2/payments/refunds/{id_}", self._get_refund),
            ("POST", "/v3/vault/setup-tokens", self._create_setup_token),
            ("GET", f"/v3/vault/setup-tokens/{id_}", self._get_setup_token),
            ("POST", "/v3/vault/payment-tokens", self._create_payment_token),
            ("GET", f"/v3/vault/payment-tokens/{id_}", self._get_payment_token),
            ("DELETE", f"/v3/vault/payment-tokens/{id_}", self._delete_payment_token),
            ("POST", "/v1/catalogs/products", self._create_product),
            ("GET", f"/v1/catalogs/products/{id_}", self._get_product),
            ("POST", "/v1/billing/plans", self._create_plan),
            ("GET", f"/v1/billing/plans/{id_}", self._get_plan),
            ("POST", f"/v1/billing/plans/{id_}/deactivate", self._deactivate_plan),
            ("POST", "/v1/billing/subscriptions", self._create_subscription),
            ("GET", f"/v1/billing/subscriptions/{id_}", self._get_subscription),
            ("POST", f"/v1/billing/subscriptions/{id_}/suspend", self._suspend),
            ("POST", f"/v1/billing/subscriptions/{id_}/activate", self._activate),
            ("POST", f"/v1/billing/subscriptions/{id_}/cancel", self._cancel),
            ("POST", f"/v1/billing/subscriptions/{id_}/revise", self._revise),
            ("GET", f"/v1/billing/subscriptions/{id_}/transactions", self._transactions),
            ("GET", "/v1/notifications/webhooks-events", self._list_webhook_events),
            ("GET", f"/v1/notifications/webhooks-events/{id_}", self._get_webhook_event),
            ("GET", "/v1/reporting/transactions", self._search_transactions),
        ]
        self._routes = [(method, re.compile(f"^{pattern}$"), handler) for method, pattern, handler in table]

    def _dispatch(self, method: str, path: str, body: Any, headers: dict[str, str], query: dict[str, str]):
        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match and route_method == method:
                return handler(*match.groups(), body=body, headers=headers, query=query)
        raise ApiError(404, "RESOURCE_NOT_FOUND", f"No route for {method} {path}.")

    @staticmethod
    def _representation(headers: dict[str, str]) -> bool:
        return "return=representation" in headers.get("prefer", "")

    # ------------------------------------------------------------------ orders

    def _order_view(self, order: Json, headers: dict[str, str]) -> Json:
        if self._representation(headers):
            return order
        return {"id": order["id"], "status": order["status"], "links": order["links"]}

    def _order(self, order_id: str) -> Json:
        order = self.orders.get(order_id)
        if order is None:
            raise not_found(f"order {order_id}")
        return order

    def _create_order(self, *, body: Json, headers: dict[str, str], **_: Any) -> tuple[int, Json]:
        intent = body.get("intent")
        if intent not in ("CAPTURE", "AUTHORIZE"):
            raise invalid("INVALID_PARAMETER_VALUE", "intent must be CAPTURE or AUTHORIZE", "/intent")
        purchase_units = body.get("purchase_units") or []
        if len(purchase_units) != 1:
            raise invalid(
                "MISSING_REQUIRED_PARAMETER", "exactly one purchase unit is supported here", "/purchase_units"
            )
        unit = dict(purchase_units[0])
        units(unit.get("amount") or {}, "/purchase_units/@reference_id=='default'/amount")
        unit.setdefault("reference_id", "default")
        order_id = self._new_id("")
        now = now_iso()
        order: Json = {"id": order_id, "intent": intent, "purchase_units": [unit], "create_time": now}
        source = body.get("payment_source") or {}
        vault_kind = next((k for k, v in source.items() if isinstance(v, dict) and v.get("vault_id")), None)
        base = f"/v2/checkout/orders/{order_id}"
        if vault_kind is not None:
            token = self.payment_tokens.get(source[vault_kind]["vault_id"])
            if token is None:
                raise unprocessable("INVALID_RESOURCE_ID", "Specified vault_id does not exist.")
            if token["_declined"]:
                raise unprocessable(
                    "INSTRUMENT_DECLINED", "The instrument presented was either declined by the processor or bank."
                )
            order["payment_source"] = {vault_kind: {k: v for k, v in token["payment_source"][vault_kind].items()}}
            self.orders[order_id] = order
            if self.complete_vaulted_orders:
                order["status"] = "COMPLETED"
                order["links"] = [self._link(base, "self")]
                self._settle(order)
            else:  # the payer's consent is on file; PayPal waits for the merchant to complete it
                order["status"] = "APPROVED"
                order["links"] = [
                    self._link(base, "self"),
                    self._link(base, "update", "PATCH"),
                    self._link(f"{base}/{intent.lower()}", intent.lower(), "POST"),
                ]
        else:
            experience = (source.get("paypal") or {}).get("experience_context")
            order["status"] = "PAYER_ACTION_REQUIRED" if experience else "CREATED"
            approve = f"https://www.sandbox.paypal.com/checkoutnow?token={order_id}"
            order["links"] = [
                self._link(base, "self"),
                {"href": approve, "rel": "payer-action" if experience else "approve", "method": "GET"},
                self._link(base, "update", "PATCH"),
                self._link(f"{base}/{intent.lower()}", intent.lower(), "POST"),
            ]
            self.orders[order_id] = order
        return 201, self._order_view(order, headers)

    def _settle(self, order: Json) -> None:
        """Completes a payer-approved (or vaulted) order: one capture or one authorization."""
        unit = order["purchase_units"][0]
        currency, amount = units(unit["amount"])
        now = now_iso()
        order["status"] = "COMPLETED"
        order["update_time"] = now
        payments = unit.setdefault("payments", {})
        if order["intent"] == "CAPTURE":
            capture = self._new_capture(order["id"], unit, currency, amount, True)
            payments.setdefault("captures", []).append(capture)
            self._emit("PAYMENT.CAPTURE.COMPLETED", "capture", capture, "Payment completed")
        else:
            auth_id = self._new_id("")
            auth = {
                "id": auth_id,
                "status": "CREATED",
                "amount": fmt(currency, amount),
                "custom_id": unit.get("custom_id", ""),
                "expiration_time": now_iso(datetime.now(UTC) + timedelta(days=29)),
                "create_time": now,
                "update_time": now,
                "supplementary_data": {"related_ids": {"order_id": order["id"]}},
                "links": [
                    self._link(f"/v2/payments/authorizations/{auth_id}", "self"),
                    self._link(f"/v2/payments/authorizations/{auth_id}/capture", "capture", "POST"),
                    self._link(f"/v2/payments/authorizations/{auth_id}/void", "void", "POST"),
                    self._link(f"/v2/checkout/orders/{order['id']}", "up"),
                ],
            }
            auth["supplementary_data"] = {"related_ids": {"order_id": order["id"]}}
            payments.setdefault("authorizations", []).append(auth)
            self.authorizations[auth_id] = (order["id"], auth)
            self._emit("PAYMENT.AUTHORIZATION.CREATED", "authorization", auth, "A payment authorization was created")
        self._emit("CHECKOUT.ORDER.COMPLETED", "checkout-order", order, "Checkout Order Completed")

    def _new_capture(
        self, order_id: str, unit: Json, currency: str, amount: int, final: bool, authorization_id: str = ""
    ) -> Json:
        capture_id = self._new_id("")
        now = now_iso()
        related = {"order_id": order_id, **({"authorization_id": authorization_id} if authorization_id else {})}
        # A capture of an authorization points "up" to it; a captured order's capture to the order.
        up = f"/v2/checkout/orders/{order_id}"
        if authorization_id:
            up = f"/v2/payments/authorizations/{authorization_id}"
        capture = {
            "id": capture_id,
            "status": "COMPLETED",
            "amount": fmt(currency, amount),
            "final_capture": final,
            "custom_id": unit.get("custom_id", ""),
            "seller_protection": {"status": "ELIGIBLE"},
            "supplementary_data": {"related_ids": related},
            "create_time": now,
            "update_time": now,
            "links": [
                self._link(f"/v2/payments/captures/{capture_id}", "self"),
                self._link(f"/v2/payments/captures/{capture_id}/refund", "refund", "POST"),
                self._link(up, "up"),
            ],
        }
        self.captures[capture_id] = (order_id, capture)
        self.captures_created += 1
        return capture

    def _get_order(self, order_id: str, **_: Any) -> tuple[int, Json]:
        return 200, self._order(order_id)

    def _patch_order(self, order_id: str, *, body: Any, **_: Any) -> tuple[int, None]:
        order = self._order(order_id)
        if order["status"] not in ("CREATED", "APPROVED", "PAYER_ACTION_REQUIRED"):
            raise unprocessable("ORDER_ALREADY_COMPLETED", "The order cannot be patched after it is completed.")
        for op in body if isinstance(body, list) else []:
            target = re.match(r"^/purchase_units/@reference_id=='([^']+)'/(\w+)$", str(op.get("path", "")))
            if op.get("op") not in ("replace", "add") or target is None:
                raise unprocessable("PATCH_PATH_REQUIRED", f"unsupported patch {op!r}")
            unit = next((u for u in order["purchase_units"] if u["reference_id"] == target.group(1)), None)
            if unit is None or target.group(2) not in ("custom_id", "description", "invoice_id"):
                raise unprocessable("INVALID_JSON_POINTER_FORMAT", f"cannot patch {op['path']}")
            unit[target.group(2)] = op.get("value")
        return 204, None

    def _complete_order(self, order_id: str, intent: str, headers: dict[str, str]) -> tuple[int, Json]:
        order = self._order(order_id)
        if order["intent"] != intent:
            raise unprocessable("ACTION_DOES_NOT_MATCH_INTENT", f"Order intent is {order['intent']}.")
        if order["status"] == "COMPLETED" and intent == "AUTHORIZE":
            raise unprocessable("ORDER_ALREADY_AUTHORIZED", "Order already authorized.")
        if order["status"] == "COMPLETED":
            raise unprocessable("ORDER_ALREADY_CAPTURED", "Order already captured.")
        if order["status"] != "APPROVED":
            raise unprocessable("ORDER_NOT_APPROVED", "Payer has not yet approved the Order for payment.")
        order["payment_source"] = {"paypal": {"email_address": "buyer@example.com", "account_id": "BUYER1"}}
        self._settle(order)
        return 201, self._order_view(order, headers)

    def _capture_order(self, order_id: str, *, headers: dict[str, str], **_: Any) -> tuple[int, Json]:
        return self._complete_order(order_id, "CAPTURE", headers)

    def _authorize_order(self, order_id: str, *, headers: dict[str, str], **_: Any) -> tuple[int, Json]:
        return self._complete_order(order_id, "AUTHORIZE", headers)

    # ------------------------------------------------------------------ payments

    def _authorization(self, auth_id: str) -> tuple[Json, Json]:
        found = self.authorizations.get(auth_id)
        if found is None:
            raise not_found(f"authorization {auth_id}")
        return self.orders[found[0]], found[1]

    def _get_authorization(self, auth_id: str, **_: Any) -> tuple[int, Json]:
        return 200, self._authorization(auth_id)[1]

    def _capture_authorization(self, auth_id: str, *, body: Json, headers: dict[str, str], **_: Any):
        order, auth = self._authorization(auth_id)
        if auth["status"] == "VOIDED":
            raise unprocessable("AUTHORIZATION_VOIDED", "A voided authorization cannot be captured.")
        if auth["status"] == "CAPTURED":
            raise unprocessable("AUTHORIZATION_ALREADY_CAPTURED", "Authorization has already been captured.")
        unit = order["purchase_units"][0]
        currency, authorized = units(auth["amount"])
        captured = sum(units(c["amount"])[1] for c in unit["payments"].get("captures", []))
        amount = authorized - captured
        if body.get("amount"):
            cur, amount = units(body["amount"], "/amount")
            if cur != currency:
                raise unprocessable("CURRENCY_MISMATCH", "Currency of capture must match authorization.")
        if amount <= 0 or amount > authorized - captured:
            raise unprocessable("MAX_CAPTURE_AMOUNT_EXCEEDED", "Capture amount exceeds allowable limit.")
        final = bool(body.get("final_capture", False)) or amount == authorized - captured
        capture = self._new_capture(order["id"], unit, currency, amount, final, authorization_id=auth_id)
        unit["payments"].setdefault("captures", []).append(capture)
        self._emit("PAYMENT.CAPTURE.COMPLETED", "capture", capture, "Payment completed")
        auth["status"] = "CAPTURED" if final else "PARTIALLY_CAPTURED"
        auth["update_time"] = capture["create_time"]
        return 201, capture if self._representation(headers) else {k: capture[k] for k in ("id", "status", "links")}

    def _void_authorization(self, auth_id: str, *, headers: dict[str, str], **_: Any):
        _, auth = self._authorization(auth_id)
        if auth["status"] in ("CAPTURED", "PARTIALLY_CAPTURED"):
            raise unprocessable(
                "PREVIOUSLY_CAPTURED", "Authorization has been previously captured and hence cannot be voided."
            )
        if auth["status"] == "VOIDED":
            raise unprocessable(
                "PREVIOUSLY_VOIDED", "Authorization has been previously voided and hence cannot be voided again."
            )
        auth["status"] = "VOIDED"
        auth["update_time"] = now_iso()
        self._emit("PAYMENT.AUTHORIZATION.VOIDED", "authorization", auth, "A payment authorization was voided")
        return (200, auth) if self._representation(headers) else (204, None)

    def _capture(self, capture_id: str) -> tuple[Json, Json]:
        found = self.captures.get(capture_id)
        if found is None:
            raise not_found(f"capture {capture_id}")
        return self.orders[found[0]], found[1]

    def _get_capture(self, capture_id: str, **_: Any) -> tuple[int, Json]:
        return 200, self._capture(capture_id)[1]

    def _refund_capture(self, capture_id: str, *, body: Json, headers: dict[str, str], **_: Any):
        status, refund = self._refund(capture_id, body)
        self._emit("PAYMENT.CAPTURE.REFUNDED", "refund", refund, "A capture payment was refunded")
        return status, refund if self._representation(headers) else {k: refund[k] for k in ("id", "status", "links")}

    def _refund(self, capture_id: str, body: Json) -> tuple[int, Json]:
        _, capture = self._capture(capture_id)
        currency, captured = units(capture["amount"])
        refunded = capture.setdefault("_refunded", 0)
        if refunded >= captured:
            raise unprocessable("CAPTURE_FULLY_REFUNDED", "The capture has already been fully refunded.")
        amount = captured - refunded
        if body.get("amount"):
            cur, amount = units(body["amount"], "/amount")
            if cur != currency:
                raise unprocessable("REFUND_CURRENCY_MISMATCH", "Refund must be in the currency of the capture.")
        if amount > captured - refunded:
            raise unprocessable(
                "REFUND_AMOUNT_EXCEEDED",
                "The refund amount must be less than or equal to the capture amount that has not yet been refunded.",
            )
        refund_id = self._new_id("")
        now = now_iso()
        refund = {
            "id": refund_id,
            "status": "COMPLETED",
            "amount": fmt(currency, amount),
            "note_to_payer": body.get("note_to_payer", ""),
            **({"custom_id": body["custom_id"]} if body.get("custom_id") else {}),
            "seller_payable_breakdown": {"gross_amount": fmt(currency, amount), "net_amount": fmt(currency, amount)},
            "create_time": now,
            "update_time": now,
            "links": [
                self._link(f"/v2/payments/refunds/{refund_id}", "self"),
                self._link(f"/v2/payments/captures/{capture_id}", "up"),
            ],
        }
        capture["_refunded"] = refunded + amount
        capture["status"] = "REFUNDED" if refunded + amount == captured else "PARTIALLY_REFUNDED"
        self.refunds[refund_id] = refund
        # The order lists its refunds too (purchase_units[].payments.refunds).
        order = self.orders[self.captures[capture_id][0]]
        order["purchase_units"][0].setdefault("payments", {}).setdefault("refunds", []).append(refund)
        self.refunds_created += 1
        return 201, refund

    def _get_refund(self, refund_id: str, **_: Any) -> tuple[int, Json]:
        refund = self.refunds.get(refund_id)
        if refund is None:
            raise not_found(f"refund {refund_id}")
        return 200, refund

    # ------------------------------------------------------------------ reporting

    def _search_transactions(self, *, query: dict[str, str], **_: Any) -> tuple[int, Json]:
        """Transaction Search: what moved (or held) money between two dates, as of the last refresh."""
        try:
            start = datetime.fromisoformat(query["start_date"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(query["end_date"].replace("Z", "+00:00"))
        except (KeyError, ValueError):
            raise invalid("INVALID_REQUEST", "start_date and end_date are required RFC 3339 date-times") from None
        if end < start or end - start > timedelta(days=31):
            raise invalid("INVALID_REQUEST", "Date range is greater than 31 days")
        refreshed = self.reporting_refreshed_at or datetime.now(UTC) - self.reporting_lag
        rows = [row for row in self._transaction_rows() if start <= row[0] <= min(end, refreshed)]
        if query.get("balance_affecting_records_only", "Y") != "N":
            rows = [row for row in rows if not row[1]["transaction_event_code"].startswith("T13")]
        if query.get("transaction_currency"):
            rows = [
                row for row in rows if row[1]["transaction_amount"]["currency_code"] == query["transaction_currency"]
            ]
        bounds = re.match(r"^\[(-?\d+) TO (-?\d+)\]$", query.get("transaction_amount", ""))
        if bounds is not None:
            low, high = int(bounds.group(1)), int(bounds.group(2))
            rows = [row for row in rows if low <= abs(units_signed(row[1]["transaction_amount"])) <= high]
        size = max(1, min(int(query.get("page_size", "100")), 500))
        page = max(1, int(query.get("page", "1")))
        chunk = rows[(page - 1) * size : page * size]
        return 200, {
            "transaction_details": [{"transaction_info": info} for _, info in chunk],
            "account_number": "IMITATIONACCT",
            "start_date": query["start_date"],
            "end_date": query["end_date"],
            "last_refreshed_datetime": now_iso(refreshed),
            "page": page,
            "total_items": len(rows),
            "total_pages": max(1, -(-len(rows) // size)),
            "links": [],
        }

    def _transaction_rows(self) -> list[tuple[datetime, Json]]:
        def row(code: str, resource: Json, sign: int, status: str) -> tuple[datetime, Json]:
            at = datetime.fromisoformat(resource["create_time"].replace("Z", "+00:00"))
            amount = dict(resource["amount"])
            if sign < 0:
                amount["value"] = "-" + amount["value"]
            return at, {
                "transaction_id": resource["id"], "transaction_event_code": code,
                "transaction_initiation_date": resource["create_time"],
                "transaction_updated_date": resource.get("update_time", resource["create_time"]),
                "transaction_amount": amount, "transaction_status": status,
                "custom_field": resource.get("custom_id", ""),
            }  # fmt: skip

        rows = [row("T0006", capture, 1, "S") for _, capture in self.captures.values()]
        rows += [row("T1300", auth, 1, "S") for _, auth in self.authorizations.values()]
        rows += [row("T1107", refund, -1, "S") for refund in self.refunds.values()]
        return sorted(rows, key=lambda r: r[0])

    # ------------------------------------------------------------------ vault

    def _create_setup_token(self, *, body: Json, **_: Any) -> tuple[int, Json]:
        source = body.get("payment_source") or {}
        kind = "card" if "card" in source else "paypal"
        token_id = self.create_setup_token(kind, customer_id=(body.get("customer") or {}).get("id", ""))
        return 201, self.setup_tokens[token_id]

    def _get_setup_token(self, token_id: str, **_: Any) -> tuple[int, Json]:
        token = self.setup_tokens.get(token_id)
        if token is None:
            raise not_found(f"setup token {token_id}")
        return 200, token

    def _create_payment_token(self, *, body: Json, **_: Any) -> tuple[int, Json]:
        source = (body.get("payment_source") or {}).get("token") or {}
        if source.get("type") != "SETUP_TOKEN" or not source.get("id"):
            raise invalid(
                "MISSING_REQUIRED_PARAMETER", "payment_source.token id and type are required", "/payment_source/token"
            )
        setup = self.setup_tokens.get(source["id"])
        if setup is None:
            raise not_found(f"setup token {source['id']}")
        if setup["status"] != "APPROVED":
            raise unprocessable("SETUP_TOKEN_NOT_APPROVED", "The setup token has not been approved by the payer.")
        customer = (body.get("customer") or {}).get("id") or setup["customer"]["id"]
        token_id = self._new_id("")
        token = {
            "id": token_id,
            "customer": {"id": customer},
            "payment_source": json.loads(json.dumps(setup["payment_source"])),
            "links": [
                self._link(f"/v3/vault/payment-tokens/{token_id}", "self"),
                self._link(f"/v3/vault/payment-tokens/{token_id}", "delete", "DELETE"),
            ],
            "_declined": "declined" in setup["id"],
        }
        self.payment_tokens[token_id] = token
        return 201, {k: v for k, v in token.items() if not k.startswith("_")}

    def _get_payment_token(self, token_id: str, **_: Any) -> tuple[int, Json]:
        token = self.payment_tokens.get(token_id)
        if token is None:
            raise not_found(f"payment token {token_id}")
        return 200, {k: v for k, v in token.items() if not k.startswith("_")}

    def _delete_payment_token(self, token_id: str, **_: Any) -> tuple[int, None]:
        if self.payment_tokens.pop(token_id, None) is None:
            raise not_found(f"payment token {token_id}")
        return 204, None

    # ------------------------------------------------------------------ catalog, plans

    def _create_product(self, *, body: Json, **_: Any) -> tuple[int, Json]:
        if not body.get("name"):
            raise invalid("MISSING_REQUIRED_PARAMETER", "name is required", "/name")
        product_id = str(body.get("id") or self._new_id("PROD"))
        if not 6 <= len(product_id) <= 50:
            raise invalid("INVALID_STRING_LENGTH", "id must be 6 to 50 characters", "/id")
        if product_id in self.products:
            raise unprocessable("DUPLICATE_RESOURCE_IDENTIFIER", "A resource with the same id already exists.")
        now = now_iso()
        product = {
            "id": product_id,
            "name": body["name"],
            "description": body.get("description", ""),
            "type": body.get("type", "PHYSICAL"),
            "create_time": now,
            "update_time": now,
            "links": [self._link(f"/v1/catalogs/products/{product_id}", "self")],
        }
        self.products[product_id] = product
        return 201, product

    def _get_product(self, product_id: str, **_: Any) -> tuple[int, Json]:
        if product_id not in self.products:
            raise not_found(f"product {product_id}")
        return 200, self.products[product_id]

    def _create_plan(self, *, body: Json, headers: dict[str, str], **_: Any) -> tuple[int, Json]:
        if body.get("product_id") not in self.products:
            raise invalid("INVALID_PARAMETER_VALUE", "product_id does not exist", "/product_id")
        cycles = body.get("billing_cycles") or []
        if not cycles or cycles[-1].get("tenure_type") != "REGULAR":
            raise invalid("MISSING_REQUIRED_PARAMETER", "a REGULAR billing cycle is required", "/billing_cycles")
        for index, cycle in enumerate(cycles, start=1):
            frequency = cycle.get("frequency") or {}
            unit, count = frequency.get("interval_unit"), frequency.get("interval_count", 1)
            if unit not in INTERVAL_MAX or not 1 <= int(count) <= INTERVAL_MAX[unit]:
                raise invalid("INVALID_PARAMETER_VALUE", "invalid interval", f"/billing_cycles/{index - 1}/frequency")
            if cycle.get("sequence") != index:
                raise invalid("INVALID_PARAMETER_VALUE", "sequences must count from 1", f"/billing_cycles/{index - 1}")
            if cycle.get("tenure_type") == "REGULAR":
                units((cycle.get("pricing_scheme") or {}).get("fixed_price") or {}, "/fixed_price")
        plan_id = self._new_id("P")
        now = now_iso()
        plan = {
            "id": plan_id,
            "product_id": body["product_id"],
            "name": body.get("name", ""),
            "description": body.get("description", ""),
            "status": body.get("status", "ACTIVE"),
            "billing_cycles": cycles,
            "payment_preferences": body.get("payment_preferences", {}),
            "quantity_supported": bool(body.get("quantity_supported", False)),
            "create_time": now,
            "update_time": now,
            "links": [
                self._link(f"/v1/billing/plans/{plan_id}", "self"),
                self._link(f"/v1/billing/plans/{plan_id}", "edit", "PATCH"),
                self._link(f"/v1/billing/plans/{plan_id}/deactivate", "self", "POST"),
            ],
        }
        self.plans[plan_id] = plan
        if self._representation(headers):
            return 201, plan
        return 201, {k: plan[k] for k in ("id", "product_id", "name", "status", "description", "create_time", "links")}

    def _get_plan(self, plan_id: str, **_: Any) -> tuple[int, Json]:
        if plan_id not in self.plans:
            raise not_found(f"plan {plan_id}")
        return 200, self.plans[plan_id]

    def _deactivate_plan(self, plan_id: str, **_: Any) -> tuple[int, None]:
        plan = self.plans.get(plan_id)
        if plan is None:
            raise not_found(f"plan {plan_id}")
        if plan["status"] != "ACTIVE":
            raise unprocessable(
                "PLAN_STATUS_INVALID", "Invalid plan status for deactivate action; plan status should be active."
            )
        plan["status"] = "INACTIVE"
        return 204, None

    @staticmethod
    def _plan_currency(plan: Json) -> str:
        regular = next(c for c in plan["billing_cycles"] if c["tenure_type"] == "REGULAR")
        return str(regular["pricing_scheme"]["fixed_price"]["currency_code"])

    # ------------------------------------------------------------------ subscriptions

    def _subscription(self, subscription_id: str) -> _Subscription:
        sub = self.subscriptions.get(subscription_id)
        if sub is None:
            raise not_found(f"subscription {subscription_id}")
        return sub

    def _create_subscription(self, *, body: Json, **_: Any) -> tuple[int, Json]:
        plan = self.plans.get(str(body.get("plan_id")))
        if plan is None:
            raise unprocessable("INVALID_RESOURCE_ID", "Requested resource ID was not found.")
        if plan["status"] != "ACTIVE":
            raise unprocessable("PLAN_STATUS_INVALID", "Invalid plan status for subscription; plan should be active.")
        quantity = str(body.get("quantity", "1"))
        if not quantity.isdigit() or int(quantity) < 1:
            raise invalid("INVALID_PARAMETER_SYNTAX", "quantity must be a positive integer string", "/quantity")
        if quantity != "1" and not plan["quantity_supported"]:
            raise unprocessable("QUANTITY_NOT_SUPPORTED", "The plan does not support quantity.")
        subscription_id = self._new_id("I")
        now = now_iso()
        data = {
            "id": subscription_id,
            "plan_id": plan["id"],
            "status": "APPROVAL_PENDING",
            "quantity": quantity,
            "custom_id": body.get("custom_id", ""),
            "start_time": body.get("start_time", now),
            "create_time": now,
            "status_update_time": now,
            "plan_overridden": False,
            "links": [
                {
                    "href": f"https://www.sandbox.paypal.com/webapps/billing/subscriptions?ba_token=BA-{subscription_id}",
                    "rel": "approve",
                    "method": "GET",
                },
                self._link(f"/v1/billing/subscriptions/{subscription_id}", "edit", "PATCH"),
                self._link(f"/v1/billing/subscriptions/{subscription_id}", "self"),
            ],
        }
        self.subscriptions[subscription_id] = _Subscription(data=data, plan=plan)
        self._emit("BILLING.SUBSCRIPTION.CREATED", "subscription", data, "Subscription created")
        return 201, data

    def _get_subscription(self, subscription_id: str, **_: Any) -> tuple[int, Json]:
        sub = self._subscription(subscription_id)
        view = dict(sub.data)
        if sub.data["status"] != "APPROVAL_PENDING":
            view["links"] = [link for link in sub.data["links"] if link["rel"] != "approve"]
        return 200, view

    def _transition(self, subscription_id: str, allowed: tuple[str, ...], to: str, body: Json) -> tuple[int, None]:
        sub = self._subscription(subscription_id)
        if not body.get("reason"):
            raise invalid("MISSING_REQUIRED_PARAMETER", "reason is required", "/reason")
        if sub.data["status"] not in allowed:
            raise unprocessable("SUBSCRIPTION_STATUS_INVALID", f"Invalid subscription status {sub.data['status']}.")
        sub.data["status"] = to
        sub.data["status_update_time"] = now_iso()
        sub.data["status_change_note"] = body["reason"]
        kind = {"SUSPENDED": "SUSPENDED", "ACTIVE": "ACTIVATED", "CANCELLED": "CANCELLED"}[to]
        self._emit(f"BILLING.SUBSCRIPTION.{kind}", "subscription", sub.data, f"Subscription {kind.lower()}")
        return 204, None

    def _suspend(self, subscription_id: str, *, body: Json, **_: Any) -> tuple[int, None]:
        return self._transition(subscription_id, ("ACTIVE",), "SUSPENDED", body)

    def _activate(self, subscription_id: str, *, body: Json, **_: Any) -> tuple[int, None]:
        return self._transition(subscription_id, ("SUSPENDED",), "ACTIVE", body)

    def _cancel(self, subscription_id: str, *, body: Json, **_: Any) -> tuple[int, None]:
        return self._transition(subscription_id, ("ACTIVE", "SUSPENDED", "APPROVED"), "CANCELLED", body)

    def _revise(self, subscription_id: str, *, body: Json, **_: Any) -> tuple[int, Json]:
        sub = self._subscription(subscription_id)
        if sub.data["status"] not in ("ACTIVE", "SUSPENDED"):
            raise unprocessable("SUBSCRIPTION_STATUS_INVALID", f"Invalid subscription status {sub.data['status']}.")
        revision: Json = {}
        if "plan_id" in body:
            plan = self.plans.get(str(body["plan_id"]))
            if plan is None or plan["status"] != "ACTIVE":
                raise unprocessable("PLAN_STATUS_INVALID", "The new plan must be active.")
            if plan["product_id"] != sub.plan["product_id"]:
                raise unprocessable("INVALID_PLAN", "Plans must belong to the same product.")
            revision["plan_id"] = plan["id"]
        if "quantity" in body:
            revision["quantity"] = str(body["quantity"])
        sub.pending_revision = revision
        token = f"BA-{secrets.token_hex(8).upper()}"
        return 200, {
            "plan_id": revision.get("plan_id", sub.data["plan_id"]),
            "quantity": revision.get("quantity", sub.data["quantity"]),
            "plan_overridden": False,
            "links": [
                {
                    "href": f"https://www.sandbox.paypal.com/webapps/billing/subscriptions/update?ba_token={token}",
                    "rel": "approve",
                    "method": "GET",
                },
                self._link(f"/v1/billing/subscriptions/{subscription_id}", "edit", "PATCH"),
                self._link(f"/v1/billing/subscriptions/{subscription_id}", "self"),
            ],
        }

    def _transactions(self, subscription_id: str, *, query: dict[str, str], **_: Any) -> tuple[int, Json]:
        sub = self._subscription(subscription_id)
        if not query.get("start_time") or not query.get("end_time"):
            raise invalid("MISSING_REQUIRED_PARAMETER", "start_time and end_time are required", "start_time")
        start = datetime.fromisoformat(query["start_time"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(query["end_time"].replace("Z", "+00:00"))
        picked = [
            tx for tx in sub.transactions if start <= datetime.fromisoformat(tx["time"].replace("Z", "+00:00")) <= end
        ]
        return 200, {
            "transactions": picked,
            "links": [self._link(f"/v1/billing/subscriptions/{subscription_id}/transactions", "self")],
        }
