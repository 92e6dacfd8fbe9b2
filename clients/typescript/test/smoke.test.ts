// The README's payment flow against a live server: the TypeScript client's
// smoke test. tests/clients starts `billing-service serve` (embedded store,
// fake processor) and runs this with BILLING_TARGET=host:port.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { BillingService, PaymentStatus, RefundStatus, billingError } from "../src/index.js";

const target = process.env.BILLING_TARGET;

test("payment flow over gRPC (HTTP/2)", { skip: target ? false : "BILLING_TARGET is not set" }, async () => {
  const transport = createGrpcTransport({ baseUrl: `http://${target}`, defaultTimeoutMs: 10_000 });
  const billing = createClient(BillingService, transport);

  const { customer } = await billing.createCustomer({
    requestId: randomUUID(),
    email: "ada@example.com",
    name: "Ada",
  });
  assert.ok(customer, "CreateCustomer returned no customer");
  assert.match(customer.id, /^cus_/);

  const { paymentMethod } = await billing.attachPaymentMethod({
    requestId: randomUUID(),
    customerId: customer.id,
    processorToken: "pm_card_visa",
  });
  assert.ok(paymentMethod, "AttachPaymentMethod returned no payment method");

  const request = {
    requestId: randomUUID(),
    customerId: customer.id,
    paymentMethodId: paymentMethod.id,
    amount: { amountMinor: 2500n, currency: "EUR" }, // 25.00 EUR in minor units
    description: "smoke test",
  };
  const { payment } = await billing.createPayment(request);
  assert.ok(payment, "CreatePayment returned no payment");
  assert.equal(payment.status, PaymentStatus.SUCCEEDED);

  // The same request_id again (a retry after a timeout, say) returns the first result.
  const { payment: again } = await billing.createPayment(request);
  assert.equal(again?.id, payment.id);

  const { refund } = await billing.createRefund({
    requestId: randomUUID(),
    paymentId: payment.id,
    amount: { amountMinor: 500n, currency: "EUR" },
  });
  assert.equal(refund?.status, RefundStatus.SUCCEEDED);

  const { payment: read } = await billing.getPayment({ paymentId: payment.id });
  assert.equal(read?.amountRefunded?.amountMinor, 500n);
  assert.equal(read?.amountRefunded?.currency, "EUR");

  // The same request_id with a different amount is refused, and nothing is charged.
  await assert.rejects(
    billing.createPayment({ ...request, amount: { amountMinor: 9999n, currency: "EUR" } }),
    (err: unknown) => {
      const e = billingError(err);
      assert.equal(e.code, Code.InvalidArgument);
      assert.equal(e.domain, "billing.v1");
      assert.equal(e.reason, "IDEMPOTENCY_KEY_REUSED");
      return true;
    },
  );
});
