// Reading the google.rpc.Status the billing API attaches to every error.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
  type BadRequest_FieldViolation,
} from "./gen/google/rpc/error_details_pb.js";

/** The parts of a failed call a caller decides on. */
export interface BillingError {
  /** gRPC status code, e.g. Code.InvalidArgument. */
  code: Code;
  /** ErrorInfo.reason: stable, UPPER_SNAKE_CASE (e.g. "IDEMPOTENCY_KEY_REUSED"); "" if absent. */
  reason: string;
  /** ErrorInfo.domain: "billing.v1" for errors of this API. */
  domain: string;
  /** ErrorInfo.metadata, e.g. decline_code or payment_id. */
  metadata: Record<string, string>;
  /** BadRequest field violations, for INVALID_ARGUMENT. */
  fieldViolations: BadRequest_FieldViolation[];
  /** RetryInfo delay in milliseconds when the server asks for a retry later, else undefined. */
  retryDelayMs: number | undefined;
  /** The human-readable message: for logs, never for decisions. */
  message: string;
}

/**
 * Decodes the error details of a failed call.
 *
 * @param err Whatever a client call threw or rejected with.
 * @returns The status code, the ErrorInfo reason and metadata, field violations and retry delay.
 */
export function billingError(err: unknown): BillingError {
  const connectErr = ConnectError.from(err);
  const [info] = connectErr.findDetails(ErrorInfoSchema);
  const [retry] = connectErr.findDetails(RetryInfoSchema);
  const badRequests = connectErr.findDetails(BadRequestSchema);
  const delay = retry?.retryDelay;
  return {
    code: connectErr.code,
    reason: info?.reason ?? "",
    domain: info?.domain ?? "",
    metadata: { ...(info?.metadata ?? {}) },
    fieldViolations: badRequests.flatMap((b) => b.fieldViolations),
    retryDelayMs: delay ? Number(delay.seconds) * 1000 + Math.round(delay.nanos / 1e6) : undefined,
    message: connectErr.rawMessage,
  };
}
