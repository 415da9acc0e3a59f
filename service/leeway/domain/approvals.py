"""The book of actions waiting for approval: every pending action with who may decide it and when it expires,
so the expiry task and "what waits for me" lists need not scan the log.

Its event classes are stored under their first home, ``leeway.domain.limits`` (``keep_legacy_topics`` at the
bottom): never rename one.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate, event

from .singleton import Singleton, created
from .topics import keep_legacy_topics


class HoldBook(Singleton, Aggregate):
    """Every action waiting for approval, in the order requested, with who may decide it and when it expires."""

    NAME = "holds"
    ID_PREFIX = "hold-book"
    __init__ = created()

    def _start(self) -> None:
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

    def waiting(
        self, after: int, approver_id: str, employee_id: str, customer_id: str | Collection[str]
    ) -> list[tuple[int, str]]:
        """(sequence, action_id) of open holds after ``after``, in the order requested, filtered (``customer_id``:
        one id, or every stored spelling of one customer)."""
        customers = {customer_id} if isinstance(customer_id, str) else set(customer_id)
        customers.discard("")
        found = [
            (h["sequence"], action_id)
            for action_id, h in self.open.items()
            if h["sequence"] > after
            and (not approver_id or approver_id in h["approver_ids"])
            and (not employee_id or h["employee_id"] == employee_id)
            and (not customers or h["customer_id"] in customers)
        ]
        return sorted(found)


keep_legacy_topics("leeway.domain.limits", HoldBook)
