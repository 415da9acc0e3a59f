// The npm package as a user gets it: `npm pack` from a copy of the sources as a fresh clone has them (no dist/),
// the tarball's contents, then an empty project that installs the tarball, type-checks a TypeScript file
// against the package's types, imports it and calls a live server.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { type LeewayServer, startServer } from "./server.js";

const run = promisify(execFile);
const PACKAGE = resolve(import.meta.dirname, "../..");
const NPM = process.platform === "win32" ? "npm.cmd" : "npm";

/** Every message schema, enum and file descriptor the generated modules export. */
function generatedNames(): string[] {
  const names: string[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith("_pb.ts")) {
        for (const match of readFileSync(path, "utf8").matchAll(/^export (?:const|enum) (\w+)/gm)) names.push(match[1]);
      }
    }
  };
  walk(join(PACKAGE, "src", "gen"));
  return names;
}

let server: LeewayServer;
let work: string;
let tarball: string;
let packed: string[];

before(async () => {
  server = await startServer();
  work = mkdtempSync(join(tmpdir(), "leeway-pack-"));
  // A fresh clone's package: the committed files, no dist/ (node_modules linked: the build needs tsc).
  const clone = join(work, "clone");
  mkdirSync(clone);
  for (const name of ["package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json", "README.md", "LICENSE", "src"]) {
    cpSync(join(PACKAGE, name), join(clone, name), { recursive: true });
  }
  symlinkSync(join(PACKAGE, "node_modules"), join(clone, "node_modules"), "dir");
  const { stdout } = await run(NPM, ["pack", "--json", "--pack-destination", work], { cwd: clone, maxBuffer: 16 << 20 });
  const report = JSON.parse(stdout.slice(stdout.indexOf("["))) as { filename: string; files: { path: string }[] }[];
  tarball = join(work, report[0].filename);
  packed = report[0].files.map((f) => f.path);
});

after(async () => {
  assert.equal(await server.stop(), 0, server.logs());
});

test("the tarball has the built dist/, its types, the README and the LICENSE, and no tests", () => {
  for (const needed of ["dist/index.js", "dist/index.d.ts", "dist/client.js", "dist/gen/leeway/v1/audit_pb.js", "README.md", "LICENSE", "package.json"]) {
    assert.ok(packed.includes(needed), `${needed} missing from the package: ${packed.join(", ")}`);
  }
  const tests = packed.filter((p) => p.includes("/test/") || /\.test\.[jt]s/.test(p) || p.includes("server.ts"));
  assert.deepEqual(tests, []);
  const manifest = JSON.parse(readFileSync(join(PACKAGE, "package.json"), "utf8"));
  for (const entry of [manifest.main, manifest.types, manifest.exports["."].default, manifest.exports["."].types]) {
    assert.ok(packed.includes(entry.replace(/^\.\//, "")), `${entry} (package.json) is not in the package`);
  }
  assert.equal(readFileSync(join(PACKAGE, "LICENSE"), "utf8"), readFileSync(join(PACKAGE, "../../LICENSE"), "utf8"));
});

test("installed into an empty project: type-checks, imports, exports every generated type, calls a live server", async () => {
  const app = join(work, "app");
  mkdirSync(app);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "crm-app", private: true, type: "module" }));
  await run(NPM, ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error", tarball], { cwd: app });
  writeFileSync(
    join(app, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        strict: true,
        outDir: ".",
        types: ["node"],
        typeRoots: [join(PACKAGE, "node_modules/@types")],
      },
      files: ["main.ts"],
    }),
  );
  writeFileSync(
    join(app, "main.ts"),
    `import * as leeway from "@leeway/client";
import { LeewayClient, makePolicy, fromMoney, type Event, type VerifyIntegrityResponse } from "@leeway/client";

const client = new LeewayClient(process.argv[2], { retries: 3 });
const ann = "ann-" + Date.now();
await client.openBudget(ann, "desk", makePolicy({ currency: "EUR", periodAllowance: "50" }));
const { budget } = await client.recordAction(ann, "guest-1", "12.50", "EUR", { gift: { giftType: "flowers" } }, { reason: "late" });
const report: VerifyIntegrityResponse = await client.verifyIntegrity({ employeeId: ann });
const events: Event[] = [];
for await (const event of client.streamEvents({ employeeId: ann })) events.push(event);
const trail = await client.getAuditTrail({ employeeId: ann });
console.log(JSON.stringify({
  remaining: fromMoney(budget!.remaining),
  ok: report.ok,
  events: events.length,
  trail: trail.entries.length,
  exports: Object.keys(leeway),
}));
`,
  );
  await run(process.execPath, [join(PACKAGE, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json"], { cwd: app });
  const { stdout } = await run(process.execPath, ["main.js", server.target], { cwd: app });
  const result = JSON.parse(stdout) as { remaining: string; ok: boolean; events: number; trail: number; exports: string[] };
  assert.equal(result.remaining, "37.5");
  assert.equal(result.ok, true);
  assert.ok(result.events >= 2 && result.trail >= 2, stdout);
  const missing = generatedNames().filter((name) => !result.exports.includes(name));
  assert.deepEqual(missing, [], "generated types the package does not export");
  for (const name of ["LeewayClient", "LeewayError", "AuditService", "InsightsService", "EventSchema", "GetKpisRequestSchema", "MoneySchema", "RetryInfoSchema"]) {
    assert.ok(result.exports.includes(name), name);
  }
});
