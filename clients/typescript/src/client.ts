// A thin, typed wrapper over the generated Leeway services (gRPC protocol, @connectrpc/connect-node).
//
// - amounts are decimal strings ("12.50"), never floats;
// - every mutating call gets a request_id (a random UUID unless you pass one), and a retry after
//   UNAVAILABLE, DEADLINE_EXCEEDED, a concurrency conflict or a rate limit reuses it, so a retried call never
//   records twice; a rate limit (RESOURCE_EXHAUSTED with RetryInfo) is retried after the wait the server names;
// - failures throw LeewayError carrying the ErrorInfo reason and the other google.rpc details.
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { LeewayError, toLeewayError } from "./errors.js";
import {
  type Action,
  Action_State,
  ActionService,
  type ApproveActionResponse,
  type DenyActionResponse,
  type ListActionsResponse,
  type RecordActionRequestSchema,
  type RecordActionResponse,
  type ReverseActionResponse,
} from "./gen/leeway/v1/action_pb.js";
import { type Budget, BudgetService, type ListBudgetsResponse } from "./gen/leeway/v1/budget_pb.js";
import { ActionKind, type BendableRule, BendableRuleSchema, Escalation_Mode, Period, type Policy, PolicySchema } from "./gen/leeway/v1/policy_pb.js";
import {
  AuditService,
  type AuditTrailEntry,
  type Event,
  type GetAuditTrailResponse,
  type VerifyIntegrityResponse,
} from "./gen/leeway/v1/audit_pb.js";
import { type GetKpisResponse, InsightsService, type ListWinsResponse } from "./gen/leeway/v1/insights_pb.js";
import { type Erasure, type ExportCustomerDataResponse, type LegacyRedaction, PrivacyService } from "./gen/leeway/v1/privacy_pb.js";
import { type Cap, CapSchema, type GetCustomerUsageResponse, type Team, TeamService } from "./gen/leeway/v1/team_pb.js";
import { toMoney } from "./money.js";

export type PeriodName = "DAY" | "WEEK" | "MONTH" | "QUARTER" | "YEAR";
export type KindName = "REFUND" | "CREDIT" | "RULE_BEND" | "GIFT";
export type StateName = "RECORDED" | "PENDING_APPROVAL" | "APPROVED" | "DENIED" | "EXPIRED" | "REVERSED";

/** What was done, exactly one of: refund, credit, ruleBend, gift (the kind follows from it). */
export type Details =
  | { refund: { orderId: string } }
  | { credit: { accountRef: string } }
  | { ruleBend: { ruleCode: string; description?: string } }
  | { gift: { giftType: string; note?: string } };

export interface ClientOptions {
  /** A JWT, sent as `authorization: Bearer <token>`. */
  token?: string;
  /** An API key, sent as `authorization: ApiKey <key>`. */
  apiKey?: string;
  /** Deadline of each attempt (default 10 s). */
  timeoutMs?: number;
  /** How many times a retryable failure is retried (default 5): after the wait the server's RetryInfo names
   * (plus up to 10% jitter), else with exponential backoff and jitter from `backoffMs` (default 100). */
  retries?: number;
  backoffMs?: number;
  /** Bounds a whole call, retries and waits included (default: none). A wait that would end past it is not
   * made: the error is thrown at once; each attempt's deadline is cut to what remains. */
  totalTimeoutMs?: number;
  /** TLS: the CA that signed the server's certificate, and for mutual TLS the client's certificate and key
   * (PEM). With any of them the connection uses https. */
  tls?: { ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer };
  /** A ready transport (overrides target, tls). */
  transport?: Transport;
}

export interface PolicyInit {
  currency: string;
  periodAllowance: string;
  period?: PeriodName;
  perActionLimit?: string;
  perCustomerLimit?: string;
  allowedKinds?: KindName[];
  /** Rule codes, or full BendableRule inits. */
  bendableRules?: (string | MessageInitShape<typeof BendableRuleSchema>)[];
  /** With approvers, over-limit actions wait for approval instead of being refused. */
  escalateTo?: string[];
  approverRole?: string;
  approvalTimeoutSeconds?: number;
  /** The most that may wait for approval at once (default: one period allowance). */
  maxHeld?: string;
  /** How long actions on one case count together against perActionLimit (default 24 hours). */
  splitWindowSeconds?: number;
  /** Also count together the actions for one customer within the window. */
  splitSameCustomer?: boolean;
  /** What this policy's employee may approve of others' actions: per action, and per period. */
  approvalPerAction?: string;
  approvalPerPeriod?: string;
}

const PERIODS: Record<PeriodName, Period> = {
  DAY: Period.DAY,
  WEEK: Period.WEEK,
  MONTH: Period.MONTH,
  QUARTER: Period.QUARTER,
  YEAR: Period.YEAR,
};
const KINDS: Record<KindName, ActionKind> = {
  REFUND: ActionKind.REFUND,
  CREDIT: ActionKind.CREDIT,
  RULE_BEND: ActionKind.RULE_BEND,
  GIFT: ActionKind.GIFT,
};
const STATES: Record<StateName, Action_State> = {
  RECORDED: Action_State.RECORDED,
  PENDING_APPROVAL: Action_State.PENDING_APPROVAL,
  APPROVED: Action_State.APPROVED,
  DENIED: Action_State.DENIED,
  EXPIRED: Action_State.EXPIRED,
  REVERSED: Action_State.REVERSED,
};

/** A Policy from plain values (amounts as decimal strings in `currency`). */
export function makePolicy(init: PolicyInit): Policy {
  const money = (amount: string | undefined) => (amount === undefined ? undefined : toMoney(amount, init.currency));
  const approvers = init.escalateTo ?? [];
  return create(PolicySchema, {
    periodAllowance: toMoney(init.periodAllowance, init.currency),
    period: PERIODS[init.period ?? "MONTH"],
    perActionLimit: money(init.perActionLimit),
    perCustomerLimit: money(init.perCustomerLimit),
    allowedKinds: (init.allowedKinds ?? ["REFUND", "CREDIT", "RULE_BEND", "GIFT"]).map((k) => KINDS[k]),
    bendableRules: (init.bendableRules ?? []).map((r): BendableRule =>
      create(BendableRuleSchema, typeof r === "string" ? { ruleCode: r } : r),
    ),
    escalation:
      approvers.length > 0 || init.approverRole
        ? {
            mode: Escalation_Mode.APPROVAL,
            approverIds: approvers,
            approverRole: init.approverRole ?? "",
            approvalTimeout:
              init.approvalTimeoutSeconds === undefined
                ? undefined
                : { seconds: BigInt(Math.floor(init.approvalTimeoutSeconds)), nanos: 0 },
            maxHeld: money(init.maxHeld),
          }
        : undefined,
    splitDetection:
      init.splitWindowSeconds !== undefined || init.splitSameCustomer
        ? {
            window:
              init.splitWindowSeconds === undefined
                ? undefined
                : { seconds: BigInt(Math.floor(init.splitWindowSeconds)), nanos: 0 },
            sameCustomer: init.splitSameCustomer ?? false,
          }
        : undefined,
    approvalLimits:
      init.approvalPerAction !== undefined || init.approvalPerPeriod !== undefined
        ? { perAction: money(init.approvalPerAction), perPeriod: money(init.approvalPerPeriod) }
        : undefined,
  });
}

/** A team or per-customer cap from plain values. */
export function makeCap(amount: string, currency: string, period: PeriodName = "MONTH"): Cap {
  return create(CapSchema, { amount: toMoney(amount, currency), period: PERIODS[period] });
}

function detailsOneof(details: Details): MessageInitShape<typeof RecordActionRequestSchema>["details"] {
  if ("refund" in details) return { case: "refund", value: details.refund };
  if ("credit" in details) return { case: "credit", value: details.credit };
  if ("ruleBend" in details) return { case: "ruleBend", value: details.ruleBend };
  return { case: "gift", value: details.gift };
}

export class LeewayClient {
  readonly budgets: Client<typeof BudgetService>;
  readonly actions: Client<typeof ActionService>;
  readonly teams: Client<typeof TeamService>;
  readonly insights: Client<typeof InsightsService>;
  /** The raw AuditService client: streamEvents (an async iterable), getAuditTrail, verifyIntegrity. */
  readonly audit: Client<typeof AuditService>;
  /** The raw PrivacyService client (admin only): eraseCustomer, eraseEmployee, exportCustomerData, redactLegacyData. */
  readonly privacy: Client<typeof PrivacyService>;
  private readonly headers: Record<string, string>;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly totalTimeoutMs: number | undefined;

  /** `target` is HOST:PORT (e.g. "127.0.0.1:50051"). */
  constructor(target: string, options: ClientOptions = {}) {
    if (options.token && options.apiKey) {
      throw new TypeError("pass token or apiKey, not both");
    }
    const tls = options.tls;
    const transport =
      options.transport ??
      createGrpcTransport({
        baseUrl: `${tls ? "https" : "http"}://${target}`,
        nodeOptions: tls ? { ca: tls.ca, cert: tls.cert, key: tls.key } : undefined,
      });
    this.budgets = createClient(BudgetService, transport);
    this.actions = createClient(ActionService, transport);
    this.teams = createClient(TeamService, transport);
    this.insights = createClient(InsightsService, transport);
    this.audit = createClient(AuditService, transport);
    this.privacy = createClient(PrivacyService, transport);
    this.headers = {};
    if (options.token) this.headers.authorization = `Bearer ${options.token}`;
    if (options.apiKey) this.headers.authorization = `ApiKey ${options.apiKey}`;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.retries = options.retries ?? 5;
    this.backoffMs = options.backoffMs ?? 100;
    this.totalTimeoutMs = options.totalTimeoutMs;
  }

  /** Runs one call, retrying retryable failures (the request, with its request_id, is reused as is). */
  private async call<R>(send: (options: { timeoutMs: number; headers: Record<string, string> }) => Promise<R>): Promise<R> {
    const deadline = this.totalTimeoutMs === undefined ? undefined : Date.now() + this.totalTimeoutMs;
    for (let attempt = 0; ; attempt++) {
      const timeoutMs = deadline === undefined ? this.timeoutMs : Math.max(1, Math.min(this.timeoutMs, deadline - Date.now()));
      try {
        return await send({ timeoutMs, headers: this.headers });
      } catch (raw) {
        const error = toLeewayError(raw);
        const wait = error instanceof LeewayError ? this.retryWait(error, attempt, deadline) : undefined;
        if (wait === undefined) throw error;
        await sleep(wait);
      }
    }
  }

  /** Milliseconds to wait before attempt `attempt + 1`, or undefined: throw now. What RetryInfo says (plus up to
   * 10% jitter, so that many clients do not come back at once), else exponential backoff with jitter; never a
   * wait that ends past `deadline`. */
  private retryWait(error: LeewayError, attempt: number, deadline: number | undefined): number | undefined {
    if (!error.retryable || attempt >= this.retries) return undefined;
    let delay: number;
    if (error.retryDelayMs !== undefined) {
      delay = error.retryDelayMs * (1 + Math.random() * 0.1);
    } else {
      const step = this.backoffMs * 2 ** attempt;
      delay = step / 2 + Math.random() * (step / 2);
    }
    if (deadline !== undefined && Date.now() + delay >= deadline) return undefined;
    return delay;
  }

  private static requestId(requestId?: string): string {
    return requestId || randomUUID();
  }

  // ---------------------------------------------------------------- budgets

  async openBudget(
    employeeId: string,
    teamId: string,
    policy: Policy,
    options: { displayName?: string; requestId?: string } = {},
  ): Promise<Budget> {
    const request = {
      requestId: LeewayClient.requestId(options.requestId),
      employeeId,
      teamId,
      displayName: options.displayName ?? "",
      policy,
    };
    return (await this.call((o) => this.budgets.openBudget(request, o))).budget!;
  }

  /** The budget now, or as it stood at `asOf`, or the figures now of its period that contains `periodStart`. */
  async getBudget(employeeId: string, options: { asOf?: Date; periodStart?: Date } = {}): Promise<Budget> {
    const request = {
      employeeId,
      asOf: options.asOf ? timestampFromDate(options.asOf) : undefined,
      periodStart: options.periodStart ? timestampFromDate(options.periodStart) : undefined,
    };
    return (await this.call((o) => this.budgets.getBudget(request, o))).budget!;
  }

  async listBudgets(options: { teamId?: string; pageSize?: number; pageToken?: string } = {}): Promise<ListBudgetsResponse> {
    return this.call((o) => this.budgets.listBudgets(options, o));
  }

  async updatePolicy(
    employeeId: string,
    policy: Policy,
    options: { expectedVersion?: bigint; requestId?: string } = {},
  ): Promise<Budget> {
    const request = {
      requestId: LeewayClient.requestId(options.requestId),
      employeeId,
      policy,
      expectedVersion: options.expectedVersion ?? 0n,
    };
    return (await this.call((o) => this.budgets.updatePolicy(request, o))).budget!;
  }

  async closeBudget(employeeId: string, reason: string, options: { requestId?: string } = {}): Promise<Budget> {
    const request = { requestId: LeewayClient.requestId(options.requestId), employeeId, reason };
    return (await this.call((o) => this.budgets.closeBudget(request, o))).budget!;
  }

  async reopenBudget(employeeId: string, reason: string, options: { requestId?: string } = {}): Promise<Budget> {
    const request = { requestId: LeewayClient.requestId(options.requestId), employeeId, reason };
    return (await this.call((o) => this.budgets.reopenBudget(request, o))).budget!;
  }

  async moveEmployee(
    employeeId: string,
    teamId: string,
    options: { reason?: string; requestId?: string } = {},
  ): Promise<Budget> {
    const request = {
      requestId: LeewayClient.requestId(options.requestId),
      employeeId,
      teamId,
      reason: options.reason ?? "",
    };
    return (await this.call((o) => this.budgets.moveEmployee(request, o))).budget!;
  }

  // ---------------------------------------------------------------- actions

  /** Records a refund, credit, rule bend or gift (the kind follows from `details`). */
  async recordAction(
    employeeId: string,
    customerId: string,
    amount: string,
    currency: string,
    details: Details,
    options: { reason: string; caseId?: string; occurTime?: Date; requestId?: string },
  ): Promise<RecordActionResponse> {
    const request = {
      requestId: LeewayClient.requestId(options.requestId),
      employeeId,
      customerId,
      caseId: options.caseId ?? "",
      amount: toMoney(amount, currency),
      reason: options.reason,
      details: detailsOneof(details),
      occurTime: options.occurTime ? timestampFromDate(options.occurTime) : undefined,
    };
    return this.call((o) => this.actions.recordAction(request, o));
  }

  async getAction(actionId: string): Promise<Action> {
    return (await this.call((o) => this.actions.getAction({ actionId }, o))).action!;
  }

  async listActions(
    options: {
      employeeId?: string;
      customerId?: string;
      kind?: KindName;
      state?: StateName;
      approverId?: string;
      decidedBy?: string;
      pageSize?: number;
      pageToken?: string;
    } = {},
  ): Promise<ListActionsResponse> {
    const request = {
      employeeId: options.employeeId ?? "",
      customerId: options.customerId ?? "",
      kind: options.kind ? KINDS[options.kind] : ActionKind.UNSPECIFIED,
      state: options.state ? STATES[options.state] : Action_State.UNSPECIFIED,
      approverId: options.approverId ?? "",
      decidedBy: options.decidedBy ?? "",
      pageSize: options.pageSize ?? 0,
      pageToken: options.pageToken ?? "",
    };
    return this.call((o) => this.actions.listActions(request, o));
  }

  /** Every matching action, following nextPageToken. */
  async *iterActions(options: Omit<Parameters<LeewayClient["listActions"]>[0], "pageToken"> = {}): AsyncGenerator<Action> {
    let pageToken = "";
    do {
      const page = await this.listActions({ ...options, pageToken });
      yield* page.actions;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  async approveAction(
    actionId: string,
    approverId: string,
    options: { note?: string; requestId?: string } = {},
  ): Promise<ApproveActionResponse> {
    const request = { requestId: LeewayClient.requestId(options.requestId), actionId, approverId, note: options.note ?? "" };
    return this.call((o) => this.actions.approveAction(request, o));
  }

  async denyAction(
    actionId: string,
    approverId: string,
    options: { note?: string; requestId?: string } = {},
  ): Promise<DenyActionResponse> {
    const request = { requestId: LeewayClient.requestId(options.requestId), actionId, approverId, note: options.note ?? "" };
    return this.call((o) => this.actions.denyAction(request, o));
  }

  async reverseAction(
    actionId: string,
    options: { reason: string; actorId: string; requestId?: string },
  ): Promise<ReverseActionResponse> {
    const request = {
      requestId: LeewayClient.requestId(options.requestId),
      actionId,
      reason: options.reason,
      actorId: options.actorId,
    };
    return this.call((o) => this.actions.reverseAction(request, o));
  }

  /** Attaches a success story to a recorded or approved action; returns the action with its win. */
  async documentWin(
    actionId: string,
    story: string,
    options: { customerQuote?: string; outcome?: string; requestId?: string } = {},
  ): Promise<Action> {
    const request = {
      requestId: LeewayClient.requestId(options.requestId),
      actionId,
      story,
      customerQuote: options.customerQuote ?? "",
      outcome: options.outcome ?? "",
    };
    return (await this.call((o) => this.actions.documentWin(request, o))).action!;
  }

  // ---------------------------------------------------------------- audit

  /** The events after `afterPosition` in log order; with `follow`, then every new one as it commits, until the
   * loop is left (`break`), `signal` aborts or `timeoutMs` passes. A retryable failure (the server restarting, a
   * rate limit) resumes the stream after the last event received: none is missed or repeated. */
  async *streamEvents(
    options: {
      afterPosition?: bigint;
      follow?: boolean;
      eventTypes?: string[];
      employeeId?: string;
      timeoutMs?: number;
      signal?: AbortSignal;
    } = {},
  ): AsyncGenerator<Event> {
    let after = options.afterPosition ?? 0n;
    const deadline = options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs;
    let attempt = 0;
    for (;;) {
      const request = {
        afterPosition: after,
        follow: options.follow ?? false,
        eventTypes: options.eventTypes ?? [],
        employeeId: options.employeeId ?? "",
      };
      const timeoutMs = deadline === undefined ? undefined : Math.max(1, deadline - Date.now());
      try {
        for await (const response of this.audit.streamEvents(request, { headers: this.headers, timeoutMs, signal: options.signal })) {
          const event = response.event!;
          attempt = 0; // progress: the retries count again from here
          after = event.position;
          yield event;
        }
        return;
      } catch (raw) {
        const error = toLeewayError(raw);
        const wait = error instanceof LeewayError && !options.signal?.aborted ? this.retryWait(error, attempt, deadline) : undefined;
        if (wait === undefined) throw error;
        await sleep(wait);
        attempt++;
      }
    }
  }

  /** One page of the trail of an employee's budget or of a customer, oldest first. */
  async getAuditTrail(
    options: { employeeId?: string; customerId?: string; pageSize?: number; pageToken?: string } = {},
  ): Promise<GetAuditTrailResponse> {
    return this.call((o) => this.audit.getAuditTrail(options, o));
  }

  /** The whole trail, following nextPageToken. */
  async *iterAuditTrail(
    options: { employeeId?: string; customerId?: string; pageSize?: number } = {},
  ): AsyncGenerator<AuditTrailEntry> {
    let pageToken = "";
    do {
      const page = await this.getAuditTrail({ ...options, pageToken });
      yield* page.entries;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** Recomputes the hash chains (of everything, or of one employee's budget); with `checkpoint` (kept outside the
   * database) also checks that the log still holds it. `ok` is false with `violations`. */
  async verifyIntegrity(
    options: { employeeId?: string; checkpoint?: { position: bigint; logHash: string } } = {},
  ): Promise<VerifyIntegrityResponse> {
    const request = { employeeId: options.employeeId ?? "", checkpoint: options.checkpoint };
    return this.call((o) => this.audit.verifyIntegrity(request, o));
  }

  // ---------------------------------------------------------------- personal data (admin only)

  /** Forgets a customer's personal data (`reason`: a reference such as a ticket, never the data): their key is
   * shredded and every answer shows `[erased]` from then on; amounts and limits stay. Idempotent by `requestId`. */
  async eraseCustomer(customerId: string, reason: string, options: { requestId?: string } = {}): Promise<Erasure | undefined> {
    const request = { requestId: LeewayClient.requestId(options.requestId), customerId, reason };
    return (await this.call((o) => this.privacy.eraseCustomer(request, o))).erasure;
  }

  /** Forgets an employee's personal data (their display name, the reasons of their budget's life cycle). */
  async eraseEmployee(employeeId: string, reason: string, options: { requestId?: string } = {}): Promise<Erasure | undefined> {
    const request = { requestId: LeewayClient.requestId(options.requestId), employeeId, reason };
    return (await this.call((o) => this.privacy.eraseEmployee(request, o))).erasure;
  }

  /** Overwrites one subject's personal fields in events stored in clear (before encryption) with `[erased]`,
   * recording which events and why (exactly one of `customerId` and `employeeId`). Idempotent by `requestId`. */
  async redactLegacyData(
    subject: { customerId?: string; employeeId?: string },
    reason: string,
    options: { requestId?: string } = {},
  ): Promise<LegacyRedaction | undefined> {
    const request = {
      requestId: LeewayClient.requestId(options.requestId),
      customerId: subject.customerId ?? "",
      employeeId: subject.employeeId ?? "",
      reason,
    };
    return (await this.call((o) => this.privacy.redactLegacyData(request, o))).redaction;
  }

  /** One page of everything held about a customer, as a JSON `document` (an access request, GDPR art. 15). */
  async exportCustomerData(
    customerId: string,
    options: { pageSize?: number; pageToken?: string } = {},
  ): Promise<ExportCustomerDataResponse> {
    const request = { customerId, pageSize: options.pageSize ?? 0, pageToken: options.pageToken ?? "" };
    return this.call((o) => this.privacy.exportCustomerData(request, o));
  }

  // ---------------------------------------------------------------- teams and organisation caps

  /** Sets a team's period cap (makeCap(...)), or removes it (undefined). */
  async setTeamCap(teamId: string, cap: Cap | undefined, options: { requestId?: string } = {}): Promise<Team> {
    const request = { requestId: LeewayClient.requestId(options.requestId), teamId, cap };
    return (await this.call((o) => this.teams.setTeamCap(request, o))).team!;
  }

  /** KPIs of everyone, a team or an employee, for actions recorded in [startTime, endTime). */
  async getKpis(
    options: { teamId?: string; employeeId?: string; startTime?: Date; endTime?: Date } = {},
  ): Promise<GetKpisResponse> {
    const request = {
      teamId: options.teamId ?? "",
      employeeId: options.employeeId ?? "",
      startTime: options.startTime ? timestampFromDate(options.startTime) : undefined,
      endTime: options.endTime ? timestampFromDate(options.endTime) : undefined,
    };
    return this.call((o) => this.insights.getKpis(request, o));
  }

  /** One page of the celebration feed (documented wins), newest first. */
  async listWins(
    options: { teamId?: string; employeeId?: string; pageSize?: number; pageToken?: string } = {},
  ): Promise<ListWinsResponse> {
    return this.call((o) => this.insights.listWins(options, o));
  }

  async getTeam(teamId: string): Promise<Team> {
    return (await this.call((o) => this.teams.getTeam({ teamId }, o))).team!;
  }

  /** Sets the per-customer cap of the cap's currency, or removes the cap of `currencyCode` (or every cap). */
  async setCustomerCap(
    cap: Cap | undefined,
    options: { requestId?: string; currencyCode?: string } = {},
  ): Promise<Cap | undefined> {
    const request = { requestId: LeewayClient.requestId(options.requestId), cap, currencyCode: options.currencyCode ?? "" };
    return (await this.call((o) => this.teams.setCustomerCap(request, o))).cap;
  }

  async getCustomerUsage(customerId: string): Promise<GetCustomerUsageResponse> {
    return this.call((o) => this.teams.getCustomerUsage({ customerId }, o));
  }
}
