"""Issue 19 through the application on SQLite and PostgreSQL: the hold ceiling, split detection and approvers'
authority stay exact when many clients act at once (their sums are read in the same group-commit batch as the
budget they change), a refusal writes nothing, and an approval under limits is counted on the approver's own
budget in the same transaction."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest
from builders import action_cmd, approve, deny, drain, make_policy, open_cmd, usd
from leeway.domain.budget import Budget
from leeway.domain.errors import InvalidArgument, PreconditionFailed
from leeway.application.commands import OpenBudget, UpdatePolicy
from leeway.domain.ids import budget_id_for, format_action_id


def events(app, employee: str, cls: type) -> list:
    return [e for e in app.events.get(budget_id_for(employee)) if isinstance(e, cls)]


def test_holds_are_bounded_when_32_clients_spend_at_once(app) -> None:
    """The reproduction of issue 19: 96 actions of $7.33 from 32 threads on a $100 budget in approval mode left 83
    pending ($608.39 held). Now what waits stops at max_held (one allowance)."""
    app.execute(open_cmd("emp-1", policy=make_policy(100, limit=None, approvers=("sup-1",))))
    accepted = []
    refused, errors = drain(range(96), 32, lambda _, n: accepted.append(app.execute(action_cmd("emp-1", "7.33"))[0]),
                            expected=(PreconditionFailed,))
    assert errors == []
    states = Counter(action.state for action in accepted)
    assert states == {"RECORDED": 13, "PENDING_APPROVAL": 13}  # 13 x 7.33 = 95.29 each; a 14th hold passes 100
    assert Counter(e.reason for e in refused) == {"MAX_HELD_EXCEEDED": 70}
    budget = app.get_budget("emp-1")
    assert (budget.spent, budget.held) == (usd("95.29"), usd("95.29"))
    assert len(events(app, "emp-1", Budget.ActionRecorded)) == 26  # refusals wrote nothing


def test_one_approvers_period_limit_holds_when_they_approve_at_once(app) -> None:
    """sup-1 may approve $50 a month: of 13 holds of $7.33 approved from 13 threads at once, exactly 6 pass (and are
    counted on sup-1's own budget), 7 are refused and keep waiting; another approver approves one of those."""
    app.execute(open_cmd("sup-1", policy=make_policy(1000, approval_limits=(None, 50))))
    app.execute(open_cmd("emp-1", policy=make_policy(100, limit=5, approvers=("sup-1", "sup-2"))))
    for _ in range(13):
        app.execute(action_cmd("emp-1", "7.33"))
    holds = [e for e in events(app, "emp-1", Budget.ActionRecorded) if e.pending]
    assert len(holds) == 13
    ids = [format_action_id(e.originator_id, e.originator_version) for e in holds]
    approved = []
    refused, errors = drain(ids, 13, lambda _, action_id: approved.append(app.execute(approve(action_id, "sup-1")).action),
                            expected=(PreconditionFailed,))
    assert errors == []
    assert len(approved) == 6 and Counter(e.reason for e in refused) == {"APPROVAL_LIMIT_EXCEEDED": 7}
    given = events(app, "sup-1", Budget.ApprovalGiven)
    assert sorted(e.action_id for e in given) == sorted(a.action_id for a in approved)
    assert sum(e.amount for e in given) == Decimal("43.98")
    waiting = [i for i in ids if app.get_action(i).state == "PENDING_APPROVAL"]
    assert len(waiting) == 7
    action = app.execute(approve(waiting[0], "sup-2")).action  # no budget of their own: not limited
    assert action.state == "APPROVED"
    denied = app.execute(deny(waiting[1], "sup-1")).action  # denying is never limited
    assert denied.state == "DENIED"
    assert len(events(app, "sup-1", Budget.ApprovalGiven)) == 6


def test_a_split_is_exact_when_16_clients_act_on_one_case_at_once(app) -> None:
    app.execute(open_cmd("emp-1", policy=make_policy(1000, limit=50)))
    accepted = []
    refused, errors = drain(range(16), 16,
                            lambda _, n: accepted.append(app.execute(action_cmd("emp-1", 20, case="k-1"))[0]),
                            expected=(PreconditionFailed,))
    assert errors == []
    assert len(accepted) == 2 and Counter(e.reason for e in refused) == {"SPLIT_ACTION_LIMIT_EXCEEDED": 14}
    assert app.get_budget("emp-1").spent == usd(40)
    other, _ = app.execute(action_cmd("emp-1", 50, case="k-2"))  # another case is another problem
    assert other.state == "RECORDED"


def test_a_split_waits_for_approval_and_an_approver_beyond_authority_is_refused(app) -> None:
    app.execute(open_cmd("sup-1", policy=make_policy(1000, approval_limits=(80, None))))
    app.execute(open_cmd("emp-1", policy=make_policy(1000, limit=100, approvers=("sup-1",))))
    first, _ = app.execute(action_cmd("emp-1", 99, case="k-1", customer="guest-42"))
    second, _ = app.execute(action_cmd("emp-1", 99, case="k-1", customer="guest-42"))
    assert (first.state, second.state) == ("RECORDED", "PENDING_APPROVAL")
    assert second.escalation_reasons == ("SPLIT_ACTION_LIMIT_EXCEEDED",)
    with pytest.raises(PreconditionFailed) as info:
        app.execute(approve(second.action_id, "sup-1"))  # $99 > sup-1's $80 per action
    assert info.value.reason == "APPROVAL_LIMIT_EXCEEDED"
    assert info.value.metadata["per_action"] == "80"
    assert app.get_action(second.action_id).state == "PENDING_APPROVAL"
    assert events(app, "sup-1", Budget.ApprovalGiven) == []


def test_policy_sanity_at_open_and_update(app) -> None:
    roles_do_not_count = OpenBudget(request_id="open-2", employee_id="emp-1", team_id="team-a", display_name="",
                                    policy=make_policy(role="lead"), roles_count=False)
    for command, reason in ((open_cmd("emp-1", policy=make_policy(approvers=("emp-1",))), "SELF_APPROVER_NOT_ALLOWED"),
                            (roles_do_not_count, "NO_POSSIBLE_APPROVER")):
        with pytest.raises(InvalidArgument) as refused:
            app.execute(command)
        assert refused.value.reason == reason
    assert app.get_or_none(budget_id_for("emp-1")) is None
    app.execute(open_cmd("emp-1", policy=make_policy(approvers=("sup-1",))))
    with pytest.raises(InvalidArgument) as info:
        app.execute(UpdatePolicy(request_id="u-1", employee_id="emp-1", policy=make_policy(approvers=("emp-1",))))
    assert info.value.reason == "SELF_APPROVER_NOT_ALLOWED"
    assert app.get_budget("emp-1").policy_version == 1
