"""Commands on actions: record one, decide or expire a pending one, reverse one, document a win."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from ...domain.actions import (
    DETAIL_FIELDS,
    ActionRequest,
    check_occur_time,
    close_hold_everywhere,
    reverse_everywhere,
    take_action,
)
from ...domain.approvals import HoldBook
from ...domain.customers import CustomerIdForm, spellings_in
from ...domain.command_rules import Approver
from ...domain.errors import FieldViolation, PreconditionFailed
from ...domain.ids import budget_id_for
from ...domain.ledgers import LEGACY_LEDGER_IDS, CustomerLedgerIds, OrgLimits, TeamLedger
from ...domain.money import Money, check_amount
from ...domain.policy import ActionKind
from ...domain.reasons import Reason
from ...domain.records import carried
from ...domain.rules import MAX_OCCUR_AGE
from ...domain.validation import MAX_NAME, Id, Text, check_id, check_rule_code, check_text
from ...domain.views import APPROVED, DENIED, EXPIRED, ActionView, BudgetView
from .base import (
    ActionResult,
    ExpiryResult,
    OnAction,
    OnBudget,
    RecordResult,
    ReversalResult,
    customer_ledger,
    customer_ledgers,
    existing_customer_ledgers,
    load_action,
    require_budget,
    team_ledger,
)

if TYPE_CHECKING:
    from ..conventions import Conventions
    from ..reader import Reader, TeamLookup
    from ..unit_of_work import UnitOfWork


@dataclass(frozen=True)
class RecordAction(OnBudget):
    method: ClassVar[str] = "leeway.v1.ActionService/RecordAction"
    result_type: ClassVar[type[RecordResult]] = RecordResult
    customer_id: str
    case_id: str
    kind: ActionKind | None
    amount: Money | None
    reason: str
    details: dict[str, str] = field(default_factory=dict)
    occur_time: datetime | None = None
    #: Problems found while translating the wire request (e.g. a malformed Money), reported with the rest.
    wire_problems: tuple[FieldViolation, ...] = ()
    #: How far back occur_time may be (the deployment's setting, applied by ``admitted``).
    occur_time_max_age: timedelta = MAX_OCCUR_AGE
    #: How customer ids become keys (the deployment's setting, applied by ``admitted``): what the budget and the
    #: customer's ledger stored under older spellings of the key is found with it.
    customer_form: CustomerIdForm = CustomerIdForm.EXACT
    #: How the customer key and the case id read once erased (issue 22; "" without a key store): what a budget
    #: counted under them before an erasure still counts.
    customer_erased: str = ""
    case_erased: str = ""
    #: Where customers' ledgers are (the deployment's key store, applied by ``admitted``).
    ledger_ids: CustomerLedgerIds = field(default=LEGACY_LEDGER_IDS, compare=False, repr=False)

    def admitted(self, conventions: Conventions) -> RecordAction:
        """The customer id as its key (before any cap or index sees it), and the deployment's occur_time horizon."""
        key = conventions.customer_key(self.customer_id)
        return replace(
            self,
            customer_id=key,
            customer_form=conventions.customer_ids,
            occur_time_max_age=conventions.occur_time_max_age,
            customer_erased=conventions.erased("customer", key),
            case_erased=conventions.erased("case", self.case_id),
            ledger_ids=conventions.customer_ledgers,
        )

    def validate(self) -> list[FieldViolation]:
        problems = [
            *super().validate(),
            *check_id(self.customer_id, "customer_id"),
            *check_id(self.case_id, "case_id", required=False),
            *check_text(self.reason, "reason", required=True),
            *self.wire_problems,
        ]
        if self.amount is None:
            if not any(p.field.startswith("amount") for p in self.wire_problems):
                problems.append(FieldViolation("amount", "is required"))
        else:
            allow_zero = self.kind is ActionKind.RULE_BEND
            problems += check_amount(self.amount.amount, self.amount.currency, "amount", allow_zero=allow_zero)
        if self.kind is not None:
            oneof, keys = DETAIL_FIELDS[self.kind]
            for key, required in keys.items():
                value = self.details.get(key, "")
                path = f"{oneof}.{key}"
                if key == "rule_code":
                    problems += check_rule_code(value, path)
                elif key in ("description", "note"):
                    problems += check_text(value, path, required=required)
                else:
                    problems += check_text(value, path, required=required, max_length=128)
        return problems

    def payload(self) -> dict[str, Any]:
        return {
            "e": self.employee_id,
            "c": self.customer_id,
            "k": self.case_id,
            "t": self.kind,
            "a": self.amount,
            "r": self.reason,
            "d": self.details,
            "o": self.occur_time,
        }

    def decide(self, uow: UnitOfWork, now: datetime) -> RecordResult:
        assert self.kind is not None and self.amount is not None
        _raise(check_occur_time(self.occur_time, now, self.occur_time_max_age))
        budget = require_budget(uow, self.employee_id)
        key, form = self.customer_id, self.customer_form
        taken = take_action(
            ActionRequest(
                **carried(self, *(f.name for f in fields(ActionRequest)
                                  if f.name not in ("customer_spellings", "case_spellings"))),
                customer_spellings=(
                    *spellings_in(budget.customer_ids(), key, form),
                    *erased_in(budget, self.customer_erased, "customer"),
                ),
                case_spellings=erased_in(budget, self.case_erased, "case"),
            ),
            budget=budget,
            team=lambda: team_ledger(uow, budget.team_id),
            customer=lambda: customer_ledgers(uow, key, form, self.ledger_ids),
            org=lambda: uow.get(OrgLimits.the_id()),
            hold_book=lambda: uow.get_or_create(HoldBook.the_id(), HoldBook.new),
            request_id=uow.request_id,
            now=now,
            actor=uow.actor,
        )
        return RecordResult(budget.id, budget.version, taken.action_id, taken.pending)

    def render(self, reader: Reader, result: RecordResult) -> tuple[ActionView, BudgetView]:
        return reader.action_at(result.budget_id, result.version, result.version)

    def prefetch(self, teams: TeamLookup) -> list[UUID]:
        """The aggregates ``decide`` will load, so the writer can read a whole batch's in one query."""
        ids = [
            budget_id_for(self.employee_id),
            *self.ledger_ids.of(self.customer_id),
            OrgLimits.the_id(),
        ]
        team = teams.team_of(self.employee_id)
        if team is not None:
            ids.append(TeamLedger.create_id(team))
        return ids


def _close_hold(uow: UnitOfWork, action: ActionView, outcome: str, now: datetime, ids: CustomerLedgerIds) -> None:
    """The hold of a decided or expired action leaves the ledgers of the team it was recorded in and of its customer
    (whichever of its keyed and legacy ledgers holds it), and the hold book."""
    team = uow.get(TeamLedger.create_id(action.team_id))  # loaded first: a batch saves in the order it loads
    customer = existing_customer_ledgers(uow, action.customer_id, ids)
    close_hold_everywhere(
        action.action_id,
        outcome,
        now,
        team=team,
        customer=customer[0] if customer else None,
        hold_book=uow.get(HoldBook.the_id()),
        other_customer_ledgers=customer[1:],
    )


class _RendersAction(OnAction):
    def render(self, reader: Reader, result: ActionResult) -> tuple[ActionView, BudgetView]:
        return reader.action_at(result.budget_id, result.action_version, result.version)


@dataclass(frozen=True)
class DecisionResponse:
    """What an approval or denial answers: the action and its budget after it, and where the amount went."""

    action: ActionView
    budget: BudgetView
    #: An approval whose amount was spent in the current period (False: in the period it was requested in, which
    #: had ended, or a denial).
    spent_in_current_period: bool
    explanation: str


@dataclass(frozen=True)
class DecideAction(OnAction):
    """ApproveAction or DenyAction."""

    result_type: ClassVar[type[ActionResult]] = ActionResult
    field_checks = (Id("approver_id"), Text("note"))
    payload_keys = {"by": "approver_id", "n": "note", "ok": "approve"}
    approver_id: str
    note: str
    approve: bool
    #: Roles the caller's credentials assert (empty until callers authenticate).
    approver_roles: frozenset[str] = frozenset()
    #: Teams the caller's credentials assert: a policy's approver_role counts only in the action's team ...
    approver_teams: frozenset[str] = frozenset()
    #: ... unless the caller is an admin (any team).
    any_team: bool = False

    @property
    def method(self) -> str:  # type: ignore[override]
        return "leeway.v1.ActionService/" + ("ApproveAction" if self.approve else "DenyAction")

    def prefetch(self, teams: TeamLookup) -> list[UUID]:
        return [*super().prefetch(teams), budget_id_for(self.approver_id), HoldBook.the_id()]

    def decide(self, uow: UnitOfWork, now: datetime) -> ActionResult:
        budget, action = load_action(uow, self.action_id)
        version = action.budget_version
        budget.decide(
            self.approve,
            action,
            Approver(self.approver_id, self.approver_roles, self.approver_teams, self.any_team),
            note=self.note,
            request_id=uow.request_id,
            now=now,
            # The approver's own budget: its approval limits, and where an approval under them is counted (in this
            # batch, so that approvals by one approver at once are counted exactly).
            authority=lambda: uow.get(budget_id_for(self.approver_id)),
            actor=uow.actor,
        )
        _close_hold(uow, action, APPROVED if self.approve else DENIED, now, self.ledger_ids)
        return ActionResult(budget.id, budget.version, version)

    def render(self, reader: Reader, result: ActionResult) -> DecisionResponse:
        action, budget = reader.action_at(result.budget_id, result.action_version, result.version)
        amount, period = action.amount, f"{budget.period_start.date().isoformat()} to {budget.period_end.date().isoformat()}"
        if not self.approve:
            return DecisionResponse(action, budget, False, f"The hold of {amount} was released; nothing was spent.")
        assert action.decision is not None
        if action.decision.counted_in_current_period:
            return DecisionResponse(action, budget, True, f"{amount} was spent in the current period ({period}).")
        day = action.record_time.date().isoformat()
        explanation = (
            f"The action was requested on {day}, in a period that has ended: {amount} was spent in that period, whose "
            f"figures (and the team's and the customer's) now count it (GetBudget with period_start {day}), not in "
            f"the current one ({period})."
        )
        return DecisionResponse(action, budget, False, explanation)


@dataclass(frozen=True)
class ExpireAction(_RendersAction):
    """Run by the expiry task (request_id ``expire:<action_id>``, so replicas doing it at once agree)."""

    method: ClassVar[str] = "leeway.v1.ActionService/ExpireAction"
    result_type: ClassVar[type[ExpiryResult]] = ExpiryResult

    def prefetch(self, teams: TeamLookup) -> list[UUID]:
        return [*super().prefetch(teams), HoldBook.the_id()]

    def decide(self, uow: UnitOfWork, now: datetime) -> ExpiryResult:
        budget, action = load_action(uow, self.action_id)
        version = action.budget_version
        hold = budget.hold(version)
        if budget.expire(version, request_id=uow.request_id, now=now) is not None:
            _close_hold(uow, action, EXPIRED, now, self.ledger_ids)
            return ExpiryResult(budget.id, budget.version, version, expired=True)
        if hold is not None:
            raise PreconditionFailed(
                f"the action expires at {hold['expires_at'].isoformat()}, not yet", reason=Reason.APPROVAL_NOT_DUE
            )
        # Decided already: make sure the hold book forgets it too.
        book = uow.get(HoldBook.the_id())
        if book is not None:
            book.close(self.action_id, action.state, now)
        return ExpiryResult(budget.id, budget.version, version)


@dataclass(frozen=True)
class ReverseResult:
    action: ActionView
    budget: BudgetView
    restored_to_current_period: bool
    explanation: str


@dataclass(frozen=True)
class ReverseAction(OnAction):
    method: ClassVar[str] = "leeway.v1.ActionService/ReverseAction"
    result_type: ClassVar[type[ReversalResult]] = ReversalResult
    field_checks = (Text("reason", required=True), Id("actor_id"))
    payload_keys = {"r": "reason", "by": "actor_id"}
    reason: str
    actor_id: str

    def decide(self, uow: UnitOfWork, now: datetime) -> ReversalResult:
        budget, action = load_action(uow, self.action_id)
        restored = budget.reverse(
            action, actor_id=self.actor_id, reason=self.reason, request_id=uow.request_id, now=now, actor=uow.actor
        )
        reverse_everywhere(
            action,
            now,
            team=team_ledger(uow, action.team_id),  # the team it was recorded in, wherever the employee is now
            customer=customer_ledger(uow, action.customer_id, self.ledger_ids),
        )
        return ReversalResult(budget.id, budget.version, action.budget_version, restored)

    def render(self, reader: Reader, result: ReversalResult) -> ReverseResult:
        action, budget = reader.action_at(result.budget_id, result.action_version, result.version)
        day = action.record_time.date().isoformat()
        if result.restored:
            explanation = (
                f"{action.amount} went back into the current period ({budget.period_start.date().isoformat()} to "
                f"{budget.period_end.date().isoformat()}) and can be spent again."
            )
        else:
            explanation = (
                f"The action was counted in a period that has ended (recorded {day}); that period's figures were "
                f"corrected, but the {action.amount} does not increase what can be spent now."
            )
        return ReverseResult(action, budget, result.restored, explanation)


@dataclass(frozen=True)
class DocumentWin(OnAction):
    method: ClassVar[str] = "leeway.v1.ActionService/DocumentWin"
    result_type: ClassVar[type[ActionResult]] = ActionResult
    touches_ledgers: ClassVar[bool] = False
    field_checks = (Text("story", required=True), Text("customer_quote"), Text("outcome", max_length=MAX_NAME))
    payload_keys = {"s": "story", "q": "customer_quote", "o": "outcome"}
    story: str
    customer_quote: str = ""
    outcome: str = ""

    def decide(self, uow: UnitOfWork, now: datetime) -> ActionResult:
        budget, action = load_action(uow, self.action_id)
        budget.document_win(
            action, story=self.story, customer_quote=self.customer_quote, outcome=self.outcome, now=now, actor=uow.actor
        )
        return ActionResult(budget.id, budget.version, action.budget_version)

    def render(self, reader: Reader, result: ActionResult) -> ActionView:
        action, _ = reader.action_at(result.budget_id, result.action_version, result.version)
        return action


def _raise(error: Exception | None) -> None:
    if error is not None:
        raise error


def erased_in(budget: Any, erased: str, what: str) -> tuple[str, ...]:
    """``(erased,)`` if ``budget`` counts something under that erased id (issue 22), else ``()``."""
    if not erased:
        return ()
    held = erased in budget.customer_ids() if what == "customer" else False
    return (erased,) if held or f"{what}:{erased}" in budget.recent else ()
