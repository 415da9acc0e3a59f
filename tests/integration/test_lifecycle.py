"""The employee life cycle through LeewayApplication on a real event store (SQLite and PostgreSQL), issue 19:
CloseBudget decides what waits for approval (the ledgers and the hold book let go of it), ReopenBudget, and
MoveEmployee (an action counts for the team it was recorded in, the new team from the move on; team caps stay
exact; ListBudgets and GetTeam of both teams)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import uuid4

import pytest
from builders import action_cmd, approve, make_policy, open_cmd, reverse_cmd, team_cap, usd
from leeway.application.commands import CloseBudget, MoveEmployee, ReopenBudget
from leeway.domain.approvals import HoldBook
from leeway.domain.errors import AlreadyExists, InvalidArgument, NotFound, PreconditionFailed
from leeway.domain.ids import budget_id_for
from leeway.domain.ledgers import CustomerLedger, TeamLedger


@pytest.fixture
def app(app_factory):
    return app_factory()


def close(employee: str, reason: str = "left the company", request_id: str = "") -> CloseBudget:
    return CloseBudget(request_id=request_id or f"close-{uuid4()}", employee_id=employee, reason=reason)


def reopen(employee: str, reason: str = "back") -> ReopenBudget:
    return ReopenBudget(request_id=f"reopen-{uuid4()}", employee_id=employee, reason=reason)


def move(employee: str, team: str, reason: str = "reorganisation") -> MoveEmployee:
    return MoveEmployee(request_id=f"move-{uuid4()}", employee_id=employee, team_id=team, reason=reason)


def team_figures(app, team: str) -> tuple[Decimal, Decimal]:
    usage = app.get_team(team).usage
    return usage.spent.amount, usage.held.amount


def listed(app, team: str = "", page_size: int = 50) -> list[str]:
    names, token = [], ""
    while True:
        page = app.list_budgets(team, page_size, token)
        names += [b.employee_id for b in page.items]
        token = page.next_page_token
        if not token:
            return names


def pending_for(app, approver: str) -> list[str]:
    return [a.action_id for a in app.list_actions("", "", None, 50, "", state="PENDING_APPROVAL", approver_id=approver).items]


# ============================================================================ closing


def test_closing_denies_its_holds_everywhere(app, clock) -> None:
    app.execute(team_cap("team-a", usd(1000)))
    app.execute(open_cmd("emp-1", policy=make_policy(500, approvers=("mgr-1",))))
    recorded, _ = app.execute(action_cmd("emp-1", 20, customer="cust-1"))
    first, _ = app.execute(action_cmd("emp-1", 60, customer="cust-1"))
    second, _ = app.execute(action_cmd("emp-1", 70, customer="cust-2"))
    assert first.state == second.state == "PENDING_APPROVAL"
    assert team_figures(app, "team-a") == (20, 130)
    assert sorted(pending_for(app, "mgr-1")) == sorted([first.action_id, second.action_id])
    clock.advance(timedelta(minutes=5))

    command = close("emp-1", request_id="close-emp-1")
    closed = app.execute(command, actor="root")

    assert (closed.state, closed.held.amount, closed.pending_action_count, closed.spent.amount) == ("CLOSED", 0, 0, 20)
    assert app.execute(command, actor="root") == closed, "a retry answers the same"
    assert team_figures(app, "team-a") == (20, 0), "the team's cap no longer holds them"
    for customer in ("cust-1", "cust-2"):
        assert app.get_or_none(CustomerLedger.create_id(customer)).tally["holds"] == {}
    book = app.get_or_none(HoldBook.the_id())
    assert first.action_id not in book.open and second.action_id not in book.open
    assert pending_for(app, "mgr-1") == [], "no longer listed to the approver"
    for action in (first, second):
        now = app.get_action(action.action_id)
        assert now.state == "DENIED"
        assert (now.decision.approver_id, now.decision.note) == ("leeway", "budget closed: left the company")
        with pytest.raises(PreconditionFailed) as refused:
            app.execute(approve(action.action_id))
        assert refused.value.reason == "ACTION_ALREADY_DECIDED"
    assert app.get_action(recorded.action_id).state == "RECORDED"
    ledger = app.get_or_none(TeamLedger.create_id("team-a"))
    released = [e for e in app.events.get(ledger.id) if type(e).__name__ == "HoldReleased"]
    assert sorted((e.action_id, e.outcome) for e in released) == sorted(
        [(first.action_id, "DENIED"), (second.action_id, "DENIED")]
    )
    assert app.verify_integrity().ok


def test_closing_a_budget_without_holds_records_only_its_closing(app) -> None:
    app.execute(open_cmd("emp-1"))
    before = app.get_budget("emp-1").version
    app.execute(close("emp-1"))
    assert app.get_budget("emp-1").version == before + 1
    with pytest.raises(PreconditionFailed) as again:
        app.execute(close("emp-1"))
    assert again.value.reason == "BUDGET_CLOSED"


# ============================================================================ reopening


def test_a_closed_budget_reopens(app, clock) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(100)))
    app.execute(action_cmd("emp-1", 30))
    app.execute(close("emp-1"))
    with pytest.raises(PreconditionFailed) as refused:
        app.execute(action_cmd("emp-1", 1))
    assert refused.value.reason == "BUDGET_CLOSED"
    with pytest.raises(AlreadyExists) as exists:
        app.execute(open_cmd("emp-1", request_id="open-again"))
    assert exists.value.reason == "BUDGET_ALREADY_EXISTS"

    opened = app.execute(reopen("emp-1", "rehired"), actor="root")
    assert (opened.state, opened.close_time, opened.close_reason, opened.spent.amount) == ("OPEN", None, "", 30)
    action, budget = app.execute(action_cmd("emp-1", 5))
    assert action.state == "RECORDED" and budget.spent.amount == 35

    with pytest.raises(PreconditionFailed) as open_already:
        app.execute(reopen("emp-1"))
    assert open_already.value.reason == "BUDGET_NOT_CLOSED"
    with pytest.raises(NotFound) as missing:
        app.execute(reopen("nobody"))
    assert missing.value.reason == "BUDGET_NOT_FOUND"
    with pytest.raises(InvalidArgument):
        app.execute(ReopenBudget(request_id="r", employee_id="emp-1", reason=""))
    names = [type(e).__name__ for e in app.events.get(budget_id_for("emp-1"))]
    assert names == ["Opened", "ActionRecorded", "Closed", "Reopened", "ActionRecorded"]
    assert app.verify_integrity().ok


# ============================================================================ moving


def test_an_action_counts_for_the_team_it_was_recorded_in(app, clock) -> None:
    app.execute(team_cap("team-a", usd(1000)))
    app.execute(team_cap("team-b", usd(100)))
    app.execute(open_cmd("emp-1", "team-a", make_policy(500, approvers=("mgr-1",))))
    app.execute(open_cmd("emp-2", "team-b", make_policy(500)))
    app.execute(action_cmd("emp-2", 40, customer="cust-9"))
    spent_in_a, _ = app.execute(action_cmd("emp-1", 30))
    waiting, _ = app.execute(action_cmd("emp-1", 60))  # over the per-action limit: held in team-a
    assert team_figures(app, "team-a") == (30, 60)

    moved = app.execute(move("emp-1", "team-b"), actor="root")

    assert moved.team_id == "team-b" and moved.spent.amount == 30, "the budget keeps its own figures"
    assert team_figures(app, "team-a") == (30, 60), "what was recorded in team-a stays there"
    assert team_figures(app, "team-b") == (40, 0)
    after, _ = app.execute(action_cmd("emp-1", 20))
    assert after.team_id == "team-b"
    assert team_figures(app, "team-b") == (60, 0)
    clock.advance(timedelta(minutes=1))
    approved = app.execute(approve(waiting.action_id)).action
    assert approved.team_id == "team-a"
    assert team_figures(app, "team-a") == (90, 0), "the approval settles in the team it was requested in"
    app.execute(reverse_cmd(spent_in_a.action_id))
    assert team_figures(app, "team-a") == (60, 0), "the reversal comes off the team it was counted in"
    assert team_figures(app, "team-b") == (60, 0)
    # team-b's cap (100) holds exactly: 60 spent, so 41 more is refused and 40 passes.
    with pytest.raises(PreconditionFailed) as capped:
        app.execute(action_cmd("emp-1", 41))
    assert capped.value.reason == "TEAM_CAP_EXCEEDED"
    app.execute(action_cmd("emp-1", 40))
    assert team_figures(app, "team-b") == (100, 0)
    assert app.verify_integrity().ok


def test_lists_and_member_counts_follow_the_moves(app) -> None:
    for name in ("a1", "a2", "a3", "a4"):
        app.execute(open_cmd(name, "team-a"))
    app.execute(open_cmd("b1", "team-b"))
    app.execute(move("a2", "team-b"))
    app.execute(move("a3", "team-b"))
    app.execute(move("a3", "team-a", "back again"))
    app.execute(move("a2", "team-c"))

    for size in (1, 2, 50):
        assert listed(app, "team-a", size) == ["a1", "a4", "a3"]
        assert listed(app, "team-b", size) == ["b1"]
        assert listed(app, "team-c", size) == ["a2"]
        assert listed(app, "", size) == ["a1", "a2", "a3", "a4", "b1"], "the directory lists each budget once"
    assert [app.get_team(t).member_count for t in ("team-a", "team-b", "team-c")] == [3, 1, 1]
    assert app.get_budget("a3").team_id == "team-a"
    assert app.verify_integrity().ok


def test_move_refusals(app) -> None:
    app.execute(open_cmd("emp-1", "team-a"))
    with pytest.raises(PreconditionFailed) as same:
        app.execute(move("emp-1", "team-a"))
    assert same.value.reason == "ALREADY_IN_TEAM"
    with pytest.raises(NotFound) as missing:
        app.execute(move("nobody", "team-b"))
    assert missing.value.reason == "BUDGET_NOT_FOUND"
    with pytest.raises(InvalidArgument) as bad:
        app.execute(MoveEmployee(request_id="m", employee_id="emp-1", team_id="not a team!"))
    assert [v.field for v in bad.value.violations] == ["team_id"]
    app.execute(close("emp-1"))
    with pytest.raises(PreconditionFailed) as closed:
        app.execute(move("emp-1", "team-b"))
    assert closed.value.reason == "BUDGET_CLOSED"
    assert listed(app, "team-b") == [] and app.get_budget("emp-1").team_id == "team-a"


# ============================================================================ the read models


def test_read_models_follow_the_life_cycle(app, clock) -> None:
    """KPIs count an action for the team it was recorded in, closing leaves nothing pending, the balances row moves
    with the employee, and the trail tells the closing, the reopening and the move."""
    from leeway.application.insights import Insights
    from leeway.projections.runner import Projections

    app.execute(open_cmd("emp-1", "team-a", make_policy(500, approvers=("mgr-1",))))
    app.execute(action_cmd("emp-1", 30))
    app.execute(action_cmd("emp-1", 60))  # waits for approval
    app.execute(close("emp-1", "sabbatical"))
    app.execute(reopen("emp-1", "back"))
    app.execute(move("emp-1", "team-b", "reorg"))
    app.execute(action_cmd("emp-1", 20))
    projections = Projections(app)
    try:
        for runner in projections.runners.values():
            runner.catch_up()
        insights = Insights(projections, wait_seconds=5, clock=clock)
        team_a, team_b = (insights.get_kpis(team, "", None, None) for team in ("team-a", "team-b"))
        assert (team_a.action_count, team_a.pending_count, team_b.action_count) == (2, 0, 1)
        assert team_a.by_kind[0].spend.amount == 30 and team_b.by_kind[0].spend.amount == 20
        with projections.store.transaction(commit=False) as tx:
            (row,) = tx.execute("SELECT team_id, state FROM {leeway_view_balances}").fetchall()
        assert (row["team_id"], row["state"]) == ("team-b", "OPEN")
        summaries = [e.summary for e in insights.audit_trail("emp-1", "", 50, "").items]
        assert any(s.startswith("leeway denied emp-1's action") and "budget closed: sabbatical" in s for s in summaries)
        assert 'budget closed: "sabbatical"' in summaries and 'budget reopened: "back"' in summaries
        assert 'moved from team team-a to team team-b: "reorg"' in summaries
    finally:
        projections.close()
