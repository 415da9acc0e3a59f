"""What tracing costs (README, "Observability"): RecordAction/s at 32 in flight, paired rounds, medians.

Three `leeway serve` processes, each on a database of its own, loaded one at a time in alternating rounds (so
that the machine's other load weighs on each alike):

- ``base``: the service as it was before tracing existed (``--base REV``, default the first parent of the
  commit that added leeway/tracing.py), from a `git worktree` of that revision in a temp directory;
- ``off``: this tree, no OTEL_* variable (tracing off: the default);
- ``on``: this tree with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at an OTLP/gRPC collector in this script (it
  counts what it receives), every call sampled (the SDK's default sampler): the RPC, batch and save spans are
  made and exported.

Prints each configuration's median RecordAction/s, p99 and server CPU milliseconds per call (the server process
and its projections child: less sensitive to the machine's other load than the rate), and the medians of the
paired ratios off/base and on/off. Usage: .venv/bin/python scripts/bench_tracing.py [--rounds 7] [--seconds 4] [--engine sqlite|postgres]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench import run_load, start_server, tree_cpu_seconds  # noqa: E402
from leeway_client import GiftDetails, LeewayClient, make_policy  # noqa: E402

CONCURRENCY = 32


class CountingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802, ANN001, ANN201 - the generated name
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self.lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


def base_revision() -> str:
    added = subprocess.run(
        ["git", "-C", str(ROOT), "log", "--diff-filter=A", "--format=%H", "--", "service/leeway/tracing.py"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    if not added:
        raise SystemExit("no commit adds service/leeway/tracing.py: give --base")
    return f"{added[-1]}^"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--base", default="", help="the revision to compare with (default: before tracing)")
    args = parser.parse_args()

    collector = CountingCollector()
    otlp = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, otlp)
    otlp_port = otlp.add_insecure_port("127.0.0.1:0")
    otlp.start()

    tmp = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    base_tree = tmp / "base-tree"
    revision = args.base or base_revision()
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base_tree), revision], check=True)
    schemas = []
    processes = {}
    try:
        configs = {
            "base": {"PYTHONPATH": str(base_tree / "service")},
            "off": {},
            "on": {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
        }
        targets = {}
        for name, extra in configs.items():
            workdir = tmp / name
            workdir.mkdir()
            if args.engine == "postgres":
                sys.path.insert(0, str(ROOT / "tests"))
                from pgschema import PostgresSchema

                schema = PostgresSchema(f"bt{name}")
                schemas.append(schema)
                url = schema.url
                # Three servers and their children share a PostgreSQL that other work uses too: small pools.
                extra = {**extra, "LEEWAY_POSTGRES_POOL_SIZE": "3"}
            else:
                url = f"sqlite:///{workdir}/leeway.sqlite"
            process, target = start_server(url, workdir, **extra)
            processes[name], targets[name] = process, target
        employees = [f"bt-{i}" for i in range(100)]
        clients = {name: LeewayClient(target, timeout=60) for name, target in targets.items()}
        for client in clients.values():
            for i, employee in enumerate(employees):
                client.open_budget(employee, f"bt-team-{i % 10}", make_policy(currency="EUR", period_allowance=10**9))

        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in configs}
        order = list(configs)
        for round_number in range(args.rounds):
            random.shuffle(order)
            for name in order:
                client = clients[name]

                def record(n: int, client: LeewayClient = client) -> None:
                    client.record_action(employees[n % 100], f"guest-{n % 1000}", 1, "EUR",
                                         GiftDetails(gift_type="tea"), reason="bench")

                cpu_before = tree_cpu_seconds(processes[name].pid)
                rate, _p50, p99 = run_load(CONCURRENCY, args.seconds, record)
                cpu_ms = (tree_cpu_seconds(processes[name].pid) - cpu_before) * 1000 / max(1.0, rate * args.seconds)
                results[name].append((rate, p99, cpu_ms))
            print(f"round {round_number + 1}: " + ", ".join(f"{n} {results[n][-1][0]:,.0f}/s" for n in configs),
                  file=sys.stderr)
        for client in clients.values():
            client.close()

        def ratios(a: str, b: str, field: int = 0) -> list[float]:
            return [x[field] / y[field] for x, y in zip(results[a], results[b], strict=True)]

        print(f"\nRecordAction at {CONCURRENCY} in flight, {args.engine}, {args.rounds} paired rounds of "
              f"{args.seconds:g} s (base: {revision})\n")
        print("| configuration | RecordAction/s (median) | min - max | p99 ms (median) | server CPU ms / call (median) |")
        print("|---|---|---|---|---|")
        for name in configs:
            rates = [r for r, _, _ in results[name]]
            print(f"| {name} | {statistics.median(rates):,.0f} | {min(rates):,.0f} - {max(rates):,.0f} | "
                  f"{statistics.median(p for _, p, _ in results[name]):.1f} | "
                  f"{statistics.median(c for _, _, c in results[name]):.2f} |")
        for label, a, b in (("off / base", "off", "base"), ("on / off", "on", "off")):
            rate, cpu = ratios(a, b), ratios(a, b, 2)
            print(f"\n{label}: RecordAction/s median {statistics.median(rate):.3f} (rounds: "
                  f"{', '.join(f'{r:.2f}' for r in rate)}); CPU per call median {statistics.median(cpu):.3f} "
                  f"(rounds: {', '.join(f'{r:.2f}' for r in cpu)})")
        print(f"spans received by the collector: {collector.spans:,}")
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(30)
        otlp.stop(0)
        for schema in schemas:
            schema.drop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
