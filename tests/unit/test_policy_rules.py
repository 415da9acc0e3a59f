"""leeway.domain.policy_rules.check_policy_approvers (issue 19): nobody is their own approver, and a policy that
holds actions for approval names someone who can give it. (What a supervisor may grant: test_rules.)"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from builders import make_policy
from leeway.domain.budget import Budget
from leeway.domain.errors import FieldViolation, InvalidArgument
from leeway.domain.policy import Policy
from leeway.domain.reasons import Reason
from leeway.domain.rules import check_policy_approvers

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=timezone.utc)
SELF = Reason.SELF_APPROVER_NOT_ALLOWED
NOBODY = Reason.NO_POSSIBLE_APPROVER


@pytest.mark.parametrize(
    ("policy", "roles_count", "expected"),
    [
        pytest.param(make_policy(), False, None, id="refuses over-limit actions: nobody needed"),
        pytest.param(make_policy(approvers=("sup-1",)), False, None, id="another approver"),
        pytest.param(make_policy(approvers=("emp-1",)), True, SELF, id="only themself"),
        pytest.param(make_policy(approvers=("sup-1", "emp-1")), True, SELF, id="themself among others"),
        pytest.param(make_policy(approvers=("emp-1",), role="lead"), True, SELF, id="themself and a role"),
        pytest.param(make_policy(approvers=("EMP-1",)), True, None, id="ids are exact"),
        pytest.param(make_policy(role="lead"), True, None, id="a role, roles count"),
        pytest.param(make_policy(role="lead"), False, NOBODY, id="a role, nobody holds one"),
        pytest.param(make_policy(approvers=("sup-1",), role="lead"), False, None, id="a role and an approver"),
    ],
)
def test_check_policy_approvers(policy: Policy, roles_count: bool, expected: str | None) -> None:
    refusal = check_policy_approvers("emp-1", policy, roles_count=roles_count)
    assert (None if refusal is None else refusal.reason) == expected


def test_the_refusals_name_the_fields() -> None:
    own = check_policy_approvers("emp-1", make_policy(approvers=("emp-1", "sup-1", "emp-1")))
    assert isinstance(own, InvalidArgument)
    assert own.violations == [
        FieldViolation("policy.escalation.approver_ids[0]", "emp-1 may not approve their own actions"),
        FieldViolation("policy.escalation.approver_ids[2]", "emp-1 may not approve their own actions"),
    ]
    nobody = check_policy_approvers("emp-1", make_policy(role="lead"), roles_count=False)
    assert isinstance(nobody, InvalidArgument)
    assert nobody.violations == [
        FieldViolation("policy.escalation.approver_role",
                       "nobody holds a role on a server without authentication: name approver_ids")
    ]


def test_the_budget_checks_its_policy_when_opened_and_changed() -> None:
    with pytest.raises(InvalidArgument) as info:
        Budget.open(employee_id="emp-1", team_id="t", display_name="", policy=make_policy(approvers=("emp-1",)), now=NOW)
    assert info.value.reason == SELF
    with pytest.raises(InvalidArgument) as info:
        Budget.open(employee_id="emp-1", team_id="t", display_name="", policy=make_policy(role="lead"), now=NOW,
                    roles_count=False)
    assert info.value.reason == NOBODY
    b = Budget.open(employee_id="emp-1", team_id="t", display_name="", policy=make_policy(role="lead"), now=NOW)
    for policy, roles_count, reason in ((make_policy(approvers=("emp-1",)), True, SELF),
                                        (make_policy(role="lead"), False, NOBODY)):
        with pytest.raises(InvalidArgument) as info:
            b.update_policy(policy, now=NOW, roles_count=roles_count)
        assert info.value.reason == reason
    assert b.version == 1
