// @leeway/client: a typed wrapper (LeewayClient) and every generated Leeway message, enum and service
// (protoc-gen-es), plus the google.type / google.rpc messages they use (Money, ErrorInfo, RetryInfo, ...).
export { LeewayClient, makeCap, makePolicy } from "./client.js";
export type { ClientOptions, Details, KindName, PeriodName, PolicyInit, StateName } from "./client.js";
export { LeewayError } from "./errors.js";
export type { FieldViolation, PreconditionViolation } from "./errors.js";
export { fromMoney, toMoney } from "./money.js";
export * from "./gen/leeway/v1/action_pb.js";
export * from "./gen/leeway/v1/audit_pb.js";
export * from "./gen/leeway/v1/budget_pb.js";
export * from "./gen/leeway/v1/insights_pb.js";
export * from "./gen/leeway/v1/policy_pb.js";
export * from "./gen/leeway/v1/privacy_pb.js";
export * from "./gen/leeway/v1/team_pb.js";
export * from "./gen/google/type/money_pb.js";
export * from "./gen/google/rpc/error_details_pb.js";
export * from "./gen/google/rpc/status_pb.js";
export * from "./gen/google/api/field_behavior_pb.js";
