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

from ..domain.budget import ActionRequest, ActionView, Budget, BudgetView, action_view, budget_id_for
from ..domain.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from ..domain.indexes import CustomerLedger, Directory, TeamRoster
from ..domain.money import Money, check_amount
from ..domain.policy import ActionKind, Policy
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
    if isinstance(value, (Policy, Money)):
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
        raise NotFound(
            f"employee {employee_id} has no budget",
            reason="BUDGET_NOT_FOUND",
            resource_type="leeway.v1.Budget",
            resource_name=f"budgets/{employee_id}",
        )
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
        budget.update_policy(self.policy, now=now, expected_version=self.expected_version)
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
        budget.close(self.reason, now=now)
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
        action_id = budget.record_action(request, request_id=uow.request_id, now=now)
        ledger = uow.get_or_create(
            CustomerLedger.create_id(self.customer_id), lambda: CustomerLedger(customer_id=self.customer_id)
        )
        ledger.note_action(
            action_id=action_id,
            employee_id=self.employee_id,
            kind=self.kind.value,
            amount=self.amount.amount,
            currency=self.amount.currency,
            at=now,
        )
        return {**_budget_result(budget), "action_id": action_id}

    def render(self, app: LeewayApplication, result: dict[str, Any]) -> tuple[ActionView, BudgetView]:
        budget_id = UUID(hex=result["budget_id"])
        event = app.event_at(budget_id, result["version"])
        return action_view(event), app.budget_at(budget_id, result["version"])
