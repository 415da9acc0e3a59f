"""``adapters/storage.advance``: a budget moved along its events without the library's per-event overhead must be
exactly the budget the library's own ``mutate`` makes, event by event, for every kind of budget event (projection
rebuilds and repository replays use it)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from builders import make_policy, usd
from eventsourcing.domain import OriginatorIDError, OriginatorVersionError
from leeway.adapters.storage import advance, project_events
from leeway.domain.budget import Budget
from leeway.domain.command_rules import Approver
from leeway.domain.policy import ActionKind
from leeway.domain.rules import ActionRequest
from leeway.domain.views import action_view

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=timezone.utc)


def refund(amount: int, customer: str = "cust-1") -> ActionRequest:
    return ActionRequest(customer, "", ActionKind.REFUND, usd(amount), "late delivery", {"order_id": "o-1"})


def view(b: Budget, version: int) -> Any:
    recorded = next(e for e in history(b) if e.originator_version == version)
    return action_view(recorded, b.outcome(version))


_HISTORIES: dict[int, list[Any]] = {}


def history(b: Budget) -> list[Any]:
    return _HISTORIES.setdefault(id(b), [])


def act(b: Budget, command: Any) -> Any:
    """Runs ``command(b)`` and keeps the events it recorded."""
    result = command(b)
    history(b).extend(b.collect_events())
    return result


def every_kind_of_event() -> list[Any]:
    sup = Approver("sup-1", frozenset(), frozenset({"team-a"}), False)
    b = Budget.open(employee_id="emp-1", team_id="team-a", display_name="Ada",
                    policy=make_policy(100, limit=50, approvers=("sup-1",), max_held=500), now=NOW)
    history(b).extend(b.collect_events())
    small = act(b, lambda b: b.record_action(refund(10), request_id="r-1", now=NOW))
    held = act(b, lambda b: b.record_action(refund(60), request_id="r-2", now=NOW + timedelta(minutes=1)))
    denied = act(b, lambda b: b.record_action(refund(70, "cust-2"), request_id="r-3", now=NOW + timedelta(minutes=2)))
    parse = lambda action_id: int(action_id.rsplit("_", 1)[1])  # noqa: E731
    act(b, lambda b: b.decide(True, view(b, parse(held)), sup, note="ok", request_id="d-1", now=NOW + timedelta(hours=1)))
    act(b, lambda b: b.decide(False, view(b, parse(denied)), sup, note="no", request_id="d-2",
                              now=NOW + timedelta(hours=1)))
    act(b, lambda b: b.reverse(view(b, parse(small)), actor_id="mgr-1", reason="duplicate", request_id="v-1",
                               now=NOW + timedelta(hours=2)))
    act(b, lambda b: b.document_win(view(b, parse(held)), story="saved the account", customer_quote="thanks",
                                    outcome="RETAINED", now=NOW + timedelta(hours=3)))
    act(b, lambda b: b.update_policy(make_policy(200, limit=80), now=NOW + timedelta(days=1)))
    act(b, lambda b: b.record_action(refund(5), request_id="r-4", now=NOW + timedelta(days=40)))  # a new period
    act(b, lambda b: b.close("left", now=NOW + timedelta(days=41)))
    act(b, lambda b: b.reopen("back", now=NOW + timedelta(days=42)))
    act(b, lambda b: b.move("team-b", reason="reorg", join=lambda: 1, now=NOW + timedelta(days=43)))
    return history(b)


def test_advance_makes_the_budget_mutate_makes_after_every_kind_of_event() -> None:
    events = every_kind_of_event()
    kinds = {type(e).__qualname__ for e in events}
    assert {"Budget.Opened", "Budget.ActionRecorded", "Budget.ActionApproved", "Budget.ActionDenied",
            "Budget.ActionReversed", "Budget.WinDocumented", "Budget.PolicyUpdated", "Budget.PeriodRolledOver",
            "Budget.Closed", "Budget.Reopened", "Budget.TeamChanged"} <= kinds
    by_library, by_advance = None, None
    for event in events:
        by_library = event.mutate(copy.deepcopy(by_library))
        by_advance = advance(event, by_advance)
        assert vars(by_advance) == vars(by_library), type(event).__qualname__
    assert vars(project_events(None, events)) == vars(by_library)


def test_an_event_without_a_newer_parameter_gets_the_methods_default() -> None:
    events = every_kind_of_event()
    opened, recorded = events[0], events[1]
    older = copy.copy(recorded)
    for name in ("actor", "escalation_reasons", "approver_ids"):  # as if stored before these fields existed
        del older.__dict__[name]
    by_library = older.mutate(opened.mutate(None))
    by_advance = advance(older, opened.mutate(None))
    assert vars(by_advance) == vars(by_library)


def test_advance_refuses_what_mutate_refuses() -> None:
    events = every_kind_of_event()
    budget = events[0].mutate(None)
    with pytest.raises(OriginatorVersionError):
        advance(events[2], budget)  # version 3 after version 1
    other = Budget.open(employee_id="emp-2", team_id="team-a", display_name="", policy=make_policy(), now=NOW)
    with pytest.raises(OriginatorIDError):
        advance(events[1], other)
