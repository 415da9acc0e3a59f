"""Fault-scenario machinery shared by tests/faults and scripts/chaos.py: real `leeway serve` processes (a
``Cluster`` that can SIGKILL and restart them), a multi-threaded ``Load`` of RecordAction calls that retries with
the same request_id and re-reads the current target before every attempt, and the scenarios themselves, which
return what they saw so that a test asserts on it and the chaos script prints it.

Scale (CI defaults; `make chaos` uses ``Scale.full()``), from the environment:

- LEEWAY_FAULTS_CLIENTS: client threads (16)
- LEEWAY_FAULTS_KILLS: SIGKILLs in the crash scenario (2)
- LEEWAY_FAULTS_SEGMENT_SECONDS: load between two kills (2.5)
- LEEWAY_FAULTS_OUTAGE_SECONDS: how long the database is gone (3)
- LEEWAY_FAULTS_REPLICA_SECONDS: load on the two replicas (5)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
from e2e.conftest import ServerProcess
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from leeway.v1 import budget_pb2, budget_pb2_grpc
from leeway_client import LeewayClient, LeewayError, RefundDetails, make_policy

from .invariants import ClientView, Report, check
from .proxy import TcpProxy

#: Deadline of every attempt a load client makes (the service clamps nothing below 30 s).
CALL_TIMEOUT = 5.0
#: After the load phase, calls still in flight keep retrying this long before they count as unanswered.
SETTLE_SECONDS = 20.0
CURRENCY = "EUR"


@dataclass(frozen=True)
class Scale:
    clients: int = 16
    kills: int = 2
    segment_seconds: float = 2.5
    outage_seconds: float = 3.0
    replica_seconds: float = 5.0

    @classmethod
    def from_env(cls) -> Scale:
        env = os.environ.get
        return cls(
            clients=int(env("LEEWAY_FAULTS_CLIENTS", "16")),
            kills=int(env("LEEWAY_FAULTS_KILLS", "2")),
            segment_seconds=float(env("LEEWAY_FAULTS_SEGMENT_SECONDS", "2.5")),
            outage_seconds=float(env("LEEWAY_FAULTS_OUTAGE_SECONDS", "3")),
            replica_seconds=float(env("LEEWAY_FAULTS_REPLICA_SECONDS", "5")),
        )

    @classmethod
    def full(cls) -> Scale:
        """The `make chaos` size."""
        return cls(clients=32, kills=6, segment_seconds=6.0, outage_seconds=8.0, replica_seconds=25.0)


def server_env(**extra: str) -> dict[str, str]:
    """Settings for the fault servers: quiet logs, fast health polling and expiry."""
    env = {
        "LEEWAY_LOG_LEVEL": "warning",
        "LEEWAY_HEALTH_INTERVAL_SECONDS": "0.2",
        "LEEWAY_EXPIRY_INTERVAL_SECONDS": "0.2",
        "LEEWAY_METRICS_ADDRESS": "off",
        "LEEWAY_PROJECTIONS_METRICS_ADDRESS": "off",
    }
    env.update(extra)
    return env


# ============================================================================ servers


class Cluster:
    """One or more `leeway serve` processes on one database. ``target(i)`` is the current address of replica
    ``i % n``, or None while it is down: load threads call it before every attempt, so a restart on a new port
    is picked up."""

    def __init__(self, database_url: str, workdir: Path, replicas: int = 1, extra_env: dict[str, str] | None = None):
        self.servers = []
        for i in range(replicas):
            path = workdir / f"replica{i}"
            path.mkdir(parents=True, exist_ok=True)
            self.servers.append(ServerProcess(database_url, path, server_env(**(extra_env or {}))))
        self._up = [False] * replicas
        self._lock = threading.Lock()
        self.kills = 0

    def start(self) -> Cluster:
        """Starts every replica; if one fails to start, stops those already running (they would otherwise outlive
        the test and hold their database connections: later tests then met "too many clients")."""
        try:
            for i in range(len(self.servers)):
                self.restart(i)
        except BaseException:
            self.stop()
            raise
        return self

    def target(self, i: int = 0) -> str | None:
        i %= len(self.servers)
        with self._lock:
            return self.servers[i].target if self._up[i] else None

    def kill(self, i: int = 0) -> None:
        """SIGKILL: no shutdown, no flush, in-flight calls cut off."""
        with self._lock:
            self._up[i] = False
        server = self.servers[i]
        if server.proc is not None:
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            server.proc = None
        self.kills += 1

    def restart(self, i: int = 0) -> None:
        self.servers[i].start()
        with self._lock:
            self._up[i] = True

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM every replica still running (kill after the shutdown timeout)."""
        for i, server in enumerate(self.servers):
            with self._lock:
                self._up[i] = False
            if server.proc is not None:
                try:
                    server.stop()
                except BaseException:  # noqa: BLE001 - a failed stop must not hide the scenario's result
                    server.kill()

    def logs(self) -> str:
        out = []
        for i, server in enumerate(self.servers):
            for n in range(1, server.starts + 1):
                path = server.workdir / f"server-{n}.log"
                if path.exists():
                    text = path.read_text(errors="replace")
                    interesting = [l for l in text.splitlines() if '"error"' in l or "Traceback" in l or "exception" in l]
                    if interesting:
                        out.append(f"--- replica {i} start {n}:\n" + "\n".join(interesting[-20:]))
        return "\n".join(out)


def health(target: str, timeout: float = 1.0) -> str:
    """The overall health status name, or the gRPC error code name if the check itself failed."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def open_budgets(target: str, employees: list[str], teams: int, policy) -> None:
    with LeewayClient(target, timeout=30) as client:
        for i, employee in enumerate(employees):
            client.open_budget(employee, f"team-{i % teams}", policy, request_id=f"open-{employee}")


# ============================================================================ load


@dataclass
class Attempt:
    """One call attempt as a client saw it."""

    started: float
    elapsed: float
    code: str  # grpc.StatusCode name, or "OK"
    reason: str = ""
    domain: str = ""


@dataclass
class Load:
    """``clients`` threads recording refunds on ``employees`` until ``stop()``; every request has its own
    request_id and is retried with it (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED/CONCURRENCY_CONFLICT, connection
    errors) until answered; the target is re-read before every attempt."""

    cluster: Cluster
    employees: list[str]
    clients: int
    amounts: Callable[[random.Random], Decimal] = lambda rng: Decimal(rng.randint(100, 999)) / 100
    customers: int = 20
    seed: int = 8
    view: ClientView = field(default_factory=ClientView)
    attempts: list[Attempt] = field(default_factory=list)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self._stop_new = threading.Event()
        self._give_up_at = float("inf")
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"load-{i}", daemon=True)
                         for i in range(self.clients)]
        self._lock = threading.Lock()

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, settle: float = SETTLE_SECONDS) -> ClientView:
        """No new requests; those in flight get ``settle`` seconds to be answered, then count as unanswered."""
        self._give_up_at = time.monotonic() + settle
        self._stop_new.set()
        for thread in self._threads:
            thread.join(timeout=settle + CALL_TIMEOUT + 5)
        return self.view

    def codes(self, start: float = 0.0, end: float = float("inf")) -> Counter[str]:
        """Status codes of the attempts that were in flight at some point in [start, end]."""
        with self._lock:
            return Counter(a.code for a in self.attempts if a.started <= end and a.started + a.elapsed >= start)

    def _note(self, attempt: Attempt) -> None:
        with self._lock:
            self.attempts.append(attempt)

    def _work(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-{index}")
        clients: dict[str, LeewayClient] = {}
        try:
            n = 0
            while not self._stop_new.is_set():
                n += 1
                rid = f"{self.tag}-{index}-{n}"
                employee = rng.choice(self.employees)
                amount = self.amounts(rng)
                with self.view.lock:
                    self.view.sent[rid] = (employee, amount)
                self._until_answered(index, rid, employee, f"cust-{rng.randrange(self.customers)}", amount, clients)
        finally:
            for client in clients.values():
                client.close()

    def _client(self, clients: dict[str, LeewayClient], target: str) -> LeewayClient:
        client = clients.get(target)
        if client is None:
            for old in clients.values():
                old.close()
            clients.clear()
            client = clients[target] = LeewayClient(target, timeout=CALL_TIMEOUT, retries=0)
        return client

    def _until_answered(self, index: int, rid: str, employee: str, customer: str, amount: Decimal,
                        clients: dict[str, LeewayClient]) -> None:
        retry = 0
        while True:
            if time.monotonic() > self._give_up_at:
                with self.view.lock:
                    self.view.unknown.add(rid)
                return
            target = self.cluster.target(index + retry)  # spread over replicas, and move on after a failure
            if target is None:
                time.sleep(0.05)
                continue
            client = self._client(clients, target)
            started = time.monotonic()
            try:
                response = client.record_action(
                    employee, customer, amount, CURRENCY, RefundDetails(order_id=rid), reason="fault test", request_id=rid
                )
            except LeewayError as error:
                self._note(Attempt(started, time.monotonic() - started, error.code.name, error.reason, error.domain))
                if error.code is grpc.StatusCode.FAILED_PRECONDITION:
                    with self.view.lock:
                        self.view.refused[rid] = error.reason
                    return
                if error.retryable:
                    retry += 1
                    time.sleep(random.uniform(0.01, min(0.5, 0.02 * 2 ** min(retry, 5))))
                    continue
                with self.view.lock:
                    self.view.failed[rid] = str(error)
                return
            except Exception as error:  # noqa: BLE001 - anything else the client raises is a finding too
                self._note(Attempt(started, time.monotonic() - started, type(error).__name__))
                with self.view.lock:
                    self.view.failed[rid] = repr(error)
                return
            self._note(Attempt(started, time.monotonic() - started, "OK"))
            with self.view.lock:
                self.view.acked[rid] = response.action.action_id
                self.view.acked_state[rid] = response.action.state
            return


# ============================================================================ scenario results


@dataclass
class ScenarioResult:
    name: str
    report: Report
    seconds: float
    statuses: Counter[str] = field(default_factory=Counter)  # all attempts
    outage_statuses: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # failed expectations other than the invariants
    server_errors: str = ""
    recovery_seconds: float | None = None  # database outage: restore -> health SERVING
    outage_health: Counter[str] = field(default_factory=Counter)  # Health.Check answers during the outage

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.notes

    def describe(self) -> str:
        text = [f"{self.name}: {'ok' if self.ok else 'FAILED'} in {self.seconds:.1f} s", self.report.describe(),
                f"statuses: {dict(self.statuses)}"]
        if self.outage_statuses:
            text.append(f"statuses during the outage: {dict(self.outage_statuses)}; health: {dict(self.outage_health)}")
        if self.recovery_seconds is not None:
            text.append(f"recovered {self.recovery_seconds:.1f} s after the database came back")
        text += [f"  note: {n}" for n in self.notes]
        if self.server_errors:
            text.append(self.server_errors)
        return "\n".join(text)


def _employees(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


# ============================================================================ 1. crash under load


def crash_under_load(database_url: str, workdir: Path, scale: Scale) -> ScenarioResult:
    """``scale.clients`` threads record refunds while the server is SIGKILLed ``scale.kills`` times and restarted
    on the same database (on a new port each time)."""
    began = time.monotonic()
    cluster = Cluster(database_url, workdir).start()
    employees = _employees("crash", 8)
    try:
        # 8 employees in 4 teams; the allowance is large enough that most actions are recorded, and some
        # employees run dry under the full scale (so refusals happen too).
        open_budgets(cluster.target(), employees, 4, make_policy(currency=CURRENCY, period_allowance=1500, period="YEAR"))
        load = Load(cluster, employees, scale.clients).start()
        for _ in range(scale.kills):
            time.sleep(scale.segment_seconds)
            cluster.kill()
            time.sleep(random.uniform(0.1, 0.5))
            cluster.restart()
        time.sleep(scale.segment_seconds)
        view = load.stop()
        report = check(cluster.target(), view, employees)
        notes = []
        if view.unknown:
            notes.append(f"{len(view.unknown)} requests never answered within {SETTLE_SECONDS} s after the load")
        result = ScenarioResult("crash under load", report, time.monotonic() - began, load.codes(), notes=notes)
        result.notes += [f"kills: {cluster.kills}"] if cluster.kills != scale.kills else []
        if not result.ok:
            result.server_errors = cluster.logs()
        return result
    finally:
        cluster.stop()


# ============================================================================ 2. database outage


def _with_postgres_url(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    auth = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{auth}{host}:{port}"))


@dataclass
class Probe:
    """One thread calling GetBudget and Health.Check over raw stubs, decoding every failure's google.rpc.Status
    with rpc_status.from_call; records (time, what) for each call."""

    target: str
    employee: str
    deadline: float = 2.0
    calls: list[tuple[float, float, str, str, bool]] = field(default_factory=list)  # start, elapsed, code, reason, has ErrorInfo
    healths: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name="probe", daemon=True),
                         threading.Thread(target=self._health, name="probe-health", daemon=True)]

    def start(self) -> Probe:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _health(self) -> None:
        """Health.Check every 0.1 s on a channel of its own."""
        with grpc.insecure_channel(self.target) as channel:
            health_stub = health_pb2_grpc.HealthStub(channel)
            while not self._stop.is_set():
                try:
                    reply = health_stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.deadline)
                    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as error:
                    status_name = error.code().name
                self.healths.append((time.monotonic(), status_name))
                self._stop.wait(0.1)

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            budgets = budget_pb2_grpc.BudgetServiceStub(channel)
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    budgets.GetBudget(budget_pb2.GetBudgetRequest(employee_id=self.employee), timeout=self.deadline)
                    self.calls.append((started, time.monotonic() - started, "OK", "", True))
                except grpc.RpcError as error:
                    reason, has_info = "", False
                    try:
                        status = rpc_status.from_call(error)
                    except ValueError:
                        status = None
                    for detail in status.details if status is not None else ():
                        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                            info = error_details_pb2.ErrorInfo()
                            detail.Unpack(info)
                            reason, has_info = info.reason, info.domain == "leeway"
                    self.calls.append((started, time.monotonic() - started, error.code().name, reason, has_info))
                self._stop.wait(0.1)


#: How long the service may take to recover by itself after the database is back.
RECOVERY_SECONDS = 120.0


def _answers(target: str, employee: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            budget_pb2_grpc.BudgetServiceStub(channel).GetBudget(
                budget_pb2.GetBudgetRequest(employee_id=employee), timeout=2.0
            )
            return True
        except grpc.RpcError:
            return False


class Outage:
    """Makes PostgreSQL go away and come back: through a TcpProxy (default), or by really stopping the local
    cluster with pg_ctlcluster (``real=True``; needs root, and stops the database for everybody)."""

    def __init__(self, real: bool = False, proxy: TcpProxy | None = None, version: str = "15", cluster: str = "main"):
        self.real, self.proxy, self.version, self.cluster = real, proxy, version, cluster

    def _pg(self, action: str) -> None:
        command = ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.cluster, action]
        if action == "stop":
            command += ["-m", "fast"]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def cut(self) -> None:
        if self.real:
            self._pg("stop")
        else:
            assert self.proxy is not None
            self.proxy.cut()

    def restore(self) -> None:
        if self.real:
            self._pg("start")
        else:
            assert self.proxy is not None
            self.proxy.restore()


@contextmanager
def postgres_outage(outage: Outage) -> Iterator[None]:
    """Cuts the database for the body of the with-block and always restores it."""
    outage.cut()
    try:
        yield
    finally:
        outage.restore()


def database_outage(database_url: str, workdir: Path, scale: Scale, *, real_postgres_stop: bool = False) -> ScenarioResult:
    """Load on one server while PostgreSQL is gone for ``scale.outage_seconds``; the server is not restarted."""
    began = time.monotonic()
    parts = urlsplit(database_url)
    proxy = None if real_postgres_stop else TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    try:
        url = database_url if proxy is None else _with_postgres_url(database_url, "127.0.0.1", proxy.port)
        cluster = Cluster(url, workdir).start()
        employees = _employees("outage", 8)
        notes: list[str] = []
        try:
            target = cluster.target()
            assert target is not None
            open_budgets(target, employees, 4, make_policy(currency=CURRENCY, period_allowance=1500, period="YEAR"))
            load = Load(cluster, employees, scale.clients).start()
            probe = Probe(target, employees[0]).start()
            time.sleep(max(1.0, scale.segment_seconds))
            outage = Outage(real=real_postgres_stop, proxy=proxy)
            with postgres_outage(outage):
                cut_at = time.monotonic()
                time.sleep(scale.outage_seconds)
                restored_at = time.monotonic()
            # Recovery by itself: health SERVING again, then calls succeed.
            serving_at = None
            while time.monotonic() < restored_at + RECOVERY_SECONDS:
                if health(target) == "SERVING" and _answers(target, employees[0]):
                    serving_at = time.monotonic()
                    break
                time.sleep(0.1)
            if serving_at is None:
                notes.append(f"not recovered (health SERVING and GetBudget OK) within {RECOVERY_SECONDS} s of the restore")
            time.sleep(max(1.0, scale.segment_seconds))
            probe.stop()
            view = load.stop()
            # What the clients saw while the database was gone (the first 0.5 s after the cut are included:
            # calls that had started before it ended during it).
            during = load.codes(cut_at, restored_at)
            for start, elapsed, code, reason, has_info in probe.calls:
                if start <= restored_at and start + elapsed >= cut_at:
                    during[f"{code}"] += 1
            bad = {code: n for code, n in during.items() if code not in ("OK", "UNAVAILABLE", "FAILED_PRECONDITION")}
            if bad:
                notes.append(f"statuses other than UNAVAILABLE during the outage: {bad}")
            if not during.get("UNAVAILABLE"):
                notes.append("no call saw UNAVAILABLE during the outage (was the database really gone?)")
            unavailable_without_info = [
                (code, reason) for start, elapsed, code, reason, has_info in probe.calls
                if code == "UNAVAILABLE" and not has_info
            ] + [(a.code, a.reason) for a in load.attempts if a.code == "UNAVAILABLE" and a.domain != "leeway"]
            if unavailable_without_info:
                notes.append(f"{len(unavailable_without_info)} UNAVAILABLE answers without a leeway ErrorInfo, "
                             f"e.g. {unavailable_without_info[:3]}")
            slow = [elapsed for start, elapsed, *_ in probe.calls if elapsed > probe.deadline + 0.5]
            slow += [a.elapsed for a in load.attempts if a.elapsed > CALL_TIMEOUT + 0.5]
            if slow:
                notes.append(f"{len(slow)} calls took longer than their deadline (max {max(slow):.1f} s)")
            window = [s for t, s in probe.healths if cut_at <= t <= restored_at]
            if "NOT_SERVING" not in window:
                notes.append(f"health never reported NOT_SERVING during the outage (saw {Counter(window)})")
            if window and window.count("SERVING") > len(window) // 2:
                notes.append(f"health mostly SERVING during the outage: {Counter(window)}")
            after = [code for start, elapsed, code, *_ in probe.calls if serving_at and start > serving_at + 0.5]
            if not after or any(code != "OK" for code in after):
                notes.append(f"GetBudget after recovery: {Counter(after)}")
            report = check(target, view, employees)
            if view.unknown:
                notes.append(f"{len(view.unknown)} requests never answered within {SETTLE_SECONDS} s after the load")
            result = ScenarioResult("database outage", report, time.monotonic() - began, load.codes(), during, notes)
            result.outage_health = Counter(window)
            if serving_at is not None:
                result.recovery_seconds = serving_at - restored_at
            if not result.ok:
                result.server_errors = cluster.logs()
            return result
        finally:
            cluster.stop()
    finally:
        if proxy is not None:
            proxy.close()


# ============================================================================ 3. two replicas


def two_replicas(database_url: str, workdir: Path, scale: Scale) -> ScenarioResult:
    """Two servers on one database, clients alternating between them, all spending on the same three small
    budgets (most calls end up refused BUDGET_EXHAUSTED)."""
    began = time.monotonic()
    cluster = Cluster(database_url, workdir, replicas=2).start()
    employees = _employees("shared", 3)
    try:
        open_budgets(cluster.target(0), employees, 1, make_policy(currency=CURRENCY, period_allowance=120, period="YEAR"))
        load = Load(cluster, employees, scale.clients, amounts=lambda rng: Decimal(rng.randint(1, 1200)) / 100).start()
        time.sleep(scale.replica_seconds)
        view = load.stop()
        report = check(cluster.target(1), view, employees)
        notes = []
        if view.unknown:
            notes.append(f"{len(view.unknown)} requests never answered within {SETTLE_SECONDS} s after the load")
        if not view.refused:
            notes.append("no request was refused: the budgets were never exhausted, so overspend was not tried")
        exhausted = Counter(view.refused.values())
        if set(exhausted) - {"BUDGET_EXHAUSTED"}:
            notes.append(f"unexpected refusals: {dict(exhausted)}")
        # No overspend: the recorded amounts of each employee stay within the allowance.
        for employee in employees:
            total = sum((amount for rid, (emp, amount) in view.sent.items() if emp == employee and rid in view.acked),
                        Decimal(0))
            if total > 120:
                notes.append(f"{employee}: acknowledged {total} of an allowance of 120")
        result = ScenarioResult("two replicas", report, time.monotonic() - began, load.codes(), notes=notes)
        if not result.ok:
            result.server_errors = cluster.logs()
        return result
    finally:
        cluster.stop()
