"""Which budgets there are: ``TeamRoster`` (the budgets of one team, in the order they joined it) and ``Directory``
(all budgets, in opening order), for ListBudgets. Written in the same transaction as the budget they list, so lookups never lag.

Their event classes are stored under their first home, ``leeway.domain.indexes`` (``keep_legacy_topics`` at
the bottom): never rename one.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from .ids import leeway_id
from .singleton import Singleton, created
from .topics import keep_legacy_topics


class TeamRoster(Aggregate):
    """The budgets of one team, in the order they were opened or moved into it (``MemberAdded``); an employee who
    moves away is ``MemberRemoved`` (their entry stays: ``Budget.listed_by`` tells whether it lists them now)."""

    @staticmethod
    def create_id(team_id: str) -> UUID:
        return leeway_id(f"team:{team_id}")

    @event("Created")
    def __init__(self, team_id: str) -> None:
        self.team_id = team_id
        self.member_count = 0

    @event("MemberAdded")
    def add_member(self, employee_id: str, at: datetime) -> None:
        self.member_count += 1

    @event("MemberRemoved")
    def remove_member(self, employee_id: str, at: datetime) -> None:
        self.member_count -= 1


class Directory(Singleton, Aggregate):
    """Every budget ever opened, in opening order. There is one directory."""

    NAME = "budgets"
    ID_PREFIX = "directory"
    __init__ = created()

    def _start(self) -> None:
        self.count = 0

    @event("BudgetListed")
    def add_budget(self, employee_id: str, team_id: str, at: datetime) -> None:
        self.count += 1


keep_legacy_topics("leeway.domain.indexes", TeamRoster, Directory)
