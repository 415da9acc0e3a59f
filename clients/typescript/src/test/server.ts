// Starts a real `leeway serve` process (SQLite in a temporary directory) for the tests and examples.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

const REPO = resolve(import.meta.dirname, "../../../..");

export interface LeewayServer {
  target: string;
  /** The HTTP/JSON (Connect protocol) front's base URL, e.g. http://127.0.0.1:41234. */
  httpUrl: string;
  stop(): Promise<number | null>;
  logs(): string;
}

/** The Python that has Leeway installed: $LEEWAY_PYTHON, else the repository's .venv. */
export function python(): string {
  return process.env.LEEWAY_PYTHON ?? join(REPO, ".venv", "bin", "python");
}

export async function startServer(env: Record<string, string> = {}): Promise<LeewayServer> {
  const dir = mkdtempSync(join(tmpdir(), "leeway-ts-"));
  const portFile = join(dir, "port");
  const httpPortFile = join(dir, "http-port");
  let output = "";
  const child: ChildProcess = spawn(python(), ["-m", "leeway.cli", "serve", "--port-file", portFile, "--http-port-file", httpPortFile], {
    env: {
      ...process.env,
      LEEWAY_GRPC_ADDRESS: "127.0.0.1:0",
      LEEWAY_HTTP_ADDRESS: "127.0.0.1:0",
      LEEWAY_DATABASE_URL: `sqlite:///${join(dir, "leeway.sqlite")}`,
      LEEWAY_METRICS_ADDRESS: "off",
      LEEWAY_PROJECTIONS_METRICS_ADDRESS: "off",
      LEEWAY_LOG_FORMAT: "json",
      LEEWAY_SHUTDOWN_GRACE_SECONDS: "2",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.on("data", (chunk) => (output += chunk));
  child.stderr?.on("data", (chunk) => (output += chunk));
  const deadline = Date.now() + 30_000;
  while (!(existsSync(portFile) && readFileSync(portFile, "utf8").endsWith("\n"))) {
    if (child.exitCode !== null) throw new Error(`leeway serve exited with ${child.exitCode}:\n${output}`);
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`leeway serve wrote no port file within 30 s:\n${output}`);
    }
    await sleep(50);
  }
  const port = Number(readFileSync(portFile, "utf8").trim());
  const httpPort = existsSync(httpPortFile) ? Number(readFileSync(httpPortFile, "utf8").trim()) : 0;
  return {
    target: `127.0.0.1:${port}`,
    httpUrl: httpPort ? `http://127.0.0.1:${httpPort}` : "",
    logs: () => output,
    stop: () =>
      new Promise((done) => {
        child.once("exit", (code) => done(code));
        child.kill("SIGTERM");
      }),
  };
}
