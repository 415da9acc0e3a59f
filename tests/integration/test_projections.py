"""Projections and insights on a real event store (SQLite and PostgreSQL).

- a rich history projected incrementally (small batches, catch-up every few commands) gives exactly the read
  models of a rebuild from scratch, the balances agree with ``app.get_budget`` and the KPIs with figures computed
  here from the commands issued;
- a batch that fails inside its transaction leaves nothing behind and the next run counts nothing twice;
- two runners on one view at once, and a rebuild beside a running runner, still end equal to a rebuild;
- read-your-writes (and PROJECTION_LAGGING when the projections do not run), ListWins paging and filters,
  GetKpis validation and time ranges.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from leeway.application.commands import DocumentWin, ReverseAction, UpdatePolicy
from leeway.application.insights import Insights
from leeway.domain.errors import InvalidArgument, Unavailable
from leeway.domain.money import Money
from leeway.domain.policy import ActionKind, Policy
from leeway.projections import store as store_module
from leeway.projections.runner import Projections
from leeway.projections.store import TABLES, open_view_store
from leeway.projections.views import micros
from builders import action_cmd, approve, deny, make_policy, open_cmd

NANO = Decimal("0.000000001")
ALL_KINDS = [ActionKind.REFUND, ActionKind.CREDIT, ActionKind.RULE_BEND, ActionKind.GIFT]
KIND_ORDER = ("REFUND", "CREDIT", "RULE_BEND", "GIFT")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def policy(allowance: str = "500", currency: str = "USD", *, limit: str = "50", timeout: timedelta = timedelta(hours=1)) -> Policy:
    return make_policy(allowance, currency=currency, limit=limit, kinds=ALL_KINDS, approvers=("mgr-1",), timeout=timeout)


# ============================================================================ what the test expects


@dataclass
class Act:
    action_id: str
    employee: str
    team: str
    customer: str
    kind: str
    amount: Decimal
    currency: str
    gift_type: str
    at: datetime
    state: str
    escalated: bool
    expires_at: datetime | None
    reversed: bool = False


@dataclass
class Won:
    action_id: str
    employee: str
    team: str
    at: datetime


class History:
    """Issues commands and remembers, independently of the service, what each one did."""

    def __init__(self, app: Any, clock: Any) -> None:
        self.app = app
        self.clock = clock
        self.teams: dict[str, str] = {}
        self.currency: dict[str, str] = {}
        self.actions: dict[str, Act] = {}
        self.wins: list[Won] = []
        self.commands = 0
        self.after: list[Any] = []  # callbacks run after every command (e.g. an incremental catch-up)

    def _run(self, command: Any) -> Any:
        result = self.app.execute(command)
        self.commands += 1
        for callback in self.after:
            callback(self.commands)
        return result

    def tick(self, minutes: int = 7) -> None:
        self.clock.advance(timedelta(minutes=minutes))

    def open(self, employee: str, team: str, currency: str = "USD", allowance: str = "500") -> None:
        self._run(open_cmd(employee, team, policy(allowance, currency)))
        self.teams[employee] = team
        self.currency[employee] = currency

    def act(self, employee: str, amount: str, kind: ActionKind = ActionKind.REFUND, customer: str = "cust-1",
            gift: str = "flowers") -> str:
        details = {"gift_type": gift} if kind is ActionKind.GIFT else None
        money = Money(Decimal(amount), self.currency[employee])
        action, _ = self._run(action_cmd(employee, money, kind=kind, customer=customer, details=details))
        assert action.state in ("PENDING_APPROVAL", "RECORDED"), action
        pending = action.state == "PENDING_APPROVAL"
        self.actions[action.action_id] = Act(
            action.action_id, employee, self.teams[employee], customer, kind.value, Decimal(amount),
            self.currency[employee], gift if kind is ActionKind.GIFT else "", self.clock(), action.state, pending,
            self.clock() + timedelta(hours=1) if pending else None,
        )
        self.tick()
        return action.action_id

    def approve(self, action_id: str) -> None:
        self._run(approve(action_id))
        self.actions[action_id].state = "APPROVED"
        self.tick(3)

    def deny(self, action_id: str) -> None:
        self._run(deny(action_id))
        self.actions[action_id].state = "DENIED"
        self.tick(3)

    def reverse(self, action_id: str) -> None:
        self._run(ReverseAction(request_id=f"rev-{uuid4()}", action_id=action_id, reason="typo", actor_id="mgr-1"))
        self.actions[action_id].reversed = True
        self.tick(2)

    def win(self, action_id: str, story: str = "they came back") -> None:
        self._run(DocumentWin(request_id=f"win-{uuid4()}", action_id=action_id, story=story, outcome="rebooked"))
        act = self.actions[action_id]
        self.wins.append(Won(action_id, act.employee, act.team, self.clock()))
        self.tick(1)

    def expire(self) -> int:
        now = self.clock()
        due = [a for a in self.actions.values() if a.state == "PENDING_APPROVAL" and a.expires_at <= now]
        done = self.app.expire_due()
        self.commands += done
        for callback in self.after:
            callback(self.commands)
        assert done == len(due)
        for a in due:
            a.state = "EXPIRED"
        return done

    def update_policy(self, employee: str, allowance: str) -> None:
        self._run(UpdatePolicy(request_id=f"pol-{uuid4()}", employee_id=employee,
                               policy=policy(allowance, self.currency[employee])))
        self.tick(2)

    # ------------------------------------------------------------------ the KPIs, computed here

    def kpis(self, team: str = "", employee: str = "", start: datetime | None = None, end: datetime | None = None) -> dict:
        now = self.clock()

        def keep(who: str, when: datetime) -> bool:
            return ((not team or self.teams[who] == team) and (not employee or who == employee)
                    and (start is None or when >= start) and (end is None or when < end))

        acts = [a for a in self.actions.values() if keep(a.employee, a.at)]
        effective = [a for a in acts if a.state in ("RECORDED", "APPROVED") and not a.reversed]
        by_kind = []
        for kind, currency in sorted({(a.kind, a.currency) for a in acts}, key=lambda k: (KIND_ORDER.index(k[0]), k[1])):
            mine = [a for a in effective if (a.kind, a.currency) == (kind, currency)]
            spend = sum((a.amount for a in mine), Decimal(0))
            average = (spend / len(mine)).quantize(NANO, rounding=ROUND_HALF_EVEN) if mine else Decimal(0)
            count = sum(1 for a in acts if (a.kind, a.currency) == (kind, currency))
            by_kind.append((kind, currency, count, len(mine), spend, average))
        approved = sum(1 for a in acts if a.state == "APPROVED")
        refused = sum(1 for a in acts if a.state in ("DENIED", "EXPIRED"))
        counted = [a for a in acts if a.state in ("RECORDED", "APPROVED")]
        reversed_ = sum(1 for a in counted if a.reversed)
        gifts = [a for a in effective if a.kind == "GIFT"]
        gift_types = Counter(a.gift_type for a in gifts)
        # one entry per currency in which at least one gift counts (was sent and not reversed)
        gift_spend = {
            currency: spend for kind, currency, _, effective, spend, _ in by_kind if kind == "GIFT" and effective
        }
        wins = [w for w in self.wins if keep(w.employee, w.at)]
        per_employee = Counter((w.employee, w.team) for w in wins)
        top = sorted(per_employee.items(), key=lambda item: (-item[1], item[0][0]))[:10]
        return {
            "by_kind": by_kind,
            "action_count": len(acts),
            "escalated_count": sum(1 for a in acts if a.escalated),
            "approval_rate": approved / (approved + refused) if approved + refused else 0.0,
            "reversal_rate": reversed_ / len(counted) if counted else 0.0,
            "gifts_sent": len(gifts),
            "gift_spend": sorted(gift_spend.items()),
            "gifts_by_type": sorted(gift_types.items(), key=lambda item: (-item[1], item[0])),
            "customers_gifted": len({a.customer for a in gifts}),
            "wins_documented": len(wins),
            "top_employees": [(e, t, n) for (e, t), n in top],
            "pending_count": sum(1 for a in acts if a.state == "PENDING_APPROVAL" and a.expires_at > now),
        }


def observed(kpis: Any) -> dict:
    """The service's Kpis in the shape of History.kpis (Money as exact Decimals)."""
    return {
        "by_kind": [
            (k.kind, k.currency, k.action_count, k.effective_count, k.spend.amount, k.average_amount.amount)
            for k in kpis.by_kind
        ],
        "action_count": kpis.action_count,
        "escalated_count": kpis.escalated_count,
        "approval_rate": kpis.approval_rate,
        "reversal_rate": kpis.reversal_rate,
        "gifts_sent": kpis.gifts_sent,
        "gift_spend": sorted((m.currency, m.amount) for m in kpis.gift_spend),
        "gifts_by_type": list(kpis.gifts_by_type),
        "customers_gifted": kpis.customers_gifted,
        "wins_documented": kpis.wins_documented,
        "top_employees": list(kpis.top_employees),
        "pending_count": kpis.pending_count,
    }


def tables(projections: Projections) -> dict[str, list[dict]]:
    """Every row of every read-model table (the three of insights and balances, and any other), sorted."""
    out = {}
    with projections.store.transaction(commit=False) as tx:
        for table in TABLES:
            rows = tx.execute(f"SELECT * FROM {{{table}}}").fetchall()
            out[table] = sorted(({k: row[k] for k in row.keys()} for row in rows), key=lambda r: repr(list(r.values())))
    return out


def rebuilt(projections: Projections) -> dict[str, list[dict]]:
    for name in projections.runners:
        projections.rebuild(name)
    return tables(projections)


def positions(projections: Projections) -> dict[str, int]:
    return {name: projections.store.position(name) for name in projections.runners}


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


# ============================================================================ a rich history


def rich_history(h: History) -> dict[str, str]:
    """Seven employees in three teams (one in EUR): refunds, credits, gifts, bends, escalations approved, denied
    and expired, reversals, wins, a policy change and a month rollover. Returns a few action ids by name."""
    named: dict[str, str] = {}
    for employee, team, currency in [
        ("ann", "team-a", "USD"), ("bob", "team-a", "USD"), ("cat", "team-a", "USD"),
        ("dan", "team-b", "USD"), ("eve", "team-b", "USD"),
        ("fay", "team-c", "USD"), ("gus", "team-c", "EUR"),
    ]:
        h.open(employee, team, currency)
    named["ann_r1"] = h.act("ann", "10.33")
    named["ann_r2"] = h.act("ann", "10.33", customer="cust-2")
    named["ann_r3"] = h.act("ann", "10.34", customer="cust-3")
    named["ann_gift"] = h.act("ann", "25.5", ActionKind.GIFT, customer="cust-2", gift="flowers")
    named["bob_credit"] = h.act("bob", "0.01", ActionKind.CREDIT, customer="cust-4")
    named["bob_big"] = h.act("bob", "75", customer="cust-4")  # escalated
    h.approve(named["bob_big"])
    named["cat_big"] = h.act("cat", "60.5", ActionKind.CREDIT, customer="cust-5")  # escalated
    h.deny(named["cat_big"])
    named["cat_bend"] = h.act("cat", "0", ActionKind.RULE_BEND, customer="cust-5")
    named["dan_gift1"] = h.act("dan", "12", ActionKind.GIFT, customer="cust-6", gift="chocolate")
    named["dan_gift2"] = h.act("dan", "12", ActionKind.GIFT, customer="cust-6", gift="flowers")
    named["dan_gift3"] = h.act("dan", "8.75", ActionKind.GIFT, customer="cust-7", gift="flowers")
    named["eve_big"] = h.act("eve", "99.99", ActionKind.GIFT, customer="cust-8", gift="hamper")  # will expire
    named["gus_eur"] = h.act("gus", "19.99", ActionKind.GIFT, customer="cust-9", gift="flowers")
    named["gus_refund"] = h.act("gus", "33.33", customer="cust-9")
    h.win(named["ann_r1"])
    h.win(named["bob_big"])
    h.win(named["dan_gift1"])
    h.win(named["gus_eur"])
    h.reverse(named["ann_r2"])
    h.reverse(named["bob_big"])  # approved, won, then reversed: the win stays, the spend goes
    h.reverse(named["dan_gift2"])
    h.update_policy("fay", "250")
    named["fay_r1"] = h.act("fay", "40", customer="cust-1")
    named["fay_big"] = h.act("fay", "51", ActionKind.CREDIT, customer="cust-1")
    h.tick(90)
    assert h.expire() == 2  # eve_big and fay_big
    named["eve_small"] = h.act("eve", "5", customer="cust-8")
    h.win(named["eve_small"])
    h.win(named["fay_r1"])
    # The month rolls over: April.
    h.clock.now = datetime(2025, 4, 2, 9, 0, tzinfo=timezone.utc)
    named["ann_april"] = h.act("ann", "20", customer="cust-1")
    named["bob_april"] = h.act("bob", "55", customer="cust-1")  # escalated, approved
    h.approve(named["bob_april"])
    named["dan_april"] = h.act("dan", "7.77", ActionKind.GIFT, customer="cust-10", gift="chocolate")
    named["gus_april"] = h.act("gus", "1.01", ActionKind.CREDIT, customer="cust-9")
    named["eve_april"] = h.act("eve", "5", customer="cust-8")
    named["fay_april"] = h.act("fay", "10", customer="cust-1")
    h.win(named["ann_r3"])  # a March action documented in April
    h.win(named["bob_april"])
    h.win(named["dan_april"])
    h.reverse(named["ann_r1"])  # a March action reversed in April (its win stays)
    h.update_policy("ann", "600")
    named["cat_pending"] = h.act("cat", "80", customer="cust-5")  # still pending at the end
    return named


KPI_FILTERS: list[tuple[str, str, datetime | None, datetime | None]] = [
    ("", "", None, None),
    ("team-a", "", None, None),
    ("team-b", "", None, None),
    ("team-c", "", None, None),
    ("", "ann", None, None),
    ("", "gus", None, None),
    ("team-b", "eve", None, None),
    ("team-a", "dan", None, None),  # nobody: zeros
    ("", "", datetime(2025, 3, 1, tzinfo=timezone.utc), datetime(2025, 4, 1, tzinfo=timezone.utc)),
    ("", "", datetime(2025, 4, 1, tzinfo=timezone.utc), None),
    ("", "", None, datetime(2025, 3, 14, 12, 30, tzinfo=timezone.utc)),
    ("team-a", "", datetime(2025, 3, 14, 12, 14, tzinfo=timezone.utc), datetime(2025, 3, 14, 13, 0, tzinfo=timezone.utc)),
    ("", "", datetime(2030, 1, 1, tzinfo=timezone.utc), None),
]


def test_incremental_equals_rebuild_and_the_figures_are_right(app_factory, clock) -> None:
    app = app_factory()
    projections = Projections(app)
    for runner in projections.runners.values():
        runner.batch = 3
    h = History(app, clock)
    batches_seen = []

    def catch_up(commands: int) -> None:
        if commands % 3 == 0:
            batches_seen.append(sum(r.catch_up() for r in projections.runners.values()))

    h.after.append(catch_up)
    named = rich_history(h)
    for runner in projections.runners.values():
        runner.catch_up()
    head = projections.head()
    assert positions(projections) == dict.fromkeys(projections.runners, head)
    assert len(batches_seen) >= 15 and sum(batches_seen) > 0

    incremental = tables(projections)
    assert len(incremental["leeway_view_actions"]) == len(h.actions)
    assert len(incremental["leeway_view_wins"]) == len(h.wins)
    assert len(incremental["leeway_view_balances"]) == 7
    assert {"insights", "balances"} <= set(projections.runners)

    # ---- KPIs against figures computed from the commands
    insights = Insights(projections, wait_seconds=2, clock=clock)
    for team, employee, start, end in KPI_FILTERS:
        kpis = insights.get_kpis(team, employee, start, end)
        assert observed(kpis) == h.kpis(team, employee, start, end), (team, employee, start, end)
        assert kpis.position == head
    everything = insights.get_kpis("", "", None, None)
    # a few figures written out, so a mistake shared by History and the service would show
    assert everything.action_count == 24 and everything.escalated_count == 6 and everything.pending_count == 1
    assert everything.approval_rate == 2 / 5
    usd_gifts = [k for k in everything.by_kind if (k.kind, k.currency) == ("GIFT", "USD")][0]
    assert (usd_gifts.spend.amount, usd_gifts.effective_count) == (Decimal("54.02"), 4)
    assert usd_gifts.average_amount.amount == Decimal("13.505000000")
    refunds = [k for k in everything.by_kind if (k.kind, k.currency) == ("REFUND", "USD")][0]
    # ann 10.34 (r1, r2 reversed) + fay 40 + eve 5 + ann 20 + bob 55 (approved; bob_big reversed) + eve 5 + fay 10
    assert refunds.spend.amount == Decimal("145.34") and refunds.effective_count == 7
    assert refunds.average_amount.amount == (Decimal("145.34") / 7).quantize(NANO, ROUND_HALF_EVEN)
    march = insights.get_kpis("", "", datetime(2025, 3, 1, tzinfo=timezone.utc), datetime(2025, 4, 1, tzinfo=timezone.utc))
    # wins count by documentation time: ann_r3 (recorded in March) was documented in April
    assert march.wins_documented == 6
    assert [w.action_id for w in insights.list_wins("", "ann", 0, "").wins] == [named["ann_r3"], named["ann_r1"]]

    # ---- balances against the application's own budgets
    now = clock()
    for row in incremental["leeway_view_balances"]:
        employee = row["employee_id"]
        as_of = app.get_budget(employee, as_of=from_micros(row["update_us"]))
        current = app.get_budget(employee)
        for view in (as_of, current):
            assert (row["team_id"], row["display_name"], row["currency"], row["state"]) == (
                view.team_id, view.display_name, view.allowance.currency, view.state)
            assert Decimal(row["allowance"]) == view.allowance.amount
            assert Decimal(row["spent"]) == view.spent.amount, employee
            assert Decimal(row["remaining"]) == view.remaining.amount, employee
            assert Decimal(row["held"]) == (view.held.amount if view.held else 0), employee
            assert (row["period_start_us"], row["period_end_us"]) == (micros(view.period_start), micros(view.period_end))
            assert (row["period_action_count"], row["pending_action_count"]) == (
                view.period_action_count, view.pending_action_count), employee
            assert (row["policy_version"], row["version"], row["update_us"]) == (
                view.policy_version, view.version, micros(view.update_time))
        assert from_micros(row["period_end_us"]) > now  # everyone acted in April
    balances = {row["employee_id"]: row for row in incremental["leeway_view_balances"]}
    assert (balances["ann"]["allowance"], Decimal(balances["ann"]["spent"])) == ("600", Decimal(20))
    assert Decimal(balances["cat"]["held"]) == 80 and balances["cat"]["pending_action_count"] == 1
    assert Decimal(balances["fay"]["allowance"]) == 250 and balances["gus"]["currency"] == "EUR"

    # ---- a rebuild from scratch gives exactly the same rows
    assert rebuilt(projections) == incremental
    assert positions(projections) == dict.fromkeys(projections.runners, head)


def test_an_idle_budget_shows_its_last_period(app_factory, clock) -> None:
    """The balances row is the budget as of its last event: after a rollover without events it still shows the
    old period (with its end), while get_budget shows the new one."""
    app = app_factory()
    h = History(app, clock)
    h.open("ann", "team-a")
    h.act("ann", "30")
    projections = Projections(app)
    projections.runners["balances"].catch_up()
    clock.now = datetime(2025, 5, 3, tzinfo=timezone.utc)
    (row,) = tables(projections)["leeway_view_balances"]
    assert Decimal(row["spent"]) == 30 and from_micros(row["period_end_us"]) == datetime(2025, 4, 1, tzinfo=timezone.utc)
    assert app.get_budget("ann").spent.amount == 0
    projections.close()


# ============================================================================ killed mid-batch


class Killed(BaseException):
    """Stands for the process dying inside the batch transaction."""


def test_a_batch_killed_inside_its_transaction_leaves_nothing(app_factory, clock, monkeypatch) -> None:
    app = app_factory()
    h = History(app, clock)
    projections = Projections(app)
    for runner in projections.runners.values():
        runner.batch = 40
    h.open("ann", "team-a")
    h.open("bob", "team-b")
    first = h.act("ann", "10")
    h.act("bob", "20", ActionKind.GIFT)
    for runner in projections.runners.values():
        runner.catch_up()
    before_tables, before_positions = tables(projections), positions(projections)
    # More history: a batch of 40 notifications holds several view changes.
    h.win(first)
    for i in range(6):
        h.act("ann", f"{i + 1}.5", customer=f"cust-{i}")
        h.act("bob", "2", ActionKind.CREDIT)
    h.reverse(first)

    real_execute, real_executemany = store_module.Tx.execute, store_module.Tx.executemany
    calls = {"n": 0}

    def dying(real: Any) -> Any:
        def call(self: Any, sql: str, params: Any = ()) -> Any:
            calls["n"] += 1
            result = real(self, sql, params)
            if calls["n"] >= 2 and not calls.get("dead"):  # the tracking move and a view change are written: die
                calls["dead"] = 1
                raise Killed()
            return result

        return call

    for name, runner in projections.runners.items():
        calls.clear()
        calls["n"] = 0
        monkeypatch.setattr(store_module.Tx, "execute", dying(real_execute))
        # A run of the same statement goes as one executemany (which may call execute for a single row).
        monkeypatch.setattr(store_module.Tx, "executemany", dying(real_executemany))
        with pytest.raises(Killed):
            runner.run_once()
        monkeypatch.setattr(store_module.Tx, "execute", real_execute)
        monkeypatch.setattr(store_module.Tx, "executemany", real_executemany)
        assert calls["n"] >= 2 and calls["dead"], name
        # nothing of the batch is visible, from this store or a fresh connection
        assert tables(projections) == before_tables
        assert positions(projections) == before_positions
        other = Projections(app)
        assert tables(other) == before_tables and positions(other) == before_positions
        other.close()

    # A crashing SQL statement (not our exception) is rolled back the same way.
    real_changes = projections.runners["insights"].projection.changes
    monkeypatch.setattr(
        projections.runners["insights"].projection, "changes",
        lambda events: [*real_changes(events), ("INSERT INTO {leeway_view_wins} (action_id) VALUES ('x')", {})],
    )
    with pytest.raises(Exception):  # noqa: B017 - NOT NULL violation on either engine
        projections.runners["insights"].run_once()
    monkeypatch.undo()
    assert tables(projections) == before_tables and positions(projections) == before_positions

    # The next runs complete, and count each event once.
    for runner in projections.runners.values():
        runner.catch_up()
    after = tables(projections)
    actions = {r["action_id"]: r for r in after["leeway_view_actions"]}
    assert len(actions) == len(h.actions) and actions[first]["reversed"] == 1
    assert len(after["leeway_view_wins"]) == 1
    insights = Insights(projections, wait_seconds=2, clock=clock)
    assert observed(insights.get_kpis("", "", None, None)) == h.kpis()
    assert rebuilt(projections) == after
    projections.close()


# ============================================================================ concurrent runners and rebuilds


def _writes(h: History, employees: list[str], rounds: int) -> None:
    for i in range(rounds):
        for employee in employees:
            aid = h.act(employee, f"{(i % 9) + 1}.{i % 100:02d}", ActionKind.GIFT if i % 3 == 0 else ActionKind.REFUND,
                        customer=f"cust-{i % 4}")
            if i % 4 == 1:
                h.win(aid)
            if i % 5 == 2:
                h.reverse(aid)


def _ann_and_bob(app_factory: Any, clock: Any) -> tuple[Any, History]:
    """An application with two budgets in two teams and six rounds of their actions, wins and reversals."""
    app = app_factory()
    h = History(app, clock)
    for employee, team in [("ann", "team-a"), ("bob", "team-b")]:
        h.open(employee, team, allowance="1000000")
    _writes(h, ["ann", "bob"], 6)
    return app, h


def test_two_runners_on_one_view_at_once(app_factory, clock) -> None:
    app = app_factory()
    h = History(app, clock)
    for employee, team in [("ann", "team-a"), ("bob", "team-a"), ("dan", "team-b")]:
        h.open(employee, team, allowance="1000000")
    _writes(h, ["ann", "bob", "dan"], 8)
    # Two processes' worth of runners: each its own store (connection) on the same views.
    first, second = Projections(app), Projections(app)
    for p in (first, second):
        for runner in p.runners.values():
            runner.batch = 3
    stale = {"n": 0}
    errors: list[BaseException] = []
    runners = [r for p in (first, second) for r in p.runners.values()]
    barrier = threading.Barrier(len(runners))

    def run(runner: Any) -> None:
        try:
            barrier.wait()
            while True:
                count = runner.run_once()
                if count == 0:
                    return
                if count < 0:
                    stale["n"] += 1
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in runners]
    for t in threads:
        t.start()
    # Writes continue while they race.
    _writes(h, ["ann", "dan"], 3)
    for t in threads:
        t.join(60)
    assert not errors, errors
    for runner in first.runners.values():
        runner.catch_up()
    incremental = tables(first)
    assert tables(second) == incremental
    assert len(incremental["leeway_view_actions"]) == len(h.actions)
    assert len(incremental["leeway_view_wins"]) == len(h.wins)
    insights = Insights(first, wait_seconds=2, clock=clock)
    assert observed(insights.get_kpis("", "", None, None)) == h.kpis()
    assert rebuilt(second) == incremental
    second.close()
    first.close()


def test_a_rebuild_while_another_runner_keeps_running(app_factory, clock) -> None:
    app, h = _ann_and_bob(app_factory, clock)
    running = Projections(app)
    for runner in running.runners.values():
        runner.batch = 5
    running.start(poll_seconds=0.01)
    rebuilder = Projections(app)
    for runner in rebuilder.runners.values():
        runner.batch = runner.rebuild_batch = 7
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(8):
                if stop.is_set():
                    return
                _writes(h, ["ann", "bob"], 1)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(2):
            for name in rebuilder.runners:
                rebuilder.rebuild(name)
        stop.set()
        thread.join(60)
        assert not errors, errors
        head = running.head()
        for name in running.runners:
            assert running.wait_for(name, head, 30), running.status()
        running.stop()
        for runner in running.runners.values():  # (the runner's cached position may be stale after a foreign reset)
            runner.catch_up()
        assert all(s.error == "" for s in running.status()), running.status()
        incremental = tables(running)
        assert len(incremental["leeway_view_actions"]) == len(h.actions)
        assert len(incremental["leeway_view_wins"]) == len(h.wins)
        insights = Insights(running, wait_seconds=2, clock=clock)
        assert observed(insights.get_kpis("", "", None, None)) == h.kpis()
        assert rebuilt(rebuilder) == incremental
    finally:
        stop.set()
        rebuilder.close()
        running.close()


def test_a_replay_overtaken_by_another_runner_starts_again_from_its_position(app_factory, clock, monkeypatch) -> None:
    """A rebuild replays in pipelined batches (the next one read and decoded while one is written): when another
    runner moves the position under it, its batch is refused as a whole and it goes on from there."""
    app, h = _ann_and_bob(app_factory, clock)
    rebuilder, other = Projections(app), Projections(app)
    real_apply = rebuilder.store.apply
    for name, runner in rebuilder.runners.items():
        runner.rebuild_batch = 5
        other.runners[name].batch = 9
        calls = {"n": 0, "stale": 0}

        def apply(projection: str, start: int, end: int, changes: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 2:  # the other runner takes the next 9 events first: this batch is stale
                assert other.runners[projection].run_once() == 9
            try:
                real_apply(projection, start, end, changes)
            except store_module.StaleTracking:
                calls["stale"] += 1
                raise

        monkeypatch.setattr(rebuilder.store, "apply", apply)
        rebuilder.rebuild(name)
        monkeypatch.undo()
        assert calls["stale"] == 1 and calls["n"] > 3, (name, calls)
        assert rebuilder.store.position(name) == rebuilder.head()
    replayed = tables(rebuilder)
    assert len(replayed["leeway_view_actions"]) == len(h.actions)
    assert len(replayed["leeway_view_wins"]) == len(h.wins)
    insights = Insights(rebuilder, wait_seconds=2, clock=clock)
    assert observed(insights.get_kpis("", "", None, None)) == h.kpis()
    for runner in rebuilder.runners.values():
        runner.rebuild_batch = 5000
    assert rebuilt(rebuilder) == replayed  # one batch, nobody else: the same rows
    other.close()
    rebuilder.close()


def test_a_replay_that_fails_keeps_its_committed_batches_and_resumes(app_factory, clock, monkeypatch) -> None:
    app, h = _ann_and_bob(app_factory, clock)
    projections = Projections(app)
    real_apply = projections.store.apply
    for name, runner in projections.runners.items():
        runner.rebuild_batch = 6
        calls = {"n": 0, "ends": []}

        def apply(projection: str, start: int, end: int, changes: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                raise Killed()
            real_apply(projection, start, end, changes)
            calls["ends"].append(end)

        monkeypatch.setattr(projections.store, "apply", apply)
        with pytest.raises(Killed):
            projections.rebuild(name)
        monkeypatch.undo()
        # the two batches before the failure are committed, nothing after them
        assert projections.store.position(name) == calls["ends"][-1] and len(calls["ends"]) == 2, name
        assert runner.replay() > 0  # goes on from there (its in-memory state was dropped with the failure)
        assert projections.store.position(name) == projections.head()
    resumed = tables(projections)
    insights = Insights(projections, wait_seconds=2, clock=clock)
    assert observed(insights.get_kpis("", "", None, None)) == h.kpis()
    assert rebuilt(projections) == resumed
    projections.close()


# ============================================================================ read-your-writes


def test_read_your_writes_with_runners_in_the_background(app_factory, clock) -> None:
    app = app_factory()
    h = History(app, clock)
    h.open("ann", "team-a")
    projections = Projections(app)
    projections.start(poll_seconds=5)  # only the commit wake-up can make it fast
    insights = Insights(projections, wait_seconds=5, clock=clock)
    try:
        for i in range(1, 6):
            aid = h.act("ann", f"{i}")
            started = time.monotonic()
            kpis = insights.get_kpis("", "ann", None, None)
            assert kpis.action_count == i and kpis.by_kind[0].spend.amount == Decimal(i * (i + 1) // 2)
            h.win(aid, story=f"story {i}")
            wins = insights.list_wins("", "ann", 1, "")
            assert wins.wins[0].action_id == aid and wins.wins[0].story == f"story {i}"
            assert time.monotonic() - started < 2.5
    finally:
        projections.close()


def test_lagging_projection_is_unavailable(app_factory, clock) -> None:
    app = app_factory()
    h = History(app, clock)
    h.open("ann", "team-a")
    projections = Projections(app)  # not started: nobody catches up
    insights = Insights(projections, wait_seconds=0.2, clock=clock)
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        insights.get_kpis("", "", None, None)
    assert 0.15 <= time.monotonic() - started < 3
    assert caught.value.reason == "PROJECTION_LAGGING"
    assert caught.value.metadata["projection"] == "insights"
    assert caught.value.metadata["position"] == str(projections.head())
    with pytest.raises(Unavailable) as caught:
        insights.list_wins("", "", 0, "")
    assert caught.value.reason == "PROJECTION_LAGGING"
    projections.runners["insights"].catch_up()
    assert insights.get_kpis("", "", None, None).position == projections.head()
    projections.close()


# ============================================================================ ListWins and GetKpis requests


def test_list_wins_pages_newest_first_with_filters(app_factory, clock) -> None:
    app = app_factory()
    h = History(app, clock)
    for employee, team in [("ann", "team-a"), ("bob", "team-a"), ("dan", "team-b")]:
        h.open(employee, team)
    for i in range(7):
        for employee in ("ann", "bob", "dan"):
            h.win(h.act(employee, f"{i + 1}", customer=f"cust-{i}"), story=f"{employee} {i}")
    projections = Projections(app)
    insights = Insights(projections, wait_seconds=0, clock=clock)
    for runner in projections.runners.values():
        runner.catch_up()

    def pages(team: str, employee: str, size: int) -> list[list[str]]:
        out, token = [], ""
        while True:
            page = insights.list_wins(team, employee, size, token)
            out.append([w.action_id for w in page.wins])
            if not page.next_page_token:
                return out
            token = page.next_page_token

    for team, employee in [("", ""), ("team-a", ""), ("team-b", ""), ("", "bob"), ("team-a", "ann"), ("team-b", "ann")]:
        expected = [w.action_id for w in reversed(h.wins)
                    if (not team or w.team == team) and (not employee or w.employee == employee)]
        for size in (1, 2, 4, 50):
            got = pages(team, employee, size)
            assert [a for page in got for a in page] == expected, (team, employee, size)
            assert all(len(page) == size for page in got[:-1])
            assert len(got) == max(1, -(-len(expected) // size))
    # the entries themselves
    newest = insights.list_wins("", "", 1, "").wins[0]
    assert (newest.employee_id, newest.team_id, newest.story, newest.outcome) == ("dan", "team-b", "dan 6", "rebooked")
    assert newest.amount == Money(Decimal(7), "USD") and newest.kind == "REFUND" and newest.customer_id == "cust-6"
    assert newest.document_time == h.wins[-1].at
    # a token only works with the filters it was issued for
    token = insights.list_wins("team-a", "", 2, "").next_page_token
    assert token
    assert [w.action_id for w in insights.list_wins("team-a", "", 2, token).wins] == [
        w.action_id for w in reversed(h.wins) if w.team == "team-a"][2:4]
    for team, employee in [("", ""), ("team-b", ""), ("team-a", "ann")]:
        with pytest.raises(InvalidArgument) as caught:
            insights.list_wins(team, employee, 2, token)
        assert caught.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument) as caught:
        insights.list_wins("", "", 2, "not-a-token")
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument):
        insights.list_wins("", "", -1, "")
    # new wins do not disturb a walk already under way (the token is a position)
    first = insights.list_wins("", "", 3, "")
    h.win(h.act("ann", "1"))
    projections.runners["insights"].catch_up()
    second = insights.list_wins("", "", 3, first.next_page_token)
    assert [w.action_id for w in second.wins] == [w.action_id for w in reversed(h.wins[:-1])][3:6]
    projections.close()


def test_get_kpis_validation_and_time_ranges(app_factory, clock) -> None:
    app = app_factory()
    h = History(app, clock)
    h.open("ann", "team-a")
    t0 = clock()
    a = h.act("ann", "1")  # at t0
    b = h.act("ann", "2")  # t0 + 7 min
    h.act("ann", "4")  # t0 + 14 min
    projections = Projections(app)
    projections.runners["insights"].catch_up()
    insights = Insights(projections, wait_seconds=1, clock=clock)
    for start, end in [(t0, t0), (t0 + timedelta(minutes=1), t0)]:
        with pytest.raises(InvalidArgument) as caught:
            insights.get_kpis("", "", start, end)
        assert [v.field for v in caught.value.violations] == ["end_time"]
    with pytest.raises(InvalidArgument):
        insights.get_kpis("bad id!", "", None, None)

    def spend(start: datetime | None, end: datetime | None) -> Decimal:
        kinds = insights.get_kpis("", "ann", start, end).by_kind
        return kinds[0].spend.amount if kinds else Decimal(0)

    minute = timedelta(minutes=1)
    assert spend(None, None) == 7
    assert spend(t0, t0 + 7 * minute) == 1  # start inclusive, end exclusive
    assert spend(t0 + 7 * minute, None) == 6
    assert spend(t0 + timedelta(microseconds=1), None) == 6
    assert spend(None, t0) == 0
    assert spend(None, t0 + timedelta(microseconds=1)) == 1
    assert spend(t0 + 14 * minute, t0 + 15 * minute) == 4
    # wins count by when they were documented
    clock.advance(timedelta(days=1))
    h.win(a)
    h.win(b)
    projections.runners["insights"].catch_up()
    day2 = clock() - timedelta(hours=1)
    assert insights.get_kpis("", "", None, day2).wins_documented == 0
    assert insights.get_kpis("", "", day2, None).wins_documented == 2
    assert insights.get_kpis("", "", day2, None).top_employees == [("ann", "team-a", 2)]
    projections.close()


def test_top_employees_are_the_ten_with_most_wins(app_factory, clock) -> None:
    app = app_factory()
    h = History(app, clock)
    employees = [f"emp-{i:02d}" for i in range(12)]
    for i, employee in enumerate(employees):
        h.open(employee, "team-a" if i % 2 else "team-b")
        for _ in range(1 + i % 4):  # ties, broken by employee_id
            h.win(h.act(employee, "1"))
    projections = Projections(app)
    projections.runners["insights"].catch_up()
    kpis = Insights(projections, wait_seconds=1, clock=clock).get_kpis("", "", None, None)
    assert len(kpis.top_employees) == 10
    assert kpis.top_employees == h.kpis()["top_employees"]
    assert kpis.top_employees[0] == ("emp-03", "team-a", 4) and kpis.top_employees[-1][2] == 1
    projections.close()


def test_view_store_lives_beside_the_log(database_url, app_factory) -> None:
    app = app_factory()
    store = open_view_store(dict(app.env))
    if database_url.startswith("sqlite"):
        assert Path(database_url.removeprefix("sqlite:///")).with_name("leeway.views.sqlite").is_file()
    with store.transaction(commit=False) as tx:
        for table in TABLES:
            assert tx.execute(f"SELECT COUNT(*) AS n FROM {{{table}}}").fetchone()["n"] == 0
    store.datastore.close()


def test_a_foreign_rebuild_does_not_make_queries_read_an_emptied_view(app_factory, clock) -> None:
    """Regression: wait_for once trusted the runner's cached position, so after another process reset the view
    (`leeway projections rebuild`) queries answered "nothing happened" from the emptied tables."""
    app = app_factory()
    h = History(app, clock)
    h.open("ann", "team-a")
    h.act("ann", "10")
    h.act("ann", "5")
    running = Projections(app)
    running.start(poll_seconds=5)
    insights = Insights(running, wait_seconds=0.5, clock=clock)
    try:
        assert insights.get_kpis("", "", None, None).action_count == 2
        running.stop()  # the runner thread is busy elsewhere / not scheduled yet: take it out of the race
        # `leeway projections rebuild insights` in another process starts: it empties the view and its position.
        other = Projections(app)
        other.store.reset("insights", other.runners["insights"].projection.tables)
        assert other.store.position("insights") == 0
        # A query must now wait for the view (or say PROJECTION_LAGGING); it must not answer "nothing happened".
        try:
            kpis = insights.get_kpis("", "", None, None)
        except Unavailable as error:
            assert error.reason == "PROJECTION_LAGGING"
        else:
            assert kpis.action_count == 2, f"answered from an emptied view: {kpis}"
        other.close()
    finally:
        running.close()
