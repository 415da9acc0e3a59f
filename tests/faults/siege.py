"""Idle-stream siege (issue 18): thousands of idle streams and calls whose message never arrives must not starve
anybody.

``siege(...)`` starts a server with authentication required (an auditor API key, reflection on), measures the
latency of ``Health/Check``, ``GetBudget`` and ``RecordAction`` on the idle server, then opens -- from a separate
process (``python -m faults.siege``), as an attacker would -- idle streams of every kind, half of them without
credentials:

- ``Health/Watch`` (open to everybody),
- ``AuditService/StreamEvents`` with ``follow`` (authenticated: an auditor's), following a budget nobody uses
  meanwhile (idle: the ordinary calls' events are read once for all of them and wake none),
- ``ServerReflectionInfo`` streams (open while reflection is on) that asked one question and then say nothing,
- unary calls whose request message never arrives (HEADERS sent, never DATA),

and measures the same calls again while all of them are open. The result has both latency tables and their
p99 ratio. ``tests/faults/test_slowloris.py`` runs it at CI size; ``make chaos`` at full size (2,000 idle streams
and 200 message-less calls), where the p99 ratio must stay within 2x.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from leeway.auth import hash_api_key, new_api_key
from leeway.v1 import action_pb2, action_pb2_grpc, audit_pb2, audit_pb2_grpc, budget_pb2, budget_pb2_grpc
from leeway_client import to_money

#: How many idle calls of each kind one client channel carries (several connections, as many clients would).
PER_CHANNEL = 100
#: The employee the idle followers follow: a budget nobody uses during the siege.
QUIET = "siege-quiet"
#: What an ordinary caller allows itself; an idle server answers in a few milliseconds.
ORDINARY_DEADLINE = 5.0


@dataclass
class Latencies:
    """Seconds per call of each kind, and the codes of those that failed."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def p(self, method: str, q: float) -> float:
        values = sorted(self.seconds.get(method, []))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    def all_ok(self) -> bool:
        return not self.failures


@dataclass
class SiegeResult:
    idle: Latencies
    besieged: Latencies
    opened: dict[str, int]
    #: The server's resident memory (MiB) on the idle server and while besieged.
    rss_mib: tuple[float, float] = (0.0, 0.0)

    def ratio(self, method: str) -> float:
        return self.besieged.p(method, 0.99) / self.idle.p(method, 0.99)

    def table(self) -> str:
        rows = [("call", "idle p50 ms", "idle p99 ms", "besieged p50 ms", "besieged p99 ms", "p99 ratio", "failed")]
        for method in sorted(self.idle.seconds):
            rows.append((
                method,
                f"{self.idle.p(method, 0.5) * 1000:.2f}",
                f"{self.idle.p(method, 0.99) * 1000:.2f}",
                f"{self.besieged.p(method, 0.5) * 1000:.2f}",
                f"{self.besieged.p(method, 0.99) * 1000:.2f}",
                f"{self.ratio(method):.2f}",
                str(self.besieged.failures.get(method, 0)),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        opened = ", ".join(f"{kind} {n}" for kind, n in self.opened.items())
        idle, besieged = self.rss_mib
        per_call = (besieged - idle) * 1024 / max(1, sum(self.opened.values()))
        return (
            f"idle calls open while besieged: {opened}; server memory {idle:.0f} -> {besieged:.0f} MiB "
            f"(~{per_call:.0f} KiB per idle call)\n" + "\n".join(lines)
        )


def measure(target: str, key: str, employee: str, rounds: int, label: str) -> Latencies:
    """``rounds`` sequential calls of each kind on one channel (Health/Check without credentials)."""
    result = Latencies()
    metadata = (("authorization", f"ApiKey {key}"),)
    with grpc.insecure_channel(target) as channel:
        calls = {
            "Health/Check": lambda i: health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=ORDINARY_DEADLINE),
            "GetBudget": lambda i: budget_pb2_grpc.BudgetServiceStub(channel).GetBudget(
                budget_pb2.GetBudgetRequest(employee_id=employee), timeout=ORDINARY_DEADLINE, metadata=metadata),
            "RecordAction": lambda i: action_pb2_grpc.ActionServiceStub(channel).RecordAction(
                action_pb2.RecordActionRequest(
                    request_id=f"{label}-{i}", employee_id=employee, customer_id=f"c{i % 50}",
                    amount=to_money("0.01", "EUR"), reason="ordinary caller",
                    refund=action_pb2.RefundDetails(order_id=str(i))),
                timeout=ORDINARY_DEADLINE, metadata=metadata),
        }
        for i in range(5):  # warm the channel and the server's caches
            for call in calls.values():
                call(-1 - i)
        for i in range(rounds):
            for method, call in calls.items():
                started = time.perf_counter()
                try:
                    call(i)
                except grpc.RpcError as error:
                    result.failures[method] = result.failures.get(method, 0) + 1
                    print(f"{method}: {error.code().name}", file=sys.stderr)
                    continue
                result.seconds.setdefault(method, []).append(time.perf_counter() - started)
    return result


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def siege(cluster_factory, employee_policy, *, idle_streams: int, silent_calls: int, rounds: int,
          workdir: Path) -> SiegeResult:
    """Runs the scenario against a server made by ``cluster_factory(extra_env)``; see the module docstring."""
    key = new_api_key()
    extra_env = {
        "LEEWAY_AUTH": "required",
        "LEEWAY_API_KEYS": f"siege:auditor+admin+crm:{hash_api_key(key)}",
        "LEEWAY_REFLECTION": "true",
        "LEEWAY_RATE_LIMIT_PER_SECOND": "0",
        "LEEWAY_MAX_FOLLOW_STREAMS": str(max(1000, idle_streams)),
    }
    cluster = cluster_factory(extra_env).start()
    client = None
    try:
        target = cluster.target()
        assert target is not None
        with grpc.insecure_channel(target) as channel:
            for employee in ("siege", QUIET):
                budget_pb2_grpc.BudgetServiceStub(channel).OpenBudget(
                    budget_pb2.OpenBudgetRequest(request_id=f"open-{employee}", employee_id=employee, team_id="t",
                                                 policy=employee_policy),
                    metadata=(("authorization", f"ApiKey {key}"),), timeout=30,
                )
        idle = measure(target, key, "siege", rounds, "idle")
        pid = cluster.servers[0].proc.pid
        rss_idle = rss_mib(pid)
        client = subprocess.Popen(
            [sys.executable, "-m", "faults.siege", target, key, str(idle_streams), str(silent_calls)],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE, stderr=open(workdir / "siege-client.log", "wb"), text=True,  # noqa: SIM115
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        assert client.stdout is not None
        line = client.stdout.readline()  # "opened watch=... follow=... reflection=... silent=..."
        if not line.startswith("opened"):
            raise AssertionError(f"the siege client did not open its streams: {line!r} "
                                 f"{(workdir / 'siege-client.log').read_text()[-2000:]}")
        opened = dict(item.split("=") for item in line.split()[1:])
        rss_besieged = rss_mib(pid)
        besieged = measure(target, key, "siege", rounds, "besieged")
        return SiegeResult(idle, besieged, {k: int(v) for k, v in opened.items()}, (rss_idle, rss_besieged))
    finally:
        if client is not None and client.poll() is None:
            client.send_signal(signal.SIGTERM)
            try:
                client.wait(timeout=20)
            except subprocess.TimeoutExpired:
                client.kill()
        cluster.stop()


# ============================================================================ the attacking process


async def _open(target: str, key: str, idle_streams: int, silent_calls: int) -> None:
    auth = (("authorization", f"ApiKey {key}"),)
    channels: list[grpc.aio.Channel] = []

    def channel() -> grpc.aio.Channel:
        # A channel of its own (own connection) every PER_CHANNEL calls.
        if not channels or len(channels) * PER_CHANNEL <= opened_total[0]:
            channels.append(grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]))
        opened_total[0] += 1
        return channels[-1]

    opened_total = [0]
    calls: list[object] = []
    per_kind = idle_streams // 3
    counts = {"watch": 0, "follow": 0, "reflection": 0, "silent": 0}

    async def watch(i: int) -> None:
        call = health_pb2_grpc.HealthStub(channel()).Watch(
            health_pb2.HealthCheckRequest(service=""), metadata=auth if i % 2 else None)
        calls.append(call)
        await call.read()  # the current status: the stream is open
        counts["watch"] += 1

    async def follow(i: int) -> None:
        # Following the quiet employee's events: the stream is open and idle (the ordinary calls measured meanwhile
        # write other budgets' events, which the head reads once for all followers and wakes none of them for).
        call = audit_pb2_grpc.AuditServiceStub(channel()).StreamEvents(
            audit_pb2.StreamEventsRequest(follow=True, employee_id=QUIET), metadata=auth)
        calls.append(call)
        await call.read()  # the quiet budget's opening: the stream is open, and now idle
        counts["follow"] += 1

    async def reflect(i: int) -> None:
        queue: asyncio.Queue[object] = asyncio.Queue()

        async def requests():  # one question, then silence
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            await queue.get()

        call = reflection_pb2_grpc.ServerReflectionStub(channel()).ServerReflectionInfo(
            requests(), metadata=auth if i % 2 else None)
        calls.append(call)
        await call.read()
        counts["reflection"] += 1

    async def silent(i: int) -> None:
        forever: asyncio.Event = asyncio.Event()

        async def never():  # the request message never arrives
            await forever.wait()
            yield budget_pb2.GetBudgetRequest()

        ch = channel()
        method = ch.stream_unary("/leeway.v1.BudgetService/GetBudget",
                                 request_serializer=budget_pb2.GetBudgetRequest.SerializeToString,
                                 response_deserializer=budget_pb2.GetBudgetResponse.FromString)
        call = method(never(), metadata=auth if i % 2 else None)
        calls.append(call)
        counts["silent"] += 1

    kinds = [(watch, per_kind), (follow, per_kind), (reflect, idle_streams - 2 * per_kind), (silent, silent_calls)]
    skip = set(os.environ.get("SIEGE_SKIP", "").split(","))  # experiments: leave some kinds out
    kinds = [(opener, 0 if opener.__name__ in skip else n) for opener, n in kinds]
    for opener, n in kinds:
        for start in range(0, n, 200):  # in waves: the point is holding them, not a connection storm
            await asyncio.gather(*(opener(i) for i in range(start, min(n, start + 200))))
    await asyncio.sleep(1.0)  # the message-less calls reached the server
    print("opened " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for call in calls:
        call.cancel()  # type: ignore[attr-defined]
    for ch in channels:
        await ch.close()


if __name__ == "__main__":
    _target, _key, _streams, _silent = sys.argv[1:5]
    asyncio.run(_open(_target, _key, int(_streams), int(_silent)))
