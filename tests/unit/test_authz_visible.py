"""What a response may carry (grpc_api/authz.visible): ListWins' wins of other teams lose their customer id and
quote. Table-driven, no server."""

from __future__ import annotations

import pytest
from leeway.auth import ADMIN, AGENT, ANONYMOUS, AUDITOR, CRM, SUPERVISOR, Principal
from leeway.grpc_api import authz
from leeway.v1 import action_pb2, insights_pb2


def caller(id_: str, role: str, *teams: str) -> Principal:
    return Principal(id_, frozenset({role}), frozenset(teams), "test")


#: (caller, the win's team and employee, whether the caller reads it in full)
CASES = [
    (caller("ann", AGENT, "desk"), ("desk", "bob"), True),  # their team's
    (caller("ann", AGENT, "desk"), ("ops", "ann"), True),  # their own (they moved team since)
    (caller("ann", AGENT, "desk"), ("ops", "olga"), False),
    (caller("sam", SUPERVISOR, "desk"), ("ops", "olga"), False),
    (caller("sam", SUPERVISOR, "desk", "ops"), ("ops", "olga"), True),
    (caller("nobody", AGENT), ("ops", "olga"), False),  # no team at all
    (caller("audrey", AUDITOR), ("ops", "olga"), True),
    (caller("root", ADMIN), ("ops", "olga"), True),
    (caller("crm-main", CRM), ("ops", "olga"), True),
    (ANONYMOUS, ("ops", "olga"), True),  # authentication off: every role
]


@pytest.mark.parametrize(("principal", "win", "in_full"), CASES)
def test_who_reads_a_win_in_full(principal: Principal, win: tuple[str, str], in_full: bool) -> None:
    assert authz.reads_win_in_full(principal, *win) is in_full
    response = insights_pb2.ListWinsResponse(wins=[insights_pb2.WinEntry(
        action_id="a", employee_id=win[1], team_id=win[0], customer_id="cust-9", reason="late",
        win=action_pb2.Win(story="s", customer_quote="Jane loved it", outcome="o"),
    )])  # fmt: skip
    shown = authz.visible(principal, authz.LIST_WINS, insights_pb2.ListWinsRequest(), response, app=None)  # type: ignore[arg-type]
    (entry,) = shown.wins
    expected = ("cust-9", "Jane loved it") if in_full else ("", "")
    assert (entry.customer_id, entry.win.customer_quote) == expected
    assert (entry.win.story, entry.reason, entry.employee_id) == ("s", "late", win[1])  # the rest is always there
