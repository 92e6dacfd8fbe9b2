"""The gRPC API: servicers, conversions and the one error mapping table."""
