"""A local imitation of Stripe's v1 API, faithful enough to drive stripe-python against.

``StripeImitation().start()`` (or ``with StripeImitation() as api``) serves Starlette over
uvicorn in a daemon thread on a free loopback port; point
``StripeClient(base_addresses={"api": api.base_url})`` at it.

Faithful: form-encoded bracket params, object shapes (``object``, ``id``, ``livemode``,
``created``; subscription periods on items and proration flags under ``parent`` as in API
versions since 2025-03-31), error bodies and HTTP statuses, idempotency (same key and
params: the stored response with ``Idempotent-Replayed: true``; same key, other params:
400 ``idempotency_error``), Stripe's test PaymentMethods. Stricter than Stripe on purpose
(``strict=True``): every POST/DELETE needs an ``Idempotency-Key``; currencies must be lower
case.

Knobs: ``fail_next``, ``timeout_after_effect_next``, ``garble_next``, ``refund_mode`` +
``settle_refund``, ``end_trial``.
Counters: ``requests`` (log), ``requests_to``, ``payment_intents_created``,
``charges_created``, ``objects(kind)``; events are listed at ``/v1/events``, PaymentIntents
(by customer and creation time) and refunds (by PaymentIntent or charge) at their list
endpoints, newest first, reading current data as Stripe's list APIs do.
"""

from __future__ import annotations

import asyncio
import calendar
import copy
import hashlib
import itertools
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Obj = dict[str, Any]
API_VERSION = "2026-10-28.endive"

# Stripe's test PaymentMethods: brand, last4 and what a charge on them does.
TEST_CARDS: dict[str, tuple[str, str, str]] = {
    "pm_card_visa": ("visa", "4242", "ok"),
    "pm_card_mastercard": ("mastercard", "4444", "ok"),
    "pm_card_amex": ("amex", "8431", "ok"),
    "pm_card_chargeDeclined": ("visa", "0002", "decline:generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": ("visa", "9995", "decline:insufficient_funds"),
    "pm_card_authenticationRequired": ("visa", "3184", "3ds"),
}
# Stripe's default Smart Retries schedule: up to 4 attempts (the first plus 3 retries).
MAX_INVOICE_ATTEMPTS = 4
_DECLINE_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
}
_THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}
_MINIMUM = {"usd": 50, "eur": 50, "gbp": 30, "jpy": 50}
_PRICE_UPDATABLE = {"active", "metadata", "nickname", "lookup_key", "tax_behavior", "transfer_lookup_key", "expand"}
_CANCELABLE = {"requires_payment_method", "requires_capture", "requires_confirmation", "requires_action", "processing"}
# GET /v1/<segment>/<id>: the object type and the parameter Stripe names in a 404.
_RETRIEVABLE = {
    "customers": ("customer", "customer"),
    "payment_methods": ("payment_method", "payment_method"),
    "payment_intents": ("payment_intent", "intent"),
    "refunds": ("refund", "refund"),
    "products": ("product", "id"),
    "prices": ("price", "price"),
    "subscriptions": ("subscription", "subscription_exposed_id"),
    "invoices": ("invoice", "invoice"),
    "events": ("event", "id"),
}
_PI_NULLS = ("next_action", "last_payment_error", "latest_charge", "canceled_at", "cancellation_reason")
_SUB_NULLS = ("cancel_at", "canceled_at", "ended_at", "pause_collection", "latest_invoice", "trial_start", "trial_end")


class StripeApiError(Exception):
    """Raised by handlers; rendered as Stripe's ``{"error": {...}}`` body."""

    def __init__(self, status: int, type_: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"type": type_, "message": message, **{k: v for k, v in extra.items() if v is not None}}

    def render(self) -> bytes:
        return json.dumps({"error": self.body}).encode()


def _invalid(message: str, param: str | None = None, code: str | None = None, status: int = 400) -> StripeApiError:
    return StripeApiError(status, "invalid_request_error", message, param=param, code=code)


def _empty_string(param: str) -> StripeApiError:
    """Stripe's answer to ``param=""`` where an empty value would mean "unset" and cannot."""
    message = (
        f"You passed an empty string for '{param}'. We assume empty values are an attempt to unset a parameter; "
        f"however '{param}' cannot be unset. You should remove '{param}' from your request or supply a non-empty value."
    )
    return _invalid(message, param=param, code="parameter_invalid_empty")


def parse_form(pairs: list[tuple[str, str]]) -> Obj:
    """Decodes Stripe's bracket notation: ``metadata[k]=v``, ``items[0][price]=p``, ``expand[]=x``."""
    root: Obj = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = root
        for i, part in enumerate(parts[:-1]):
            if parts[i + 1] == "":  # "expand[]": append to a list
                node.setdefault(part, []).append(value)
                break
            child = node.get(part)
            node = child if isinstance(child, dict) else node.setdefault(part, {})
        else:
            node[parts[-1]] = value
    result: Obj = _listify(root)
    return result


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        converted = {k: _listify(v) for k, v in value.items()}
        if converted and all(k.isdigit() for k in converted):
            return [converted[k] for k in sorted(converted, key=int)]
        return converted
    return value


def _int(params: Obj, name: str, default: int | None = None) -> int:
    value = params.get(name)
    if value is None or value == "":
        if default is None:
            raise _invalid(f"Missing required param: {name}.", param=name, code="parameter_missing")
        return default
    try:
        return int(value)
    except ValueError:
        raise _invalid(f"Invalid integer: {value}", param=name) from None


def _bool(value: Any) -> bool:
    return str(value).lower() == "true"


def add_interval(start: int, interval: str, count: int) -> int:
    """Calendar math for billing periods: a month later keeps the day, clamped to the month's end."""
    dt = datetime.fromtimestamp(start, UTC)
    if interval in ("day", "week"):
        return int((dt + timedelta(days=count * (7 if interval == "week" else 1))).timestamp())
    year, month = divmod(dt.month - 1 + count * (12 if interval == "year" else 1), 12)
    year += dt.year
    day = min(dt.day, calendar.monthrange(year, month + 1)[1])
    return int(dt.replace(year=year, month=month + 1, day=day).timestamp())


@dataclass
class RecordedRequest:
    """One request as the imitation saw it (header names lower-cased) and its status."""

    method: str
    path: str
    params: Obj
    headers: dict[str, str]
    status: int = 0


@dataclass
class _Fault:
    path_prefix: str
    status: int
    error_type: str
    times: int
    code: str | None = None
    stall: bool = False


@dataclass
class _Store:
    objects: dict[str, Obj] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, int, bytes]] = field(default_factory=dict)
    seq: itertools.count[int] = field(default_factory=itertools.count)


class StripeImitation:
    """Stripe's API on a loopback port, with fault and timing knobs for tests.

    Args:
        api_key: The only secret key accepted (``Authorization: Bearer ...``).
        strict: Require an ``Idempotency-Key`` on every POST/DELETE (our contract, not Stripe's).
        stall_seconds: How long ``timeout_after_effect_next`` holds its response.
    """

    def __init__(self, api_key: str = "sk_test_imitation", *, strict: bool = True, stall_seconds: float = 3.0) -> None:
        self.api_key = api_key
        self.strict = strict
        self.stall_seconds = stall_seconds
        self.refund_mode = "succeeded"  # "pending": refunds wait for settle_refund()
        self.requests: list[RecordedRequest] = []
        self.base_url = ""
        self._lock = threading.RLock()
        self._faults: list[_Fault] = []
        self._garbles: list[tuple[str, Callable[[Obj], Obj | bytes]]] = []
        self._store = _Store()
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[Route("/v1/{path:path}", self._dispatch, methods=["GET", "POST", "DELETE"])])

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> StripeImitation:
        """Serves on 127.0.0.1:<free port> in a daemon thread; returns once listening."""
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when proto says TCP,
        # and without it every keep-alive response waits out a 40 ms delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Stripe imitation did not start")
            time.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    def stop(self) -> None:
        """Stops serving; stalled responses are released first."""
        self._stopping.set()
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def __enter__(self) -> StripeImitation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forgets all objects, idempotency keys, faults and the request log."""
        with self._lock:
            self._store = _Store()
            self._faults.clear()
            self._garbles.clear()
            self.requests.clear()
            self.refund_mode = "succeeded"

    # --- knobs and counters -------------------------------------------------------------

    def fail_next(
        self, path_prefix: str, status: int = 500, error_type: str = "api_error", *, times: int = 1, code: str = ""
    ) -> None:
        """Answers the next ``times`` requests under ``path_prefix`` with an error and no effect.

        The fault sits in front of the idempotency layer (an edge 503, the rate limiter), so
        nothing is stored and a retry with the same key executes normally.
        """
        with self._lock:
            self._faults.append(_Fault(path_prefix, status, error_type, times, code or None))

    def timeout_after_effect_next(self, path_prefix: str) -> None:
        """The next request under ``path_prefix`` takes effect, then its response stalls.

        The idempotent result is stored before the stall, so a client that timed out and
        retries with the same key gets the replay: the effect happens once.
        """
        with self._lock:
            self._faults.append(_Fault(path_prefix, 0, "", 1, stall=True))

    def garble_next(self, path_prefix: str, garble: Callable[[Obj], Obj | bytes]) -> None:
        """The next answer under ``path_prefix`` passes through ``garble`` on its way out.

        The effect and the stored idempotent answer are untouched (a proxy or a new field
        format mangled one answer): a retry with the same key gets the real one. ``bytes``
        from ``garble`` are sent as the body as they are (not JSON at all).
        """
        with self._lock:
            self._garbles.append((path_prefix, garble))

    def settle_refund(self, refund_id: str, status: str, failure_reason: str = "declined") -> Obj:
        """Moves a pending refund to ``succeeded`` or ``failed`` (returning the money's reservation)."""
        with self._lock:
            refund = self._get("refund", obj_id=refund_id)
            previous = {"status": refund["status"]}
            refund["status"] = status
            if status == "failed":
                refund["failure_reason"] = failure_reason
                self._get("payment_intent", obj_id=refund["payment_intent"])["amount_refunded"] -= refund["amount"]
            self._event("refund.failed" if status == "failed" else "refund.updated", refund, previous)
            return self._public(refund)

    def objects(self, kind: str) -> list[Obj]:
        """Stored objects whose ``object`` is ``kind``, oldest first, as the API would show them."""
        with self._lock:
            return [self._public(o) for o in self._store.objects.values() if o["object"] == kind]

    @property
    def payment_intents_created(self) -> int:
        """How many PaymentIntents exist (replays create none)."""
        return len(self.objects("payment_intent"))

    @property
    def charges_created(self) -> int:
        """How many charges (attempts to move money) were made, failed ones included."""
        return len(self.objects("charge"))

    def requests_to(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        """The logged requests with ``method`` under ``path_prefix``."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    # --- HTTP plumbing ------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
        pairs += parse_qsl((await request.body()).decode(), keep_blank_values=True)
        headers = {k.lower(): v for k, v in request.headers.items()}
        record = RecordedRequest(request.method, request.url.path, parse_form(pairs), headers)
        with self._lock:
            self.requests.append(record)
            record.status, payload, out_headers, stall = self._handle(record)
            garble = next((g for g in self._garbles if request.url.path.startswith(g[0])), None)
            if garble is not None and record.status < 400:
                self._garbles.remove(garble)
                garbled = garble[1](json.loads(payload))
                payload = garbled if isinstance(garbled, bytes) else json.dumps(garbled).encode()
        if stall:  # meant to outlast the client's timeout; stop() releases it
            deadline = time.monotonic() + self.stall_seconds
            while time.monotonic() < deadline and not self._stopping.is_set():
                await asyncio.sleep(0.02)
        out_headers["request-id"] = f"req_{secrets.token_hex(7)}"
        return Response(payload, record.status, headers=out_headers, media_type="application/json")

    def _handle(self, req: RecordedRequest) -> tuple[int, bytes, dict[str, str], bool]:
        given = req.headers.get("authorization", "").removeprefix("Bearer ")
        if given != self.api_key:
            masked = f"{given[:8]}{'*' * max(0, len(given) - 12)}{given[-4:]}" if given else ""
            return 401, _invalid(f"Invalid API Key provided: {masked}", status=401).render(), {}, False
        fault = next((f for f in self._faults if req.path.startswith(f.path_prefix)), None)
        if fault is not None:
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            if not fault.stall:
                error = StripeApiError(fault.status, fault.error_type, f"Injected {fault.status}.", code=fault.code)
                return fault.status, error.render(), {}, False
        key = req.headers.get("idempotency-key")
        writes = req.method in ("POST", "DELETE")
        if writes and not key and self.strict:
            error = _invalid("Idempotency-Key is required (imitation strict mode).", code="idempotency_key_missing")
            return 400, error.render(), {}, False
        fingerprint = hashlib.sha256(json.dumps([req.method, req.path, req.params], sort_keys=True).encode())
        stored = self._store.idempotency.get(key or "") if writes else None
        if stored is not None:
            if stored[0] != fingerprint.hexdigest():
                message = (
                    "Keys for idempotent requests can only be used with the same parameters they were first used "
                    f"with. Try using a key other than '{key}' if you meant to execute a different request."
                )
                return 400, StripeApiError(400, "idempotency_error", message).render(), {}, False
            return stored[1], stored[2], {"idempotent-replayed": "true", "original-request": str(key)}, False
        try:
            status, payload = 200, json.dumps(self._route(req, key)).encode()
        except StripeApiError as exc:
            status, payload = exc.status, exc.render()
        if writes and key:  # Stripe saves any result of a request that reached the endpoint, 4xx/5xx too
            self._store.idempotency[key] = (fingerprint.hexdigest(), status, payload)
        return status, payload, {}, bool(fault and fault.stall)

    def _route(self, req: RecordedRequest, key: str | None) -> Obj:
        segment, obj_id, action = [*req.path.strip("/").split("/")[1:], "", ""][:3]
        if req.method == "GET" and obj_id and not action and segment in _RETRIEVABLE:
            return self._public(self._get(*_RETRIEVABLE[segment], obj_id=obj_id))
        handler = getattr(self, f"_{req.method.lower()}_{segment}", None)
        if handler is None:
            raise _invalid(f"Unrecognized request URL ({req.method}: {req.path}).", status=404)
        result: Obj = handler(obj_id, action, req.params, key)
        return result

    # --- storage helpers ----------------------------------------------------------------

    def _now(self) -> int:
        return int(time.time())

    def _new(self, prefix: str, kind: str, **fields: Any) -> Obj:
        obj_id = f"{prefix}_{secrets.token_hex(12)}"
        obj = {"id": obj_id, "object": kind, "livemode": False, "created": self._now(), **fields}
        obj["_seq"] = next(self._store.seq)
        self._store.objects[obj_id] = obj
        return obj

    def _get(self, kind: str, param: str = "id", *, obj_id: str) -> Obj:
        obj = self._store.objects.get(obj_id)
        if obj is None or obj["object"] != kind:
            raise _invalid(f"No such {kind}: '{obj_id}'", param=param, code="resource_missing", status=404)
        return obj

    def _event(self, type_: str, obj: Obj, previous: Obj | None = None, key: str | None = None) -> None:
        data = {"object": self._public(obj), **({"previous_attributes": previous} if previous else {})}
        request = {"id": None, "idempotency_key": key}
        self._new("evt", "event", type=type_, api_version=API_VERSION, data=data, pending_webhooks=0, request=request)

    def _public(self, obj: Obj) -> Obj:
        """The API's view of a stored object: ``_`` fields dropped, lists and prices embedded."""
        out = {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}
        if out["object"] == "subscription":
            items = [self._public(self._store.objects[i]) for i in obj["_items"]]
            url = f"/v1/subscription_items?subscription={obj['id']}"
            out["items"] = {"object": "list", "data": items, "has_more": False, "total_count": len(items), "url": url}
        elif out["object"] == "subscription_item":
            out["price"] = self._public(self._store.objects[obj["price"]])
        elif out["object"] == "invoice":  # an invoice embeds its first 10 lines
            lines, url = obj["_lines"], f"/v1/invoices/{obj['id']}/lines"
            out["lines"] = {
                "object": "list",
                "data": copy.deepcopy(lines[:10]),
                "has_more": len(lines) > 10,
                "url": url,
            }
        return out

    def _list(self, items: list[Obj], params: Obj, url: str, *, newest_first: bool = True) -> Obj:
        if newest_first:
            items = sorted(items, key=lambda o: o["_seq"], reverse=True)
        if params.get("starting_after"):
            ids = [o["id"] for o in items]
            after = params["starting_after"]
            items = items[ids.index(after) + 1 :] if after in ids else []
        limit = _int(params, "limit", 10)
        data = [self._public(o) for o in items[:limit]]
        return {"object": "list", "data": data, "has_more": len(items) > limit, "url": url}

    @staticmethod
    def _merge_metadata(obj: Obj, p: Obj) -> None:
        """Stripe merges metadata; an empty value unsets a key, an empty ``metadata`` all keys."""
        if "metadata" not in p:
            return
        if p["metadata"] == "":
            obj["metadata"] = {}
            return
        for k, v in p["metadata"].items():
            if v == "":
                obj["metadata"].pop(k, None)
            else:
                obj["metadata"][k] = v

    # --- customers and payment methods ----------------------------------------------------

    def _post_customers(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        if obj_id:
            cus, event = self._get("customer", "customer", obj_id=obj_id), "customer.updated"
        else:
            nulls = dict.fromkeys(("email", "name", "description"))
            invoice_settings = {"default_payment_method": None}
            cus = self._new("cus", "customer", **nulls, metadata={}, invoice_settings=invoice_settings)
            event = "customer.created"
        for name in ("email", "name", "description"):
            if name in p:
                cus[name] = p[name] or None  # an empty string unsets
        self._merge_metadata(cus, p)
        if "invoice_settings" in p:
            cus["invoice_settings"]["default_payment_method"] = p["invoice_settings"].get("default_payment_method")
        self._event(event, cus, key=key)
        return self._public(cus)

    def _payment_method(self, pm_id: str, param: str = "payment_method") -> Obj:
        """Resolves a PaymentMethod id; a test token becomes a fresh ``pm_`` that remembers its behaviour."""
        if pm_id not in TEST_CARDS:
            return self._get("payment_method", param, obj_id=pm_id)
        brand, last4, behaviour = TEST_CARDS[pm_id]
        year = datetime.now(UTC).year + 3
        card = {"brand": brand, "last4": last4, "exp_month": 12, "exp_year": year, "funding": "credit", "country": "US"}
        return self._new(
            "pm", "payment_method", type="card", card=card, customer=None, metadata={}, _behaviour=behaviour
        )

    def _post_payment_methods(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        if action not in ("attach", "detach"):
            raise _invalid(f"Unrecognized request URL (POST: /v1/payment_methods/{obj_id}/{action}).", status=404)
        if action == "attach":
            customer = self._get("customer", "customer", obj_id=p.get("customer", ""))
            pm = self._payment_method(obj_id)
            if pm["customer"] not in (None, customer["id"]):
                message = "The payment method you provided has already been attached to a customer."
                raise _invalid(message, code="payment_method_unexpected_state")
            pm["customer"] = customer["id"]
        else:
            pm = self._get("payment_method", "payment_method", obj_id=obj_id)
            if pm["customer"] is None:
                message = "The payment method you provided is not attached to a customer so detachment is impossible."
                raise _invalid(message, code="payment_method_unexpected_state")
            pm["customer"] = None
        self._event(f"payment_method.{action}ed", pm, key=key)
        return self._public(pm)

    # --- payment intents ------------------------------------------------------------------

    @staticmethod
    def _check_amount(amount: int, currency: str, param: str = "amount") -> None:
        if currency != currency.lower() or len(currency) != 3:
            raise _invalid(f"Invalid currency: {currency}.", param="currency")
        if amount < _MINIMUM.get(currency, 1):
            raise _invalid("Amount must be at least the minimum charge amount.", param=param, code="amount_too_small")
        if currency in _THREE_DECIMAL and amount % 10:
            raise _invalid("Three-decimal currency amounts must end in 0.", param=param, code="invalid_amount")
        if currency == "isk" and amount % 100:
            message = (
                "Invalid amount. Currency ISK has become effectively zero-decimal and charged amounts must be evenly "
                "divisible by 100. See https://stripe.com/docs/currencies#special-cases for more information."
            )
            raise _invalid(message, param=param, code="invalid_charge_amount_no_decimal_compatible")

    def _charge(self, intent_id: str | None, customer: str | None, pm: Obj, amount: int, currency: str) -> Obj:
        """One attempt to move money; ``_behaviour`` is the card's test behaviour."""
        behaviour = pm.get("_behaviour", "ok")
        status = "succeeded" if behaviour == "ok" else "failed"
        return self._new(
            "ch", "charge", amount=amount, currency=currency, payment_intent=intent_id, payment_method=pm["id"],
            customer=customer, captured=False, status=status, amount_refunded=0, _behaviour=behaviour,
        )  # fmt: skip

    def _post_payment_intents(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        if not obj_id:
            return self._create_payment_intent(p, key)
        pi = self._get("payment_intent", "intent", obj_id=obj_id)
        if action == "capture":
            if pi["status"] != "requires_capture":
                raise self._unexpected_state(pi, "capture")
            amount = _int(p, "amount_to_capture", pi["amount_capturable"])
            if amount > pi["amount_capturable"]:
                message = "The amount to capture exceeds the capturable amount."
                raise _invalid(message, param="amount_to_capture", code="amount_too_large")
            pi.update(status="succeeded", amount_received=amount, amount_capturable=0)
            self._store.objects[pi["latest_charge"]].update(captured=True, amount_captured=amount)
            self._event("payment_intent.succeeded", pi, key=key)
        elif action == "cancel":
            if pi["status"] not in _CANCELABLE:
                raise self._unexpected_state(pi, "cancel")
            reason = p.get("cancellation_reason")
            pi.update(status="canceled", amount_capturable=0, canceled_at=self._now(), cancellation_reason=reason)
            self._event("payment_intent.canceled", pi, key=key)
        else:
            raise _invalid(f"Unrecognized request URL (POST: /v1/payment_intents/{obj_id}/{action}).", status=404)
        return self._public(pi)

    @staticmethod
    def _unexpected_state(pi: Obj, verb: str) -> StripeApiError:
        message = f"You cannot {verb} this PaymentIntent because it has a status of {pi['status']}."
        return _invalid(message, code="payment_intent_unexpected_state")

    def _create_payment_intent(self, p: Obj, key: str | None) -> Obj:
        amount, currency = _int(p, "amount"), p.get("currency", "")
        self._check_amount(amount, currency)
        customer = self._get("customer", "customer", obj_id=p["customer"])["id"] if p.get("customer") else None
        confirm, off_session, return_url = _bool(p.get("confirm")), _bool(p.get("off_session")), p.get("return_url")
        if off_session and not confirm:
            raise _invalid("off_session can only be used with confirm=true.", param="off_session")
        # Since API 2023-08-16 automatic payment methods are on unless types are listed; some
        # of them redirect, so a server-side confirm needs a return_url or allow_redirects=never.
        apm = p.get("automatic_payment_methods") or ({} if "payment_method_types" in p else {"enabled": "true"})
        if confirm and _bool(apm.get("enabled")) and apm.get("allow_redirects") != "never" and not return_url:
            message = "A `return_url` must be specified because this Payment Intent may redirect; or set "
            raise _invalid(message + "`automatic_payment_methods[allow_redirects]=never`.", param="return_url")
        pm = self._payment_method(p["payment_method"]) if p.get("payment_method") else None
        if pm is not None and pm["customer"] not in (None, customer):
            raise _invalid("The provided PaymentMethod belongs to another customer.", param="payment_method")
        capture_method = p.get("capture_method", "automatic_async")
        pi = self._new(
            "pi", "payment_intent", amount=amount, currency=currency, customer=customer,
            payment_method=pm["id"] if pm else None, status="requires_payment_method", capture_method=capture_method,
            confirmation_method="automatic", amount_capturable=0, amount_received=0, amount_refunded=0,
            description=p.get("description"), metadata={}, automatic_payment_methods=apm or None,
            **dict.fromkeys(_PI_NULLS),
        )  # fmt: skip
        pi["client_secret"] = f"{pi['id']}_secret_{secrets.token_hex(8)}"
        self._merge_metadata(pi, p)
        self._event("payment_intent.created", pi, key=key)
        if pm is None or not confirm:
            pi["status"] = "requires_confirmation" if pm else "requires_payment_method"
            return self._public(pi)
        if pm.get("_behaviour") == "3ds" and not off_session:
            if return_url:
                url = f"https://hooks.stripe.com/3d_secure_2/hosted?payment_intent={pi['id']}"
                action = {"type": "redirect_to_url", "redirect_to_url": {"url": url, "return_url": return_url}}
            else:
                action = {"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}}
            pi.update(status="requires_action", next_action=action)
            self._event("payment_intent.requires_action", pi, key=key)
            return self._public(pi)
        charge = self._charge(pi["id"], customer, pm, amount, currency)
        pi["latest_charge"] = charge["id"]
        if charge["status"] == "failed":
            # Off-session, nobody can authenticate: Stripe declines with authentication_required.
            error = self._decline(charge, off_session=True)
            pi.update(status="requires_payment_method", last_payment_error=error)
            self._event("payment_intent.payment_failed", pi, key=key)
            details = {"charge": charge["id"], "payment_intent": self._public(pi), "payment_method": self._public(pm)}
            code, decline = error["code"], error["decline_code"]
            raise StripeApiError(402, "card_error", error["message"], code=code, decline_code=decline, **details)
        if capture_method == "manual":
            pi.update(status="requires_capture", amount_capturable=amount)
            self._event("payment_intent.amount_capturable_updated", pi, key=key)
        else:
            charge.update(captured=True, amount_captured=amount)
            pi.update(status="succeeded", amount_received=amount)
            self._event("payment_intent.succeeded", pi, key=key)
        return self._public(pi)

    # --- refunds --------------------------------------------------------------------------

    def _post_refunds(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        if obj_id:
            refund = self._get("refund", "refund", obj_id=obj_id)
            self._merge_metadata(refund, p)
            return self._public(refund)
        pi = self._get("payment_intent", "payment_intent", obj_id=p.get("payment_intent", ""))
        if pi["status"] != "succeeded":
            message = f"This PaymentIntent ({pi['id']}) does not have a successful charge to refund."
            raise _invalid(message, code="charge_not_refundable")
        remaining = pi["amount_received"] - pi["amount_refunded"]
        if remaining <= 0:
            raise _invalid(f"Charge {pi['latest_charge']} has already been refunded.", code="charge_already_refunded")
        amount = _int(p, "amount", remaining)
        if "amount" in p:
            self._check_amount(amount, pi["currency"])
        if amount > remaining:
            message = f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})"
            raise _invalid(message, param="amount", code="amount_too_large")
        reason = p.get("reason")
        if reason not in (None, "duplicate", "fraudulent", "requested_by_customer"):
            raise _invalid(f"Invalid reason: {reason}", param="reason")
        pi["amount_refunded"] += amount
        status = "succeeded" if self.refund_mode == "succeeded" else "pending"
        refund = self._new(
            "re", "refund", amount=amount, currency=pi["currency"], payment_intent=pi["id"], charge=pi["latest_charge"],
            reason=reason, metadata={}, failure_reason=None, status=status,
        )  # fmt: skip
        self._merge_metadata(refund, p)
        self._event("refund.created", refund, key=key)
        return self._public(refund)

    # --- products and prices --------------------------------------------------------------

    def _post_products(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        if obj_id:
            prod = self._get("product", obj_id=obj_id)
        elif not p.get("name"):
            raise _invalid("Missing required param: name.", param="name", code="parameter_missing")
        else:
            prod = self._new("prod", "product", name=None, description=None, active=True, metadata={})
        for name in ("name", "description"):
            if name in p:
                prod[name] = p[name] or None
        if "active" in p:
            prod["active"] = _bool(p["active"])
        self._merge_metadata(prod, p)
        self._event("product.updated" if obj_id else "product.created", prod, key=key)
        return self._public(prod)

    def _post_prices(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        if obj_id:  # Prices are immutable but for these fields.
            for name in set(p) - _PRICE_UPDATABLE:
                raise _invalid(f"Received unknown parameter: {name}", param=name, code="parameter_unknown")
            price = self._get("price", "price", obj_id=obj_id)
            if "active" in p:
                price["active"] = _bool(p["active"])
            self._merge_metadata(price, p)
            self._event("price.updated", price, key=key)
            return self._public(price)
        product = self._get("product", "product", obj_id=p.get("product", ""))
        amount, currency, rec = _int(p, "unit_amount"), p.get("currency", ""), p.get("recurring")
        self._check_amount(amount, currency, "unit_amount")
        if rec and rec.get("interval") not in ("day", "week", "month", "year"):
            raise _invalid("Invalid recurring[interval].", param="recurring[interval]")
        count = _int(rec, "interval_count", 1) if rec else 0
        recurring = {"interval": rec["interval"], "interval_count": count, "usage_type": "licensed"} if rec else None
        price = self._new(
            "price", "price", product=product["id"], unit_amount=amount, unit_amount_decimal=str(amount),
            currency=currency, recurring=recurring, type="recurring" if rec else "one_time", active=True,
            metadata={}, nickname=p.get("nickname"), billing_scheme="per_unit",
        )  # fmt: skip
        self._merge_metadata(price, p)
        self._event("price.created", price, key=key)
        return self._public(price)

    # --- subscriptions and invoices -------------------------------------------------------

    def _invoice(self, sub: Obj, reason: str, lines: list[Obj], start: int, end: int, key: str | None) -> Obj:
        """Creates an invoice and, when something is due and collection is on, charges it."""
        currency, total = sub["currency"], sum(line["amount"] for line in lines)
        for line in lines:
            line.update(object="line_item", currency=currency, period={"start": start, "end": end})
            unit = line["amount"] // max(1, line["quantity"])
            line.setdefault("pricing", {"type": "price_details", "unit_amount_decimal": str(unit)})
            line["parent"]["subscription_item_details"]["subscription"] = sub["id"]
        details = {"subscription": sub["id"], "metadata": dict(sub["metadata"])}
        parent = {"type": "subscription_details", "subscription_details": details}
        inv = self._new(
            "in", "invoice", customer=sub["customer"], currency=currency, status="open", amount_due=max(total, 0),
            amount_paid=0, amount_remaining=max(total, 0), period_start=start, period_end=end, billing_reason=reason,
            collection_method="charge_automatically", attempted=False, attempt_count=0, next_payment_attempt=None,
            parent=parent, _lines=lines, _subscription=sub["id"], _payment_intent=None,
        )  # fmt: skip
        sub["latest_invoice"] = inv["id"]
        self._event("invoice.created", inv, key=key)
        if total <= 0:
            inv["status"] = "paid"
        elif (sub["pause_collection"] or {}).get("behavior") == "void":
            inv["status"] = "void"
        else:
            self._attempt_invoice(inv)
        self._event("invoice.paid" if inv["status"] == "paid" else "invoice.payment_failed", inv, key=key)
        return inv

    def _attempt_invoice(self, inv: Obj) -> None:
        """One off-session payment attempt of an open invoice: the first one, or a retry.

        As at Stripe, every attempt raises ``attempt_count`` and goes through the invoice's one
        PaymentIntent (made at the first attempt, reused by retries, linked by an
        InvoicePayment); a decline leaves its reason in the intent's ``last_payment_error``
        and schedules the next retry (``next_payment_attempt``, three days on, at most
        ``MAX_INVOICE_ATTEMPTS`` attempts). Without a payment method the attempt fails with
        nothing charged. The intent's own ``payment_intent.*`` events are not emitted here.
        """
        sub = self._store.objects[inv["_subscription"]]
        customer = self._store.objects[sub["customer"]]
        pm_id = sub["default_payment_method"] or customer["invoice_settings"]["default_payment_method"]
        pm = self._store.objects.get(pm_id) if pm_id else None
        inv.update(attempted=True, attempt_count=inv["attempt_count"] + 1)
        amount, currency = inv["amount_remaining"], inv["currency"]
        pi = self._store.objects.get(inv["_payment_intent"] or "")
        if pi is None:
            pi = self._new(
                "pi", "payment_intent", amount=amount, currency=currency, customer=customer["id"],
                payment_method=pm_id, status="requires_payment_method", capture_method="automatic",
                confirmation_method="automatic", amount_capturable=0, amount_received=0, amount_refunded=0,
                description="Subscription update", metadata={}, automatic_payment_methods=None,
                **dict.fromkeys(_PI_NULLS),
            )  # fmt: skip
            inv["_payment_intent"] = pi["id"]
            transitions = {"canceled_at": None, "paid_at": None}
            self._new(
                "inpay", "invoice_payment", invoice=inv["id"], amount_requested=amount, amount_paid=None,
                currency=currency, is_default=True, status="open", status_transitions=transitions,
                payment={"type": "payment_intent", "payment_intent": pi["id"]},
            )  # fmt: skip
        if pm is None:
            pi.update(last_payment_error=None)
        else:
            charge = self._charge(pi["id"], customer["id"], pm, amount, currency)
            pi.update(payment_method=pm["id"], latest_charge=charge["id"])
            if charge["status"] == "succeeded":
                charge.update(captured=True, amount_captured=amount)
                pi.update(status="succeeded", amount_received=amount, last_payment_error=None)
                inv.update(status="paid", amount_paid=inv["amount_paid"] + amount, amount_remaining=0)
                inv["next_payment_attempt"] = None
                for payment in self._invoice_payments(inv["id"]):
                    payment.update(status="paid", amount_paid=amount)
                    payment["status_transitions"]["paid_at"] = self._now()
                return
            pi.update(status="requires_payment_method", last_payment_error=self._decline(charge, off_session=True))
        more = inv["attempt_count"] < MAX_INVOICE_ATTEMPTS
        inv["next_payment_attempt"] = self._now() + 3 * 86400 if more else None

    def _invoice_payments(self, invoice_id: str) -> list[Obj]:
        objects = self._store.objects.values()
        return [o for o in objects if o["object"] == "invoice_payment" and o["invoice"] == invoice_id]

    @staticmethod
    def _decline(charge: Obj, *, off_session: bool) -> Obj:
        """The ``last_payment_error`` of a failed charge (off-session, nobody can authenticate)."""
        three_ds = charge["_behaviour"] == "3ds" and off_session
        decline = "authentication_required" if three_ds else charge["_behaviour"].removeprefix("decline:")
        code = "authentication_required" if three_ds else "card_declined"
        message = _DECLINE_MESSAGES[decline]
        return {"type": "card_error", "code": code, "decline_code": decline, "message": message, "charge": charge["id"]}

    @staticmethod
    def _line(description: str, amount: int, quantity: int, item_id: str, *, proration: bool) -> Obj:
        details = {"subscription_item": item_id, "proration": proration, "invoice_item": None}
        parent = {"type": "subscription_item_details", "subscription_item_details": details}
        line_id = f"il_{secrets.token_hex(10)}"
        return {"id": line_id, "amount": amount, "description": description, "quantity": quantity, "parent": parent}

    def _subscribable_price(self, price_id: str, param: str) -> Obj:
        price = self._get("price", param, obj_id=price_id)
        if not price["active"]:
            raise _invalid("The price specified is inactive. This field only accepts active prices.", param=param)
        if price["recurring"] is None:
            raise _invalid("The price specified is set to `type=one_time` but needs `type=recurring`.", param=param)
        return price

    def _create_subscription(self, p: Obj, key: str | None) -> Obj:
        for param in ("customer", "default_payment_method"):
            if p.get(param) == "":
                raise _empty_string(param)
        customer = self._get("customer", "customer", obj_id=p.get("customer", ""))
        end_behavior = ((p.get("trial_settings") or {}).get("end_behavior") or {}).get("missing_payment_method")
        if end_behavior not in (None, "cancel", "create_invoice", "pause"):
            param = "trial_settings[end_behavior][missing_payment_method]"
            raise _invalid(f"Invalid {param}: must be one of cancel, create_invoice, or pause", param=param)
        items = p.get("items") or []
        if not items:
            raise _invalid("Missing required param: items.", param="items", code="parameter_missing")
        prices = [self._subscribable_price(it.get("price", ""), f"items[{i}][price]") for i, it in enumerate(items)]
        pm_id = p.get("default_payment_method") or customer["invoice_settings"]["default_payment_method"]
        if pm_id and self._get("payment_method", "default_payment_method", obj_id=pm_id)["customer"] != customer["id"]:
            message = f"The customer does not have a payment method with the ID {pm_id}."
            raise _invalid(message, param="default_payment_method")
        now, trial_end = self._now(), _int(p, "trial_end", 0)
        if trial_end and trial_end <= now:
            raise _invalid("Invalid timestamp: must be an integer Unix timestamp in the future.", param="trial_end")
        if not trial_end and not pm_id:
            raise _invalid("This customer has no attached payment source or default payment method.")
        recurring = prices[0]["recurring"]
        end = trial_end or add_interval(now, recurring["interval"], recurring["interval_count"])
        sub = self._new(
            "sub", "subscription", customer=customer["id"], status="incomplete", default_payment_method=pm_id,
            cancel_at_period_end=False, billing_cycle_anchor=end if trial_end else now, start_date=now,
            collection_method="charge_automatically", currency=prices[0]["currency"], metadata={},
            trial_settings={"end_behavior": {"missing_payment_method": end_behavior or "create_invoice"}},
            **dict.fromkeys(_SUB_NULLS), _items=[], _period_start=now, _period_end=end,
        )  # fmt: skip
        if trial_end:
            sub.update(trial_start=now, trial_end=trial_end)
        self._merge_metadata(sub, p)
        lines = []
        for it, price in zip(items, prices, strict=True):
            quantity = _int(it, "quantity", 1)
            item = self._new(
                "si", "subscription_item", price=price["id"], quantity=quantity, subscription=sub["id"], metadata={},
                current_period_start=now, current_period_end=end,
            )  # fmt: skip
            sub["_items"].append(item["id"])
            amount = 0 if trial_end else price["unit_amount"] * quantity
            description = f"{quantity} x {price['id']}" + (" (free trial)" if trial_end else "")
            lines.append(self._line(description, amount, quantity, item["id"], proration=False))
        behaviour = p.get("payment_behavior", "allow_incomplete")
        if trial_end or behaviour != "default_incomplete":
            inv = self._invoice(sub, "subscription_create", lines, now, end, key)
            if trial_end or inv["status"] == "paid":
                sub["status"] = "trialing" if trial_end else "active"
            elif behaviour == "error_if_incomplete":
                message = _DECLINE_MESSAGES["generic_decline"]
                raise StripeApiError(402, "card_error", message, code="card_declined", decline_code="generic_decline")
        self._event("customer.subscription.created", sub, key=key)
        return self._public(sub)

    def _post_subscriptions(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        if not obj_id:
            return self._create_subscription(p, key)
        sub = self._get("subscription", "subscription_exposed_id", obj_id=obj_id)
        if action == "resume":
            return self._resume_subscription(sub, p, key)
        if action:
            raise _invalid(f"Unrecognized request URL (POST: /v1/subscriptions/{obj_id}/{action}).", status=404)
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise _invalid("A canceled subscription can only update its cancellation_details and metadata.")
        previous: Obj = {}
        if "cancel_at_period_end" in p:
            previous["cancel_at_period_end"] = sub["cancel_at_period_end"]
            sub["cancel_at_period_end"] = _bool(p["cancel_at_period_end"])
            sub["cancel_at"] = sub["_period_end"] if sub["cancel_at_period_end"] else None
        if "pause_collection" in p:  # "" clears it
            previous["pause_collection"] = sub["pause_collection"]
            pc = p["pause_collection"]
            if pc and pc.get("behavior") not in ("keep_as_draft", "mark_uncollectible", "void"):
                raise _invalid("Invalid pause_collection[behavior].", param="pause_collection[behavior]")
            sub["pause_collection"] = {"behavior": pc["behavior"], "resumes_at": pc.get("resumes_at")} if pc else None
        if "default_payment_method" in p:
            sub["default_payment_method"] = p["default_payment_method"] or None
        self._merge_metadata(sub, p)
        if p.get("items"):
            previous["items"] = self._public(sub)["items"]
            self._change_items(sub, p, key)
        self._event("customer.subscription.updated", sub, previous, key=key)
        return self._public(sub)

    def _new_period(self, sub: Obj, start: int, reason: str, key: str | None) -> Obj:
        """Starts a billing period at ``start`` (anchor reset) and invoices it."""
        items = [self._store.objects[i] for i in sub["_items"]]
        price = self._store.objects[items[0]["price"]]
        end = add_interval(start, price["recurring"]["interval"], price["recurring"]["interval_count"])
        sub.update(_period_start=start, _period_end=end, billing_cycle_anchor=start)
        lines = []
        for item in items:
            item.update(current_period_start=start, current_period_end=end)
            item_price = self._store.objects[item["price"]]
            amount = item_price["unit_amount"] * item["quantity"]
            lines.append(self._line(f"{item['quantity']} x {item_price['id']}", amount, item["quantity"], item["id"],
                                    proration=False))  # fmt: skip
        lines.extend(sub.pop("_pending_prorations", []))
        return self._invoice(sub, reason, lines, start, end, key)

    def end_trial(self, subscription_id: str) -> Obj:
        """The trial ends now (a test clock passing ``trial_end``).

        With a payment method the first period is invoiced and charged. Without one, Stripe
        follows ``trial_settings.end_behavior.missing_payment_method``: ``pause`` sets the
        subscription's own status to ``paused`` (no invoice), ``cancel`` cancels it,
        ``create_invoice`` (the default) leaves an open invoice and the subscription past_due.
        """
        with self._lock:
            sub = self._get("subscription", obj_id=subscription_id)
            if sub["status"] != "trialing":
                raise RuntimeError(f"subscription {subscription_id} is {sub['status']}, not trialing")
            now = self._now()
            previous = {"status": "trialing", "trial_end": sub["trial_end"]}
            sub["trial_end"] = now
            customer = self._store.objects[sub["customer"]]
            has_method = bool(sub["default_payment_method"] or customer["invoice_settings"]["default_payment_method"])
            behavior = sub["trial_settings"]["end_behavior"]["missing_payment_method"]
            if not has_method and behavior == "pause":
                sub.update(status="paused", _period_start=now)
                self._event("customer.subscription.paused", sub, previous)
            elif not has_method and behavior == "cancel":
                sub.update(status="canceled", canceled_at=now, ended_at=now)
                self._event("customer.subscription.deleted", sub, previous)
            else:
                paid = self._new_period(sub, now, "subscription_cycle", None)["status"] == "paid"
                sub["status"] = "active" if paid else "past_due"
                self._event("customer.subscription.updated", sub, previous)
            return self._public(sub)

    def set_card_behaviour(self, payment_method_id: str, behaviour: str) -> None:
        """The card starts behaving as ``behaviour`` (``ok``, ``decline:<code>``, ``3ds``), as a
        card does when its issuer starts declining it (or a customer fixes it)."""
        with self._lock:
            self._get("payment_method", obj_id=payment_method_id)["_behaviour"] = behaviour

    def renew(self, subscription_id: str) -> Obj:
        """The current period ends (a test clock passing ``current_period_end``): the next one
        is invoiced and charged; paid, the subscription stays active, else it goes past_due."""
        with self._lock:
            sub = self._get("subscription", obj_id=subscription_id)
            if sub["status"] not in ("active", "past_due"):
                raise RuntimeError(f"subscription {subscription_id} is {sub['status']}, not renewable")
            previous = {"status": sub["status"], "current_period_start": sub["_period_start"]}
            inv = self._new_period(sub, sub["_period_end"], "subscription_cycle", None)
            sub["status"] = "active" if inv["status"] == "paid" else "past_due"
            self._event("customer.subscription.updated", sub, previous)
            return self._public(inv)

    def retry_invoice(self, invoice_id: str) -> Obj:
        """Stripe's next automatic retry of an open invoice (``next_payment_attempt`` reached)."""
        with self._lock:
            inv = self._get("invoice", obj_id=invoice_id)
            if inv["status"] != "open" or inv["next_payment_attempt"] is None:
                raise RuntimeError(f"invoice {invoice_id} has no retry scheduled")
            self._attempt_invoice(inv)
            self._event("invoice.paid" if inv["status"] == "paid" else "invoice.payment_failed", inv)
            sub = self._store.objects[inv["_subscription"]]
            if inv["status"] == "paid" and sub["status"] == "past_due" and sub["latest_invoice"] == inv["id"]:
                sub["status"] = "active"
                self._event("customer.subscription.updated", sub, {"status": "past_due"})
            return self._public(inv)

    def _resume_subscription(self, sub: Obj, p: Obj, key: str | None) -> Obj:
        """``POST /v1/subscriptions/{id}/resume``: only for Stripe's own ``paused`` status.

        The billing cycle anchor resets to now (the default) and the new period is invoiced:
        paid, the subscription is active; not paid, past_due (``resume_on_payment_attempt``).
        """
        if sub["status"] != "paused":
            raise _invalid(f"Only paused subscriptions can be resumed; this subscription is {sub['status']}.")
        anchor = p.get("billing_cycle_anchor", "now")
        anchor = anchor.get("type", "now") if isinstance(anchor, dict) else anchor
        if anchor not in ("now", "unchanged"):
            raise _invalid(f"Invalid billing_cycle_anchor: {anchor}", param="billing_cycle_anchor")
        paid = self._new_period(sub, self._now(), "subscription_update", key)["status"] == "paid"
        sub["status"] = "active" if paid else "past_due"
        self._event("customer.subscription.resumed", sub, {"status": "paused"}, key=key)
        return self._public(sub)

    def _change_items(self, sub: Obj, p: Obj, key: str | None) -> None:
        """Applies item changes with simple time-based prorations for the rest of the period."""
        behaviour = p.get("proration_behavior", "create_prorations")
        if behaviour not in ("create_prorations", "none", "always_invoice"):
            raise _invalid(f"Invalid proration_behavior: {behaviour}", param="proration_behavior")
        sub.setdefault("_proration_behaviors", []).append(behaviour)
        now, start, end = self._now(), sub["_period_start"], sub["_period_end"]
        fraction = max(0.0, (end - now) / max(1, end - start))
        lines = []
        for i, change in enumerate(p["items"]):
            item = self._get("subscription_item", f"items[{i}][id]", obj_id=change.get("id", ""))
            old_price, old_quantity = self._store.objects[item["price"]], item["quantity"]
            if change.get("price"):
                item["price"] = self._subscribable_price(change["price"], f"items[{i}][price]")["id"]
            item["quantity"] = quantity = _int(change, "quantity", old_quantity)
            new_price = self._store.objects[item["price"]]
            unused = -round(old_price["unit_amount"] * old_quantity * fraction)
            remaining = round(new_price["unit_amount"] * quantity * fraction)
            old_text, new_text = f"{old_quantity} x {old_price['id']}", f"{quantity} x {new_price['id']}"
            lines.append(self._line(f"Unused time on {old_text}", unused, old_quantity, item["id"], proration=True))
            lines.append(self._line(f"Remaining time on {new_text}", remaining, quantity, item["id"], proration=True))
        if behaviour == "create_prorations":  # pending invoice items for the next invoice
            sub.setdefault("_pending_prorations", []).extend(lines)
        elif behaviour == "always_invoice":
            self._invoice(sub, "subscription_update", lines, now, end, key)

    def _delete_subscriptions(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        sub = self._get("subscription", "subscription_exposed_id", obj_id=obj_id)
        if sub["status"] == "canceled":
            raise _invalid(f"No such subscription: '{obj_id}'", code="resource_missing", status=404)
        sub.update(status="canceled", canceled_at=self._now(), ended_at=self._now())
        self._event("customer.subscription.deleted", sub, key=key)
        return self._public(sub)

    def _get_invoices(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        if obj_id:  # /v1/invoices/{id}/lines
            lines = self._get("invoice", "invoice", obj_id=obj_id)["_lines"]
            return self._list(lines, p, f"/v1/invoices/{obj_id}/lines", newest_first=False)
        invoices = [o for o in self._store.objects.values() if o["object"] == "invoice"]
        if p.get("subscription"):
            invoices = [i for i in invoices if i["parent"]["subscription_details"]["subscription"] == p["subscription"]]
        if p.get("customer"):
            invoices = [i for i in invoices if i["customer"] == p["customer"]]
        return self._list(invoices, p, "/v1/invoices")

    def _get_invoice_payments(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        """GET /v1/invoice_payments: newest first, by ``invoice``; expands ``data.payment.payment_intent``."""
        if obj_id:
            return self._public(self._get("invoice_payment", "invoice_payment", obj_id=obj_id))
        payments = [o for o in self._store.objects.values() if o["object"] == "invoice_payment"]
        if p.get("invoice"):
            payments = [o for o in payments if o["invoice"] == p["invoice"]]
        page = self._list(payments, p, "/v1/invoice_payments")
        for expand in p.get("expand") or []:
            if expand != "data.payment.payment_intent":
                raise _invalid(f"This property cannot be expanded ({expand}).", param="expand")
            for payment in page["data"]:
                intent = payment["payment"]["payment_intent"]
                payment["payment"]["payment_intent"] = self._public(self._store.objects[intent])
        return page

    @staticmethod
    def _created_in(items: list[Obj], p: Obj) -> list[Obj]:
        """Stripe's ``created`` filter: an exact timestamp or a ``gt``/``gte``/``lt``/``lte`` range."""
        created = p.get("created")
        if created is None:
            return items
        if not isinstance(created, dict):
            return [o for o in items if o["created"] == int(created)]
        bounds = {op: int(v) for op, v in created.items() if op in ("gt", "gte", "lt", "lte")}
        checks = {
            "gt": lambda c, b: c > b, "gte": lambda c, b: c >= b, "lt": lambda c, b: c < b, "lte": lambda c, b: c <= b,
        }  # fmt: skip
        return [o for o in items if all(checks[op](o["created"], b) for op, b in bounds.items())]

    def _get_payment_intents(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        """GET /v1/payment_intents: list, newest first, by ``customer`` and ``created``."""
        intents = [o for o in self._store.objects.values() if o["object"] == "payment_intent"]
        if p.get("customer"):
            intents = [i for i in intents if i["customer"] == p["customer"]]
        return self._list(self._created_in(intents, p), p, "/v1/payment_intents")

    def _get_subscriptions(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        """GET /v1/subscriptions: list, newest first, by ``customer``, ``status`` and ``created``.

        As at Stripe, without ``status`` canceled subscriptions are left out; ``all`` lists
        every status.
        """
        subs = [o for o in self._store.objects.values() if o["object"] == "subscription"]
        if p.get("customer"):
            subs = [s for s in subs if s["customer"] == p["customer"]]
        status = p.get("status")
        if status is None:
            subs = [s for s in subs if s["status"] != "canceled"]
        elif status != "all":
            subs = [s for s in subs if s["status"] == status]
        return self._list(self._created_in(subs, p), p, "/v1/subscriptions")

    def _get_refunds(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        """GET /v1/refunds: list, newest first, by ``payment_intent`` or ``charge``."""
        refunds = [o for o in self._store.objects.values() if o["object"] == "refund"]
        if p.get("payment_intent"):
            refunds = [r for r in refunds if r["payment_intent"] == p["payment_intent"]]
        if p.get("charge"):
            refunds = [r for r in refunds if r["charge"] == p["charge"]]
        return self._list(self._created_in(refunds, p), p, "/v1/refunds")

    def _get_events(self, obj_id: str, action: str, p: Obj, key: str | None) -> Obj:
        events = [o for o in self._store.objects.values() if o["object"] == "event"]
        types = p.get("types") or ([p["type"]] if p.get("type") else None)
        if types:
            events = [e for e in events if e["type"] in types]
        return self._list(self._created_in(events, p), p, "/v1/events")
