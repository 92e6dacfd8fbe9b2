// The generated Go client for billing.v1: package billingv1 in ./billing/v1,
// written by `make gen`. The module path is local; see README.md.
module billing/clients/go

go 1.19

// The releases the generated code is built and tested with (Debian bookworm's
// packages); newer releases work too (see README.md).
require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
