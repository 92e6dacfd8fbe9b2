// Package smoke runs the payment flow of clients/go/README.md against a live
// server: the Go client's smoke test. tests/clients/test_client_smoke.py starts
// `billing-service serve` (embedded store, fake processor) and runs it in GOPATH
// mode on Debian's Go packages, with BILLING_TARGET=host:port; without that
// variable the test is skipped. It lives outside the client's module so that
// module needs nothing but grpc and protobuf.
package smoke

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	billingv1 "billing/clients/go/billing/v1"
)

// newRequestID returns a random UUID (version 4): one idempotency key per
// logical operation, kept across retries.
func newRequestID(t *testing.T) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// errorInfo returns the google.rpc.ErrorInfo of a failed call, or nil.
func errorInfo(err error) *errdetails.ErrorInfo {
	for _, detail := range status.Convert(err).Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

func TestPaymentFlow(t *testing.T) {
	target := os.Getenv("BILLING_TARGET")
	if target == "" {
		t.Skip("BILLING_TARGET is not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// grpc-go 1.33 (Debian bookworm) predates grpc.NewClient and the insecure
	// credentials package; newer callers use those (see ../README.md).
	conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	defer conn.Close()
	billing := billingv1.NewBillingServiceClient(conn)

	created, err := billing.CreateCustomer(ctx, &billingv1.CreateCustomerRequest{
		RequestId: newRequestID(t), Email: "ada@example.com", Name: "Ada",
	})
	if err != nil {
		t.Fatalf("CreateCustomer: %v", err)
	}
	customer := created.GetCustomer()
	if !strings.HasPrefix(customer.GetId(), "cus_") {
		t.Fatalf("customer id %q", customer.GetId())
	}

	attached, err := billing.AttachPaymentMethod(ctx, &billingv1.AttachPaymentMethodRequest{
		RequestId: newRequestID(t), CustomerId: customer.GetId(), ProcessorToken: "pm_card_visa",
	})
	if err != nil {
		t.Fatalf("AttachPaymentMethod: %v", err)
	}

	request := &billingv1.CreatePaymentRequest{
		RequestId:       newRequestID(t),
		CustomerId:      customer.GetId(),
		PaymentMethodId: attached.GetPaymentMethod().GetId(),
		Amount:          &billingv1.Money{AmountMinor: 2500, Currency: "EUR"}, // 25.00 EUR in minor units
		Description:     "smoke test",
	}
	paid, err := billing.CreatePayment(ctx, request)
	if err != nil {
		t.Fatalf("CreatePayment: %v", err)
	}
	payment := paid.GetPayment()
	if payment.GetStatus() != billingv1.PaymentStatus_PAYMENT_STATUS_SUCCEEDED {
		t.Fatalf("payment status %v", payment.GetStatus())
	}

	// The same request_id again (a retry after a timeout, say) returns the first result.
	again, err := billing.CreatePayment(ctx, request)
	if err != nil || again.GetPayment().GetId() != payment.GetId() {
		t.Fatalf("retry with the same request_id: %v, %v", again.GetPayment().GetId(), err)
	}

	refunded, err := billing.CreateRefund(ctx, &billingv1.CreateRefundRequest{
		RequestId: newRequestID(t), PaymentId: payment.GetId(),
		Amount: &billingv1.Money{AmountMinor: 500, Currency: "EUR"},
	})
	if err != nil {
		t.Fatalf("CreateRefund: %v", err)
	}
	if refunded.GetRefund().GetStatus() != billingv1.RefundStatus_REFUND_STATUS_SUCCEEDED {
		t.Fatalf("refund status %v", refunded.GetRefund().GetStatus())
	}

	read, err := billing.GetPayment(ctx, &billingv1.GetPaymentRequest{PaymentId: payment.GetId()})
	if err != nil {
		t.Fatalf("GetPayment: %v", err)
	}
	if want := (&billingv1.Money{AmountMinor: 500, Currency: "EUR"}); !proto.Equal(read.GetPayment().GetAmountRefunded(), want) {
		t.Fatalf("amount refunded %v, want %v", read.GetPayment().GetAmountRefunded(), want)
	}

	// The same request_id with a different amount is refused, and nothing is charged.
	reused := proto.Clone(request).(*billingv1.CreatePaymentRequest)
	reused.Amount.AmountMinor = 9999
	_, err = billing.CreatePayment(ctx, reused)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("reused request_id: got %v, want InvalidArgument", err)
	}
	info := errorInfo(err)
	if info.GetDomain() != "billing.v1" || info.GetReason() != "IDEMPOTENCY_KEY_REUSED" {
		t.Fatalf("ErrorInfo %v", info)
	}
	t.Logf("payment flow ok: %s refunded 5.00 EUR of 25.00 EUR", payment.GetId())
}
