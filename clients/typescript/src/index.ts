// Entry point of @billing/client: the generated billing.v1 schemas and service
// descriptors (src/gen, written by `make gen`; never edit them by hand), the
// google.rpc error details the API attaches to errors, and one helper to read
// them.
export * from "./gen/billing/v1/common_pb.js";
export * from "./gen/billing/v1/billing_service_pb.js";
export * from "./gen/billing/v1/subscription_service_pb.js";
export * from "./gen/billing/v1/billing_event_pb.js";
export * from "./gen/billing/v1/event_service_pb.js";
export {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
  type BadRequest,
  type BadRequest_FieldViolation,
  type ErrorInfo,
  type RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";
export { billingError, type BillingError } from "./errors.js";
