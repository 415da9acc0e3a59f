// clients/examples/typescript/crm-gift.ts against a real server (the smoke test of the TypeScript example).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { resolve } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { LeewayClient, makePolicy } from "../index.js";
import { type LeewayServer, startServer } from "./server.js";

const EXAMPLE = resolve(import.meta.dirname, "../../../examples/typescript/crm-gift.js");
let server: LeewayServer;

before(async () => {
  server = await startServer();
});

after(async () => {
  assert.equal(await server.stop(), 0, server.logs());
});

async function runExample(...args: string[]): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [EXAMPLE, ...args], {
      env: { ...process.env, LEEWAY_TARGET: server.target },
    });
    return { code: 0, stdout };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout + failed.stderr };
  }
}

test("the CRM example sends flowers once per case and shows refusals in words", async () => {
  const ann = `ann-${randomUUID().slice(0, 8)}`;
  await new LeewayClient(server.target).openBudget(ann, "desk", makePolicy({ currency: "EUR", periodAllowance: "60", perActionLimit: "50" }));
  const sent = await runExample("send", ann, "guest-7", "case-1", "45");
  assert.equal(sent.code, 0, sent.stdout);
  assert.match(sent.stdout, /^Sent flowers \(45 EUR\); 15 EUR left: act_/);
  const again = await runExample("send", ann, "guest-7", "case-1", "45");
  assert.equal(again.stdout, sent.stdout, "the same case does not send twice");
  const refused = await runExample("send", ann, "guest-8", "case-2", "45");
  assert.equal(refused.code, 3, refused.stdout);
  assert.match(refused.stdout, /^Not sent: Your goodwill budget for this period is used up\. .*\[BUDGET_EXHAUSTED\]/);
  const actionId = sent.stdout.trim().split(" ").at(-1)!;
  const won = await runExample("win", actionId, "The guest came back", "Lovely");
  assert.equal(won.code, 0, won.stdout);
  assert.equal(won.stdout, `Win documented for ${ann}: The guest came back\n`);
  assert.equal((await new LeewayClient(server.target).getAction(actionId)).win!.customerQuote, "Lovely");
  const twice = await runExample("win", actionId, "again");
  assert.equal(twice.code, 3);
  assert.match(twice.stdout, /\[WIN_ALREADY_DOCUMENTED\]/);
});
