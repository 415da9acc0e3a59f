"""What a command's ``render`` may read to build its response: ``Reader``. The application answers it from the
store (after the save, and for replays of stored requests); ``BatchReader`` answers it from the writer's
aggregates in memory, right after the command was decided, or raises ``NotInMemory``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from ..domain.budget import Budget
from ..domain.views import ActionView, BudgetView, action_view

if TYPE_CHECKING:
    from .queries import TeamView
    from .unit_of_work import WriteSet


class Reader(Protocol):
    def budget_at(self, budget_id: UUID, version: int) -> BudgetView: ...

    def action_at(self, budget_id: UUID, action_version: int, budget_version: int) -> tuple[ActionView, BudgetView]: ...

    def get_team(self, team_id: str, *, version: int | None = None, at: datetime | None = None) -> TeamView: ...


class TeamLookup(Protocol):
    def team_of(self, employee_id: str) -> str | None: ...


class NotInMemory(Exception):
    """The batch's aggregates cannot answer this read: the response is built from the store once saved."""


class BatchReader:
    """A Reader over a write set, right after a command was decided (before anything else changes it)."""

    def __init__(self, writes: WriteSet):
        self.writes = writes

    def _budget(self, budget_id: UUID, version: int) -> Any:
        budget = self.writes.loaded.get(budget_id)
        if not isinstance(budget, Budget) or budget.version != version:
            raise NotInMemory()
        return budget

    def budget_at(self, budget_id: UUID, version: int) -> BudgetView:
        return self._budget(budget_id, version).view()  # type: ignore[no-any-return]

    def action_at(self, budget_id: UUID, action_version: int, budget_version: int) -> tuple[ActionView, BudgetView]:
        budget = self._budget(budget_id, budget_version)
        event = self.writes.event_at(budget_id, action_version)
        if not isinstance(event, Budget.ActionRecorded):
            raise NotInMemory()
        return action_view(event, budget.outcome(action_version)), budget.view()

    def get_team(self, team_id: str, *, version: int | None = None, at: datetime | None = None) -> TeamView:
        raise NotInMemory()
