"""Small aggregates written in the same transaction as a budget change, so that lookups never lag.

- ``RequestRecord``: one per request_id; makes every mutating call idempotent (AIP-155), across restarts
  and replicas, because it is saved atomically with the change it produced.
- ``TeamRoster`` / ``Directory``: which budgets a team has, and all budgets, in opening order (ListBudgets).
- ``CustomerLedger``: every action taken for one customer, by any employee (ListActions by customer; the
  boundaries issue adds the organisation-wide per-customer cap here).

Their event classes are stored in the log under their qualified names in this module: never move them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .budget import LEEWAY_NAMESPACE


class RequestRecord(Aggregate):
    """What a request_id did: which method, a fingerprint of the request, and a reference to the result."""

    @staticmethod
    def create_id(request_id: str) -> UUID:
        return uuid5(LEEWAY_NAMESPACE, f"request:{request_id}")

    @event("Recorded")
    def __init__(self, request_id: str, method: str, fingerprint: str, result: dict[str, Any], at: datetime) -> None:
        self.request_id = request_id
        self.method = method
        self.fingerprint = fingerprint
        self.result = result
        self.at = at


class TeamRoster(Aggregate):
    """The budgets of one team, in the order they were opened."""

    @staticmethod
    def create_id(team_id: str) -> UUID:
        return uuid5(LEEWAY_NAMESPACE, f"team:{team_id}")

    @event("Created")
    def __init__(self, team_id: str) -> None:
        self.team_id = team_id
        self.member_count = 0

    @event("MemberAdded")
    def add_member(self, employee_id: str, at: datetime) -> None:
        self.member_count += 1


class Directory(Aggregate):
    """Every budget ever opened, in opening order. There is one directory."""

    NAME = "budgets"

    @staticmethod
    def create_id(name: str) -> UUID:
        return uuid5(LEEWAY_NAMESPACE, f"directory:{name}")

    @event("Created")
    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    @event("BudgetListed")
    def add_budget(self, employee_id: str, team_id: str, at: datetime) -> None:
        self.count += 1


class CustomerLedger(Aggregate):
    """Every action taken for one customer, by any employee."""

    @staticmethod
    def create_id(customer_id: str) -> UUID:
        return uuid5(LEEWAY_NAMESPACE, f"customer:{customer_id}")

    @event("Created")
    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self.action_count = 0

    @event("ActionNoted")
    def note_action(
        self,
        action_id: str,
        employee_id: str,
        kind: str,
        amount: Decimal,
        currency: str,
        at: datetime,
    ) -> None:
        self.action_count += 1
