"""GetBudget over HTTP/JSON (Connect) vs over gRPC, side by side in one run, on one `leeway serve`.

One server (SQLite in a temporary directory, or PostgreSQL with --postgres: $LEEWAY_TEST_POSTGRES_URL in a fresh
schema), one budget with a few actions. Each round runs, for --seconds each, ``--in-flight`` concurrent callers
(asyncio tasks in this process) of:

- gRPC: ``leeway.v1.BudgetService/GetBudget`` on a grpc.aio channel;
- HTTP JSON: ``POST /leeway.v1.BudgetService/GetBudget`` with a JSON body, keep-alive connections (httpx);
- HTTP proto: the same with ``application/proto`` bodies;

rounds alternate the transports (--rounds), and the table prints the median over rounds of calls/s, of the
median latency and of the server process's (and this client's) CPU time per call, and ratios to gRPC. The client shares the
machine with the server (and its Python HTTP client costs more CPU than grpcio's): compare rows, not absolute
figures; the server's CPU per call is the transport's own cost.

Usage: .venv/bin/python scripts/bench_http.py [--seconds 3] [--rounds 3] [--in-flight 8] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from leeway.v1 import budget_pb2, budget_pb2_grpc  # noqa: E402
from leeway_client import GiftDetails, LeewayClient, make_policy  # noqa: E402


def start_server(database_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """`leeway serve` on ephemeral ports: (process, gRPC target, HTTP base URL)."""
    port_file, http_port_file = workdir / "port", workdir / "http-port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env.update(
        LEEWAY_GRPC_ADDRESS="127.0.0.1:0",
        LEEWAY_HTTP_ADDRESS="127.0.0.1:0",
        LEEWAY_DATABASE_URL=database_url,
        LEEWAY_METRICS_ADDRESS="off",
        LEEWAY_LOG_LEVEL="warning",
        LEEWAY_LOG_FORMAT="json",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "leeway.cli", "serve", "--port-file", str(port_file), "--http-port-file",
         str(http_port_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().endswith("\n")):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {(workdir / 'server.log').read_text()}")
        time.sleep(0.05)
    return process, f"127.0.0.1:{int(port_file.read_text())}", f"http://127.0.0.1:{int(http_port_file.read_text())}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    call: Callable[[], Awaitable[None]], in_flight: int, seconds: float, server_pid: int
) -> tuple[float, float, float, float]:
    """(calls per second, median latency in ms, server and client CPU ms per call) of ``in_flight`` tasks calling
    ``call`` for ``seconds``."""
    latencies: list[float] = []
    stop = 0.0  # set after the warm-up: a slow warm-up must not eat the measured window

    async def caller() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    for _ in range(20):  # warm up connections
        await call()
    began, cpu, own = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
    stop = began + seconds
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    calls = len(latencies)
    server_ms = (cpu_seconds(server_pid) - cpu) * 1000 / calls
    client_ms = (time.process_time() - own) * 1000 / calls
    return calls / (time.perf_counter() - began), statistics.median(latencies) * 1000, server_ms, client_ms


async def measure(
    target: str, base: str, employee: str, args: argparse.Namespace, server_pid: int
) -> dict[str, list[tuple[float, float, float, float]]]:
    request = budget_pb2.GetBudgetRequest(employee_id=employee)
    body_json = json.dumps({"employeeId": employee}).encode()
    body_proto = request.SerializeToString()
    results: dict[str, list[tuple[float, float, float, float]]] = {"gRPC": [], "HTTP JSON": [], "HTTP proto": []}
    limits = httpx.Limits(max_connections=args.in_flight, max_keepalive_connections=args.in_flight)
    async with grpc.aio.insecure_channel(target) as channel, httpx.AsyncClient(base_url=base, limits=limits) as http:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)

        async def over_grpc() -> None:
            reply = await stub.GetBudget(request, timeout=10)
            assert reply.budget.employee_id == employee

        async def over_json() -> None:
            reply = await http.post("/leeway.v1.BudgetService/GetBudget", content=body_json,
                                    headers={"content-type": "application/json"})  # fmt: skip
            assert reply.status_code == 200 and reply.json()["budget"]["employeeId"] == employee, reply.text

        async def over_proto() -> None:
            reply = await http.post("/leeway.v1.BudgetService/GetBudget", content=body_proto,
                                    headers={"content-type": "application/proto"})  # fmt: skip
            assert reply.status_code == 200
            assert budget_pb2.GetBudgetResponse.FromString(reply.content).budget.employee_id == employee

        for _ in range(args.rounds):
            for name, call in (("gRPC", over_grpc), ("HTTP JSON", over_json), ("HTTP proto", over_proto)):
                results[name].append(await load(call, args.in_flight, args.seconds, server_pid))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL ($LEEWAY_TEST_POSTGRES_URL) instead of SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leeway-bench-http-") as tmp:
        workdir = Path(tmp)
        schema = None
        if args.postgres:
            from pgschema import PostgresSchema

            schema = PostgresSchema("benchhttp")
            database_url, engine = schema.url, "PostgreSQL"
        else:
            database_url, engine = f"sqlite:///{workdir}/bench.sqlite", "SQLite"
        process, target, base = start_server(database_url, workdir)
        try:
            with LeewayClient(target) as client:
                client.open_budget("bench-ann", "desk", make_policy(currency="EUR", period_allowance=100000))
                for i in range(5):
                    client.record_action("bench-ann", f"guest-{i}", "10", "EUR", GiftDetails(gift_type="wine"),
                                         reason="bench")  # fmt: skip
            results = asyncio.run(measure(target, base, "bench-ann", args, process.pid))
        finally:
            process.terminate()
            process.wait(timeout=30)
            if schema is not None:
                schema.drop()
    grpc_rate = statistics.median(run[0] for run in results["gRPC"])
    grpc_cpu = statistics.median(run[2] for run in results["gRPC"])
    print(f"\nGetBudget, {args.in_flight} in flight, {engine}, median of {args.rounds} rounds of {args.seconds:g} s "
          "(client and server on this machine)\n")  # fmt: skip
    print("| engine | transport | calls/s | median latency ms | calls/s vs gRPC | server CPU ms/call | vs gRPC "
          "| client CPU ms/call |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        rate = statistics.median(run[0] for run in runs)
        latency = statistics.median(run[1] for run in runs)
        cpu = statistics.median(run[2] for run in runs)
        client = statistics.median(run[3] for run in runs)
        print(f"| {engine} | {name} | {rate:,.0f} | {latency:.2f} | {rate / grpc_rate:.2f} | {cpu:.2f} | "
              f"{cpu / grpc_cpu:.2f} | {client:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
