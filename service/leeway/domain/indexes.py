"""Small aggregates written in the same transaction as a budget change, so that lookups never lag.

- ``RequestRecord``: one per request_id; makes every mutating call idempotent (AIP-155), across restarts
  and replicas, because it is saved atomically with the change it produced.
- ``TeamRoster`` / ``Directory``: which budgets a team has, and all budgets, in opening order (ListBudgets).
- ``CustomerLedger``: every action taken for one customer, by any employee (ListActions by customer), and
  the customer's spend per day and open holds, for the organisation-wide per-customer cap.

Their event classes are stored in the log under their qualified names in this module: never move them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from .budget import leeway_id
from .errors import PreconditionFailed
from .money import Money
from .tally import (
    Cap,
    CapUsage,
    TalliedHolds,
    add_hold,
    add_spend,
    cap_usage,
    check_cap,
    day_of,
    new_tally,
    release_hold,
    settle_hold,
)


class RequestRecord(Aggregate):
    """What a request_id did: which method, a fingerprint of the request, and a reference to the result."""

    @staticmethod
    def create_id(request_id: str) -> UUID:
        return leeway_id(f"request:{request_id}")

    @event("Recorded")
    def __init__(
        self, request_id: str, method: str, fingerprint: str, result: dict[str, Any], at: datetime, actor: str = ""
    ) -> None:
        self.request_id = request_id
        self.actor = actor
        self.method = method
        self.fingerprint = fingerprint
        self.result = result
        self.at = at


class TeamRoster(Aggregate):
    """The budgets of one team, in the order they were opened."""

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


class Directory(Aggregate):
    """Every budget ever opened, in opening order. There is one directory."""

    NAME = "budgets"

    @staticmethod
    def create_id(name: str) -> UUID:
        return leeway_id(f"directory:{name}")

    @event("Created")
    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    @event("BudgetListed")
    def add_budget(self, employee_id: str, team_id: str, at: datetime) -> None:
        self.count += 1


class CustomerLedger(TalliedHolds, Aggregate):
    """Every action taken for one customer, by any employee, and what the customer received per day."""

    @staticmethod
    def create_id(customer_id: str) -> UUID:
        return leeway_id(f"customer:{customer_id}")

    @event("Created")
    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self.action_count = 0
        self.tally = new_tally()

    @event("ActionNoted")
    def note_action(
        self,
        action_id: str,
        employee_id: str,
        kind: str,
        amount: Decimal,
        currency: str,
        at: datetime,
        pending: bool = False,
        expires_at: datetime | None = None,
    ) -> None:
        self.action_count += 1
        if pending:
            assert expires_at is not None
            add_hold(self.tally, action_id, currency, day_of(at), amount, expires_at)
        else:
            add_spend(self.tally, currency, day_of(at), amount, at)

    @event("HoldSettled")
    def _hold_settled(self, action_id: str, at: datetime) -> None:
        settle_hold(self.tally, action_id, at)

    @event("HoldReleased")
    def _hold_released(self, action_id: str, outcome: str, at: datetime) -> None:
        release_hold(self.tally, action_id)

    @event("ActionReversed")
    def _action_reversed(self, action_id: str, currency: str, day: str, amount: Decimal, at: datetime) -> None:
        add_spend(self.tally, currency, day, -amount, at)

    # ------------------------------------------------------------------ commands

    def check_cap(self, cap: Cap | None, amount: Money, now: datetime) -> None:
        """Raises PreconditionFailed (CUSTOMER_CAP_EXCEEDED) if the organisation's per-customer cap would be passed."""
        try:
            check_cap(
                self.tally,
                cap,
                amount,
                now,
                reason="CUSTOMER_CAP_EXCEEDED",
                kind="organisation's per-customer",
                subject=f"customers/{self.customer_id}",
            )
        except PreconditionFailed as error:
            error.metadata["customer_id"] = self.customer_id
            raise

    def usage(self, cap: Cap | None, now: datetime) -> CapUsage:
        return cap_usage(self.tally, cap, now)
