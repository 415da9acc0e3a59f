"""The employee life cycle in the domain (issue 19): closing a budget decides what waits for approval on it,
a closed budget reopens, an employee moves to another team. The rules (``check_reopenable``, ``check_movable``)
one table each, then what the budget records and how it replays."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from builders import make_policy, replay, usd
from leeway.domain.budget import Budget
from leeway.domain.errors import PreconditionFailed, PreconditionViolation
from leeway.domain.ids import format_action_id
from leeway.domain.policy import ActionKind
from leeway.domain.reasons import Reason
from leeway.domain.command_rules import Approver, check_movable, check_reopenable
from leeway.domain.rules import ActionRequest
from leeway.domain.views import CLOSED, DENIED, EXPIRED, OPEN, SYSTEM_ACTOR, action_state, action_view

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=timezone.utc)

State = Callable[[], Budget]


def budget(*, closed: bool = False, team: str = "team-a", approvers: tuple[str, ...] = ("sup-1",)) -> State:
    def build() -> Budget:
        b = Budget.open(employee_id="emp-1", team_id=team, display_name="Ada",
                        policy=make_policy(100, limit=50, approvers=approvers, max_held=500), now=NOW)
        if closed:
            b.close("left", now=NOW)
        return b

    return build


def refund(amount: int, customer: str = "cust-1") -> ActionRequest:
    return ActionRequest(customer, "", ActionKind.REFUND, usd(amount), "late delivery", {"order_id": "o-1"})


def reason(error: PreconditionFailed | None) -> str | None:
    return None if error is None else error.reason


# ============================================================================ the rules: one table each


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        pytest.param(budget(closed=True), None, id="closed"),
        pytest.param(budget(), Reason.BUDGET_NOT_CLOSED, id="open"),
    ],
)
def test_check_reopenable(state: State, expected: str | None) -> None:
    assert reason(check_reopenable(state())) == expected


@pytest.mark.parametrize(
    ("state", "team", "expected"),
    [
        pytest.param(budget(), "team-b", None, id="another team"),
        pytest.param(budget(), "team-a", Reason.ALREADY_IN_TEAM, id="its own team"),
        pytest.param(budget(closed=True), "team-b", Reason.BUDGET_CLOSED, id="closed"),
        pytest.param(budget(closed=True), "team-a", Reason.BUDGET_CLOSED, id="closed, before the team"),
    ],
)
def test_check_movable(state: State, team: str, expected: str | None) -> None:
    assert reason(check_movable(state(), team)) == expected


def test_the_refusals_are_exactly_what_callers_receive() -> None:
    reopen = check_reopenable(budget()())
    assert reopen is not None
    assert (reopen.message, reopen.violations, reopen.metadata) == (
        "the budget of employee emp-1 is open; only a closed budget can be reopened",
        [PreconditionViolation("BUDGET_STATE", "budgets/emp-1", "budget is open")],
        {"employee_id": "emp-1"},
    )
    move = check_movable(budget()(), "team-a")
    assert move is not None
    assert (move.message, move.violations, move.metadata) == (
        "employee emp-1 is already in team team-a",
        [PreconditionViolation("TEAM", "budgets/emp-1", "the budget is in team team-a already")],
        {"employee_id": "emp-1", "team_id": "team-a"},
    )


# ============================================================================ closing decides what waits


def test_closing_denies_live_holds_and_expires_past_ones() -> None:
    b = budget()()
    early = b.record_action(refund(60), request_id="r-1", now=NOW)  # over the 50 limit: waits (expires NOW + 1h)
    b.record_action(refund(10), request_id="r-2", now=NOW)  # recorded at once
    later = NOW + timedelta(minutes=59, seconds=30)
    late = b.record_action(refund(70, "cust-2"), request_id="r-3", now=later)
    assert b.view(later).held.amount == 130
    now = NOW + timedelta(hours=1, minutes=1)  # the first hold's timeout has passed, the second's not

    released = b.close("left the company", now=now, request_id="close-1", actor="root")

    versions = [int(a.rsplit("_", 1)[1]) for a in (early, late)]
    assert released == [(versions[0], EXPIRED), (versions[1], DENIED)]
    assert b.state == CLOSED and b.holds == {}
    assert [action_state(b, v) for v in versions] == [EXPIRED, DENIED]
    denial = b.outcome(versions[1])["decision"]
    assert denial == {
        "outcome": DENIED, "approver_id": SYSTEM_ACTOR, "note": "budget closed: left the company", "at": now,
        "request_id": "close-1",
    }
    events = b.collect_events()
    assert [type(e).__name__ for e in events][-3:] == ["ActionExpired", "ActionDenied", "Closed"]
    assert events[-2].actor == "root"
    view = b.view(now)
    assert (view.held.amount, view.pending_action_count, view.spent.amount) == (0, 0, 10)


def test_a_hold_decided_by_the_closing_is_already_decided_for_an_approver() -> None:
    from leeway.domain.errors import PermissionDenied

    b = budget()()
    action_id = b.record_action(refund(60), request_id="r-1", now=NOW)
    event = next(e for e in b.pending_events if type(e).__name__ == "ActionRecorded")
    b.close("left", now=NOW, request_id="c-1")
    view = action_view(event, b.outcome(event.originator_version), NOW)
    assert view.action_id == action_id and view.state == DENIED
    with pytest.raises(PreconditionFailed) as info:
        b.decide(True, view, Approver("sup-1"), note="ok", request_id="a-1", now=NOW)
    assert info.value.reason == Reason.ACTION_ALREADY_DECIDED
    assert info.value.metadata == {"outcome": DENIED, "decided_by": SYSTEM_ACTOR}
    with pytest.raises(PermissionDenied):  # who may decide still comes first
        b.decide(True, view, Approver("eve"), note="ok", request_id="a-2", now=NOW)


# ============================================================================ reopening, moving


def test_reopen_a_closed_budget_in_a_later_period() -> None:
    b = budget()()
    b.record_action(refund(30), request_id="r-1", now=NOW)
    b.close("parental leave", now=NOW)
    with pytest.raises(PreconditionFailed) as info:
        b.record_action(refund(1), request_id="r-2", now=NOW)
    assert info.value.reason == Reason.BUDGET_CLOSED
    back = datetime(2025, 6, 2, 9, 0, tzinfo=timezone.utc)

    b.reopen("back from leave", now=back, actor="root")

    assert (b.state, b.closed_at, b.close_reason) == (OPEN, None, "")
    assert [type(e).__name__ for e in b.pending_events][-2:] == ["Reopened", "PeriodRolledOver"]
    view = b.view(back)
    assert (view.period_start.month, view.spent.amount, view.remaining.amount) == (6, 0, 100)
    b.record_action(refund(5), request_id="r-3", now=back)
    with pytest.raises(PreconditionFailed) as again:
        b.reopen("twice", now=back)
    assert again.value.reason == Reason.BUDGET_NOT_CLOSED


def test_move_changes_the_team_from_now_on_and_lists_the_budget_by_its_new_entry() -> None:
    b = budget()()
    before = b.record_action(refund(60), request_id="r-1", now=NOW)  # waits: stays with team-a
    joined: list[str] = []

    def join() -> int:
        joined.append("team-b")
        return 7

    b.move("team-b", reason="reorg", join=join, now=NOW, actor="root")
    assert joined == ["team-b"]
    assert (b.team_id, b.team_entry) == ("team-b", 7)
    moved = b.pending_events[-1]
    assert type(moved).__name__ == "TeamChanged"
    assert (moved.from_team_id, moved.team_id, moved.reason, moved.roster_version, moved.actor) == (
        "team-a", "team-b", "reorg", 7, "root"
    )
    after = b.record_action(refund(5), request_id="r-2", now=NOW)
    recorded = {format_action_id(e.originator_id, e.originator_version): e
                for e in b.pending_events if type(e).__name__ == "ActionRecorded"}
    assert (recorded[before].team_id, recorded[after].team_id) == ("team-a", "team-b")
    assert b.listed_by("team-b", 7)
    assert not b.listed_by("team-b", 3)  # an older entry of the new team (moved away and back)
    assert not b.listed_by("team-a", 1)
    never_moved = budget()()
    assert never_moved.listed_by("team-a", 1) and not never_moved.listed_by("team-b", 1)

    with pytest.raises(PreconditionFailed) as same:
        b.move("team-b", reason="", join=join, now=NOW)
    assert same.value.reason == Reason.ALREADY_IN_TEAM
    assert joined == ["team-b"], "a refused move joins no roster"


def test_the_life_cycle_replays_and_old_snapshots_have_no_team_entry() -> None:
    b = budget()()
    b.record_action(refund(60), request_id="r-1", now=NOW)
    b.move("team-b", reason="", join=lambda: 2, now=NOW)
    b.close("left", now=NOW, request_id="c-1")
    b.reopen("back", now=NOW)
    b.move("team-c", reason="again", join=lambda: 5, now=NOW)
    events = b.collect_events()
    copy = replay(events)
    assert copy.view(NOW) == b.view(NOW)
    assert (copy.team_id, copy.team_entry, copy.state) == ("team-c", 5, OPEN)
    # A budget that never moved has no team_entry of its own, like one restored from a snapshot taken before moves
    # existed: it falls back to the class's None.
    old = budget()()
    assert "team_entry" not in vars(old)
    assert old.team_entry is None and old.listed_by("team-a", 1)


def test_a_hold_left_on_a_budget_closed_before_issue_19_can_be_denied_not_approved() -> None:
    """Budgets closed by earlier releases kept their holds (until they expire): approving one is still refused
    (BUDGET_CLOSED, nothing is spent on a closed budget), denying it releases it."""
    b = budget()()
    b.record_action(refund(60), request_id="r-1", now=NOW)
    b.record_action(refund(55), request_id="r-2", now=NOW)
    b._closed(reason="left", at=NOW)  # what Budget.close recorded before: no decisions
    held = [e for e in b.pending_events if type(e).__name__ == "ActionRecorded"]
    views = [action_view(e, b.outcome(e.originator_version), NOW) for e in held]
    with pytest.raises(PreconditionFailed) as info:
        b.decide(True, views[0], Approver("sup-1"), note="ok", request_id="a-1", now=NOW)
    assert info.value.reason == Reason.BUDGET_CLOSED
    b.decide(False, views[0], Approver("sup-1"), note="no", request_id="d-1", now=NOW)
    assert action_state(b, views[0].budget_version) == DENIED
