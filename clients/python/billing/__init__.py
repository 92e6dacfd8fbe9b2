"""Generated gRPC client for the billing service (package billing.v1)."""
