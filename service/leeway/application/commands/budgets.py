"""Commands on budgets: open one, change its policy, close it (releasing its holds), reopen it, move its employee
to another team."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from ...domain.budget import Budget
from ...domain.directory import Directory, TeamRoster
from ...domain.errors import AlreadyExists, FieldViolation
from ...domain.ids import budget_id_for
from ...domain.ledgers import LEGACY_LEDGER_IDS, CustomerLedgerIds
from ...domain.policy import Policy
from ...domain.reasons import Reason
from ...domain.rules import Ceiling
from ...domain.validation import MAX_NAME, check_id, check_text
from ...domain.views import OPEN, BudgetView, action_view
from .actions import _close_hold
from .base import BudgetResult, OnBudget, require_budget

if TYPE_CHECKING:
    from uuid import UUID

    from ..conventions import Conventions
    from ..reader import Reader, TeamLookup
    from ..unit_of_work import UnitOfWork


class _RendersBudget(OnBudget):
    result_type: ClassVar[type[BudgetResult]] = BudgetResult

    def render(self, reader: Reader, result: BudgetResult) -> BudgetView:
        return reader.budget_at(result.budget_id, result.version)


@dataclass(frozen=True)
class OpenBudget(_RendersBudget):
    method: ClassVar[str] = "leeway.v1.BudgetService/OpenBudget"
    team_id: str
    display_name: str
    policy: Policy | None
    policy_problems: tuple[FieldViolation, ...] = ()
    #: Whether callers' roles count (authentication on), so that a policy's approver_role names possible approvers.
    roles_count: bool = True

    def validate(self) -> list[FieldViolation]:
        return [
            *super().validate(),
            *check_id(self.team_id, "team_id"),
            *check_text(self.display_name, "display_name", required=False, max_length=MAX_NAME),
            *self.policy_problems,
        ]

    def payload(self) -> dict[str, Any]:
        return {"e": self.employee_id, "t": self.team_id, "n": self.display_name, "p": self.policy}

    def decide(self, uow: UnitOfWork, now: datetime) -> BudgetResult:
        assert self.policy is not None
        if uow.get(budget_id_for(self.employee_id)) is not None:
            raise AlreadyExists(
                f"employee {self.employee_id} already has a budget",
                reason=Reason.BUDGET_ALREADY_EXISTS,
                metadata={"employee_id": self.employee_id},
            )
        budget = Budget.open(
            employee_id=self.employee_id,
            team_id=self.team_id,
            display_name=self.display_name,
            policy=self.policy,
            now=now,
            actor=uow.actor,
            roles_count=self.roles_count,
        )
        uow.add(budget)
        _roster(uow, self.team_id).add_member(employee_id=self.employee_id, at=now)
        directory = uow.get_or_create(Directory.the_id(), Directory.new)
        directory.add_budget(employee_id=self.employee_id, team_id=self.team_id, at=now)
        return BudgetResult.of(budget)


@dataclass(frozen=True)
class UpdatePolicy(_RendersBudget):
    method: ClassVar[str] = "leeway.v1.BudgetService/UpdatePolicy"
    policy: Policy | None
    expected_version: int = 0
    policy_problems: tuple[FieldViolation, ...] = ()
    #: The supervisor changing the policy, whose own policy is the ceiling of what they may grant ("": an admin,
    #: or a caller without authentication: no ceiling).
    granted_by: str = ""
    #: As OpenBudget.roles_count.
    roles_count: bool = True

    def validate(self) -> list[FieldViolation]:
        problems = super().validate()
        if self.expected_version < 0:
            problems.append(FieldViolation("expected_version", "must not be negative"))
        return problems + list(self.policy_problems)

    def payload(self) -> dict[str, Any]:
        return {"e": self.employee_id, "p": self.policy, "v": self.expected_version}

    def decide(self, uow: UnitOfWork, now: datetime) -> BudgetResult:
        assert self.policy is not None
        budget = require_budget(uow, self.employee_id)
        budget.update_policy(
            self.policy,
            now=now,
            expected_version=self.expected_version,
            recount=lambda start: Budget.recount(uow.history(budget), start),
            actor=uow.actor,
            ceiling=self._ceiling(uow),
            roles_count=self.roles_count,
        )
        return BudgetResult.of(budget)

    def _ceiling(self, uow: UnitOfWork) -> Ceiling | None:
        """The granting supervisor's own policy (of their open budget, read and left unchanged), if any."""
        if not self.granted_by:
            return None
        own = uow.get(budget_id_for(self.granted_by))
        return Ceiling(self.granted_by, own.policy if own is not None and own.state == OPEN else None)


@dataclass(frozen=True)
class CloseResult(BudgetResult):
    """CloseBudget: the closed budget, and the outcomes of the actions the closing decided (for the metrics; not
    stored in the request record, whose shape stays that of every budget command)."""

    outcomes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _WithReason(_RendersBudget):
    """A command that names a budget and says why, nothing else (closing it, reopening it)."""

    reason: str

    def validate(self) -> list[FieldViolation]:
        return [*super().validate(), *check_text(self.reason, "reason", required=True)]

    def payload(self) -> dict[str, Any]:
        return {"e": self.employee_id, "r": self.reason}


@dataclass(frozen=True)
class CloseBudget(_WithReason):
    method: ClassVar[str] = "leeway.v1.BudgetService/CloseBudget"
    #: Where customers' ledgers are (the deployment's key store, applied by ``admitted``): its holds leave them.
    ledger_ids: CustomerLedgerIds = field(default=LEGACY_LEDGER_IDS, kw_only=True, compare=False, repr=False)

    def admitted(self, conventions: Conventions) -> CloseBudget:
        return replace(self, ledger_ids=conventions.customer_ledgers)

    def decide(self, uow: UnitOfWork, now: datetime) -> CloseResult:
        """Closes the budget; its pending actions are denied (or expired) and leave the ledgers and the hold book."""
        budget = require_budget(uow, self.employee_id)
        released = budget.close(self.reason, now=now, request_id=uow.request_id, actor=uow.actor)
        for version, outcome in released:
            _close_hold(uow, action_view(uow.event_at(budget.id, version)), outcome, now, self.ledger_ids)
        return CloseResult(budget.id, budget.version, tuple(outcome for _, outcome in released))


@dataclass(frozen=True)
class ReopenBudget(_WithReason):
    method: ClassVar[str] = "leeway.v1.BudgetService/ReopenBudget"

    def decide(self, uow: UnitOfWork, now: datetime) -> BudgetResult:
        budget = require_budget(uow, self.employee_id)
        budget.reopen(self.reason, now=now, actor=uow.actor)
        return BudgetResult.of(budget)


@dataclass(frozen=True)
class MoveEmployee(_RendersBudget):
    """Moves an employee to another team: their budget from now on, the two teams' rosters (ListBudgets, member
    counts). The team ledgers are not touched: an action counts for the team it was recorded in."""

    method: ClassVar[str] = "leeway.v1.BudgetService/MoveEmployee"
    team_id: str
    reason: str = ""

    def validate(self) -> list[FieldViolation]:
        return [
            *super().validate(),
            *check_id(self.team_id, "team_id"),
            *check_text(self.reason, "reason", required=False),
        ]

    def payload(self) -> dict[str, Any]:
        return {"e": self.employee_id, "t": self.team_id, "r": self.reason}

    def decide(self, uow: UnitOfWork, now: datetime) -> BudgetResult:
        budget = require_budget(uow, self.employee_id)
        employee, old, new = self.employee_id, budget.team_id, self.team_id

        def join() -> int:
            _roster(uow, old).remove_member(employee_id=employee, at=now)
            roster = _roster(uow, new)
            roster.add_member(employee_id=employee, at=now)
            return roster.version

        budget.move(new, reason=self.reason, join=join, now=now, actor=uow.actor)
        return BudgetResult.of(budget)

    def prefetch(self, teams: TeamLookup) -> list[UUID]:
        ids = [budget_id_for(self.employee_id), TeamRoster.create_id(self.team_id)]
        old = teams.team_of(self.employee_id)
        return ids if old is None else [*ids, TeamRoster.create_id(old)]


def _roster(uow: UnitOfWork, team_id: str) -> TeamRoster:
    return uow.get_or_create(TeamRoster.create_id(team_id), lambda: TeamRoster(team_id=team_id))
