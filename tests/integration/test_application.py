"""LeewayApplication end to end on a real event store: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from leeway.application.commands import CloseBudget, RecordAction, UpdatePolicy
from leeway.domain.budget import Budget
from leeway.domain.ids import budget_id_for, format_action_id, parse_action_id
from leeway.domain.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, PreconditionFailed
from leeway.application.idempotency import RequestRecord
from leeway.domain.money import Money
from leeway.domain.policy import ActionKind

from builders import action_cmd, all_pages, drain, make_policy, open_cmd, usd


def action_events(app, employee: str) -> list:
    return [e for e in app.events.get(budget_id_for(employee)) if isinstance(e, Budget.ActionRecorded)]


# ---------------------------------------------------------------- budgets


def test_open_and_get_budget(app, clock) -> None:
    view = app.execute(open_cmd("emp-1"))
    assert view.employee_id == "emp-1"
    assert view.team_id == "team-a"
    assert view.display_name == "Emp-1"
    assert view.state == "OPEN"
    assert view.version == 1
    assert view.policy_version == 1
    assert view.allowance == usd(100)
    assert view.remaining == usd(100)
    assert view.create_time == clock.now
    assert app.get_budget("emp-1") == view


def test_open_twice_is_already_exists(app) -> None:
    app.execute(open_cmd("emp-1"))
    with pytest.raises(AlreadyExists) as info:
        app.execute(open_cmd("emp-1", request_id="another-open"))
    assert info.value.reason == "BUDGET_ALREADY_EXISTS"


@pytest.mark.parametrize(
    ("employee", "error", "reason"),
    [("nobody", NotFound, "BUDGET_NOT_FOUND"), ("bad id!", InvalidArgument, "INVALID_ARGUMENT")],
)
def test_get_unknown_budget(app, employee: str, error: type[Exception], reason: str) -> None:
    with pytest.raises(error) as info:
        app.get_budget(employee)
    assert info.value.reason == reason


def test_list_budgets_by_team_and_all(app) -> None:
    app.execute(open_cmd("a1", "team-a"))
    app.execute(open_cmd("b1", "team-b"))
    app.execute(open_cmd("a2", "team-a"))
    team_a = app.list_budgets("team-a", 0, "")
    assert [b.employee_id for b in team_a.items] == ["a1", "a2"]
    assert team_a.next_page_token == ""
    assert [b.employee_id for b in app.list_budgets("team-b", 0, "").items] == ["b1"]
    assert app.list_budgets("team-none", 0, "").items == []
    everyone = app.list_budgets("", 0, "")
    assert [b.employee_id for b in everyone.items] == ["a1", "b1", "a2"]


def test_list_budgets_pagination(app) -> None:
    for i in range(5):
        app.execute(open_cmd(f"emp-{i}", "team-p"))
    def fetch(token: str) -> tuple[list[str], str]:
        page = app.list_budgets("team-p", 2, token)
        return [b.employee_id for b in page.items], page.next_page_token

    seen, pages = all_pages(fetch, page_size=2)
    assert seen == [f"emp-{i}" for i in range(5)]
    assert pages == 3
    # The same over the directory of all budgets.
    first = app.list_budgets("", 2, "")
    second = app.list_budgets("", 2, first.next_page_token)
    assert [b.employee_id for b in first.items + second.items] == ["emp-0", "emp-1", "emp-2", "emp-3"]


def test_page_token_from_another_filter_is_rejected(app) -> None:
    for i in range(3):
        app.execute(open_cmd(f"emp-{i}", "team-a"))
    token = app.list_budgets("team-a", 2, "").next_page_token
    assert token
    with pytest.raises(InvalidArgument) as info:
        app.list_budgets("team-b", 2, token)
    assert info.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument) as info:
        app.list_budgets("", 2, token)
    assert info.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument) as info:
        app.list_actions("emp-0", "", None, 2, token)
    assert info.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument) as info:
        app.list_budgets("team-a", 2, "garbage!!")
    assert info.value.reason == "INVALID_PAGE_TOKEN"


def test_negative_page_size(app) -> None:
    with pytest.raises(InvalidArgument):
        app.list_budgets("", -1, "")


# ---------------------------------------------------------------- record action


def test_record_action(app, clock) -> None:
    app.execute(open_cmd("emp-1"))
    action, budget = app.execute(action_cmd("emp-1", "12.50", request_id="r-1"))
    assert parse_action_id(action.action_id) == (budget_id_for("emp-1"), 2)
    assert action.employee_id == "emp-1"
    assert action.team_id == "team-a"
    assert action.amount == usd("12.50")
    assert action.kind is ActionKind.REFUND
    assert action.details == {"order_id": "o-1"}
    assert action.request_id == "r-1"
    assert action.record_time == clock.now
    assert action.budget_version == 2
    assert budget.version == 2
    assert budget.spent == usd("12.50")
    assert budget.remaining == usd("87.50")
    assert app.get_budget("emp-1").remaining == usd("87.50")
    assert app.get_action(action.action_id) == action


def test_record_action_for_unknown_budget(app) -> None:
    with pytest.raises(NotFound) as info:
        app.execute(action_cmd("nobody"))
    assert info.value.reason == "BUDGET_NOT_FOUND"


def test_invalid_record_action_is_invalid_argument(app) -> None:
    app.execute(open_cmd("emp-1"))
    with pytest.raises(InvalidArgument):
        app.execute(action_cmd("emp-1", 0))  # zero is only for RULE_BEND
    with pytest.raises(InvalidArgument):
        app.execute(action_cmd("emp-1", "1.001"))
    assert app.get_budget("emp-1").version == 1


def test_zero_rule_bend_is_recorded(app) -> None:
    app.execute(open_cmd("emp-1"))
    action, budget = app.execute(action_cmd("emp-1", 0, kind=ActionKind.RULE_BEND))
    assert action.amount.amount == 0
    assert budget.period_action_count == 1


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (lambda: action_cmd("emp-1", Money(Decimal(5), "EUR")), "CURRENCY_MISMATCH"),
        (lambda: action_cmd("emp-1", 5, kind=ActionKind.GIFT), "KIND_NOT_ALLOWED"),
        (lambda: action_cmd("emp-1", 51), "PER_ACTION_LIMIT_EXCEEDED"),
        (lambda: action_cmd("emp-1", "10.01"), "BUDGET_EXHAUSTED"),
    ],
)
def test_refusals_record_nothing(app, command, reason: str) -> None:
    app.execute(open_cmd("emp-1"))
    app.execute(action_cmd("emp-1", 50))
    app.execute(action_cmd("emp-1", 40))
    before = app.get_budget("emp-1")
    cmd = command()
    with pytest.raises(PreconditionFailed) as info:
        app.execute(cmd)
    assert info.value.reason == reason
    after = app.get_budget("emp-1")
    assert after.version == before.version == 3
    assert after.spent == usd(90)
    assert len(action_events(app, "emp-1")) == 2
    # A refused request leaves no request record: the same request_id may be used once the cause is fixed.
    assert app.get_or_none(RequestRecord.create_id(cmd.request_id, cmd.method)) is None


def test_closed_budget_refuses_actions(app) -> None:
    app.execute(open_cmd("emp-1"))
    closed = app.execute(CloseBudget(request_id="close-1", employee_id="emp-1", reason="left the company"))
    assert closed.state == "CLOSED"
    assert closed.close_reason == "left the company"
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-1", 1))
    assert info.value.reason == "BUDGET_CLOSED"
    assert app.get_budget("emp-1").version == 2
    with pytest.raises(PreconditionFailed) as info:
        app.execute(CloseBudget(request_id="close-2", employee_id="emp-1", reason="again"))
    assert info.value.reason == "BUDGET_CLOSED"


# ---------------------------------------------------------------- idempotency


def test_idempotent_replay(app) -> None:
    app.execute(open_cmd("emp-1"))
    first = app.execute(action_cmd("emp-1", 10, request_id="same"))
    version = app.get_budget("emp-1").version
    # Later changes do not alter the replayed response: it is the budget as it was right after the action.
    app.execute(action_cmd("emp-1", 20))
    again = app.execute(action_cmd("emp-1", 10, request_id="same"))
    assert again == first
    assert again[1].version == version
    assert app.get_budget("emp-1").version == version + 1
    assert len(action_events(app, "emp-1")) == 2


def test_idempotent_open_replay(app) -> None:
    first = app.execute(open_cmd("emp-1"))
    assert app.execute(open_cmd("emp-1")) == first
    assert app.get_budget("emp-1").version == 1
    assert [b.employee_id for b in app.list_budgets("", 0, "").items] == ["emp-1"]


def test_idempotent_replay_after_restart(app_factory) -> None:
    app = app_factory()
    app.execute(open_cmd("emp-1"))
    first = app.execute(action_cmd("emp-1", 10, request_id="same"))
    app.close()
    restarted = app_factory()
    again = restarted.execute(action_cmd("emp-1", 10, request_id="same"))
    assert again == first
    assert restarted.get_budget("emp-1").version == 2
    assert len(action_events(restarted, "emp-1")) == 1
    with pytest.raises(AlreadyExists) as info:
        restarted.execute(action_cmd("emp-1", 11, request_id="same"))
    assert info.value.reason == "REQUEST_ID_REUSED"


def test_request_id_reused_for_different_payload(app) -> None:
    app.execute(open_cmd("emp-1"))
    app.execute(action_cmd("emp-1", 10, request_id="same"))
    for other in (
        action_cmd("emp-1", 11, request_id="same"),
        action_cmd("emp-1", 10, request_id="same", customer="cust-2"),
        action_cmd("emp-1", 10, request_id="same", reason="other reason"),
    ):
        with pytest.raises(AlreadyExists) as info:
            app.execute(other)
        assert info.value.reason == "REQUEST_ID_REUSED"
        assert info.value.metadata["original_method"] == RecordAction.method
    assert app.get_budget("emp-1").version == 2
    # A request is (caller, method, request_id): the same request_id on another method is another request.
    closed = app.execute(CloseBudget(request_id="same", employee_id="emp-1", reason="x"))
    assert closed.state == "CLOSED" and app.get_budget("emp-1").version == 3


# ---------------------------------------------------------------- periods and policy


def test_period_roll_over(app, clock) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(100, limit=None)))
    app.execute(action_cmd("emp-1", 100))
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-1", 1))
    assert info.value.reason == "BUDGET_EXHAUSTED"
    clock.now = clock.now.replace(month=4, day=1, hour=0, minute=0) + timedelta(minutes=1)
    view = app.get_budget("emp-1")
    assert view.remaining == usd(100)
    assert view.spent == usd(0)
    assert view.period_start == clock.now.replace(minute=0)
    assert view.version == 2  # reading does not write
    action, budget = app.execute(action_cmd("emp-1", 30))
    assert budget.spent == usd(30)
    assert budget.remaining == usd(70)
    assert budget.version == 4  # PeriodRolledOver + ActionRecorded
    events = list(app.events.get(budget_id_for("emp-1")))
    assert [type(e).__name__ for e in events] == ["Opened", "ActionRecorded", "PeriodRolledOver", "ActionRecorded"]
    assert events[2].closed_period_spent == Decimal(100)
    assert action.action_id == format_action_id(budget_id_for("emp-1"), 4)


def test_update_policy(app) -> None:
    app.execute(open_cmd("emp-1"))
    app.execute(action_cmd("emp-1", 30))
    view = app.execute(
        UpdatePolicy(request_id="up-1", employee_id="emp-1", policy=make_policy(40, limit=None), expected_version=2)
    )
    assert view.policy_version == 2
    assert view.version == 3
    assert view.remaining == usd(10)
    with pytest.raises(PreconditionFailed) as info:
        app.execute(action_cmd("emp-1", 11))
    assert info.value.reason == "BUDGET_EXHAUSTED"


def test_update_policy_version_mismatch(app) -> None:
    app.execute(open_cmd("emp-1"))
    app.execute(action_cmd("emp-1", 30))
    with pytest.raises(Conflict) as info:
        app.execute(UpdatePolicy(request_id="up-1", employee_id="emp-1", policy=make_policy(500), expected_version=1))
    assert info.value.reason == "VERSION_MISMATCH"
    view = app.get_budget("emp-1")
    assert view.version == 2
    assert view.policy_version == 1
    assert view.allowance == usd(100)


# ---------------------------------------------------------------- actions


def test_get_action(app) -> None:
    app.execute(open_cmd("emp-1"))
    action, _ = app.execute(action_cmd("emp-1", 5, kind=ActionKind.CREDIT))
    assert app.get_action(action.action_id) == action
    with pytest.raises(NotFound) as info:  # version 1 is the Opened event, not an action
        app.get_action(format_action_id(budget_id_for("emp-1"), 1))
    assert info.value.reason == "ACTION_NOT_FOUND"
    with pytest.raises(NotFound):
        app.get_action(format_action_id(budget_id_for("emp-1"), 99))
    with pytest.raises(NotFound):
        app.get_action(format_action_id(budget_id_for("nobody"), 2))
    for junk in ("", "act_x", "nonsense"):
        with pytest.raises(InvalidArgument):
            app.get_action(junk)


def test_get_action_with_version_beyond_int64_is_invalid(app) -> None:
    app.execute(open_cmd("emp-1"))
    with pytest.raises(InvalidArgument):
        app.get_action(f"act_{budget_id_for('emp-1').hex}_9999999999999999999")


def test_list_actions_by_employee_customer_and_kind(app) -> None:
    app.execute(open_cmd("emp-1"))
    app.execute(open_cmd("emp-2"))
    a1, _ = app.execute(action_cmd("emp-1", 5, customer="cust-x"))
    a2, _ = app.execute(action_cmd("emp-2", 6, customer="cust-x", kind=ActionKind.CREDIT))
    a3, _ = app.execute(action_cmd("emp-1", 7, customer="cust-y", kind=ActionKind.CREDIT))
    a4, _ = app.execute(action_cmd("emp-1", 0, customer="cust-x", kind=ActionKind.RULE_BEND))

    ids = lambda page: [a.action_id for a in page.items]  # noqa: E731
    assert ids(app.list_actions("emp-1", "", None, 0, "")) == [a1.action_id, a3.action_id, a4.action_id]
    assert ids(app.list_actions("emp-2", "", None, 0, "")) == [a2.action_id]
    assert ids(app.list_actions("", "cust-x", None, 0, "")) == [a1.action_id, a2.action_id, a4.action_id]
    assert ids(app.list_actions("", "cust-y", None, 0, "")) == [a3.action_id]
    assert ids(app.list_actions("emp-1", "cust-x", None, 0, "")) == [a1.action_id, a4.action_id]
    assert ids(app.list_actions("emp-1", "", ActionKind.CREDIT, 0, "")) == [a3.action_id]
    assert ids(app.list_actions("", "cust-x", ActionKind.CREDIT, 0, "")) == [a2.action_id]
    assert ids(app.list_actions("", "cust-x", ActionKind.GIFT, 0, "")) == []
    assert ids(app.list_actions("", "cust-nobody", None, 0, "")) == []
    assert app.list_actions("", "cust-x", None, 0, "").items[1] == a2


def test_list_actions_unknown_employee(app) -> None:
    with pytest.raises(NotFound):
        app.list_actions("nobody", "", None, 0, "")


def test_list_actions_needs_a_filter(app) -> None:
    with pytest.raises(InvalidArgument) as info:
        app.list_actions("", "", None, 0, "")
    assert {v.field for v in info.value.violations} == {"employee_id", "customer_id"}


@pytest.mark.parametrize("by", ["employee", "customer"])
def test_list_actions_pagination(app, by: str) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(1000, limit=None)))
    expected = [app.execute(action_cmd("emp-1", i + 1, customer="cust-p"))[0].action_id for i in range(5)]
    args = ("emp-1", "") if by == "employee" else ("", "cust-p")
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = app.list_actions(*args, None, 2, token)
        assert len(page.items) <= 2
        seen += [a.action_id for a in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == expected
    with pytest.raises(InvalidArgument) as info:
        app.list_actions(*args, ActionKind.CREDIT, 2, app.list_actions(*args, None, 2, "").next_page_token)
    assert info.value.reason == "INVALID_PAGE_TOKEN"


# ---------------------------------------------------------------- concurrency and snapshots


def test_concurrent_actions_never_overspend(app) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(100, limit=None)))
    threads = 16
    attempts = 40
    successes: list[str] = []

    def record(_: int, n: int) -> None:
        action, budget = app.execute(action_cmd("emp-1", 10, customer=f"cust-{n % 3}", request_id=f"c-{n}"))
        assert budget.spent <= usd(100)
        successes.append(action.action_id)

    refused, errors = drain(range(attempts), threads, record, expected=(PreconditionFailed,), timeout=60)
    refusals = [e.reason for e in refused]  # type: ignore[attr-defined]
    assert errors == []
    assert len(successes) == 10
    assert len(set(successes)) == 10
    assert refusals == ["BUDGET_EXHAUSTED"] * 30
    view = app.get_budget("emp-1")
    assert view.spent == usd(100)
    assert view.remaining == usd(0)
    assert view.period_action_count == 10
    assert len(action_events(app, "emp-1")) == len(successes)
    by_customer = sum(len(app.list_actions("", f"cust-{c}", None, 0, "").items) for c in range(3))
    assert by_customer == 10


def test_long_history_reads_correctly_via_snapshot(app_factory) -> None:
    app = app_factory()
    app.execute(open_cmd("emp-1", policy=make_policy(100000, limit=None)))
    count = 250
    for i in range(count):
        app.execute(action_cmd("emp-1", 1, customer="cust-s", request_id=f"s-{i}"))
    snapshots = list(app.snapshots.get(budget_id_for("emp-1")))
    assert snapshots, "a Budget snapshot is taken every 25 events"
    assert snapshots[-1].originator_version == 250
    for reader in (app, app_factory()):
        view = reader.get_budget("emp-1")
        assert view.version == count + 1
        assert view.spent == usd(count)
        assert view.remaining == usd(100000 - count)
        assert view.period_action_count == count
        assert reader.budget_at(budget_id_for("emp-1"), 150).spent == usd(149)
    # A replayed request below and above the snapshot still answers with the budget of its time.
    _, budget = app.execute(action_cmd("emp-1", 1, customer="cust-s", request_id="s-10"))
    assert budget.version == 12
    _, budget = app.execute(action_cmd("emp-1", 1, customer="cust-s", request_id="s-240"))
    assert budget.version == 242
    _, budget = app.execute(action_cmd("emp-1", 1, customer="cust-s", request_id="s-new"))
    assert budget.spent == usd(count + 1)
