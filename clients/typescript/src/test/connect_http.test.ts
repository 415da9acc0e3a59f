// A real Connect client (@connectrpc/connect-node's Connect transport, over HTTP/1.1) with the generated types,
// calling the HTTP/JSON front of a live `leeway serve` (authentication on, API keys): JSON with reads by GET,
// binary, a server stream, errors with their details, and the LeewayClient wrapper over the same transport.
import assert from "node:assert/strict";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AuditService } from "../gen/leeway/v1/audit_pb.js";
import { BudgetService } from "../gen/leeway/v1/budget_pb.js";
import { ActionService } from "../gen/leeway/v1/action_pb.js";
import { ActionKind, Period } from "../gen/leeway/v1/policy_pb.js";
import { BadRequestSchema, ErrorInfoSchema, PreconditionFailureSchema } from "../gen/google/rpc/error_details_pb.js";
import { LeewayClient, LeewayError, fromMoney, makePolicy, toMoney } from "../index.js";
import { type LeewayServer, startServer } from "./server.js";

const key = () => `lwk_${randomBytes(24).toString("base64url")}`;
const sha256 = (text: string) => createHash("sha256").update(text).digest("hex");
const uid = (prefix: string) => `${prefix}-${randomUUID().slice(0, 8)}`;

describe("the HTTP/JSON (Connect) front, from a Connect client", () => {
  const adminKey = key();
  const crmKey = key();
  let server: LeewayServer;

  before(async () => {
    server = await startServer({
      LEEWAY_AUTH: "required",
      LEEWAY_API_KEYS: `root:admin:${sha256(adminKey)},crm-main:crm:${sha256(crmKey)}`,
      LEEWAY_RATE_LIMIT_PER_SECOND: "0",
      LEEWAY_METRICS_ADDRESS: "127.0.0.1:0",
    });
    assert.ok(server.httpUrl, "the server wrote its HTTP port");
  });

  after(async () => {
    assert.equal(await server.stop(), 0, server.logs());
  });

  const transport = (options: { binary?: boolean; get?: boolean } = {}) =>
    createConnectTransport({
      baseUrl: server.httpUrl,
      httpVersion: "1.1",
      useBinaryFormat: options.binary ?? false,
      useHttpGet: options.get ?? false,
    });
  const as = (apiKey: string) => ({ headers: { authorization: `ApiKey ${apiKey}` } });

  test("JSON: open, record, read by GET, refusals with ErrorInfo and PreconditionFailure", async () => {
    const budgets = createClient(BudgetService, transport({ get: true }));
    const actions = createClient(ActionService, transport({ get: true }));
    const employee = uid("ann");
    await budgets.openBudget(
      {
        requestId: uid("open"),
        employeeId: employee,
        teamId: "desk",
        policy: {
          periodAllowance: toMoney("500", "USD"),
          period: Period.MONTH,
          perActionLimit: toMoney("100", "USD"),
          allowedKinds: [ActionKind.GIFT],
        },
      },
      as(adminKey),
    );
    const recorded = await actions.recordAction(
      {
        requestId: uid("gift"),
        employeeId: employee,
        customerId: "guest-42",
        amount: toMoney("45.50", "USD"),
        reason: "Dinner served late",
        details: { case: "gift", value: { giftType: "flowers" } },
      },
      as(crmKey),
    );
    assert.equal(fromMoney(recorded.action!.amount!), "45.5");
    const { budget } = await budgets.getBudget({ employeeId: employee }, as(crmKey)); // a GET request
    assert.equal(fromMoney(budget!.remaining!), "454.5");
    // The server counts HTTP calls by HTTP method: the read went by GET, the write by POST.
    const serving = server.logs().split("\n").find((line) => line.includes('"serving"'));
    const metrics = await (await fetch(`http://${JSON.parse(serving!).metrics}/metrics`)).text();
    assert.match(metrics, /leeway_http_calls_total\{grpc_method="GetBudget",grpc_service="leeway.v1.BudgetService",http_method="GET"\} [1-9]/);
    assert.match(metrics, /leeway_http_calls_total\{grpc_method="RecordAction",grpc_service="leeway.v1.ActionService",http_method="POST"\} [1-9]/);

    await assert.rejects(
      () =>
        actions.recordAction(
          {
            requestId: uid("gift"),
            employeeId: employee,
            customerId: "guest-42",
            amount: toMoney("150", "USD"),
            reason: "too much",
            details: { case: "gift", value: { giftType: "car" } },
          },
          as(crmKey),
        ),
      (error: unknown) => {
        assert.ok(error instanceof ConnectError);
        assert.equal(error.code, Code.FailedPrecondition);
        assert.equal(error.findDetails(ErrorInfoSchema)[0]?.reason, "PER_ACTION_LIMIT_EXCEEDED");
        assert.ok(error.findDetails(PreconditionFailureSchema)[0]?.violations.length);
        return true;
      },
    );
    await assert.rejects(
      () => budgets.openBudget({ employeeId: uid("x") }, as(adminKey)),
      (error: unknown) => {
        assert.ok(error instanceof ConnectError);
        assert.equal(error.code, Code.InvalidArgument);
        const fields = error.findDetails(BadRequestSchema)[0]?.fieldViolations.map((v) => v.field) ?? [];
        assert.ok(fields.includes("team_id"), fields.join());
        return true;
      },
    );
    await assert.rejects(
      () => budgets.getBudget({ employeeId: employee }),
      (error: unknown) => error instanceof ConnectError && error.code === Code.Unauthenticated,
    );
    await assert.rejects(
      () => budgets.openBudget({ employeeId: uid("x") }, as(crmKey)),
      (error: unknown) => error instanceof ConnectError && error.code === Code.PermissionDenied,
    );
  });

  test("binary: the LeewayClient wrapper over the Connect transport, and StreamEvents as a server stream", async () => {
    const admin = new LeewayClient("unused", { apiKey: adminKey, transport: transport({ binary: true }) });
    const crm = new LeewayClient("unused", { apiKey: crmKey, transport: transport({ binary: true }) });
    const employee = uid("bea");
    await admin.openBudget(employee, "desk", makePolicy({ currency: "EUR", periodAllowance: "100", perActionLimit: "50", allowedKinds: ["GIFT"] }));
    const { action } = await crm.recordAction(employee, "guest-7", "12.25", "EUR", { gift: { giftType: "wine" } }, { reason: "late" });
    try {
      await crm.recordAction(employee, "guest-7", "60", "EUR", { gift: { giftType: "wine" } }, { reason: "late" });
      assert.fail("over the per-action limit");
    } catch (error) {
      assert.ok(error instanceof LeewayError);
      assert.equal(error.code, "FAILED_PRECONDITION");
      assert.equal(error.reason, "PER_ACTION_LIMIT_EXCEEDED");
    }
    const audit = createClient(AuditService, transport({ binary: true }));
    const types: string[] = [];
    for await (const { event } of audit.streamEvents({ employeeId: employee }, as(adminKey))) {
      types.push(event!.eventType);
    }
    assert.ok(types.length >= 2, types.join());
    assert.ok(types.some((t) => t.includes("Action")), types.join());
    assert.ok(action!.actionId);
  });
});
