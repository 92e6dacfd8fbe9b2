"""PayPal's customers, payment methods, payments and refunds (Vault v3, Orders v2, Payments v2).

* No customer object: ``create_customer`` derives a Vault ``customer.id`` from our id
  (no I/O); ``update_customer`` is a no-op.
* No order cancel: cancelling an order the buyer has not paid marks it canceled in its
  ``custom_id`` (PATCH) so the adapter never completes it later, and lets PayPal expire it.
* Approved orders wait for the merchant: ``create_payment`` (vaulted methods) and
  ``get_payment`` complete an APPROVED order (capture or authorize) under one request id
  derived from the order id, so whoever completes it, and however often, money is taken
  once; "already captured/authorized" means someone did, and the order is read instead.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial

from billing_service.adapters.processors.paypal import mapping, wire
from billing_service.adapters.processors.paypal.client import REPRESENTATION, PayPalConnection, read_answer
from billing_service.adapters.processors.paypal.wire import Json
from billing_service.domain.customers import Customer
from billing_service.domain.errors import FailedPrecondition, PaymentDeclined, ProcessorError
from billing_service.domain.money import Money
from billing_service.domain.payments import (
    CaptureMethod,
    PaymentStatus,
    ProcessorPaymentState,
    ProcessorRefundState,
    RefundReason,
)
from billing_service.service_layer.ports import AttachedPaymentMethod, PaymentRequest, RefundRequest

log = logging.getLogger(__name__)

_NOTE_TO_PAYER = {
    RefundReason.DUPLICATE: "Refund of a duplicate charge",
    RefundReason.FRAUDULENT: "Refund of a fraudulent charge",
    RefundReason.REQUESTED_BY_CUSTOMER: "Refund requested by you",
}
_ALREADY_COMPLETED = frozenset({"ORDER_ALREADY_CAPTURED", "ORDER_ALREADY_AUTHORIZED"})


def paypal_customer_id(customer_id: str) -> str:
    """A stable Vault ``customer.id`` for our customer (PayPal allows 22 characters)."""
    return hashlib.sha256(customer_id.encode()).hexdigest()[:22]


def order_state(order: Json) -> ProcessorPaymentState:
    """An order in our terms, read through the parse guard."""
    return read_answer("an order", mapping.payment_state, order, ids={"processor_payment_id": wire.text_id(order)})


class PayPalPayments(PayPalConnection):
    """The payment verbs of ``PayPalPaymentProcessor``."""

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
        request: Json = {"payment_source": {"token": {"id": token, "type": "SETUP_TOKEN"}}}
        if processor_customer_id:
            request["customer"] = {"id": processor_customer_id}
        vault = self._client.vault
        created = await self._json(
            "vault.create_payment_token",
            lambda: vault.create_payment_token({"body": request, "paypal_request_id": idempotency_key}),
        )
        attached = read_answer(
            "a payment token", mapping.attached_method, created, ids={"processor_id": wire.text_id(created)}
        )
        self._token_kinds[attached.processor_id] = mapping.token_source_kind(created)
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
            kind = self._token_kinds[token_id] = mapping.token_source_kind(token)
        return kind

    # ------------------------------------------------------------------ payments

    async def _complete(self, order: Json) -> Json:
        """Captures or authorizes an APPROVED order (PayPal waits for the merchant to do so).

        One ``PayPal-Request-Id`` per order, whoever completes it (the create that made it, a
        webhook's re-read, reconciliation): a second completion is PayPal's replay of the
        first, never a second capture. An order that someone else already completed under
        another key (``ORDER_ALREADY_CAPTURED``/``_AUTHORIZED``) is not a failure: the
        order is read again and its truth returned.
        """
        order_id = read_answer("an order", wire.required_id, order)
        orders = self._client.orders
        options = {"id": order_id, "paypal_request_id": f"{order_id}:complete", "prefer": REPRESENTATION}
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
        unit: Json = {
            "reference_id": "default",
            "custom_id": request.payment_id[:127],
            "amount": wire.paypal_amount(request.amount),
        }
        if request.description:
            unit["description"] = request.description[:127]
        order_request: Json = {
            "intent": "CAPTURE" if request.capture_method is CaptureMethod.AUTOMATIC else "AUTHORIZE",
            "purchase_units": [unit],
        }
        vault_id = request.processor_payment_method_id
        if vault_id:
            kind = await self._token_kind(vault_id)
            source: Json = {"vault_id": vault_id}
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
                {"body": order_request, "paypal_request_id": idempotency_key, "prefer": REPRESENTATION}
            ),
        )
        if vault_id and order.get("status") == "APPROVED":
            try:
                order = await self._complete(order)
            except ProcessorError as err:
                if err.retryable:  # the order exists: name it, so our record can keep it
                    err.metadata.setdefault("processor_payment_id", wire.text_id(order))
                raise
        state = order_state(order)
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
        unit, _, _ = read_answer("an order", mapping.purchase_payments, order, ids=ids)
        canceled = mapping.is_canceled(str(unit.get("custom_id", "")))
        if order.get("status") == "APPROVED" and not canceled:
            order = await self._complete(order)
        if canceled and order.get("status") != "COMPLETED":
            return ProcessorPaymentState(processor_payment_id, PaymentStatus.CANCELED)
        return order_state(order)

    async def capture_payment(
        self, processor_payment_id: str, amount: Money, *, idempotency_key: str
    ) -> ProcessorPaymentState:
        """Captures (part of) the authorization as the final capture; PayPal releases the rest."""
        value = wire.paypal_amount(amount)
        order = await self._get_order(processor_payment_id)
        ids = {"processor_payment_id": processor_payment_id}
        auth = read_answer("an order", mapping.open_authorization, order, ids=ids)
        if auth is None:
            state = order_state(order)
            if state.status is PaymentStatus.SUCCEEDED:
                return state  # a retry after the capture already happened
            raise FailedPrecondition(
                f"PayPal order {processor_payment_id} has no open authorization",
                reason="PAYMENT_NOT_CAPTURABLE",
                metadata={"processor": "paypal", "processor_payment_id": processor_payment_id},
            )
        payments = self._client.payments
        options = {
            "authorization_id": read_answer("an authorization", wire.required_id, auth, ids=ids),
            "paypal_request_id": idempotency_key,
            "prefer": REPRESENTATION,
            "body": {"amount": value, "final_capture": True},
        }
        await self._call("payments.capture_authorization", lambda: payments.capture_authorized_payment(options))
        return order_state(await self._get_order(processor_payment_id))

    async def cancel_payment(self, processor_payment_id: str, *, idempotency_key: str) -> ProcessorPaymentState:
        """Voids the authorization, or marks an unpaid order canceled (PayPal cannot cancel orders)."""
        order = await self._get_order(processor_payment_id)
        ids = {"processor_payment_id": processor_payment_id}
        status = order.get("status")
        if status in ("CREATED", "PAYER_ACTION_REQUIRED", "APPROVED", "SAVED"):
            unit, _, _ = read_answer("an order", mapping.purchase_payments, order, ids=ids)
            custom_id = str(unit.get("custom_id", ""))
            if not mapping.is_canceled(custom_id):
                patch = [
                    {
                        "op": "replace",
                        "path": "/purchase_units/@reference_id=='default'/custom_id",
                        "value": mapping.canceled_custom_id(custom_id),
                    }
                ]
                orders = self._client.orders
                await self._call(
                    "orders.patch", lambda: orders.patch_order({"id": processor_payment_id, "body": patch})
                )
            return ProcessorPaymentState(processor_payment_id, PaymentStatus.CANCELED)
        auth = read_answer("an order", mapping.open_authorization, order, ids=ids)
        if auth is not None:
            payments = self._client.payments
            options = {
                "authorization_id": read_answer("an authorization", wire.required_id, auth, ids=ids),
                "paypal_request_id": idempotency_key,
                "prefer": REPRESENTATION,
            }
            await self._call("payments.void", lambda: payments.void_payment(options))
            order = await self._get_order(processor_payment_id)
        return order_state(order)

    # ------------------------------------------------------------------ refunds

    async def create_refund(self, request: RefundRequest, *, idempotency_key: str) -> ProcessorRefundState:
        """Refunds (part of) the order's capture."""
        refund_request: Json = {"amount": wire.paypal_amount(request.amount), "custom_id": request.refund_id[:127]}
        note = _NOTE_TO_PAYER.get(request.reason)
        if note:
            refund_request["note_to_payer"] = note
        order = await self._get_order(request.processor_payment_id)
        ids = {"processor_payment_id": request.processor_payment_id}
        capture = read_answer("an order", mapping.first_capture, order, ids=ids)
        if capture is None:
            raise FailedPrecondition(
                f"PayPal order {request.processor_payment_id} has no capture to refund",
                reason="PAYMENT_NOT_REFUNDABLE",
                metadata={"processor": "paypal", "processor_payment_id": request.processor_payment_id},
            )
        payments = self._client.payments
        options = {
            "capture_id": read_answer("a capture", wire.required_id, capture, ids=ids),
            "paypal_request_id": idempotency_key,
            "prefer": REPRESENTATION,
            "body": refund_request,
        }
        refund = await self._json("payments.refund_capture", lambda: payments.refund_captured_payment(options))
        return read_answer(
            "a refund",
            partial(
                mapping.refund_state,
                processor_payment_id=request.processor_payment_id,
                payment_custom_id=str(capture.get("custom_id") or ""),
            ),
            refund,
            ids={**ids, "processor_refund_id": wire.text_id(refund)},
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
        capture_id = read_answer(
            "a refund", lambda r: mapping.resource_id(wire.link(r, "up"), "captures"), refund, ids=ids
        )
        if not capture_id:
            return read_answer("a refund", mapping.refund_state, refund, ids=ids)
        capture = await self._json(
            "payments.get_capture", lambda: payments.get_captured_payment({"capture_id": capture_id})
        )
        order_id = read_answer("a capture", mapping.related_order_id, capture, ids=ids)
        authorization_id = read_answer(
            "a capture", lambda c: mapping.resource_id(wire.link(c, "up"), "authorizations"), capture
        )
        if not order_id and authorization_id:
            authorization = await self._json(
                "payments.get_authorization",
                lambda: payments.get_authorized_payment({"authorization_id": authorization_id}),
            )
            order_id = read_answer("an authorization", mapping.related_order_id, authorization, ids=ids)
        custom_id = str(capture.get("custom_id") or "")
        read = partial(mapping.refund_state, processor_payment_id=order_id, payment_custom_id=custom_id)
        return read_answer("a refund", read, refund, ids={**ids, "processor_payment_id": order_id})
