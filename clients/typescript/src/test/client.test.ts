// The TypeScript client against a real Leeway server process, plus its offline helpers.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import {
  Action_State,
  ActionService,
  ApproveActionResponseSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
  LeewayClient,
  LeewayError,
  fromMoney,
  makeCap,
  makePolicy,
  toMoney,
  type AuditTrailEntry,
  type Event,
} from "../index.js";
import { type LeewayServer, startServer } from "./server.js";

const uid = (prefix: string) => `${prefix}-${randomUUID().slice(0, 8)}`;

async function refusal(promise: Promise<unknown>): Promise<LeewayError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof LeewayError, `expected a LeewayError, got ${error}`);
    return error;
  }
  assert.fail("the call was expected to fail");
}

describe("money", () => {
  test("decimal strings round-trip exactly", () => {
    for (const [text, units, nanos, back] of [
      ["12.50", 12n, 500_000_000, "12.5"],
      ["0.000000001", 0n, 1, "0.000000001"],
      ["-3.25", -3n, -250_000_000, "-3.25"],
      ["1000000000000", 1_000_000_000_000n, 0, "1000000000000"],
      ["0", 0n, 0, "0"],
    ] as const) {
      const money = toMoney(text, "EUR");
      assert.equal(money.units, units);
      assert.equal(money.nanos, nanos);
      assert.equal(money.currencyCode, "EUR");
      assert.equal(fromMoney(money), back);
    }
  });

  test("floats and malformed amounts are refused", () => {
    assert.throws(() => toMoney(12.5 as unknown as string, "EUR"), TypeError);
    assert.throws(() => toMoney("1.0000000001", "EUR"), RangeError);
    assert.throws(() => toMoney("1e3", "EUR"), RangeError);
    assert.throws(() => toMoney("", "EUR"), RangeError);
  });
});

describe("makePolicy", () => {
  test("bounded holds, split detection and approval limits are set only when asked for", () => {
    const plain = makePolicy({ currency: "EUR", periodAllowance: "100" });
    assert.equal(plain.splitDetection, undefined);
    assert.equal(plain.approvalLimits, undefined);
    const bounded = makePolicy({
      currency: "EUR",
      periodAllowance: "100",
      escalateTo: ["sam"],
      maxHeld: "150",
      splitWindowSeconds: 7200,
      splitSameCustomer: true,
      approvalPerPeriod: "1000",
    });
    assert.equal(fromMoney(bounded.escalation!.maxHeld!), "150");
    assert.equal(bounded.splitDetection!.window!.seconds, 7200n);
    assert.equal(bounded.splitDetection!.sameCustomer, true);
    assert.equal(fromMoney(bounded.approvalLimits!.perPeriod!), "1000");
    assert.equal(bounded.approvalLimits!.perAction, undefined);
  });
});

describe("retries", () => {
  test("UNAVAILABLE is retried with the same request_id; other errors are not", async () => {
    const seen: string[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(ActionService, {
        approveAction(request) {
          seen.push(request.requestId);
          if (seen.length < 3) throw new ConnectError("store down", Code.Unavailable);
          return create(ApproveActionResponseSchema, {});
        },
        denyAction() {
          throw new ConnectError("nope", Code.PermissionDenied);
        },
      });
    });
    const client = new LeewayClient("unused:1", { transport, backoffMs: 1 });
    await client.approveAction("act_x", "sam");
    assert.equal(seen.length, 3);
    assert.equal(new Set(seen).size, 1);
    assert.ok(seen[0].length > 0);
    const denied = await refusal(client.denyAction("act_x", "sam"));
    assert.equal(denied.code, "PERMISSION_DENIED");
    assert.equal(denied.retryable, false);
  });

  test("a rate limit is retried after the wait RetryInfo names, with the same request_id, within the bounds", async () => {
    const rateLimited = (ms: number, retryInfo = true) =>
      new ConnectError("slow down", Code.ResourceExhausted, undefined, [
        { desc: ErrorInfoSchema, value: { reason: "RATE_LIMITED", domain: "leeway" } },
        { desc: QuotaFailureSchema, value: { violations: [{ subject: "principal:crm", description: "d" }] } },
        ...(retryInfo ? [{ desc: RetryInfoSchema, value: { retryDelay: { seconds: 0n, nanos: ms * 1e6 } } }] : []),
      ]);
    const seen: { at: number; requestId: string }[] = [];
    let failures: ConnectError[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(ActionService, {
        approveAction(request) {
          seen.push({ at: Date.now(), requestId: request.requestId });
          const failure = failures.shift();
          if (failure) throw failure;
          return create(ApproveActionResponseSchema, {});
        },
      });
    });
    // backoffMs alone would come back at once: the waits are RetryInfo's.
    failures = [rateLimited(300), rateLimited(200)];
    await new LeewayClient("unused:1", { transport, backoffMs: 1 }).approveAction("act_x", "sam");
    assert.equal(seen.length, 3);
    assert.ok(seen[1].at - seen[0].at >= 295, `${seen[1].at - seen[0].at} ms`);
    assert.ok(seen[2].at - seen[1].at >= 195, `${seen[2].at - seen[1].at} ms`);
    assert.equal(new Set(seen.map((s) => s.requestId)).size, 1);
    // Bounded: retries, then the last error with its details.
    seen.length = 0;
    failures = Array.from({ length: 10 }, () => rateLimited(5));
    const exhausted = await refusal(new LeewayClient("unused:1", { transport, retries: 2 }).approveAction("act_x", "sam"));
    assert.equal(seen.length, 3);
    assert.equal(exhausted.code, "RESOURCE_EXHAUSTED");
    assert.equal(exhausted.reason, "RATE_LIMITED");
    assert.equal(exhausted.retryDelayMs, 5);
    assert.deepEqual(exhausted.quotaViolations, [{ subject: "principal:crm", description: "d" }]);
    // A wait past the call's deadline (totalTimeoutMs) is not made.
    seen.length = 0;
    failures = [rateLimited(5000)];
    const started = Date.now();
    await refusal(new LeewayClient("unused:1", { transport, totalTimeoutMs: 1000 }).approveAction("act_x", "sam"));
    assert.ok(Date.now() - started < 1000);
    assert.equal(seen.length, 1);
    // RESOURCE_EXHAUSTED with neither RetryInfo nor RATE_LIMITED (e.g. a message too large) is not retried.
    seen.length = 0;
    failures = [new ConnectError("too big", Code.ResourceExhausted)];
    await refusal(new LeewayClient("unused:1", { transport, backoffMs: 1 }).approveAction("act_x", "sam"));
    assert.equal(seen.length, 1);
    failures = [rateLimited(0, false)];
    await new LeewayClient("unused:1", { transport, backoffMs: 1 }).approveAction("act_x", "sam");
  });
});

describe("against a real server", () => {
  let server: LeewayServer;
  let client: LeewayClient;

  before(async () => {
    server = await startServer();
    client = new LeewayClient(server.target);
  });

  after(async () => {
    assert.equal(await server.stop(), 0, server.logs());
  });

  test("privacy: an access request, then an erasure (idempotent); the text reads [erased], the spend stays", async () => {
    const ann = uid("ann");
    const guest = uid("guest");
    await client.openBudget(ann, uid("desk"), makePolicy({ currency: "EUR", periodAllowance: "100" }));
    const recorded = await client.recordAction(ann, guest, "30", "EUR", { gift: { giftType: "tea" } }, { reason: "Jane's birthday" });
    const before = await client.exportCustomerData(guest);
    assert.ok(before.document.includes("Jane's birthday"), before.document);
    const requestId = `erase-${guest}`;
    const first = await client.eraseCustomer(guest, "GDPR art. 17, ticket 7", { requestId });
    const again = await client.eraseCustomer(guest, "GDPR art. 17, ticket 7", { requestId });
    assert.deepEqual(again, first);
    const action = await client.getAction(recorded.action!.actionId);
    assert.equal(action.reason, "[erased]");
    assert.equal((await client.getBudget(ann)).spent?.units, 30n);
    // Nothing of theirs was stored in clear (the server encrypts): the redaction of legacy data finds nothing.
    const redaction = await client.redactLegacyData({ customerId: guest }, "GDPR art. 17, ticket 7");
    assert.equal(redaction?.subject, "customer");
    assert.equal(redaction?.redactedEventCount, 0);
  });

  test("audit: the trail, the integrity check and the event stream (following, resumed)", async () => {
    const ann = uid("ann");
    await client.openBudget(ann, uid("desk"), makePolicy({ currency: "EUR", periodAllowance: "100" }));
    await client.recordAction(ann, "guest-1", "5", "EUR", { gift: { giftType: "tea" } }, { reason: "r" });
    const trail: AuditTrailEntry[] = [];
    for await (const entry of client.iterAuditTrail({ employeeId: ann, pageSize: 1 })) trail.push(entry);
    assert.ok(trail.length >= 2, `${trail.length} entries`);
    assert.ok(trail.every((e) => e.employeeId === ann));
    const report = await client.verifyIntegrity({ employeeId: ann });
    assert.equal(report.ok, true);
    assert.ok(report.eventsChecked >= 2n);
    const events: Event[] = [];
    for await (const event of client.streamEvents({ employeeId: ann })) events.push(event);
    assert.ok(events.length >= 2);
    const rest: Event[] = [];
    for await (const event of client.streamEvents({ employeeId: ann, afterPosition: events[0].position })) rest.push(event);
    assert.deepEqual(rest.map((e) => e.eventId), events.slice(1).map((e) => e.eventId));
    // Following: a new event arrives on the open stream; leaving the loop ends the stream.
    const following = client.streamEvents({ employeeId: ann, afterPosition: events.at(-1)!.position, follow: true, timeoutMs: 20_000 });
    const next = following.next();
    await client.recordAction(ann, "guest-2", "1", "EUR", { gift: { giftType: "card" } }, { reason: "r" });
    const fresh = await next;
    assert.equal(fresh.done, false);
    assert.ok(fresh.value!.position > events.at(-1)!.position);
    await following.return(undefined);
    // The raw AuditService client is there too.
    const page = await client.audit.getAuditTrail({ employeeId: ann });
    assert.ok(page.entries.length >= 3);
  });

  test("open, record a gift, read it back; exact money", async () => {
    const ann = uid("ann");
    const budget = await client.openBudget(ann, uid("desk"), makePolicy({ currency: "EUR", periodAllowance: "100", perActionLimit: "50" }));
    assert.equal(fromMoney(budget.remaining), "100");
    const { action, budget: after } = await client.recordAction(ann, "guest-1", "12.50", "EUR", { gift: { giftType: "flowers", note: "sorry" } }, { reason: "late dinner" });
    assert.equal(fromMoney(action!.amount), "12.5");
    assert.equal(action!.details.case, "gift");
    assert.equal(action!.state, Action_State.RECORDED);
    assert.equal(fromMoney(after!.remaining), "87.5");
    const again = await client.getAction(action!.actionId);
    assert.equal(again.actionId, action!.actionId);
    assert.equal(again.recordedBy, "anonymous");
  });

  test("insights: a documented gift shows in the KPIs and the celebration feed at once", async () => {
    const ann = uid("ann");
    const team = uid("desk");
    await client.openBudget(ann, team, makePolicy({ currency: "EUR", periodAllowance: "100" }));
    const { action } = await client.recordAction(ann, "guest-1", "12.50", "EUR", { gift: { giftType: "flowers" } }, { reason: "late dinner" });
    await client.documentWin(action!.actionId, "They came back for their anniversary", { outcome: "rebooked" });
    const kpis = await client.getKpis({ teamId: team });
    assert.equal(kpis.actionCount, 1n);
    assert.equal(kpis.flowerStats!.giftsSent, 1n);
    assert.equal(fromMoney(kpis.flowerStats!.giftSpend[0]), "12.5");
    assert.equal(kpis.winsDocumented, 1n);
    const feed = await client.listWins({ teamId: team });
    assert.equal(feed.wins.length, 1);
    assert.equal(feed.wins[0].win!.story, "They came back for their anniversary");
  });

  test("the same request_id records once", async () => {
    const ann = uid("ann");
    await client.openBudget(ann, uid("desk"), makePolicy({ currency: "EUR", periodAllowance: "100" }));
    const requestId = uid("req");
    const first = await client.recordAction(ann, "guest", "5", "EUR", { refund: { orderId: "o-1" } }, { reason: "r", requestId });
    const second = await client.recordAction(ann, "guest", "5", "EUR", { refund: { orderId: "o-1" } }, { reason: "r", requestId });
    assert.equal(second.action!.actionId, first.action!.actionId);
    assert.equal(fromMoney((await client.getBudget(ann)).spent), "5");
    const reused = await refusal(client.recordAction(ann, "guest", "6", "EUR", { refund: { orderId: "o-1" } }, { reason: "r", requestId }));
    assert.equal(reused.code, "ALREADY_EXISTS");
    assert.equal(reused.reason, "REQUEST_ID_REUSED");
  });

  test("a refusal carries ErrorInfo and PreconditionFailure", async () => {
    const ann = uid("ann");
    await client.openBudget(ann, uid("desk"), makePolicy({ currency: "EUR", periodAllowance: "100", perActionLimit: "20" }));
    const error = await refusal(client.recordAction(ann, "guest", "25", "EUR", { gift: { giftType: "wine" } }, { reason: "r" }));
    assert.equal(error.code, "FAILED_PRECONDITION");
    assert.equal(error.reason, "PER_ACTION_LIMIT_EXCEEDED");
    assert.equal(error.domain, "leeway");
    assert.equal(error.metadata.limit, "20");
    assert.deepEqual(error.preconditionViolations.map((v) => v.type), ["PER_ACTION_LIMIT"]);
  });

  test("bad input gets INVALID_ARGUMENT with field violations", async () => {
    const error = await refusal(client.recordAction("bad id!", "", "1", "ZZZ", { gift: { giftType: "" } }, { reason: "" }));
    assert.equal(error.code, "INVALID_ARGUMENT");
    const fields = new Set(error.fieldViolations.map((v) => v.field));
    for (const field of ["employee_id", "customer_id", "reason", "amount.currency_code", "gift.gift_type"]) {
      assert.ok(fields.has(field), `${field} in ${[...fields]}`);
    }
  });

  test("escalation: pending, listed for the approver, approved; team caps", async () => {
    const ann = uid("ann");
    const team = uid("desk");
    await client.openBudget(ann, team, makePolicy({ currency: "EUR", periodAllowance: "100", perActionLimit: "10", escalateTo: ["sam"] }));
    const { action } = await client.recordAction(ann, "guest", "30", "EUR", { refund: { orderId: "o-9" } }, { reason: "broken AC" });
    assert.equal(action!.state, Action_State.PENDING_APPROVAL);
    assert.deepEqual(action!.escalationReasons, ["PER_ACTION_LIMIT_EXCEEDED"]);
    const waiting: string[] = [];
    for await (const pending of client.iterActions({ state: "PENDING_APPROVAL", approverId: "sam", pageSize: 1 })) {
      waiting.push(pending.actionId);
    }
    assert.ok(waiting.includes(action!.actionId));
    const self = await refusal(client.approveAction(action!.actionId, ann));
    assert.equal(self.reason, "SELF_APPROVAL_NOT_ALLOWED");
    const approved = await client.approveAction(action!.actionId, "sam", { note: "ok" });
    assert.equal(approved.action!.state, Action_State.APPROVED);
    assert.equal(fromMoney(approved.budget!.spent), "30");
    assert.equal(approved.spentInCurrentPeriod, true);
    const decided: string[] = [];
    for await (const done of client.iterActions({ decidedBy: "sam", employeeId: ann })) decided.push(done.actionId);
    assert.deepEqual(decided, [action!.actionId]);
    const thisPeriod = await client.getBudget(ann, { periodStart: new Date() });
    assert.equal(fromMoney(thisPeriod.spent), "30");
    const capped = await client.setTeamCap(team, makeCap("35", "EUR"));
    assert.equal(fromMoney(capped.remaining), "5");
    const wall = await refusal(client.recordAction(ann, "guest", "6", "EUR", { gift: { giftType: "tea" } }, { reason: "r" }));
    assert.equal(wall.reason, "TEAM_CAP_EXCEEDED");
  });
});

describe("with authentication", () => {
  test("an API key is sent; without it the call is UNAUTHENTICATED", async () => {
    const { execFileSync } = await import("node:child_process");
    const { python } = await import("./server.js");
    const printed = execFileSync(python(), ["-m", "leeway.cli", "api-key", "ts-admin", "admin+crm"], { encoding: "utf8" });
    const key = /key \(give it to the client, shown only now\): (\S+)/.exec(printed)![1];
    const entry = /LEEWAY_API_KEYS entry \(for the server\): (\S+)/.exec(printed)![1];
    const server = await startServer({ LEEWAY_AUTH: "required", LEEWAY_API_KEYS: entry });
    try {
      const ok = new LeewayClient(server.target, { apiKey: key });
      const ann = uid("ann");
      await ok.openBudget(ann, "desk", makePolicy({ currency: "EUR", periodAllowance: "10" }));
      const { action } = await ok.recordAction(ann, "guest", "1", "EUR", { gift: { giftType: "tea" } }, { reason: "r" });
      assert.equal(action!.recordedBy, "ts-admin");
      const anonymous = await refusal(new LeewayClient(server.target, { retries: 0 }).getBudget(ann));
      assert.equal(anonymous.code, "UNAUTHENTICATED");
    } finally {
      assert.equal(await server.stop(), 0, server.logs());
    }
  });
  test("a burst over the server's rate limit succeeds by waiting what RetryInfo says, recording each once", async () => {
    const { execFileSync } = await import("node:child_process");
    const { python } = await import("./server.js");
    const printed = execFileSync(python(), ["-m", "leeway.cli", "api-key", "ts-busy", "admin+crm"], { encoding: "utf8" });
    const key = /key \(give it to the client, shown only now\): (\S+)/.exec(printed)![1];
    const entry = /LEEWAY_API_KEYS entry \(for the server\): (\S+)/.exec(printed)![1];
    const rate = 4;
    const burst = 3;
    const server = await startServer({
      LEEWAY_AUTH: "required",
      LEEWAY_API_KEYS: entry,
      LEEWAY_RATE_LIMIT_PER_SECOND: String(rate),
      LEEWAY_RATE_LIMIT_BURST: String(burst),
    });
    try {
      const ann = uid("ann");
      const patient = new LeewayClient(server.target, { apiKey: key, retries: 30, backoffMs: 1 });
      await patient.openBudget(ann, "desk", makePolicy({ currency: "EUR", periodAllowance: "1000" }));
      const impatient = new LeewayClient(server.target, { apiKey: key, retries: 0 });
      let limited: LeewayError | undefined;
      for (let i = 0; i < burst + 5 && limited === undefined; i++) {
        limited = await impatient.getBudget(ann).then(() => undefined, (e: LeewayError) => e);
      }
      assert.equal(limited?.reason, "RATE_LIMITED");
      assert.ok(limited!.retryDelayMs! > 0 && limited!.retryDelayMs! <= 1000 / rate + 10);
      await new Promise((done) => setTimeout(done, (burst / rate) * 1000));
      const calls = 12;
      const started = Date.now();
      const results = await Promise.all(
        Array.from({ length: calls }, (_, i) =>
          patient.recordAction(ann, `guest-${i}`, "1", "EUR", { gift: { giftType: "card" } }, { reason: "burst", requestId: `burst-${ann}-${i}` }),
        ),
      );
      const elapsed = Date.now() - started;
      assert.equal(new Set(results.map((r) => r.action!.actionId)).size, calls);
      assert.ok(elapsed >= ((calls - burst) / rate) * 1000 * 0.8, `${elapsed} ms`);
      assert.equal(fromMoney((await patient.getBudget(ann)).remaining), String(1000 - calls));
    } finally {
      assert.equal(await server.stop(), 0, server.logs());
    }
  });
});
