"""``billing-service serve`` restarted on the same store with the fake processor (issue 11, item 7).

Before: the fake's counters restarted at 1, so a new customer got ``cus_fake_1`` again, a
charge on an old customer's card went to the new customer's card, and old customers'
payments failed for good. Now the fake keeps its state in the store like a processor.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from billing.v1 import billing_service_pb2 as pb
from billing.v1 import billing_service_pb2_grpc

from tests.e2e.test_server_process import ServeProcess
from tests.helpers import rid, usd

pytestmark = pytest.mark.slow


async def _customer_with_card(target: str) -> tuple[pb.Customer, pb.PaymentMethod]:
    async with grpc.aio.insecure_channel(target) as channel:
        b = billing_service_pb2_grpc.BillingServiceStub(channel)
        customer = (await b.CreateCustomer(pb.CreateCustomerRequest(request_id=rid()), timeout=10)).customer
        method = (
            await b.AttachPaymentMethod(
                pb.AttachPaymentMethodRequest(
                    request_id=rid(), customer_id=customer.id, processor_token="pm_card_visa"
                ),
                timeout=10,
            )
        ).payment_method
        customer = (await b.GetCustomer(pb.GetCustomerRequest(customer_id=customer.id), timeout=10)).customer
        return customer, method


async def _pay(target: str, customer: pb.Customer, method: pb.PaymentMethod) -> pb.Payment:
    async with grpc.aio.insecure_channel(target) as channel:
        b = billing_service_pb2_grpc.BillingServiceStub(channel)
        request = pb.CreatePaymentRequest(
            request_id=rid(), customer_id=customer.id, payment_method_id=method.id, amount=usd(1200)
        )
        return (await b.CreatePayment(request, timeout=10)).payment


async def test_a_restarted_fake_neither_reuses_ids_nor_forgets_customers(mongo_uri: str) -> None:
    database = f"restart_{uuid.uuid4().hex}"
    first = await asyncio.to_thread(ServeProcess, mongo_uri, BILLING_MONGODB_DATABASE=database)
    try:
        old_customer, old_card = await _customer_with_card(first.target)
        assert (await _pay(first.target, old_customer, old_card)).status == pb.PAYMENT_STATUS_SUCCEEDED
    finally:
        assert await asyncio.to_thread(first.stop) == 0
    second = await asyncio.to_thread(ServeProcess, mongo_uri, BILLING_MONGODB_DATABASE=database)
    try:
        new_customer, new_card = await _customer_with_card(second.target)
        old_refs = {r.id for r in old_customer.processor_refs}
        new_refs = {r.id for r in new_customer.processor_refs}
        assert old_refs and new_refs and not old_refs & new_refs
        assert new_card.processor_id != old_card.processor_id
        again = await _pay(second.target, old_customer, old_card)
        assert again.status == pb.PAYMENT_STATUS_SUCCEEDED
    finally:
        assert await asyncio.to_thread(second.stop) == 0
