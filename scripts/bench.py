"""Throughput benchmark (`make bench`): a script that prints figures, not a test.

For each engine (PostgreSQL at $LEEWAY_TEST_POSTGRES_URL in a fresh schema, and SQLite in a temp directory) it
starts a real `leeway serve` process and measures, with the client on the same machine:

1. RecordAction/s and p50/p99 latency at 1, 8 and 32 requests in flight, over 100 employees;
2. the same server's no-op RPC rate (grpc.health.v1 Check) at the same concurrency: the transport ceiling;
3. the ratio (1)/(2), and the ratio of (1) to the naive one-save-per-request path (a second server on the same
   database with LEEWAY_BATCH_MAX=1, group commit off), measured in the same run;
4. GetBudget latency for a budget with 10 events and one with --big-history events (default 100,000);
5. the server's peak RSS (VmHWM, with its projections child), before and after reading the long history;
6. the server's CPU time per RecordAction and per Check (what bounds the ratio when the machine's cores are
   shared by client, server, projections and database), split into its group-commit writer thread and the rest
   (what bounds the ratio even if the writes cost nothing), and RecordAction at 32 in flight on a server that runs
   its projections in its own threads (LEEWAY_PROJECTIONS=inprocess) instead of its child process, and the
   group-commit writer alone (execute_batch in the bench process, no gRPC): its actions/s and CPU per action.

Usage: .venv/bin/python scripts/bench.py [--seconds 5] [--big-history 100000] [--engines postgres,sqlite]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from leeway_client import GiftDetails, LeewayClient, make_policy  # noqa: E402


def start_server(database_url: str, workdir: Path, **extra: str) -> tuple[subprocess.Popen, str]:
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env.update(
        LEEWAY_GRPC_ADDRESS="127.0.0.1:0",
        LEEWAY_HTTP_ADDRESS="127.0.0.1:0",
        LEEWAY_DATABASE_URL=database_url,
        LEEWAY_METRICS_ADDRESS="off",
        LEEWAY_PROJECTIONS_METRICS_ADDRESS="off",
        LEEWAY_LOG_LEVEL="warning",
        LEEWAY_LOG_FORMAT="json",
        LEEWAY_GRPC_MAX_CONCURRENT_RPCS="1000",
        LEEWAY_RATE_LIMIT_PER_SECOND="0",
        **extra,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "leeway.cli", "serve", "--port-file", str(port_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "server.log", "wb"),  # noqa: SIM115
    )
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().endswith("\n")):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {(workdir / 'server.log').read_text()}")
        time.sleep(0.05)
    return process, f"127.0.0.1:{int(port_file.read_text())}"


def process_tree(pid: int) -> Iterator[tuple[Path, list[str]]]:
    """(/proc entry, stat fields after the command name) of process ``pid`` and of its live children (the
    projections child, if any)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            yield entry, fields


def peak_rss_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of process ``pid`` plus that of its live children."""
    total = 0.0
    for entry, _ in process_tree(pid):
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def settle(database_url: str) -> None:
    """A checkpoint after the bulk writes above, so that its flushing does not fall into the measured levels
    (PostgreSQL; needs a role allowed to run CHECKPOINT, skipped otherwise)."""
    if not database_url.startswith("postgres"):
        return
    import psycopg

    from leeway.settings import Settings

    env = Settings(database_url=database_url).eventsourcing_env()
    try:
        with psycopg.connect(
            dbname=env["POSTGRES_DBNAME"], host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"],
            user=env["POSTGRES_USER"], password=env["POSTGRES_PASSWORD"], autocommit=True,
        ) as connection:
            connection.execute("CHECKPOINT")
    except psycopg.Error as error:
        print(f"(no CHECKPOINT before measuring: {error})", file=sys.stderr)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` and its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    return sum((int(fields[11]) + int(fields[12])) / tick for _, fields in process_tree(pid))


ROLES = ("client", "server", "projections child", "PostgreSQL")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot (/proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)  # idle and iowait are not busy


#: The server's group-commit writer thread (its OS-level name, see leeway.runtime.name_os_thread).
WRITER_THREAD = "leeway-writer"


def writer_thread_seconds(pid: int) -> float:
    """CPU seconds used so far by the server's writer thread (0 if it has not started)."""
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == WRITER_THREAD:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return 0.0


def cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds used so far by: this process (the load client), the server ``pid`` (and, apart, its writer
    thread), its children (the projections child), and every process named ``postgres`` (the database, when it
    runs on this machine)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = dict.fromkeys(ROLES, 0.0)
    used["client"] = time.process_time()
    used[WRITER_THREAD] = writer_thread_seconds(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(entry.name) == pid:
            used["server"] += seconds
        elif int(fields[1]) == pid:
            used["projections child"] += seconds
        elif comm == "postgres":
            used["PostgreSQL"] += seconds
    return used


def measured_load(
    pid: int, concurrency: int, seconds: float, call: Callable[[int], None]
) -> tuple[float, float, float, float, dict[str, float]]:
    """run_load, plus the server's CPU milliseconds per call (with its projections child), and the CPU
    milliseconds per call of each role (client, server, projections child, PostgreSQL)."""
    before, ticks = cpu_by_role(pid), machine_ticks()
    rate, p50, p99 = run_load(concurrency, seconds, call)
    after, ticks_after = cpu_by_role(pid), machine_ticks()
    calls = max(1.0, rate * seconds)
    per_call = {role: (after[role] - before[role]) * 1000 / calls for role in (*ROLES, WRITER_THREAD)}
    per_call["machine busy"] = (ticks_after[0] - ticks[0]) / max(1, ticks_after[1] - ticks[1])
    return rate, p50, p99, per_call["server"] + per_call["projections child"], per_call


def run_load(concurrency: int, seconds: float, call: Callable[[int], None]) -> tuple[float, float, float]:
    """(calls/s, p50 ms, p99 ms) of ``call`` run by ``concurrency`` threads for ``seconds``."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(index: int) -> None:
        mine: list[float] = []
        n = 0
        while time.monotonic() < stop:
            started = time.perf_counter()
            call(index * 1_000_000 + n)
            mine.append(time.perf_counter() - started)
            n += 1
        with lock:
            latencies.extend(mine)

    began = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    elapsed = time.monotonic() - began
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return len(latencies) / elapsed, p50, p99


def write_long_history(database_url: str, employee: str, events: int) -> None:
    """A budget with ``events`` actions, written straight through the application in large saves."""
    from datetime import datetime, timezone

    from leeway.application import LeewayApplication
    from leeway.domain.actions import ActionRequest
    from leeway.domain.budget import Budget
    from leeway.domain.money import Money
    from leeway.domain.periods import PeriodKind
    from leeway.domain.policy import ActionKind, Policy
    from leeway.settings import Settings

    app = LeewayApplication(env=Settings(database_url=database_url).eventsourcing_env())
    policy, problems = Policy.build(
        period_allowance=Money(Decimal(10) ** 11, "EUR"), period=PeriodKind.YEAR, per_action_limit=None,
        allowed_kinds=[ActionKind.GIFT],
    )
    assert policy is not None, problems
    now = datetime.now(timezone.utc)
    budget = Budget.open(employee_id=employee, team_id="bench-history", display_name="", policy=policy, now=now)
    request = ActionRequest(customer_id="guest", case_id="", kind=ActionKind.GIFT, amount=Money(Decimal(1), "EUR"),
                            reason="bench", details={"gift_type": "tea"})
    batch = 5_000
    while budget.version < events:
        for _ in range(min(batch, events - budget.version)):
            budget.record_action(request, request_id="", now=now)
        app.save(budget)
    app.close()


LEVELS = (1, 8, 32)


def writer_alone(database_url: str, employees: list[str], seconds: float = 3.0) -> tuple[float, float]:
    """The group-commit writer without gRPC: batches of 32 RecordActions through ``execute_batch`` in this process
    (on the budgets the server used). Returns (actions/s, CPU µs per action)."""
    from leeway.application import LeewayApplication
    from leeway.application.commands import RecordAction
    from leeway.domain.money import Money
    from leeway.domain.policy import ActionKind
    from leeway.settings import Settings

    app = LeewayApplication(env=Settings(database_url=database_url).eventsourcing_env())
    try:
        def batch(n: int) -> list[RecordAction]:
            return [
                RecordAction(
                    request_id=f"alone-{uuid.uuid4()}", employee_id=employees[(n * 32 + i) % len(employees)],
                    customer_id=f"guest-{(n * 32 + i) % 1000}", case_id="", kind=ActionKind.GIFT,
                    amount=Money(Decimal(1), "EUR"), reason="bench", details={"gift_type": "tea"},
                )
                for i in range(32)
            ]

        for n in range(3):  # warm-up: loads and caches the budgets and ledgers
            app.execute_batch(batch(n))
        done, n = 0, 3
        cpu, began = time.process_time(), time.perf_counter()
        while time.perf_counter() - began < seconds:
            app.execute_batch(batch(n))
            done, n = done + 32, n + 1
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        return done / elapsed, cpu * 1e6 / done
    finally:
        app.close()


def wait_for_projections(database_url: str, timeout: float = 300) -> None:
    """Waits until `leeway projections status` shows no lag (the read models hold the whole log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env.update(LEEWAY_DATABASE_URL=database_url, LEEWAY_LOG_LEVEL="warning")
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "leeway.cli", "projections", "status"], env=env, capture_output=True, text=True
        )
        lags = [int(line.split()[3]) for line in done.stdout.splitlines()[1:] if line.strip()]
        if done.returncode == 0 and lags and not any(lags):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"projections did not catch up: {done.stdout}{done.stderr}")
        time.sleep(1)


def naive_rates(database_url: str, workdir: Path, employees: list[str], seconds: float) -> dict[int, float]:
    """RecordAction/s of a server with group commit off (one save per request) on the same database."""
    process, target = start_server(database_url, workdir, LEEWAY_BATCH_MAX="1", LEEWAY_EXPIRY_INTERVAL_SECONDS="0")
    try:
        with LeewayClient(target, timeout=60) as client:

            def record(n: int) -> None:
                client.record_action(
                    employees[n % 100], f"guest-{n % 1000}", 1, "EUR", GiftDetails(gift_type="tea"), reason="bench"
                )

            return {concurrency: run_load(concurrency, seconds, record)[0] for concurrency in LEVELS}
    finally:
        process.terminate()
        process.wait(30)


def inprocess_projections_rate(
    database_url: str, workdir: Path, employees: list[str], seconds: float
) -> tuple[float, float, float, float]:
    """RecordAction and Check at 32 in flight on a server that runs its projections in its own threads
    (LEEWAY_PROJECTIONS=inprocess, the default before the projections child)."""
    process, target = start_server(database_url, workdir, LEEWAY_PROJECTIONS="inprocess")
    try:
        with LeewayClient(target, timeout=60) as client:
            wait_for_projections(database_url)

            def record(n: int) -> None:
                client.record_action(
                    employees[n % 100], f"guest-{n % 1000}", 1, "EUR", GiftDetails(gift_type="tea"), reason="bench"
                )

            return measured_load(process.pid, 32, seconds, record)[:4]
    finally:
        process.terminate()
        process.wait(30)


def bench_engine(name: str, database_url: str, seconds: float, big_history: int) -> tuple[list[str], list[str]]:
    """The rows of the main table, and of the CPU accounting table (32 in flight)."""
    rows: list[str] = []
    rows_cpu: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        big = f"bench-big-{uuid.uuid4().hex[:8]}"
        began = time.monotonic()
        write_long_history(database_url, big, big_history)
        print(f"[{name}] wrote a {big_history}-event history in {time.monotonic() - began:.1f} s", file=sys.stderr)
        tag = uuid.uuid4().hex[:6]
        employees = [f"bench-{tag}-{i}" for i in range(100)]
        process, target = start_server(database_url, Path(tmp))
        try:
            with LeewayClient(target, timeout=60) as client:
                for i, employee in enumerate(employees):
                    client.open_budget(employee, f"bench-team-{tag}-{i % 10}", make_policy(currency="EUR", period_allowance=10**9))
                small = employees[0]
                for _ in range(9):
                    client.record_action(small, "guest", 1, "EUR", GiftDetails(gift_type="tea"), reason="bench")
                # The server's projections first work through the long history written above: measure after.
                wait_for_projections(database_url)
                settle(database_url)
                channel = grpc.insecure_channel(target)
                health = health_pb2_grpc.HealthStub(channel)

                def record(n: int) -> None:
                    client.record_action(
                        employees[n % 100], f"guest-{n % 1000}", 1, "EUR", GiftDetails(gift_type="tea"), reason="bench"
                    )

                def noop(_: int) -> None:
                    health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)

                measured = []
                for concurrency in LEVELS:
                    rate, p50, p99, cpu, roles = measured_load(process.pid, concurrency, seconds, record)
                    base, b50, b99, bcpu, base_roles = measured_load(process.pid, concurrency, seconds, noop)
                    measured.append((concurrency, rate, p50, p99, base, b50, b99, cpu, bcpu))
                accounting = [
                    (call, roles_, rate_) for call, roles_, rate_ in (("RecordAction", roles, rate), ("Check", base_roles, base))
                ]
                rss_before = peak_rss_mb(process.pid)
                timings = {}
                for label, employee in (("10 events", small), (f"{big_history:,} events", big)):
                    client.get_budget(employee)  # warm-up (connections, caches), not timed
                    samples = []
                    for _ in range(7):
                        started = time.perf_counter()
                        client.get_budget(employee)
                        samples.append((time.perf_counter() - started) * 1000)
                    timings[label] = statistics.median(samples)
                rss_after = peak_rss_mb(process.pid)
                labels = list(timings)
                channel.close()
        finally:
            process.terminate()
            process.wait(30)
        # The writer alone first: the naive server's many one-command transactions just before would still be
        # weighing on the database (PostgreSQL) while it is measured.
        alone_rate, alone_cpu = writer_alone(database_url, employees)
        naive = naive_rates(database_url, Path(tmp), employees, min(seconds, 4.0))
        threads = inprocess_projections_rate(database_url, Path(tmp), employees, seconds)
        for concurrency, rate, p50, p99, base, b50, b99, cpu, bcpu in measured:
            rows.append(
                f"| {name} | {concurrency} | {rate:,.0f} | {p50:.1f} / {p99:.1f} | {base:,.0f} | "
                f"{b50:.1f} / {b99:.1f} | {rate / base:.3f} | {p99 / b99:.1f} | {naive[concurrency]:,.0f} | "
                f"{rate / naive[concurrency]:.1f}x | {cpu:.2f} / {bcpu:.2f} |"
            )
        rate, p50, p99, cpu = threads
        _, _, _, _, base, _, b99, _, _ = measured[-1]  # the ceiling measured at 32 in flight above
        rows.append(
            f"| {name}, LEEWAY_PROJECTIONS=inprocess | 32 | {rate:,.0f} | {p50:.1f} / {p99:.1f} | (as above) | "
            f"| {rate / base:.3f} | {p99 / b99:.1f} | | | {cpu:.2f} / |"
        )
        rows.append(
            f"| {name}, writer alone (execute_batch, 32 per batch, no gRPC) | 32 | {alone_rate:,.0f} | | | | | | | | "
            f"{alone_cpu / 1000:.2f} / |"
        )
        totals = {call: sum(roles_[role] for role in ROLES) for call, roles_, _ in accounting}
        server = {call: roles_["server"] for call, roles_, _ in accounting}
        # The server's CPU per call outside the writer thread: gRPC, the servicer, waiting for and waking up.
        front = {call: roles_["server"] - roles_[WRITER_THREAD] for call, roles_, _ in accounting}
        for call, roles_, rate_ in accounting:
            cells = " | ".join(
                f"{roles_[role]:.2f}" + (f" | {roles_[WRITER_THREAD]:.2f} / {front[call]:.2f}" if role == "server" else "")
                for role in ROLES
            )
            rows_cpu.append(
                f"| {name} | {call} | {rate_:,.0f} | {roles_['machine busy']:.0%} | {cells} | {totals[call]:.2f} |"
            )
        record_rate, check_rate = accounting[0][2], accounting[1][2]
        rows_cpu.append(
            f"| {name} | ratios | {record_rate / check_rate:.2f} (measured) | | | "
            f"{server['Check'] / server['RecordAction']:.2f} | {front['Check'] / front['RecordAction']:.2f} (front) "
            f"| | | {totals['Check'] / totals['RecordAction']:.2f} |"
        )
        rows.append(
            f"| {name} | GetBudget | {labels[0]}: {timings[labels[0]]:.1f} ms | {labels[1]}: "
            f"{timings[labels[1]]:.1f} ms | ratio {timings[labels[1]] / timings[labels[0]]:.2f} | "
            f"peak RSS {rss_before:.0f} MB -> {rss_after:.0f} MB | | | | | |"
        )
    return rows, rows_cpu


def main() -> None:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load level")
    parser.add_argument("--big-history", type=int, default=100_000, help="events in the long-history budget")
    parser.add_argument("--engines", default="postgres,sqlite")
    args = parser.parse_args()
    rows: list[str] = []
    rows_cpu: list[str] = []

    def add(result: tuple[list[str], list[str]]) -> None:
        rows.extend(result[0])
        rows_cpu.extend(result[1])

    for engine in args.engines.split(","):
        if engine == "postgres":
            from pgschema import PostgresSchema

            schema = PostgresSchema("bench")
            try:
                add(bench_engine("PostgreSQL", schema.url, args.seconds, args.big_history))
            finally:
                schema.drop()
        elif engine == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                add(bench_engine("SQLite", f"sqlite:///{tmp}/bench.sqlite", args.seconds, args.big_history))
    print(f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, grpcio {grpc.__version__}")
    print("RecordAction (group commit) vs the transport ceiling (health Check) and vs the naive path (one save per")
    print("request: LEEWAY_BATCH_MAX=1), client on the same machine, 100 employees in 10 teams, 1,000 customers.\n")
    print("Server CPU ms per call: the server process (and its projections child) CPU time over the calls made.\n")
    print(
        "| engine | in flight | RecordAction/s | p50 / p99 ms | Check/s | p50 / p99 ms | ratio | p99 ratio "
        "| naive RecordAction/s | vs naive | server CPU ms per RecordAction / per Check |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print("\nCPU milliseconds per call at 32 in flight, by process (PostgreSQL: every process named postgres), and how")
    print("busy the machine's cores were. The last row of each engine (ratios): RecordAction/s over Check/s as measured;")
    print("the server process's CPU per Check over its CPU per RecordAction (its Python code runs one thread at a time);")
    print("total CPU per Check over total CPU per RecordAction (the most the rate ratio could be if the cores were the")
    print("only limit). Writer / front: the server's CPU split into its group-commit writer thread and everything")
    print("else (gRPC, servicers, waiting and waking up). The front ratio, a Check's front CPU over a RecordAction's,")
    print("estimates the most the rate ratio could be if the writes cost the server nothing (a writer elsewhere, any")
    print("number of cores): the front's Python also runs one thread at a time.\n")
    print(f"| engine | call | calls/s | machine busy | client | server | writer / front | {' | '.join(ROLES[2:])} | total |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows_cpu:
        print(row)
    print(f"\n(the whole run took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
