"""Commands: every write to Leeway is one of these, run by ``LeewayApplication.execute``.

A command validates its own shape (``validate``), describes itself for the idempotency fingerprint
(``payload``), makes its decision against loaded aggregates (``decide``, which returns a small reference to
what it did, stored with the request_id) and turns such a reference into the response (``render``), both
right after the write and when a retried request_id is answered later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from uuid import UUID

from ..domain.budget import (
    ActionRequest,
    ActionView,
    Budget,
    BudgetView,
    action_view,
    budget_id_for,
    parse_action_id,
)
from ..domain.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound, PreconditionFailed, budget_not_found
from ..domain.indexes import CustomerLedger, Directory, TeamRoster
from ..domain.limits import HoldBook, OrgLimits, TeamLedger
from ..domain.money import Money, check_amount
from ..domain.policy import ActionKind, Policy
from ..domain.tally import Cap
from ..domain.validation import MAX_NAME, check_id, check_request_id, check_rule_code, check_text

if TYPE_CHECKING:
    from .app import LeewayApplication, UnitOfWork

#: How far in the future a CRM's occur_time may be (clock skew).
MAX_CLOCK_SKEW = timedelta(minutes=5)

#: Which detail keys each kind carries, and which of them are required.
DETAIL_FIELDS: dict[ActionKind, tuple[str, dict[str, bool]]] = {
    ActionKind.REFUND: ("refund", {"order_id": True}),
    ActionKind.CREDIT: ("credit", {"account_ref": True}),
    ActionKind.RULE_BEND: ("rule_bend", {"rule_code": True, "description": False}),
    ActionKind.GIFT: ("gift", {"gift_type": True, "note": False}),
}


def _json_default(value: Any) -> Any:
    if isinstance(value, (Policy, Money, Cap)):
        return value.to_dict()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ActionKind):
        return value.value
    return str(value)


class Command(Protocol):
    method: ClassVar[str]
    request_id: str

    def validate(self) -> list[FieldViolation]: ...

    def payload(self) -> dict[str, Any]: ...

    def decide(self, uow: UnitOfWork, now: datetime) -> dict[str, Any]: ...

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> Any: ...


def fingerprint(command: Command) -> str:
    """A digest of what the request asked for, to tell a retry from a reused request_id."""
    body = json.dumps([command.method, command.payload()], sort_keys=True, default=_json_default)
    return hashlib.sha256(body.encode()).hexdigest()


def _require_budget(uow: UnitOfWork, employee_id: str) -> Budget:
    budget = uow.get(budget_id_for(employee_id))
    if budget is None:
        raise budget_not_found(employee_id)
    assert isinstance(budget, Budget)
    return budget


def _budget_result(budget: Budget) -> dict[str, Any]:
    return {"budget_id": budget.id.hex, "version": budget.version}


def _render_budget(app: LeewayApplication, result: dict[str, Any]) -> BudgetView:
    return app.budget_at(UUID(hex=result["budget_id"]), result["version"])


@dataclass(frozen=True)
class OpenBudget:
    method: ClassVar[str] = "leeway.v1.BudgetService/OpenBudget"
    request_id: str
    employee_id: str
    team_id: str
    display_name: str
    policy: Policy | None
    policy_problems: tuple[FieldViolation, ...] = ()

    def validate(self) -> list[FieldViolation]:
        return [
            *check_request_id(self.request_id),
            *check_id(self.employee_id, "employee_id"),
            *check_id(self.team_id, "team_id"),
            *check_text(self.display_name, "display_name", required=False, max_length=MAX_NAME),
            *self.policy_problems,
        ]

    def payload(self) -> dict[str, Any]:
        return {"e": self.employee_id, "t": self.team_id, "n": self.display_name, "p": self.policy}

    def decide(self, uow: UnitOfWork, now: datetime) -> dict[str, Any]:
        assert self.policy is not None
        if uow.get(budget_id_for(self.employee_id)) is not None:
            raise AlreadyExists(
                f"employee {self.employee_id} already has a budget",
                reason="BUDGET_ALREADY_EXISTS",
                metadata={"employee_id": self.employee_id},
            )
        budget = Budget.open(
            employee_id=self.employee_id,
            team_id=self.team_id,
            display_name=self.display_name,
            policy=self.policy,
            now=now,
            actor=uow.actor,
        )
        uow.add(budget)
        roster = uow.get_or_create(TeamRoster.create_id(self.team_id), lambda: TeamRoster(team_id=self.team_id))
        roster.add_member(employee_id=self.employee_id, at=now)
        directory = uow.get_or_create(Directory.create_id(Directory.NAME), lambda: Directory(name=Directory.NAME))
        directory.add_budget(employee_id=self.employee_id, team_id=self.team_id, at=now)
        return _budget_result(budget)

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> BudgetView:
        return _render_budget(app, result)


@dataclass(frozen=True)
class UpdatePolicy:
    method: ClassVar[str] = "leeway.v1.BudgetService/UpdatePolicy"
    request_id: str
    employee_id: str
    policy: Policy | None
    expected_version: int = 0
    policy_problems: tuple[FieldViolation, ...] = ()

    def validate(self) -> list[FieldViolation]:
        problems = [*check_request_id(self.request_id), *check_id(self.employee_id, "employee_id")]
        if self.expected_version < 0:
            problems.append(FieldViolation("expected_version", "must not be negative"))
        return problems + list(self.policy_problems)

    def payload(self) -> dict[str, Any]:
        return {"e": self.employee_id, "p": self.policy, "v": self.expected_version}

    def decide(self, uow: UnitOfWork, now: datetime) -> dict[str, Any]:
        assert self.policy is not None
        budget = _require_budget(uow, self.employee_id)
        budget.update_policy(
            self.policy,
            now=now,
            expected_version=self.expected_version,
            recount=lambda start: Budget.recount(uow.history(budget), start),
            actor=uow.actor,
        )
        return _budget_result(budget)

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> BudgetView:
        return _render_budget(app, result)


@dataclass(frozen=True)
class CloseBudget:
    method: ClassVar[str] = "leeway.v1.BudgetService/CloseBudget"
    request_id: str
    employee_id: str
    reason: str

    def validate(self) -> list[FieldViolation]:
        return [
            *check_request_id(self.request_id),
            *check_id(self.employee_id, "employee_id"),
            *check_text(self.reason, "reason", required=True),
        ]

    def payload(self) -> dict[str, Any]:
        return {"e": self.employee_id, "r": self.reason}

    def decide(self, uow: UnitOfWork, now: datetime) -> dict[str, Any]:
        budget = _require_budget(uow, self.employee_id)
        budget.close(self.reason, now=now, actor=uow.actor)
        return _budget_result(budget)

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> BudgetView:
        return _render_budget(app, result)


@dataclass(frozen=True)
class RecordAction:
    method: ClassVar[str] = "leeway.v1.ActionService/RecordAction"
    request_id: str
    employee_id: str
    customer_id: str
    case_id: str
    kind: ActionKind | None
    amount: Money | None
    reason: str
    details: dict[str, str] = field(default_factory=dict)
    occur_time: datetime | None = None
    #: Problems found while translating the wire request (e.g. a malformed Money), reported with the rest.
    wire_problems: tuple[FieldViolation, ...] = ()

    def validate(self) -> list[FieldViolation]:
        problems = [
            *check_request_id(self.request_id),
            *check_id(self.employee_id, "employee_id"),
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

    def check_time(self, now: datetime) -> None:
        if self.occur_time is not None and self.occur_time > now + MAX_CLOCK_SKEW:
            raise InvalidArgument([FieldViolation("occur_time", "must not be more than 5 minutes in the future")])

    def decide(self, uow: UnitOfWork, now: datetime) -> dict[str, Any]:
        assert self.kind is not None and self.amount is not None
        self.check_time(now)
        budget = _require_budget(uow, self.employee_id)
        request = ActionRequest(
            customer_id=self.customer_id,
            case_id=self.case_id,
            kind=self.kind,
            amount=self.amount,
            reason=self.reason,
            details=self.details,
            occur_time=self.occur_time,
        )
        action_id = budget.record_action(request, request_id=uow.request_id, now=now, actor=uow.actor)
        hold = budget.hold(budget.version)
        pending = hold is not None
        expires_at = hold["expires_at"] if hold is not None else None
        # The boundaries above the employee, checked and counted in the same transaction (hard walls).
        team = uow.get_or_create(TeamLedger.create_id(budget.team_id), lambda: TeamLedger(team_id=budget.team_id))
        team.count_action(
            action_id=action_id,
            employee_id=self.employee_id,
            amount=self.amount,
            pending=pending,
            expires_at=expires_at,
            now=now,
        )
        ledger = uow.get_or_create(
            CustomerLedger.create_id(self.customer_id), lambda: CustomerLedger(customer_id=self.customer_id)
        )
        org = uow.get(OrgLimits.create_id(OrgLimits.NAME))
        ledger.check_cap(org.customer_cap if org is not None else None, self.amount, now)
        ledger.note_action(
            action_id=action_id,
            employee_id=self.employee_id,
            kind=self.kind.value,
            amount=self.amount.amount,
            currency=self.amount.currency,
            at=now,
            pending=pending,
            expires_at=expires_at,
        )
        if hold is not None:
            book = uow.get_or_create(HoldBook.create_id(HoldBook.NAME), lambda: HoldBook(name=HoldBook.NAME))
            book.add(
                action_id=action_id,
                employee_id=self.employee_id,
                customer_id=self.customer_id,
                expires_at=hold["expires_at"],
                approver_ids=tuple(hold["approver_ids"]),
                approver_role=hold["approver_role"],
                now=now,
            )
        return {**_budget_result(budget), "action_id": action_id, "pending": pending}

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> tuple[ActionView, BudgetView]:
        budget_id = UUID(hex=result["budget_id"])
        return app.action_at(budget_id, result["version"], result["version"])

    def prefetch(self, app: LeewayApplication) -> list[UUID]:
        """The aggregates ``decide`` will load, so the writer can read a whole batch's in one query."""
        ids = [
            budget_id_for(self.employee_id),
            CustomerLedger.create_id(self.customer_id),
            OrgLimits.create_id(OrgLimits.NAME),
        ]
        team = app._teams.get(self.employee_id)
        if team is not None:
            ids.append(TeamLedger.create_id(team))
        return ids

    def render_now(self, uow: UnitOfWork, result: dict[str, Any]) -> tuple[ActionView, BudgetView] | None:
        """The response from the aggregates in memory, right after ``decide`` (what ``render`` reads back from
        the store once saved), so the hot path does not read the budget again."""
        budget = uow.get(UUID(hex=result["budget_id"]))
        event = uow.event_at(budget.id, result["version"]) if budget is not None else None
        if budget is None or budget.version != result["version"] or not isinstance(event, Budget.ActionRecorded):
            return None
        return action_view(event, budget.outcome(result["version"])), budget.view()


# ---------------------------------------------------------------------------- decisions and corrections


def _check_action_id(action_id: str, field: str = "action_id") -> list[FieldViolation]:
    if not action_id:
        return [FieldViolation(field, "is required")]
    if parse_action_id(action_id) is None:
        return [FieldViolation(field, "is not an action id")]
    return []


def _load_action(uow: UnitOfWork, action_id: str) -> tuple[Budget, ActionView]:
    """The budget an action is on, and the action (NOT_FOUND unless the id names a recorded action)."""
    parsed = parse_action_id(action_id)
    assert parsed is not None
    budget_id, version = parsed
    budget = uow.get(budget_id)
    event = uow.event_at(budget_id, version) if budget is not None and 0 < version <= budget.version else None
    if budget is None or not isinstance(event, Budget.ActionRecorded):
        raise NotFound(
            f"action {action_id} does not exist",
            reason="ACTION_NOT_FOUND",
            resource_type="leeway.v1.Action",
            resource_name=f"actions/{action_id}",
        )
    return budget, action_view(event, budget.outcome(version))


def _release_elsewhere(
    uow: UnitOfWork, budget: Budget, action_id: str, hold: dict[str, Any], outcome: str, now: datetime
) -> None:
    """Settles (approved) or releases (denied, expired) a hold on the team and customer ledgers and the hold book."""
    for ledger in (
        uow.get(TeamLedger.create_id(budget.team_id)),
        uow.get(CustomerLedger.create_id(hold["customer_id"])),
    ):
        if ledger is None:
            continue
        if outcome == "APPROVED":
            ledger.settle(action_id, now)
        else:
            ledger.release(action_id, outcome, now)
    book = uow.get(HoldBook.create_id(HoldBook.NAME))
    if book is not None:
        book.close(action_id, outcome, now)


@dataclass(frozen=True)
class DecideAction:
    """ApproveAction or DenyAction."""

    request_id: str
    action_id: str
    approver_id: str
    note: str
    approve: bool
    #: Roles the caller's credentials assert (empty until callers authenticate).
    approver_roles: frozenset[str] = frozenset()

    @property
    def method(self) -> str:  # type: ignore[override]
        return "leeway.v1.ActionService/" + ("ApproveAction" if self.approve else "DenyAction")

    def validate(self) -> list[FieldViolation]:
        return [
            *check_request_id(self.request_id),
            *_check_action_id(self.action_id),
            *check_id(self.approver_id, "approver_id"),
            *check_text(self.note, "note", required=False),
        ]

    def payload(self) -> dict[str, Any]:
        return {"a": self.action_id, "by": self.approver_id, "n": self.note, "ok": self.approve}

    def decide(self, uow: UnitOfWork, now: datetime) -> dict[str, Any]:
        budget, action = _load_action(uow, self.action_id)
        version = action.budget_version
        if self.approve:
            hold = budget.approve(
                version,
                approver_id=self.approver_id,
                note=self.note,
                request_id=uow.request_id,
                now=now,
                approver_roles=self.approver_roles,
                actor=uow.actor,
            )
        else:
            hold = budget.deny(
                version,
                approver_id=self.approver_id,
                note=self.note,
                request_id=uow.request_id,
                now=now,
                approver_roles=self.approver_roles,
                actor=uow.actor,
            )
        _release_elsewhere(uow, budget, self.action_id, hold, "APPROVED" if self.approve else "DENIED", now)
        return {**_budget_result(budget), "action_version": version}

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> tuple[ActionView, BudgetView]:
        return app.action_at(UUID(hex=result["budget_id"]), result["action_version"], result["version"])


@dataclass(frozen=True)
class ExpireAction:
    """Run by the expiry task (request_id ``expire:<action_id>``, so replicas doing it at once agree)."""

    method: ClassVar[str] = "leeway.v1.ActionService/ExpireAction"
    request_id: str
    action_id: str

    def validate(self) -> list[FieldViolation]:
        return [*check_request_id(self.request_id), *_check_action_id(self.action_id)]

    def payload(self) -> dict[str, Any]:
        return {"a": self.action_id}

    def decide(self, uow: UnitOfWork, now: datetime) -> dict[str, Any]:
        budget, action = _load_action(uow, self.action_id)
        version = action.budget_version
        hold = budget.hold(version)
        expired = budget.expire(version, request_id=uow.request_id, now=now)
        if expired is not None:
            _release_elsewhere(uow, budget, self.action_id, expired, "EXPIRED", now)
            return {**_budget_result(budget), "action_version": version, "expired": True}
        elif hold is None:
            # Decided already: make sure the hold book forgets it too.
            book = uow.get(HoldBook.create_id(HoldBook.NAME))
            if book is not None:
                book.close(self.action_id, action.state, now)
        else:
            raise PreconditionFailed(
                f"the action expires at {hold['expires_at'].isoformat()}, not yet",
                reason="APPROVAL_NOT_DUE",
            )
        return {**_budget_result(budget), "action_version": version}

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> tuple[ActionView, BudgetView]:
        return app.action_at(UUID(hex=result["budget_id"]), result["action_version"], result["version"])


@dataclass(frozen=True)
class ReverseResult:
    action: ActionView
    budget: BudgetView
    restored_to_current_period: bool
    explanation: str


@dataclass(frozen=True)
class ReverseAction:
    method: ClassVar[str] = "leeway.v1.ActionService/ReverseAction"
    request_id: str
    action_id: str
    reason: str
    actor_id: str

    def validate(self) -> list[FieldViolation]:
        return [
            *check_request_id(self.request_id),
            *_check_action_id(self.action_id),
            *check_text(self.reason, "reason", required=True),
            *check_id(self.actor_id, "actor_id"),
        ]

    def payload(self) -> dict[str, Any]:
        return {"a": self.action_id, "r": self.reason, "by": self.actor_id}

    def decide(self, uow: UnitOfWork, now: datetime) -> dict[str, Any]:
        budget, action = _load_action(uow, self.action_id)
        restored = budget.reverse(
            action, actor_id=self.actor_id, reason=self.reason, request_id=uow.request_id, now=now, actor=uow.actor
        )
        day = action.record_time.date().isoformat()
        team = uow.get_or_create(TeamLedger.create_id(budget.team_id), lambda: TeamLedger(team_id=budget.team_id))
        team.reverse(self.action_id, action.amount, day, now)
        ledger = uow.get_or_create(
            CustomerLedger.create_id(action.customer_id), lambda: CustomerLedger(customer_id=action.customer_id)
        )
        ledger.reverse(self.action_id, action.amount, day, now)
        return {**_budget_result(budget), "action_version": action.budget_version, "restored": restored}

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> ReverseResult:
        action, budget = app.action_at(UUID(hex=result["budget_id"]), result["action_version"], result["version"])
        day = action.record_time.date().isoformat()
        if result["restored"]:
            explanation = (
                f"{action.amount} went back into the current period ({budget.period_start.date().isoformat()} to "
                f"{budget.period_end.date().isoformat()}) and can be spent again."
            )
        else:
            explanation = (
                f"The action was counted in a period that has ended (recorded {day}); that period's figures were "
                f"corrected, but the {action.amount} does not increase what can be spent now."
            )
        return ReverseResult(action, budget, bool(result["restored"]), explanation)


# ---------------------------------------------------------------------------- team and organisation caps


def _check_cap(cap: Cap | None, problems: tuple[FieldViolation, ...], field: str = "cap") -> list[FieldViolation]:
    if problems or cap is None:
        return list(problems)
    return check_amount(cap.amount.amount, cap.amount.currency, f"{field}.amount", allow_zero=True)


@dataclass(frozen=True)
class SetTeamCap:
    method: ClassVar[str] = "leeway.v1.TeamService/SetTeamCap"
    request_id: str
    team_id: str
    cap: Cap | None
    cap_problems: tuple[FieldViolation, ...] = ()

    def validate(self) -> list[FieldViolation]:
        return [
            *check_request_id(self.request_id),
            *check_id(self.team_id, "team_id"),
            *_check_cap(self.cap, self.cap_problems),
        ]

    def payload(self) -> dict[str, Any]:
        return {"t": self.team_id, "c": self.cap}

    def decide(self, uow: UnitOfWork, now: datetime) -> dict[str, Any]:
        team = uow.get_or_create(TeamLedger.create_id(self.team_id), lambda: TeamLedger(team_id=self.team_id))
        team.set_cap(self.cap, now, actor=uow.actor)
        return {"team_id": self.team_id, "version": team.version, "at": now.isoformat()}

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> Any:
        return app.get_team(result["team_id"], version=result["version"], at=datetime.fromisoformat(result["at"]))


@dataclass(frozen=True)
class SetCustomerCap:
    method: ClassVar[str] = "leeway.v1.TeamService/SetCustomerCap"
    request_id: str
    cap: Cap | None
    cap_problems: tuple[FieldViolation, ...] = ()

    def validate(self) -> list[FieldViolation]:
        return [*check_request_id(self.request_id), *_check_cap(self.cap, self.cap_problems)]

    def payload(self) -> dict[str, Any]:
        return {"c": self.cap}

    def decide(self, uow: UnitOfWork, now: datetime) -> dict[str, Any]:
        org = uow.get_or_create(OrgLimits.create_id(OrgLimits.NAME), lambda: OrgLimits(name=OrgLimits.NAME))
        org.set_customer_cap(self.cap, now, actor=uow.actor)
        return {"cap": self.cap.to_dict() if self.cap is not None else None}

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> Cap | None:
        return Cap.from_dict(result["cap"])


@dataclass(frozen=True)
class DocumentWin:
    method: ClassVar[str] = "leeway.v1.ActionService/DocumentWin"
    request_id: str
    action_id: str
    story: str
    customer_quote: str = ""
    outcome: str = ""

    def validate(self) -> list[FieldViolation]:
        return [
            *check_request_id(self.request_id),
            *_check_action_id(self.action_id),
            *check_text(self.story, "story", required=True),
            *check_text(self.customer_quote, "customer_quote", required=False),
            *check_text(self.outcome, "outcome", required=False, max_length=MAX_NAME),
        ]

    def payload(self) -> dict[str, Any]:
        return {"a": self.action_id, "s": self.story, "q": self.customer_quote, "o": self.outcome}

    def decide(self, uow: UnitOfWork, now: datetime) -> dict[str, Any]:
        budget, action = _load_action(uow, self.action_id)
        budget.document_win(
            action, story=self.story, customer_quote=self.customer_quote, outcome=self.outcome, now=now, actor=uow.actor
        )
        return {**_budget_result(budget), "action_version": action.budget_version}

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> ActionView:
        action, _ = app.action_at(UUID(hex=result["budget_id"]), result["action_version"], result["version"])
        return action
