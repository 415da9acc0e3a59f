"""Boundaries above a single employee, and the book of actions waiting for approval.

- ``TeamLedger``: one per team; the team's period cap and its members' spend per day and open holds. Every
  action of a member is counted here in the same transaction as on the member's budget, so concurrent actions
  of different members can never pass the cap together (the second writer loses the optimistic-concurrency
  race and decides again against the new total).
- ``OrgLimits``: the organisation's settings; today the per-customer cap across all employees (the customer's
  spend is counted on ``CustomerLedger``).
- ``HoldBook``: every action waiting for approval, with its expiry, so the expiry task and "what waits for
  me" lists need not scan the log.

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


class TeamLedger(TalliedHolds, Aggregate):
    """A team's period cap and what its members spent and hold per day."""

    @staticmethod
    def create_id(team_id: str) -> UUID:
        return leeway_id(f"team-ledger:{team_id}")

    @event("Created")
    def __init__(self, team_id: str) -> None:
        self.team_id = team_id
        self.cap_data: dict[str, Any] | None = None
        self.tally = new_tally()

    @event("CapSet")
    def _cap_set(self, cap: dict[str, Any] | None, at: datetime, actor: str = "") -> None:
        self.cap_data = cap

    @event("ActionCounted")
    def _action_counted(
        self,
        action_id: str,
        employee_id: str,
        amount: Decimal,
        currency: str,
        pending: bool,
        expires_at: datetime | None,
        at: datetime,
    ) -> None:
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

    @property
    def cap(self) -> Cap | None:
        return Cap.from_dict(self.cap_data)

    def set_cap(self, cap: Cap | None, now: datetime, actor: str = "") -> None:
        self._cap_set(cap=None if cap is None else cap.to_dict(), at=now, actor=actor)

    def count_action(
        self,
        *,
        action_id: str,
        employee_id: str,
        amount: Money,
        pending: bool,
        expires_at: datetime | None,
        now: datetime,
    ) -> None:
        """Checks the team cap (TEAM_CAP_EXCEEDED) and counts the action (or its hold)."""
        try:
            check_cap(
                self.tally,
                self.cap,
                amount,
                now,
                reason="TEAM_CAP_EXCEEDED",
                kind="team",
                subject=f"teams/{self.team_id}",
            )
        except PreconditionFailed as error:
            error.metadata["team_id"] = self.team_id
            raise
        self._action_counted(
            action_id=action_id,
            employee_id=employee_id,
            amount=amount.amount,
            currency=amount.currency,
            pending=pending,
            expires_at=expires_at,
            at=now,
        )

    def usage(self, now: datetime) -> CapUsage:
        return cap_usage(self.tally, self.cap, now)


class OrgLimits(Aggregate):
    """The organisation's boundaries: the per-customer cap across all employees. There is one."""

    NAME = "organisation"

    @staticmethod
    def create_id(name: str) -> UUID:
        return leeway_id(f"org-limits:{name}")

    @event("Created")
    def __init__(self, name: str) -> None:
        self.name = name
        self.customer_cap_data: dict[str, Any] | None = None

    @event("CustomerCapSet")
    def _customer_cap_set(self, cap: dict[str, Any] | None, at: datetime, actor: str = "") -> None:
        self.customer_cap_data = cap

    @property
    def customer_cap(self) -> Cap | None:
        return Cap.from_dict(self.customer_cap_data)

    def set_customer_cap(self, cap: Cap | None, now: datetime, actor: str = "") -> None:
        self._customer_cap_set(cap=None if cap is None else cap.to_dict(), at=now, actor=actor)


class HoldBook(Aggregate):
    """Every action waiting for approval, in the order requested, with who may decide it and when it expires."""

    NAME = "holds"

    @staticmethod
    def create_id(name: str) -> UUID:
        return leeway_id(f"hold-book:{name}")

    @event("Created")
    def __init__(self, name: str) -> None:
        self.name = name
        self.sequence = 0
        self.open: dict[str, dict[str, Any]] = {}

    @event("HoldOpened")
    def _hold_opened(
        self,
        action_id: str,
        employee_id: str,
        customer_id: str,
        expires_at: datetime,
        approver_ids: list[str],
        approver_role: str,
        at: datetime,
    ) -> None:
        self.sequence += 1
        self.open[action_id] = {
            "sequence": self.sequence,
            "employee_id": employee_id,
            "customer_id": customer_id,
            "expires_at": expires_at,
            "approver_ids": list(approver_ids),
            "approver_role": approver_role,
        }

    @event("HoldClosed")
    def _hold_closed(self, action_id: str, outcome: str, at: datetime) -> None:
        self.open.pop(action_id, None)

    def add(
        self,
        *,
        action_id: str,
        employee_id: str,
        customer_id: str,
        expires_at: datetime,
        approver_ids: tuple[str, ...],
        approver_role: str,
        now: datetime,
    ) -> None:
        self._hold_opened(
            action_id=action_id,
            employee_id=employee_id,
            customer_id=customer_id,
            expires_at=expires_at,
            approver_ids=list(approver_ids),
            approver_role=approver_role,
            at=now,
        )

    def close(self, action_id: str, outcome: str, now: datetime) -> None:
        if action_id in self.open:
            self._hold_closed(action_id=action_id, outcome=outcome, at=now)

    def due(self, now: datetime, limit: int = 100) -> list[str]:
        """Ids of holds whose approval timeout has passed, soonest first."""
        expired = sorted((h["expires_at"], action_id) for action_id, h in self.open.items() if h["expires_at"] <= now)
        return [action_id for _, action_id in expired[:limit]]

    def waiting(self, after: int, approver_id: str, employee_id: str, customer_id: str) -> list[tuple[int, str]]:
        """(sequence, action_id) of open holds after ``after``, in the order requested, filtered."""
        found = [
            (h["sequence"], action_id)
            for action_id, h in self.open.items()
            if h["sequence"] > after
            and (not approver_id or approver_id in h["approver_ids"])
            and (not employee_id or h["employee_id"] == employee_id)
            and (not customer_id or h["customer_id"] == customer_id)
        ]
        return sorted(found)
