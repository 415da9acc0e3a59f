// Failures as LeewayError: the gRPC code plus the google.rpc details Leeway sends (ErrorInfo always).
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

export interface FieldViolation {
  field: string;
  description: string;
}

export interface PreconditionViolation {
  type: string;
  subject: string;
  description: string;
}

/** "FailedPrecondition" -> "FAILED_PRECONDITION" (the gRPC status name). */
function statusName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

export class LeewayError extends Error {
  /** The gRPC status name, e.g. "FAILED_PRECONDITION". */
  readonly code: string;
  /** The numeric gRPC status code. */
  readonly grpcCode: Code;
  /** ErrorInfo.reason, e.g. "BUDGET_EXHAUSTED" ("" if the server sent no ErrorInfo). */
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Record<string, string>;
  readonly fieldViolations: FieldViolation[];
  readonly preconditionViolations: PreconditionViolation[];
  readonly quotaViolations: { subject: string; description: string }[];
  /** RetryInfo's delay in milliseconds, if the server sent one. */
  readonly retryDelayMs: number | undefined;

  constructor(error: ConnectError) {
    super(error.rawMessage);
    this.name = "LeewayError";
    this.grpcCode = error.code;
    this.code = statusName(error.code);
    const info = error.findDetails(ErrorInfoSchema)[0];
    this.reason = info?.reason ?? "";
    this.domain = info?.domain ?? "";
    this.metadata = { ...(info?.metadata ?? {}) };
    this.fieldViolations = error
      .findDetails(BadRequestSchema)
      .flatMap((d) => d.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
    this.preconditionViolations = error
      .findDetails(PreconditionFailureSchema)
      .flatMap((d) => d.violations.map((v) => ({ type: v.type, subject: v.subject, description: v.description })));
    this.quotaViolations = error
      .findDetails(QuotaFailureSchema)
      .flatMap((d) => d.violations.map((v) => ({ subject: v.subject, description: v.description })));
    const retry = error.findDetails(RetryInfoSchema)[0]?.retryDelay;
    this.retryDelayMs = retry === undefined ? undefined : Number(retry.seconds) * 1000 + retry.nanos / 1e6;
  }

  /** Whether repeating the call with the same request_id may succeed: UNAVAILABLE, DEADLINE_EXCEEDED, a
   * concurrency conflict, and a rate limit (RESOURCE_EXHAUSTED with RetryInfo, or reason RATE_LIMITED: the server
   * says how long to wait). RESOURCE_EXHAUSTED without either (e.g. a message too large) is not. */
  get retryable(): boolean {
    switch (this.grpcCode) {
      case Code.Unavailable:
      case Code.DeadlineExceeded:
        return true;
      case Code.Aborted:
        return this.reason === "CONCURRENCY_CONFLICT";
      case Code.ResourceExhausted:
        return this.retryDelayMs !== undefined || this.reason === "RATE_LIMITED";
      default:
        return this.reason === "RATE_LIMITED";
    }
  }

  override toString(): string {
    return `${this.code} ${this.reason}: ${this.message}`;
  }
}

export function toLeewayError(error: unknown): LeewayError | unknown {
  return error instanceof ConnectError ? new LeewayError(error) : error;
}
