"""Finding what we created at PayPal by our own id, when its create's answer was lost.

No order search: ``find_payment`` goes through the Transaction Search API, which lists
captures and authorizations (never an order nobody paid) and lags: PayPal says up to
three hours. Absence is proven only once its data is refreshed past the moment no create
can still reach PayPal; before that the answer is UNKNOWN. The app needs the Transaction
Search permission. ``find_refund`` reads the order, whose payments list its refunds with
our ``custom_id``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

from billing_service.adapters.processors.paypal import mapping, wire
from billing_service.adapters.processors.paypal.client import PayPalConnection, read_answer
from billing_service.adapters.processors.paypal.payments import order_state
from billing_service.domain.errors import ProcessorError
from billing_service.domain.payments import PaymentStatus, ProcessorPaymentState
from billing_service.service_layer.ports import (
    LookupOutcome,
    PaymentLookup,
    PaymentLookupResult,
    RefundLookup,
    RefundLookupResult,
)

# Transaction Search: its documented maximum lag, the widest range one call may cover, and
# how far our clock and PayPal's may disagree.
_SEARCH_LAG = timedelta(hours=3)
_SEARCH_MAX_RANGE = timedelta(days=31)
_CLOCK_SLACK = timedelta(minutes=10)
_SEARCH_PAGE = 500


class PayPalLookups(PayPalConnection):
    """The lookup verbs of ``PayPalPaymentProcessor``."""

    async def find_payment(self, lookup: PaymentLookup) -> PaymentLookupResult:
        """Finds the order created for our payment id through Transaction Search (see the module docstring)."""
        start = lookup.created_at - _CLOCK_SLACK
        end = min(lookup.quiet_since + _CLOCK_SLACK, start + _SEARCH_MAX_RANGE, datetime.now(UTC))
        value = wire.paypal_value(lookup.amount).replace(".", "")  # "lower denominations", e.g. 10.05 -> 1005
        wanted = {lookup.payment_id[: mapping.CUSTOM_ID_MAX], mapping.canceled_custom_id(lookup.payment_id)}
        search = self._client.transaction_search
        page, refreshed = 1, None
        while True:
            options = {
                "start_date": wire.iso_time(start), "end_date": wire.iso_time(end),
                "transaction_currency": lookup.amount.currency, "transaction_amount": f"[{value} TO {value}]",
                "fields": "transaction_info", "balance_affecting_records_only": "N",
                "page_size": _SEARCH_PAGE, "page": page,
            }  # fmt: skip
            listed = await self._json("transactions.search", partial(search.search_transactions, options))
            refreshed = wire.parse_time(listed.get("last_refreshed_datetime")) or refreshed
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
        unit, _, _ = mapping.purchase_payments(order)
        if mapping.is_canceled(str(unit.get("custom_id", ""))) and order.get("status") != "COMPLETED":
            return PaymentLookupResult(LookupOutcome.FOUND, ProcessorPaymentState(order_id, PaymentStatus.CANCELED))
        return PaymentLookupResult(LookupOutcome.FOUND, order_state(order))

    async def find_refund(self, lookup: RefundLookup) -> RefundLookupResult:
        """Reads the order and matches our refund id in its refunds' ``custom_id``."""
        if not lookup.processor_payment_id:
            return RefundLookupResult(LookupOutcome.ABSENT)
        order = await self._get_order(lookup.processor_payment_id)
        for unit in order.get("purchase_units") or []:
            for refund in (unit.get("payments") or {}).get("refunds") or []:
                if str(refund.get("custom_id", "")) == lookup.refund_id[:127]:
                    read = partial(mapping.refund_state, processor_payment_id=lookup.processor_payment_id)
                    state = read_answer(
                        "a refund", read, refund, ids={"processor_payment_id": lookup.processor_payment_id}
                    )
                    return RefundLookupResult(LookupOutcome.FOUND, replace(state, refund_id=lookup.refund_id))
        return RefundLookupResult(LookupOutcome.ABSENT)
