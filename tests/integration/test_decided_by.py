"""ListActions(decided_by): what one approver approved or denied, in the order decided, read from the trail read
model (it sees the caller's own writes), on SQLite and PostgreSQL (issue 19)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from builders import TIMEOUT, action_cmd, approve, deny, make_policy, open_cmd, reverse_cmd
from leeway.application.insights import Insights
from leeway.domain.errors import InvalidArgument, Unavailable
from leeway.domain.views import APPROVED, DENIED, REVERSED
from leeway.projections.runner import Projections


@pytest.fixture
def world(app_factory, clock):
    app = app_factory()
    projections = Projections(app)
    projections.start(poll_seconds=5)
    insights = Insights(projections, wait_seconds=5, clock=clock)
    for employee in ("ann", "bob"):
        app.execute(open_cmd(employee, policy=make_policy(500, limit=10, approvers=("sup-1", "sup-2"))))
    try:
        yield app, insights
    finally:
        projections.close()


def pending(app, employee: str, amount: int, customer: str = "cust-1") -> str:
    return app.execute(action_cmd(employee, amount, customer=customer))[0].action_id


def decided(app, insights, approver: str, **filters):
    page = app.list_actions(
        filters.pop("employee_id", ""), filters.pop("customer_id", ""), None, filters.pop("page_size", 0),
        filters.pop("page_token", ""), decided_by=approver, decisions=insights.decisions_by, **filters,
    )
    return page


def test_what_an_approver_decided(world, clock) -> None:
    app, insights = world
    a1, a2, b1, b2 = (pending(app, e, n) for e, n in (("ann", 11), ("ann", 12), ("bob", 13), ("bob", 14)))
    pending(app, "ann", 15)
    pending(app, "bob", 16)
    app.execute(deny(b1, "sup-1"))
    app.execute(approve(a2, "sup-1"))
    app.execute(approve(a1, "sup-2"))  # another approver's
    app.execute(approve(b2, "sup-1"))
    app.execute(reverse_cmd(b2, actor="sup-2"))  # still one sup-1 decided, now reversed
    assert [a.action_id for a in decided(app, insights, "sup-2").items] == [a1]
    clock.advance(TIMEOUT + timedelta(seconds=1))
    assert app.expire_due() == 2  # expiries are nobody's decisions: not listed below

    mine = decided(app, insights, "sup-1")
    assert [(a.action_id, a.state, a.decision.approver_id) for a in mine.items] == [
        (b1, DENIED, "sup-1"), (a2, APPROVED, "sup-1"), (b2, REVERSED, "sup-1")
    ]
    assert mine.next_page_token == ""
    assert [a.action_id for a in decided(app, insights, "sup-1", employee_id="ann").items] == [a2]
    assert [a.action_id for a in decided(app, insights, "sup-1", state=DENIED).items] == [b1]
    assert decided(app, insights, "sup-3").items == []

    # Paged in the order decided, one at a time; the token is bound to the filter.
    first = decided(app, insights, "sup-1", page_size=1)
    second = decided(app, insights, "sup-1", page_size=1, page_token=first.next_page_token)
    third = decided(app, insights, "sup-1", page_size=1, page_token=second.next_page_token)
    assert [p.items[0].action_id for p in (first, second, third)] == [b1, a2, b2]
    with pytest.raises(InvalidArgument):
        decided(app, insights, "sup-2", page_token=first.next_page_token)


def test_decided_by_needs_the_trail_read_model_and_a_valid_id(world) -> None:
    app, insights = world
    with pytest.raises(Unavailable):
        app.list_actions("", "", None, 0, "", decided_by="sup-1")
    with pytest.raises(InvalidArgument) as refused:
        decided(app, insights, "not an id")
    assert [v.field for v in refused.value.violations] == ["decided_by"]
