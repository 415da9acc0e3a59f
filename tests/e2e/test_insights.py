"""InsightsService against a real `leeway serve` (SQLite and PostgreSQL), through LeewayClient: KPIs and the
celebration feed over the wire (exact google.type.Money), read-your-writes, the `leeway projections` CLI, and
projections in a separate process (LEEWAY_PROJECTIONS=external) that is SIGKILLed mid catch-up while writes
continue, restarted, and ends with the figures of what was acknowledged and of a rebuild."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from urllib.request import urlopen

import grpc
import pytest
from leeway.v1 import insights_pb2, policy_pb2
from leeway_client import (
    CreditDetails,
    GiftDetails,
    InvalidArgumentError,
    LeewayClient,
    NotFoundError,
    RefundDetails,
    UnavailableError,
    from_money,
    make_cap,
)
from builders import database

from .conftest import ServerProcess
from .helpers import expect_error, expect_raw_error, policy

NANO = Decimal("0.000000001")
KIND = {v: policy_pb2.ActionKind.Name(v).removeprefix("ACTION_KIND_") for v in policy_pb2.ActionKind.values()}


def kind_rows(kpis: insights_pb2.GetKpisResponse) -> list[tuple]:
    return [
        (KIND[k.kind], k.spend.currency_code, k.action_count, k.effective_count, from_money(k.spend), from_money(k.average_amount))
        for k in kpis.by_kind
    ]


def average(total: Decimal, count: int) -> Decimal:
    return (total / count).quantize(NANO, rounding=ROUND_HALF_EVEN) if count else Decimal(0)


# ============================================================================ figures over the wire


def test_kpis_over_the_wire(client: LeewayClient, uid) -> None:
    team, ann, bob, sam = uid("desk"), uid("ann"), uid("bob"), uid("sam")
    started = datetime.now(UTC) - timedelta(seconds=1)
    for employee in (ann, bob):
        client.open_budget(employee, team, policy("1000", per_action_limit="50", escalate_to=[sam]))
    refund = RefundDetails(order_id="o-1")
    r1 = client.record_action(ann, uid("c1"), "10.33", "EUR", refund, reason="late").action
    r2 = client.record_action(ann, uid("c1"), "10.33", "EUR", refund, reason="late").action
    client.record_action(ann, uid("c2"), "10.34", "EUR", refund, reason="late")
    g1 = client.record_action(ann, uid("c3"), "25.50", "EUR", GiftDetails(gift_type="flowers"), reason="sorry").action
    client.record_action(bob, uid("c3"), "12", "EUR", GiftDetails(gift_type="flowers"), reason="sorry")
    client.record_action(bob, uid("c4"), "7.77", "EUR", GiftDetails(gift_type="chocolate"), reason="sorry")
    client.record_action(bob, uid("c5"), "0.01", "EUR", CreditDetails(account_ref="a"), reason="goodwill")
    big = client.record_action(bob, uid("c5"), "75", "EUR", refund, reason="big").action
    huge = client.record_action(bob, uid("c5"), "99.99", "EUR", CreditDetails(account_ref="a"), reason="big").action
    client.record_action(ann, uid("c6"), "60", "EUR", refund, reason="waiting")  # stays pending
    client.approve_action(big.action_id, sam)
    client.deny_action(huge.action_id, sam)
    client.reverse_action(r2.action_id, reason="typo", actor_id=sam)
    for action in (r1, g1, big):
        client.document_win(action.action_id, "the guest came back")

    kpis = client.get_kpis(team_id=team)
    refunds = Decimal("10.33") + Decimal("10.34") + 75
    assert kind_rows(kpis) == [
        ("REFUND", "EUR", 5, 3, refunds, average(refunds, 3)),
        ("CREDIT", "EUR", 2, 1, Decimal("0.01"), Decimal("0.01")),
        ("GIFT", "EUR", 3, 3, Decimal("45.27"), Decimal("15.090000000")),
    ]
    assert average(refunds, 3) == Decimal("31.890000000")
    assert (kpis.action_count, kpis.escalated_count, kpis.pending_count) == (10, 3, 1)
    assert kpis.approval_rate == 0.5
    assert kpis.reversal_rate == 1 / 8
    flowers = kpis.flower_stats
    assert flowers.gifts_sent == 3 and flowers.customers_gifted == 2
    assert [(from_money(m), m.currency_code) for m in flowers.gift_spend] == [(Decimal("45.27"), "EUR")]
    assert [(g.gift_type, g.count) for g in flowers.by_gift_type] == [("flowers", 2), ("chocolate", 1)]
    assert kpis.wins_documented == 3
    assert [(e.employee_id, e.team_id, e.wins) for e in kpis.top_employees_by_wins] == [(ann, team, 2), (bob, team, 1)]
    assert kpis.position > 0
    # Money on the wire is exact: units + nanos
    assert (kpis.by_kind[0].average_amount.units, kpis.by_kind[0].average_amount.nanos) == (31, 890_000_000)

    mine = client.get_kpis(employee_id=ann)
    assert mine.action_count == 5 and mine.wins_documented == 2 and mine.pending_count == 1
    assert kind_rows(mine)[0] == ("REFUND", "EUR", 4, 2, Decimal("20.67"), Decimal("10.335000000"))
    now = datetime.now(UTC)
    assert client.get_kpis(team_id=team, start_time=started, end_time=now + timedelta(minutes=1)).action_count == 10
    assert client.get_kpis(team_id=team, start_time=now + timedelta(minutes=1)).action_count == 0
    assert client.get_kpis(team_id=team, end_time=started).action_count == 0
    error = expect_error(InvalidArgumentError, "INVALID_ARGUMENT", lambda: client.get_kpis(start_time=now, end_time=now))
    assert {f for f, _ in error.field_violations} == {"end_time"}


def test_kpi_series_over_the_wire(client: LeewayClient, uid) -> None:
    """GetKpiSeries: UTC day buckets whose figures are GetKpis' of the same ranges, weeks from Monday, months from
    the 1st, and its validation (INVALID_ARGUMENT with BadRequest field violations)."""
    team, ann = uid("desk"), uid("ann")
    client.open_budget(ann, team, policy("1000"))
    for amount in ("3", "4.5"):
        client.record_action(ann, uid("guest"), amount, "EUR", GiftDetails(gift_type="tea"), reason="r")
    now = datetime.now(UTC)
    start = now - timedelta(days=2, hours=5)
    series = client.get_kpi_series(team_id=team, start_time=start, end_time=now + timedelta(minutes=1))
    assert len(series.points) == 3 and series.position > 0
    assert series.points[0].start_time.ToDatetime(UTC) == start
    for point in series.points:
        lo, hi = point.start_time.ToDatetime(UTC), point.end_time.ToDatetime(UTC)
        same = client.get_kpis(team_id=team, start_time=lo, end_time=hi)
        same.position = point.kpis.position
        assert point.kpis == same
    assert [p.kpis.action_count for p in series.points] == [0, 0, 2]
    assert series.points[-1].kpis.flower_stats.gifts_sent == 2
    assert series.points[1].start_time.ToDatetime(UTC).time() == datetime.min.time()
    weeks = client.get_kpi_series(employee_id=ann, start_time=now - timedelta(days=20), end_time=now, granularity="WEEK")
    assert all(p.start_time.ToDatetime(UTC).weekday() == 0 for p in weeks.points[1:])
    assert sum(p.kpis.action_count for p in weeks.points) == 2
    months = client.get_kpi_series(team_id=team, start_time=now - timedelta(days=70), end_time=now, granularity="MONTH")
    assert all(p.start_time.ToDatetime(UTC).day == 1 for p in months.points[1:]) and len(months.points) in (3, 4)
    error = expect_error(InvalidArgumentError, "INVALID_ARGUMENT",
                         lambda: client.get_kpi_series(start_time=now - timedelta(days=400), end_time=now))
    assert [f for f, _ in error.field_violations] == ["end_time"] and "366" in error.message
    error = expect_error(InvalidArgumentError, "INVALID_ARGUMENT",
                         lambda: client.get_kpi_series(start_time=now, end_time=now - timedelta(days=1)))
    assert {f for f, _ in error.field_violations} == {"end_time"}
    # start, end and granularity all missing: one violation each
    error = expect_raw_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: client.insights.GetKpiSeries(
        insights_pb2.GetKpiSeriesRequest(team_id=team)))
    assert {f for f, _ in error.field_violations} == {"start_time", "end_time", "granularity"}
    expect_error(NotFoundError, "TEAM_NOT_FOUND", lambda: client.get_kpi_series(
        team_id=uid("no-such-team"), start_time=start, end_time=now))


def test_kpis_of_nobody_known_are_not_found(client: LeewayClient, uid) -> None:
    """A typo in a team or employee id is NOT_FOUND, not a page of zeros that looks like a quiet team."""
    error = expect_error(NotFoundError, "TEAM_NOT_FOUND", lambda: client.get_kpis(team_id=uid("no-such-team")))
    assert uid("no-such-team") in error.message
    expect_error(NotFoundError, "BUDGET_NOT_FOUND", lambda: client.get_kpis(employee_id=uid("nobody")))
    # A team with a cap but no budgets yet exists: its KPIs are zeros.
    team = uid("capped")
    client.set_team_cap(team, make_cap("100", "EUR", "MONTH"))
    assert client.get_kpis(team_id=team).action_count == 0


def test_list_wins_over_the_wire(client: LeewayClient, uid) -> None:
    team, other, ann, bob = uid("desk"), uid("ops"), uid("ann"), uid("bob")
    client.open_budget(ann, team, policy("1000"))
    client.open_budget(bob, other, policy("1000"))
    won = []
    for i in range(5):
        for employee in (ann, bob):
            action = client.record_action(employee, uid("guest"), f"{i + 1}.25", "EUR", GiftDetails(gift_type="tea"), reason="r").action
            client.document_win(action.action_id, f"story {employee} {i}", customer_quote="thanks", outcome="rebooked")
            won.append((employee, action.action_id))
    newest_first = [a for _, a in reversed(won)]
    page = client.list_wins(team_id=team, page_size=2)
    assert [w.action_id for w in page.wins] == [a for e, a in reversed(won) if e == ann][:2] and page.next_page_token
    assert [w.action_id for w in client.iter_wins(team_id=team, page_size=2)] == [a for e, a in reversed(won) if e == ann]
    assert [w.action_id for w in client.iter_wins(employee_id=bob, page_size=3)] == [a for e, a in reversed(won) if e == bob]
    everything = [w.action_id for w in client.iter_wins(page_size=4)]
    assert [a for a in everything if a in newest_first] == newest_first  # (other tests' wins are interleaved)
    entry = client.list_wins(employee_id=bob, page_size=1).wins[0]
    assert (entry.employee_id, entry.team_id, KIND[entry.kind], from_money(entry.amount), entry.amount.currency_code) == (
        bob, other, "GIFT", Decimal("5.25"), "EUR")
    assert (entry.win.story, entry.win.customer_quote, entry.win.outcome) == (f"story {bob} 4", "thanks", "rebooked")
    assert entry.win.document_time.seconds > 0 and entry.reason == "r"
    expect_error(InvalidArgumentError, "INVALID_PAGE_TOKEN",
                 lambda: client.list_wins(team_id=other, page_size=2, page_token=page.next_page_token))


def test_read_your_writes(client: LeewayClient, uid) -> None:
    team, ann = uid("desk"), uid("ann")
    client.open_budget(ann, team, policy("1000"))
    for i in range(1, 6):
        action = client.record_action(ann, uid("guest"), "2", "EUR", GiftDetails(gift_type="flowers"), reason="r").action
        assert client.get_kpis(employee_id=ann).flower_stats.gifts_sent == i
        client.document_win(action.action_id, f"win {i}")
        (first,) = client.list_wins(team_id=team, page_size=1).wins
        assert (first.action_id, first.win.story) == (action.action_id, f"win {i}")


# ============================================================================ the CLI


def cli(database_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env.update(LEEWAY_DATABASE_URL=database_url, LEEWAY_LOG_FORMAT="json")
    return subprocess.run([sys.executable, "-m", "leeway.cli", "projections", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def views_head(database_url: str) -> int:
    """The log head (the last notification id), read straight from the event store."""
    from leeway.application import LeewayApplication
    from leeway.settings import Settings

    app = LeewayApplication(env=Settings(database_url=database_url, create_tables=False).eventsourcing_env())
    try:
        return int(app.recorder.max_notification_id() or 0)
    finally:
        app.close()


def status(database_url: str) -> dict[str, tuple[int, int, int]]:
    """`leeway projections status` -> {name: (position, head, lag)}."""
    done = cli(database_url, "status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["projection", "position", "log", "head"]
    out = {}
    for line in lines[1:]:
        name, position, head, lag, *_ = line.split()
        out[name] = (int(position), int(head), int(lag))
    return out


def test_projections_cli(server: ServerProcess, client: LeewayClient, uid) -> None:
    ann = uid("ann")
    client.open_budget(ann, uid("desk"), policy("1000"))
    action = client.record_action(ann, uid("guest"), "3.5", "EUR", GiftDetails(gift_type="tea"), reason="r").action
    client.document_win(action.action_id, "yay")
    before = client.get_kpis()  # the in-process projections are caught up
    shown = status(server.database_url)
    assert {"insights", "balances"} <= set(shown)
    for position, head, lag in shown.values():
        assert head >= before.position and position <= head and lag == head - position
    assert shown["insights"][0] >= before.position

    rebuilt = cli(server.database_url, "rebuild", "insights")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuild insights" in rebuilt.stderr and "ev" in rebuilt.stderr  # the progress bar
    assert "rebuilt insights from" in rebuilt.stderr and "balances" not in rebuilt.stderr
    after = client.get_kpis()
    assert after == before
    everything = cli(server.database_url, "rebuild")
    assert everything.returncode == 0, everything.stderr
    assert "rebuilt insights from" in everything.stderr and "rebuilt balances from" in everything.stderr
    assert client.get_kpis() == before

    unknown = cli(server.database_url, "rebuild", "insights", "nonsense")
    assert unknown.returncode == 2 and "nonsense" in unknown.stderr and "insights" in unknown.stderr
    assert cli(server.database_url, "frobnicate").returncode == 2


# ============================================================================ projections in their own process


class ProjectionProcess:
    """`python -m leeway.cli projections run` beside an external-mode server, on the same database."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log = open(self.server.workdir / f"projections-{self.runs}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "leeway.cli", "projections", "run"],
                                     env=self.server.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL
        self.proc = None

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(15)
        self.proc = None
        return code


@pytest.fixture
def fresh_url(engine_url: str, tmp_path: Path) -> Iterator[str]:
    """A database of its own on the module's engine (the module server must not project it)."""
    engine = "sqlite" if engine_url.startswith("sqlite") else "postgres"
    with database(engine, tmp_path, prefix="e2e", name="external.sqlite") as url:
        yield url


class Acknowledged:
    """What the server acknowledged, to compute the KPIs independently."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.actions: list[tuple[str, str, Decimal, str]] = []  # (employee, kind, amount, gift_type)

    def expected(self) -> dict:
        spend: dict[str, Decimal] = {}
        count: Counter[str] = Counter()
        for _, kind, amount, _ in self.actions:
            spend[kind] = spend.get(kind, Decimal(0)) + amount
            count[kind] += 1
        rows = [(k, "EUR", count[k], count[k], spend[k], average(spend[k], count[k])) for k in ("REFUND", "GIFT") if count[k]]
        gifts = Counter(g for _, k, _, g in self.actions if k == "GIFT")
        return {"by_kind": rows, "action_count": len(self.actions),
                "gifts": sorted(gifts.items(), key=lambda item: (-item[1], item[0]))}


def observed(kpis: insights_pb2.GetKpisResponse) -> dict:
    return {"by_kind": kind_rows(kpis), "action_count": kpis.action_count,
            "gifts": [(g.gift_type, g.count) for g in kpis.flower_stats.by_gift_type]}


def write(client: LeewayClient, employees: list[str], per_employee: int, acked: Acknowledged, tag: str) -> None:
    def one(employee: str) -> None:
        for i in range(per_employee):
            amount = Decimal(f"{i % 7 + 1}.{(i * 37) % 100:02d}")
            if i % 3 == 0:
                gift = ("flowers", "tea", "cake")[i % 9 // 3]
                client.record_action(employee, f"g-{tag}-{i}", amount, "EUR", GiftDetails(gift_type=gift), reason="r",
                                     request_id=f"{employee}-{tag}-{i}")
                with acked.lock:
                    acked.actions.append((employee, "GIFT", amount, gift))
            else:
                client.record_action(employee, f"c-{tag}-{i % 5}", amount, "EUR", RefundDetails(order_id="o"), reason="r",
                                     request_id=f"{employee}-{tag}-{i}")
                with acked.lock:
                    acked.actions.append((employee, "REFUND", amount, ""))

    with ThreadPoolExecutor(len(employees)) as pool:
        for future in [pool.submit(one, e) for e in employees]:
            future.result()


def test_external_projections_killed_mid_catch_up(make_server, fresh_url: str) -> None:
    from leeway.projections.store import open_view_store
    from leeway.settings import Settings

    server = make_server(fresh_url, {"LEEWAY_PROJECTIONS": "external", "LEEWAY_PROJECTION_WAIT_SECONDS": "1",
                                     "LEEWAY_PROJECTION_POLL_SECONDS": "0.2"})
    server.start()
    employees = [f"emp-{i}" for i in range(8)]
    acked = Acknowledged()
    projector = ProjectionProcess(server)
    views = open_view_store(Settings(database_url=fresh_url).eventsourcing_env())
    with LeewayClient(server.target, timeout=30) as client, LeewayClient(server.target, retries=0) as impatient:
        for employee in employees:
            client.open_budget(employee, "desk", policy("1000000"))
        write(client, employees, 30, acked, "a")  # ~1,300 events: several 500-event batches to catch up
        # No projection process: the figures are not served stale.
        started = time.monotonic()
        error = expect_error(UnavailableError, "PROJECTION_LAGGING", lambda: impatient.get_kpis())
        assert 0.8 < time.monotonic() - started < 5 and error.metadata["projection"] == "insights"
        expect_error(UnavailableError, "PROJECTION_LAGGING", lambda: impatient.list_wins())

        writer = threading.Thread(target=write, args=(client, employees, 15, acked, "b"), daemon=True)
        writer.start()
        projector.start()
        deadline = time.monotonic() + 60
        while views.position("insights") == 0 and views.position("balances") == 0:
            assert time.monotonic() < deadline, "the projection process made no progress"
            time.sleep(0.005)
        projector.kill()
        killed_at = {name: views.position(name) for name in ("insights", "balances")}
        head = status(fresh_url)["insights"][1]
        assert min(killed_at.values()) < head, (killed_at, head)  # killed mid catch-up
        time.sleep(0.5)  # writes go on without it
        projector.start()
        writer.join(120)
        assert not writer.is_alive()
        kpis = client.get_kpis()  # (retries while the projection catches up: UNAVAILABLE is retryable)
        assert observed(kpis) == acked.expected()
        assert kpis.action_count == len(employees) * 45
        # GetKpis waited for the insights projection only: let the other two catch up as well, then stop.
        # (The writes are over, so the log head no longer moves.)
        final_head, deadline = views_head(fresh_url), time.monotonic() + 60
        while any(views.position(name) < final_head for name in ("insights", "balances", "trail")):
            assert time.monotonic() < deadline, status(fresh_url)
            time.sleep(0.05)
        assert projector.stop() == 0
        shown = status(fresh_url)
        assert all(lag == 0 for _, _, lag in shown.values()), shown

        # A rebuild from scratch gives the same figures.
        rebuilt = cli(fresh_url, "rebuild")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert client.get_kpis() == kpis
        assert [w.action_id for w in client.iter_wins()] == []
    views.datastore.close()
    server.stop_cleanly()


# ============================================================================ projections in a child of the server


def children_running_projections(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` and that run `projections run --wake-on-stdin`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"--wake-on-stdin" in command:
            found.append(int(entry.name))
    return found


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_subprocess_projections_are_supervised_and_woken(make_server, fresh_url: str) -> None:
    """LEEWAY_PROJECTIONS=subprocess: the server runs the projections in a child process, wakes it after each
    commit (the poll interval here is 60 s, so only the wake-up can make reads fresh quickly), starts it again
    when it dies, and stops it on shutdown."""
    server = make_server(fresh_url, {"LEEWAY_PROJECTIONS": "subprocess", "LEEWAY_PROJECTION_POLL_SECONDS": "60",
                                     "LEEWAY_PROJECTION_WAIT_SECONDS": "10"})
    server.start()
    assert server.proc is not None
    first = wait_until(lambda: children_running_projections(server.proc.pid), 30, "the projections child")
    assert len(first) == 1
    acked = Acknowledged()
    employees = [f"sub-{i}" for i in range(4)]
    with LeewayClient(server.target, timeout=30, retries=0) as client:
        for employee in employees:
            client.open_budget(employee, "desk", policy("1000000"))
        write(client, employees, 6, acked, "a")
        started = time.monotonic()
        assert observed(client.get_kpis()) == acked.expected()  # read-your-writes through the child
        assert time.monotonic() - started < 5, "the child was not woken by the commits"
        client.document_win(client.record_action(employees[0], "c", 1, "EUR", RefundDetails(order_id="o"),
                                                 reason="r").action.action_id, "a story")
        acked.actions.append((employees[0], "REFUND", Decimal(1), ""))
        assert [w.win.story for w in client.iter_wins()] == ["a story"]

        os.kill(first[0], signal.SIGKILL)
        second = wait_until(lambda: [p for p in children_running_projections(server.proc.pid) if p != first[0]], 30,
                            "a new projections child")
        assert len(second) == 1
        write(client, employees, 4, acked, "b")
        assert observed(client.get_kpis()) == acked.expected()
        assert client.get_kpis().action_count == len(employees) * 10 + 1
    assert "projections.child_exited" in server.logs()
    exits = [line for line in urlopen(server.metrics_url(), timeout=10).read().decode().splitlines()
             if line.startswith("leeway_projection_child_exits_total ")]
    assert exits == ["leeway_projection_child_exits_total 1.0"], exits
    server.stop_cleanly()
    wait_until(lambda: not Path(f"/proc/{second[0]}").exists() or "Z" in Path(f"/proc/{second[0]}/stat").read_text().rsplit(")", 1)[1].split()[:1],
               15, "the child to stop with the server")
