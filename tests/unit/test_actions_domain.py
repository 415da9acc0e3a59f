"""leeway.domain.actions: taking an action across the budget, the team and customer ledgers and the hold book
(the order of the checks, what each aggregate records), and closing or reversing it on all of them later."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from builders import make_policy, money, usd
from leeway.domain.actions import (
    ActionRequest,
    close_hold_everywhere,
    reverse_everywhere,
    take_action,
)
from leeway.domain.approvals import HoldBook
from leeway.domain.budget import Budget
from leeway.domain.errors import PreconditionFailed
from leeway.domain.ledgers import CustomerLedger, OrgLimits, TeamLedger
from leeway.domain.periods import PeriodKind
from leeway.domain.policy import ActionKind
from leeway.domain.tally import Cap
from leeway.domain.views import action_view

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=timezone.utc)
MONTH = PeriodKind.MONTH


class World:
    """A budget and the aggregates above it; ``loaded`` records which loaders take_action called, in order."""

    def __init__(self, *, team_cap: str | None = None, customer_cap: str | None = None, approvers: tuple = ()):
        self.budget = Budget.open(employee_id="emp-1", team_id="team-a", display_name="Ada",
                                  policy=make_policy(approvers=approvers), now=NOW)
        self.team = TeamLedger(team_id="team-a")
        if team_cap is not None:
            self.team.set_cap(Cap(usd(team_cap), MONTH), NOW)
        self.customer = CustomerLedger(customer_id="cust-1")
        self.org = OrgLimits(name=OrgLimits.NAME)
        if customer_cap is not None:
            self.org.set_customer_cap(Cap(usd(customer_cap), MONTH), NOW)
        self.book = HoldBook(name=HoldBook.NAME)
        for aggregate in (self.budget, self.team, self.customer, self.org, self.book):
            aggregate.collect_events()
        self.loaded: list[str] = []

    def loader(self, name: str, aggregate: object):
        def load() -> object:
            self.loaded.append(name)
            return aggregate

        return load

    def take(self, request: ActionRequest, now: datetime = NOW):
        return take_action(
            request,
            budget=self.budget,
            team=self.loader("team", self.team),
            customer=self.loader("customer", [self.customer]),
            org=self.loader("org", self.org),
            hold_book=self.loader("hold_book", self.book),
            request_id="r-1",
            now=now,
            actor="crm",
        )

    def events(self) -> dict[str, list[str]]:
        return {
            name: [type(e).__name__ for e in aggregate.pending_events]
            for name, aggregate in (("budget", self.budget), ("team", self.team), ("customer", self.customer),
                                    ("org", self.org), ("hold_book", self.book))
        }


def refund(amount: str | int, kind: ActionKind = ActionKind.REFUND) -> ActionRequest:
    return ActionRequest("cust-1", "", kind, usd(amount), "late delivery", {"order_id": "o-1"})


def refused(world: World, request: ActionRequest) -> PreconditionFailed:
    with pytest.raises(PreconditionFailed) as info:
        world.take(request)
    return info.value


# ============================================================================ the order of the checks


def test_an_action_within_every_boundary_is_counted_everywhere_but_the_hold_book() -> None:
    world = World(team_cap="100", customer_cap="100")
    taken = world.take(refund(30))
    assert (taken.pending, taken.expires_at) == (False, None)
    assert taken.action_id == f"act_{world.budget.id.hex}_2"
    assert world.loaded == ["team", "customer", "org"]
    assert world.events() == {
        "budget": ["ActionRecorded"], "team": ["ActionCounted"], "customer": ["ActionNoted"], "org": [],
        "hold_book": [],
    }
    counted, noted = world.team.pending_events[0], world.customer.pending_events[0]
    assert (counted.action_id, counted.employee_id, counted.amount, counted.currency, counted.pending) == (
        taken.action_id, "emp-1", Decimal(30), "USD", False,
    )
    assert (noted.action_id, noted.employee_id, noted.kind, noted.amount, noted.pending) == (
        taken.action_id, "emp-1", "REFUND", Decimal(30), False,
    )


def test_the_budgets_refusal_comes_first_and_loads_nothing_else() -> None:
    world = World(team_cap="10", customer_cap="10")  # the caps would refuse it too
    error = refused(world, refund(60))  # over the per-action limit (50)
    assert error.reason == "PER_ACTION_LIMIT_EXCEEDED"
    assert world.loaded == []
    assert world.budget.pending_events == []


def test_a_wall_of_the_budget_comes_first_too() -> None:
    world = World(team_cap="10", customer_cap="10")
    assert refused(world, refund(20, ActionKind.GIFT)).reason == "KIND_NOT_ALLOWED"
    assert world.loaded == []


def test_the_team_cap_comes_before_the_customer_cap() -> None:
    world = World(team_cap="10", customer_cap="10")
    error = refused(world, refund(20))
    assert error.reason == "TEAM_CAP_EXCEEDED"
    assert error.metadata["team_id"] == "team-a"
    assert world.loaded == ["team"]
    assert world.events()["team"] == []


def test_the_customer_cap_comes_last() -> None:
    world = World(team_cap="100", customer_cap="10")
    error = refused(world, refund(20))
    assert error.reason == "CUSTOMER_CAP_EXCEEDED"
    assert error.metadata["customer_id"] == "cust-1"
    assert world.loaded == ["team", "customer", "org"]
    assert world.events()["customer"] == []


def test_no_organisation_limits_means_no_customer_cap() -> None:
    world = World()
    taken = take_action(
        refund(30), budget=world.budget, team=lambda: world.team, customer=lambda: [world.customer], org=lambda: None,
        hold_book=lambda: world.book, request_id="r-1", now=NOW, actor="crm",
    )
    assert taken.pending is False
    assert world.customer.tally["daily"] == {"USD": {"2025-03-14": Decimal(30)}}


# ============================================================================ pending actions


def test_a_pending_action_is_held_everywhere_and_goes_to_the_hold_book() -> None:
    world = World(team_cap="100", customer_cap="100", approvers=("sup-1",))
    taken = world.take(refund(60))  # over the per-action limit: waits for sup-1
    assert taken.pending is True and taken.expires_at == NOW + timedelta(hours=1)
    assert world.loaded == ["team", "customer", "org", "hold_book"]
    assert world.events() == {
        "budget": ["ActionRecorded"], "team": ["ActionCounted"], "customer": ["ActionNoted"], "org": [],
        "hold_book": ["HoldOpened"],
    }
    assert world.team.tally["holds"][taken.action_id]["expires_at"] == taken.expires_at
    assert world.customer.tally["holds"][taken.action_id]["amount"] == Decimal(60)
    opened = world.book.open[taken.action_id]
    assert (opened["employee_id"], opened["customer_id"], opened["expires_at"], opened["approver_ids"]) == (
        "emp-1", "cust-1", taken.expires_at, ["sup-1"],
    )


def test_a_pending_action_is_still_refused_by_a_cap() -> None:
    world = World(team_cap="50", approvers=("sup-1",))
    assert refused(world, refund(60)).reason == "TEAM_CAP_EXCEEDED"
    assert world.loaded == ["team"]
    assert world.book.pending_events == []


@pytest.mark.parametrize(("outcome", "settled"), [("APPROVED", True), ("DENIED", False), ("EXPIRED", False)])
def test_close_hold_everywhere(outcome: str, settled: bool) -> None:
    world = World(team_cap="100", approvers=("sup-1",))
    taken = world.take(refund(60))
    close_hold_everywhere(taken.action_id, outcome, NOW, team=world.team, customer=world.customer,
                          hold_book=world.book)
    for ledger in (world.team, world.customer):
        assert ledger.tally["holds"] == {}
        assert ledger.tally["daily"] == ({"USD": {"2025-03-14": Decimal(60)}} if settled else {})
        assert type(ledger.pending_events[-1]).__name__ == ("HoldSettled" if settled else "HoldReleased")
    assert world.book.open == {}
    assert world.book.pending_events[-1].outcome == outcome


def test_close_hold_everywhere_skips_what_does_not_exist() -> None:
    world = World(approvers=("sup-1",))
    taken = world.take(refund(60))
    close_hold_everywhere(taken.action_id, "DENIED", NOW, team=None, customer=None, hold_book=world.book)
    assert world.book.open == {}
    assert taken.action_id in world.team.tally["holds"]
    close_hold_everywhere(taken.action_id, "DENIED", NOW, team=None, customer=None, hold_book=None)


def test_reverse_everywhere_takes_the_amount_off_the_day_it_was_recorded() -> None:
    world = World(team_cap="100")
    taken = world.take(refund(30))
    event = world.budget.pending_events[-1]
    action = action_view(event)
    reverse_everywhere(action, NOW + timedelta(days=3), team=world.team, customer=world.customer)
    for ledger in (world.team, world.customer):
        reversed_ = ledger.pending_events[-1]
        assert (type(reversed_).__name__, reversed_.action_id, reversed_.day, reversed_.amount) == (
            "ActionReversed", taken.action_id, "2025-03-14", Decimal(30),
        )
        assert ledger.tally["daily"] == {"USD": {"2025-03-14": Decimal(0)}}


def test_amounts_in_another_currency_are_refused_by_the_budget_first() -> None:
    world = World(team_cap="100")
    request = ActionRequest("cust-1", "case-1", ActionKind.REFUND, money(5, "EUR"), "r", {"order_id": "o"})
    assert refused(world, request).reason == "CURRENCY_MISMATCH"
    assert world.loaded == []


# ============================================================================ the events, as their @event methods make them


@pytest.mark.parametrize("held", [False, True])
def test_the_events_of_an_action_are_those_their_event_methods_make(held: bool) -> None:
    """``Budget.record_action`` and ``take_action`` trigger ActionRecorded, ActionCounted and ActionNoted with every
    argument named (without the library's per-call argument handling): each event must be exactly the one its
    @event method (``_action_recorded``, ``count_action``, ``note_action``) makes of the same arguments, applied to
    the aggregate the same way."""
    import copy

    world = World(approvers=("sup-1",))
    twins = {name: copy.deepcopy(a) for name, a in (("budget", world.budget), ("team", world.team),
                                                   ("customer", world.customer))}
    world.take(refund(60 if held else 30))  # over the per-action limit of 50: held for sup-1
    assert (world.budget.hold(world.budget.version) is not None) == held
    for name, aggregate, method in (("budget", world.budget, "_action_recorded"), ("team", world.team, "count_action"),
                                    ("customer", world.customer, "note_action")):
        (made,) = aggregate.pending_events
        arguments = {k: v for k, v in vars(made).items() if k not in ("originator_id", "originator_version", "timestamp")}
        twin = twins[name]
        getattr(twin, method)(**arguments)
        (expected,) = twin.pending_events
        assert type(made) is type(expected), name
        assert {**vars(made), "timestamp": None} == {**vars(expected), "timestamp": None}, name
        assert {**vars(aggregate), "_pending_events": None, "_modified_on": None} == {
            **vars(twin), "_pending_events": None, "_modified_on": None}, name
