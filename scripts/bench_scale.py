"""Scale benchmark (`make bench-scale`): a script that prints figures, not a test.

It seeds ONE fresh PostgreSQL schema ($LEEWAY_TEST_POSTGRES_URL) through the application's own write path
(``LeewayApplication.execute_batch``: the writer's batch, one transaction per --batch commands; no hand-written
inserts), growing it to each of --sizes actions in turn: 200 teams, 5,000 employees, 100,000 customers; actions of
every kind (about 5 % over the per-action limit, held for the team's supervisor, who approves or denies most of
them; the rest expire), reversals, wins. The simulated clock moves --per-day actions per UTC day (default: 1M
actions a year), so a bigger log is a longer history, as in life.

At each size it catches the projections up (timed: events/s), starts a real `leeway serve` on the schema and
times, through gRPC (median of --repeats calls, each with a random subject): GetBudget, ListActions first pages
(by employee, by customer, a supervisor's approval queue), GetKpis (everyone / one team / one employee, all time,
and a range cut inside days), GetKpiSeries (days of the last 30 days; months of everything), ListWins,
GetAuditTrail (employee, customer), VerifyIntegrity of one budget; the same reads of the regulars (one employee and
one customer per seeding process with 1.5 % of its actions each, whose first pages are full at every size, so that
their rows compare pages of the same length); and the auditor paths in events/s beside the
raw read+decode rate of the same rows: StreamEvents and ``leeway export`` of the newest --window events,
VerifyIntegrity of everything. It prints one table with each figure at each size and the growth ratio
largest/smallest, plus the bytes per action in the log and in the read models, and the seeding rate.

Usage: .venv/bin/python scripts/bench_scale.py [--sizes 10000,100000] [--per-day 2740] [--batch 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import start_server  # noqa: E402

UTC = timezone.utc
START = datetime(2025, 1, 1, 8, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


#: The share of each seeding process's actions its regular employee, and its regular customer, get.
REGULAR_SHARE = 0.015


class Population:
    """Who acts, for whom, and what became of it (for choosing decisions, reversals, wins and subjects).

    With several seeding processes (``part`` of ``parts``), each one acts for its own teams (team index % parts)
    and its own customers (customer index % parts), so that their batches never change the same budget, team
    ledger or customer ledger. The hold book is one aggregate for everyone: only part 0's teams go over the
    per-action limit (``parts`` times as often, so that the log holds as many holds as with one process)."""

    def __init__(self, teams: int, employees: int, customers: int, seed: int = 21, part: int = 0, parts: int = 1) -> None:
        self.rng = random.Random(seed + part)
        self.teams = [f"team-{t:03d}" for t in range(teams)]
        self.employees = [f"emp-{e:05d}" for e in range(employees)]
        self.customers = customers
        self.team_of = {e: self.teams[i % teams] for i, e in enumerate(self.employees)}
        self.parts = parts
        self.mine = [e for i, e in enumerate(self.employees) if (i % teams) % parts == part]
        self.my_customers = range(part, customers, parts)
        #: The teams whose actions may wait for approval (their supervisors' queues are the ones measured).
        self.held_teams = [t for i, t in enumerate(self.teams) if i % parts == 0]
        self.over_rate = min(1.0, 0.05 * parts) if part == 0 else 0.0
        #: The regulars: one employee and one customer of each seeding process who get REGULAR_SHARE of its actions,
        #: so that their first pages are full at every size (about 75 actions each at 10k actions; 7,500 at 1M: an
        #: agent's 20 actions a day for a year). A random subject's page fills as the log grows (0.1 of a customer's
        #: action at 10k, 10 at 1M), so only the regulars compare like with like.
        self.regular_employee = self.mine[0]
        self.regular_customer = self.my_customers[0]
        self.regular_employees = [self.employees[p] for p in range(parts)]  # each part's mine[0]
        self.regular_customers = [f"cust-{p:06d}" for p in range(parts)]  # each part's my_customers[0]
        self.pending: list[tuple[str, str]] = []  # (action_id, team) awaiting a decision
        self.recent: list[tuple[str, str]] = []  # (action_id, employee) recorded or approved lately
        self.actions = 0
        self.refused = 0

    def supervisor(self, team: str) -> str:
        return f"sup-{team}"


def policy_for(team: str) -> Any:
    from leeway.domain.money import Money
    from leeway.domain.periods import PeriodKind
    from leeway.domain.policy import ActionKind, BendableRule, Escalation, EscalationMode, Policy

    built, problems = Policy.build(
        period_allowance=Money(Decimal(10) ** 9, "USD"), period=PeriodKind.YEAR,
        per_action_limit=Money(Decimal(100), "USD"),
        allowed_kinds=[ActionKind.REFUND, ActionKind.CREDIT, ActionKind.GIFT, ActionKind.RULE_BEND],
        bendable_rules=[BendableRule("LATE_FEE")],
        escalation=Escalation(EscalationMode.APPROVAL, timedelta(hours=6), (f"sup-{team}",), "", Money(Decimal(10) ** 8, "USD")),
    )
    assert built is not None, problems
    return built


KINDS = [("REFUND", {"order_id": "o-1"}), ("CREDIT", {"account_ref": "acc-1"}), ("GIFT", {"gift_type": "flowers"}),
         ("GIFT", {"gift_type": "voucher"}), ("RULE_BEND", {"rule_code": "LATE_FEE"})]


class Seeder:
    def __init__(self, app: Any, clock: Clock, people: Population, per_day: int, batch: int) -> None:
        self.app, self.clock, self.people, self.per_day, self.batch = app, clock, people, per_day, batch
        self.seconds = 0.0
        self.commands = 0
        self.retried = 0

    def run(self, commands: list[Any]) -> list[Any]:
        """Runs ``commands`` as one batch; those answered UNAVAILABLE (a shared PostgreSQL out of connections) are
        run again with the same request ids (idempotent), up to 20 times."""
        from leeway.domain.errors import Unavailable

        started = time.perf_counter()
        answers = self.app.execute_batch(commands, respond=False)
        for _ in range(20):
            again = [i for i, answer in enumerate(answers) if isinstance(answer, Unavailable)]
            if not again:
                break
            self.retried += len(again)
            time.sleep(0.5)
            for i, answer in zip(again, self.app.execute_batch([commands[i] for i in again], respond=False)):
                answers[i] = answer
        self.seconds += time.perf_counter() - started
        self.commands += len(commands)
        return answers

    def open_all(self) -> None:
        from leeway.application.commands import OpenBudget

        people = self.people
        commands = [
            OpenBudget(request_id=f"open-{e}", employee_id=e, team_id=people.team_of[e], display_name=e,
                       policy=policy_for(people.team_of[e]))
            for e in people.employees
        ]
        for first in range(0, len(commands), self.batch):
            for answer in self.run(commands[first:first + self.batch]):
                assert not isinstance(answer, Exception), answer

    def grow_to(self, size: int) -> None:
        from leeway.application.commands import DecideAction, DocumentWin, ExpireAction, RecordAction, ReverseAction
        from leeway.domain.approvals import HoldBook
        from leeway.domain.money import Money
        from leeway.domain.policy import ActionKind

        people, rng = self.people, self.people.rng
        while people.actions < size:
            count = min(self.batch, size - people.actions)
            # The simulated time of this batch: per_day actions per UTC day (of all seeding processes), from 08:00.
            self.clock.now = START + timedelta(days=people.actions * people.parts / self.per_day)
            commands: list[Any] = []
            for _ in range(count):
                employee = people.regular_employee if rng.random() < REGULAR_SHARE else rng.choice(people.mine)
                customer = people.regular_customer if rng.random() < REGULAR_SHARE else rng.choice(people.my_customers)
                kind, details = rng.choice(KINDS)
                over = rng.random() < people.over_rate
                amount = Decimal(rng.randint(101, 400)) if over else Decimal(rng.randint(100, 9999)) / 100
                if kind == "RULE_BEND":
                    amount = Decimal(0)
                commands.append(RecordAction(
                    request_id=f"r-{uuid4().hex}", employee_id=employee, customer_id=f"cust-{customer:06d}",
                    case_id="", kind=ActionKind(kind), amount=Money(amount, "USD"), reason="bench", details=dict(details)))
            # Decisions on earlier holds (70 % approved, 20 % denied, 10 % left to expire), reversals, wins.
            for action_id, team in people.pending:
                roll = rng.random()
                if roll < 0.9:
                    commands.append(DecideAction(request_id=f"d-{uuid4().hex}", action_id=action_id,
                                                 approver_id=people.supervisor(team), note="ok", approve=roll < 0.7))
            people.pending = []
            for action_id, employee in rng.sample(people.recent, min(len(people.recent), count // 50)):
                commands.append(ReverseAction(request_id=f"v-{uuid4().hex}", action_id=action_id, reason="twice",
                                              actor_id=people.supervisor(people.team_of[employee])))
            for action_id, _ in rng.sample(people.recent, min(len(people.recent), count // 30)):
                commands.append(DocumentWin(request_id=f"w-{uuid4().hex}", action_id=action_id, story="they came back",
                                            outcome="rebooked"))
            book = self.app.get_or_none(HoldBook.the_id()) if people.over_rate else None
            if book is not None:
                commands += [ExpireAction(request_id=f"expire:{a}", action_id=a) for a in book.due(self.clock.now, 500)]
            people.recent = []
            for command, answer in zip(commands, self.run(commands)):
                if not isinstance(command, RecordAction):
                    continue
                if isinstance(answer, Exception):
                    people.refused += 1
                    continue
                people.actions += 1
                if answer.pending:  # a RecordResult (respond=False: no views are rendered)
                    people.pending.append((answer.action_id, people.team_of[command.employee_id]))
                else:
                    people.recent.append((answer.action_id, command.employee_id))


def seed_part(pipe: Any, url: str, args: dict[str, Any], part: int) -> None:
    """One seeding process: grows its part of the population to the number of actions it is sent (None: stop) and
    sends back its figures (or the error, as text)."""
    from leeway.application import LeewayApplication
    from leeway.runtime import tune_garbage_collector
    from leeway.settings import Settings

    try:
        people = Population(args["teams"], args["employees"], args["customers"], part=part, parts=args["processes"])
        clock = Clock(START)
        env = Settings(database_url=url, postgres_pool_size=2).eventsourcing_env()  # one writer thread
        app = LeewayApplication(env=env, clock=clock, batch_max=args["batch"], write_cache_size=args["write_cache"])
        # The garbage collector as `leeway serve` runs its writer (leeway.runtime): with CPython's default thresholds
        # the full collections, which walk every cached aggregate, took a quarter to a third of a seeding process's
        # CPU (20,000 actions: 12 full collections, 3.5-4.3 s of 11-16 CPU-s; tuned: none, and 1 s in all).
        tune_garbage_collector()
        seeder = Seeder(app, clock, people, args["per_day"], args["batch"])
        while (size := pipe.recv()) is not None:
            cpu = time.process_time()
            seeder.grow_to(size)
            pipe.send({"actions": people.actions, "refused": people.refused, "retried": seeder.retried,
                       "cpu": time.process_time() - cpu, "conflicts": app.writer.batch_conflicts})
        app.close()
    except Exception as error:  # noqa: BLE001 - the parent reports it
        pipe.send(f"{type(error).__name__}: {error}")


# ---------------------------------------------------------------------------- measuring


RETRIES = [0]


def timed(call: Callable[[], Any]) -> float:
    """Seconds of one successful call; an UNAVAILABLE answer (retryable: a shared PostgreSQL out of connections) is
    retried, up to 20 times, and only the successful attempt is timed."""
    for attempt in range(20):
        started = time.perf_counter()
        try:
            call()
            return time.perf_counter() - started
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 19:
                raise
            RETRIES[0] += 1
            time.sleep(0.5)
    raise AssertionError("unreachable")


def median_ms(call: Callable[[], Any], repeats: int) -> float:
    timed(call)  # warm
    return statistics.median(timed(call) * 1000 for _ in range(repeats))


@contextmanager
def schema_connection(database_url: str) -> Iterator[tuple[Any, str]]:
    """An autocommit connection to the database of ``database_url``, and the name of its schema."""
    import psycopg

    from leeway.settings import Settings

    env = Settings(database_url=database_url).eventsourcing_env()
    with psycopg.connect(dbname=env["POSTGRES_DBNAME"], host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"],
                         user=env["POSTGRES_USER"], password=env["POSTGRES_PASSWORD"], autocommit=True) as conn:
        yield conn, env.get("POSTGRES_SCHEMA", "public")


def tables_of(conn: Any, schema: str) -> list[tuple[str, int]]:
    """(name, ``pg_total_relation_size``) of every table of ``schema``."""
    return conn.execute(
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind = 'r'", (schema,)).fetchall()


def analyze(database_url: str) -> None:
    """``ANALYZE`` of the schema's tables: what autovacuum does on a production server as tables grow. The build
    machine's PostgreSQL runs with ``autovacuum = off`` (its CI configuration), so without this the planner knows
    nothing of the tables: at 1M actions it took the event log for ~200 aggregates, priced the writer's and
    ListActions' bulk reads over 100,000, and compiled them with JIT each time (34 ms of a 35 ms query)."""
    with schema_connection(database_url) as (conn, schema):
        for table, _ in tables_of(conn, schema):
            conn.execute(f'ANALYZE "{schema}"."{table}"')


@contextmanager
def autoanalyze(database_url: str, every_seconds: float = 60.0) -> Iterator[None]:
    """``analyze`` every ``every_seconds`` while the block runs (seeding): autovacuum's autoanalyze, which a production
    server runs as the log grows and the build machine's does not."""
    import threading

    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_seconds):
            try:
                analyze(database_url)
            except Exception as error:  # noqa: BLE001 - a shared server out of connections: the next round
                print(f"analyze failed: {error}", file=sys.stderr, flush=True)

    thread = threading.Thread(target=run, name="autoanalyze", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(120)


def sizes_of(database_url: str) -> tuple[int, int, int, dict[str, int]]:
    """(events in the log, bytes of the log's tables, bytes of the read models' tables, parts of the log's bytes)
    of the schema: ``pg_total_relation_size`` (rows, TOAST, indexes and free space in their pages) of every table
    but the read models' (the events table, the snapshots, the data keys, checkpoints, tracking). The parts: the
    events table's rows (heap and TOAST) and its indexes, and the snapshots table."""
    with schema_connection(database_url) as (conn, schema):
        rows = tables_of(conn, schema)
        events = conn.execute(f'SELECT COUNT(*) FROM "{schema}".leeway_events').fetchone()
        table = f'"{schema}".leeway_events'
        heap, indexes = conn.execute(f"SELECT pg_table_size('{table}'), pg_indexes_size('{table}')").fetchone()
    views = sum(size for name, size in rows if name.startswith("leeway_view_"))
    log = sum(size for name, size in rows if not name.startswith("leeway_view_"))
    snapshots = sum(size for name, size in rows if "snapshot" in name)
    return int(events[0]), log, views, {"events rows (heap + TOAST)": int(heap), "events indexes": int(indexes),
                                        "snapshots": snapshots}


def catch_up(name: str, runner: Any, projections: Any, head: int, figures: dict[str, float]) -> None:
    """Catches projection ``name`` up to ``head``, timed (events/s)."""
    before = projections.store.position(name)
    started = time.perf_counter()
    done = 0
    for attempt in range(20):  # a shared PostgreSQL out of connections: go on where the last batch ended
        try:
            done += runner.catch_up()
            break
        except Exception:  # noqa: BLE001
            if attempt == 19:
                raise
            RETRIES[0] += 1
            time.sleep(0.5)
    figures[f"projection {name} catch-up (events/s)"] = done / max(time.perf_counter() - started, 1e-9) if done else 0
    assert projections.store.position(name) >= head, (name, before)


def measure(database_url: str, people: Population, repeats: int, window: int, workdir: Path) -> dict[str, float]:
    from leeway.application import LeewayApplication
    from leeway.projections.runner import Projections
    from leeway.settings import Settings
    from leeway.v1 import (action_pb2, action_pb2_grpc, audit_pb2, audit_pb2_grpc, budget_pb2, budget_pb2_grpc,
                           insights_pb2, insights_pb2_grpc)

    figures: dict[str, float] = {}
    app = LeewayApplication(env=Settings(database_url=database_url, postgres_pool_size=2).eventsourcing_env())
    projections = Projections(app)
    head = projections.head()
    for name, runner in projections.runners.items():
        with autoanalyze(database_url):
            catch_up(name, runner, projections, head, figures)
    projections.close()
    analyze(database_url)
    # The raw read + decode rate of the newest `window` events (the same rows the windowed auditor paths read).
    after = max(0, head - window)
    started = time.perf_counter()
    raw_count = 0
    position = after
    while True:
        chunk = app.recorder.select_notifications(start=position, limit=500, inclusive_of_start=False)
        if not chunk:
            break
        for notification in chunk:
            app.mapper.to_domain_event(notification)
        raw_count += len(chunk)
        position = chunk[-1].id
    raw_rate = raw_count / (time.perf_counter() - started)
    figures["raw read+decode of the window (events/s)"] = raw_rate
    app.close()

    # A small pool (the PostgreSQL server may be shared): at most 4*4 + 4*4 + 2 connections (README).
    server, target = start_server(database_url, workdir, LEEWAY_POSTGRES_POOL_SIZE="4")
    rng = random.Random(5)
    try:
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        with grpc.insecure_channel(target, options=options) as channel:
            budgets = budget_pb2_grpc.BudgetServiceStub(channel)
            actions = action_pb2_grpc.ActionServiceStub(channel)
            audit = audit_pb2_grpc.AuditServiceStub(channel)
            insights = insights_pb2_grpc.InsightsServiceStub(channel)
            employee = lambda: rng.choice(people.employees)  # noqa: E731
            team = lambda: rng.choice(people.teams)  # noqa: E731
            customer = lambda: f"cust-{rng.randrange(people.customers):06d}"  # noqa: E731
            regular = lambda: rng.choice(people.regular_employees)  # noqa: E731
            regular_customer = lambda: rng.choice(people.regular_customers)  # noqa: E731
            end = START + timedelta(days=people.actions / PER_DAY[0]) + timedelta(hours=1)
            ts = lambda at: Timestamp(seconds=int(at.timestamp()))  # noqa: E731
            cut_start, cut_end = ts(end - timedelta(days=3, hours=5)), ts(end - timedelta(hours=7))
            calls: dict[str, Callable[[], Any]] = {
                "GetBudget": lambda: budgets.GetBudget(budget_pb2.GetBudgetRequest(employee_id=employee())),
                "ListActions by employee": lambda: actions.ListActions(action_pb2.ListActionsRequest(employee_id=employee(), page_size=50)),
                "ListActions by customer": lambda: actions.ListActions(action_pb2.ListActionsRequest(customer_id=customer(), page_size=50)),
                "ListActions approval queue": lambda: actions.ListActions(action_pb2.ListActionsRequest(
                    approver_id=f"sup-{rng.choice(people.held_teams)}", state=action_pb2.Action.STATE_PENDING_APPROVAL, page_size=50)),
                "ListActions decided by": lambda: actions.ListActions(action_pb2.ListActionsRequest(
                    decided_by=f"sup-{rng.choice(people.held_teams)}", page_size=50)),
                "GetKpis everyone, all time": lambda: insights.GetKpis(insights_pb2.GetKpisRequest()),
                "GetKpis one team, all time": lambda: insights.GetKpis(insights_pb2.GetKpisRequest(team_id=team())),
                "GetKpis one employee, all time": lambda: insights.GetKpis(insights_pb2.GetKpisRequest(employee_id=employee())),
                "GetKpis everyone, 3 days cut mid-day": lambda: insights.GetKpis(insights_pb2.GetKpisRequest(start_time=cut_start, end_time=cut_end)),
                "GetKpis one team, 3 days cut mid-day": lambda: insights.GetKpis(insights_pb2.GetKpisRequest(team_id=team(), start_time=cut_start, end_time=cut_end)),
                "GetKpiSeries everyone, 30 days": lambda: insights.GetKpiSeries(insights_pb2.GetKpiSeriesRequest(
                    start_time=ts(end - timedelta(days=30)), end_time=ts(end), granularity=insights_pb2.KPI_GRANULARITY_DAY)),
                "GetKpiSeries one team, months": lambda: insights.GetKpiSeries(insights_pb2.GetKpiSeriesRequest(
                    team_id=team(), start_time=ts(START - timedelta(days=1)), end_time=ts(end), granularity=insights_pb2.KPI_GRANULARITY_MONTH)),
                "ListWins everyone": lambda: insights.ListWins(insights_pb2.ListWinsRequest(page_size=50)),
                "ListWins one team": lambda: insights.ListWins(insights_pb2.ListWinsRequest(team_id=team(), page_size=50)),
                "GetAuditTrail employee": lambda: audit.GetAuditTrail(audit_pb2.GetAuditTrailRequest(employee_id=employee(), page_size=50)),
                "GetAuditTrail customer": lambda: audit.GetAuditTrail(audit_pb2.GetAuditTrailRequest(customer_id=customer(), page_size=50)),
                "VerifyIntegrity one budget": lambda: audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(employee_id=employee())),
                # The regulars (Population): the same subjects at every size, their first pages full at every size.
                "regulars: GetBudget": lambda: budgets.GetBudget(budget_pb2.GetBudgetRequest(employee_id=regular())),
                "regulars: ListActions by employee, full page": lambda: actions.ListActions(
                    action_pb2.ListActionsRequest(employee_id=regular(), page_size=50)),
                "regulars: ListActions by customer, full page": lambda: actions.ListActions(
                    action_pb2.ListActionsRequest(customer_id=regular_customer(), page_size=50)),
                "regulars: GetKpis one employee, all time": lambda: insights.GetKpis(insights_pb2.GetKpisRequest(employee_id=regular())),
                "regulars: GetAuditTrail employee, full page": lambda: audit.GetAuditTrail(
                    audit_pb2.GetAuditTrailRequest(employee_id=regular(), page_size=50)),
                "regulars: GetAuditTrail customer, full page": lambda: audit.GetAuditTrail(
                    audit_pb2.GetAuditTrailRequest(customer_id=regular_customer(), page_size=50)),
            }
            for name, call in calls.items():
                try:
                    figures[f"{name} (ms)"] = median_ms(call, repeats)
                except grpc.RpcError as error:
                    raise RuntimeError(f"{name}: {error.code().name} {error.details()}") from error
            streamed = [0]

            def stream() -> None:
                streamed[0] = sum(1 for _ in audit.StreamEvents(audit_pb2.StreamEventsRequest(after_position=after), timeout=3600))

            seconds = timed(stream)
            figures["StreamEvents of the window (events/s)"] = streamed[0] / seconds
            seconds = timed(lambda: audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(), timeout=3600))
            figures["VerifyIntegrity everything (events/s)"] = head / seconds
    except grpc.RpcError:
        print((workdir / "server.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        server.terminate()
        server.wait(30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env["LEEWAY_DATABASE_URL"] = database_url
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "leeway.cli", "export", "--after", str(after), "-o", str(workdir / "export")],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    figures["leeway export of the window (events/s)"] = (head - after) / (time.perf_counter() - started)
    for path in ("StreamEvents of the window", "leeway export of the window", "VerifyIntegrity everything"):
        figures[f"{path} / raw"] = figures[f"{path} (events/s)"] / raw_rate
    return figures


PER_DAY = [2740]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="actions at each measurement, ascending")
    parser.add_argument("--per-day", type=int, default=2740, help="simulated actions per UTC day (2740: 1M a year)")
    parser.add_argument("--batch", type=int, default=1000, help="commands per write batch (one transaction)")
    parser.add_argument("--teams", type=int, default=200)
    parser.add_argument("--employees", type=int, default=5000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=15, help="calls per read RPC (median)")
    parser.add_argument("--window", type=int, default=50_000, help="newest events streamed/exported per size")
    parser.add_argument("--seed-only", action="store_true", help="seed and print the seeding rates, measure nothing")
    parser.add_argument("--keep-schema", action="store_true", help="leave the seeded schema in place (its url is printed)")
    parser.add_argument("--processes", type=int, default=2, help="seeding processes (each on its own teams)")
    parser.add_argument("--write-cache", type=int, default=200_000,
                        help="aggregates each seeding process's writer keeps in memory (LEEWAY_WRITE_CACHE_SIZE)")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    PER_DAY[0] = args.per_day
    from pgschema import PostgresSchema

    from leeway.application import LeewayApplication
    from leeway.runtime import tune_garbage_collector
    from leeway.settings import Settings

    schema = PostgresSchema("bench_scale")
    results: dict[int, dict[str, float]] = {}
    seeding: dict[int, str] = {}
    workers: list[tuple[Any, Any]] = []
    retried = 0
    try:
        url = schema.url
        if args.keep_schema:
            print(f"schema kept: {url}", file=sys.stderr, flush=True)
        # The budgets are opened here, in one process (the directory is one aggregate for everyone) ...
        clock = Clock(START - timedelta(hours=1))
        env = Settings(database_url=url, postgres_pool_size=2).eventsourcing_env()  # one writer thread
        app = LeewayApplication(env=env, clock=clock, batch_max=args.batch)
        tune_garbage_collector()  # as in the seeding processes (seed_part)
        people = Population(args.teams, args.employees, args.customers, parts=args.processes)
        opener = Seeder(app, clock, people, args.per_day, args.batch)
        opener.open_all()
        app.close()
        print(f"opened {len(people.employees):,} budgets in {opener.seconds:.1f} s", file=sys.stderr, flush=True)
        # ... and the actions by --processes seeding processes, each on its own teams and customers.
        context = multiprocessing.get_context("spawn")
        for part in range(args.processes):
            mine, theirs = context.Pipe()
            process = context.Process(target=seed_part, args=(theirs, url, vars(args), part), daemon=True)
            process.start()
            workers.append((process, mine))
        with tempfile.TemporaryDirectory() as tmp:
            for size in sizes:
                before_a = people.actions
                started = time.perf_counter()
                for part, (_, pipe) in enumerate(workers):
                    pipe.send(size // args.processes + (1 if part < size % args.processes else 0))
                with autoanalyze(url):
                    parts = [pipe.recv() for _, pipe in workers]
                for reply in parts:
                    if isinstance(reply, str):
                        raise RuntimeError(f"a seeding process failed: {reply}")
                spent = time.perf_counter() - started
                people.actions = sum(r["actions"] for r in parts)
                people.refused = sum(r["refused"] for r in parts)
                retried = sum(r["retried"] for r in parts)
                cpu = sum(r["cpu"] for r in parts)
                seeding[size] = (f"{(people.actions - before_a) / spent:,.0f} actions/s over {spent:.0f} s with "
                                 f"{args.processes} process(es), {cpu:.0f} CPU-s in them "
                                 f"({(people.actions - before_a) / max(cpu, 1e-9):,.0f} actions per CPU-s); "
                                 f"{sum(r['conflicts'] for r in parts)} batches decided again")
                print(f"{size:,} actions: seeded at {seeding[size]}", file=sys.stderr, flush=True)
                if args.seed_only:
                    continue
                try:
                    figures = measure(url, people, args.repeats, args.window, Path(tmp))
                except Exception as error:  # noqa: BLE001 - print what was measured before
                    if not results:
                        raise
                    print(f"measuring at {size:,} failed ({type(error).__name__}: {error}); the table stops before it",
                          file=sys.stderr, flush=True)
                    break
                events, log_bytes, view_bytes, parts = sizes_of(url)  # after measure: the projections caught up
                figures["events in the log"] = events
                figures["events per action"] = events / people.actions
                figures["log bytes per action"] = log_bytes / people.actions
                for part, part_bytes in parts.items():
                    figures[f"  of which {part}"] = part_bytes / people.actions
                figures["read-model bytes per action"] = view_bytes / people.actions
                figures["seeding (actions/s)"] = (people.actions - before_a) / spent
                results[size] = figures
                print(f"{size:,}: measured", file=sys.stderr, flush=True)
        if results:
            print_table(results, seeding, people)
            print(f"retried after UNAVAILABLE: {retried} commands while seeding, {RETRIES[0]} measured calls "
                  "(only successful attempts are timed)")
    finally:
        for process, pipe in workers:
            try:
                pipe.send(None)
            except OSError:
                pass
            process.join(60)
            if process.is_alive():
                process.kill()
        for attempt in range(0 if args.keep_schema else 30):
            try:
                schema.drop()
                break
            except Exception as error:  # noqa: BLE001 - a shared server out of connections: try again
                if attempt == 29:
                    print(f"could not drop schema {schema.name}: {error}", file=sys.stderr)
                time.sleep(2)
    return 0


def print_table(results: dict[int, dict[str, float]], seeding: dict[int, str], people: Population) -> None:
    sizes = sorted(results)
    print(f"\nPostgreSQL, one `leeway serve`; {len(people.teams)} teams, {len(people.employees):,} employees, "
          f"{people.customers:,} customers; {people.refused} actions refused while seeding")
    header = ["what", *(f"{s:,} actions" for s in sizes), f"ratio {sizes[-1]:,}/{sizes[0]:,}"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in results[sizes[0]]:
        values = [results[s][name] for s in sizes]
        ratio = values[-1] / values[0] if values[0] else float("nan")
        cells = [f"{v:,.2f}" if v < 100 else f"{v:,.0f}" for v in values]
        print("| " + " | ".join([name, *cells, f"{ratio:.2f}"]) + " |")
    for size in sizes:
        print(f"seeding to {size:,}: {seeding[size]}")


if __name__ == "__main__":
    sys.exit(main())
