// @leeway/client: the generated Leeway messages and services, and a typed wrapper (LeewayClient).
export { LeewayClient, makeCap, makePolicy } from "./client.js";
export type { ClientOptions, Details, KindName, PeriodName, PolicyInit, StateName } from "./client.js";
export { LeewayError } from "./errors.js";
export type { FieldViolation, PreconditionViolation } from "./errors.js";
export { fromMoney, toMoney } from "./money.js";
export * from "./gen/leeway/v1/action_pb.js";
export * from "./gen/leeway/v1/budget_pb.js";
export * from "./gen/leeway/v1/policy_pb.js";
export * from "./gen/leeway/v1/team_pb.js";
