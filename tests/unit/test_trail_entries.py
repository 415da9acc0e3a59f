"""The audit trail's sentences about a decision: an approval after the period it was requested in ended says where
the amount went (issue 19)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from builders import usd
from leeway.domain.policy import ActionKind
from leeway.domain.views import APPROVED, ActionView, Decision
from leeway.projections.trail import action_entries

REQUESTED = datetime(2025, 3, 31, 23, 30, tzinfo=timezone.utc)
DECIDED = datetime(2025, 4, 1, 0, 30, tzinfo=timezone.utc)


def approved(in_current_period: bool) -> ActionView:
    return ActionView(
        action_id="act_1", employee_id="ann", team_id="desk", customer_id="guest-42", case_id="", kind=ActionKind.GIFT,
        amount=usd(60), reason="late", details={"gift_type": "flowers"}, state=APPROVED, policy_version=1,
        occur_time=REQUESTED, record_time=REQUESTED, request_id="r1", budget_version=2,
        escalation_reasons=("PER_ACTION_LIMIT_EXCEEDED",), approver_ids=("sup-1",),
        decision=Decision(APPROVED, "sup-1", "fine", DECIDED, "d1", in_current_period),
    )


@pytest.mark.parametrize(
    ("in_current_period", "summary"),
    [
        (True, "sup-1 approved ann's action act_1 (60 USD): \"fine\""),
        (False, "sup-1 approved ann's action act_1 (60 USD), spent in the period it was requested in (2025-03-31), "
                "which had ended: \"fine\""),
    ],
)
def test_an_approval_says_where_the_amount_went(in_current_period: bool, summary: str) -> None:
    decision = action_entries(approved(in_current_period))[1]
    assert (decision.event_type, decision.actor, decision.summary) == ("Budget.ActionApproved", "sup-1", summary)
