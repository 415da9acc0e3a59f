"""The playing field a manager gives an employee."""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from datetime import timedelta
from enum import Enum
from typing import Any

from .errors import FieldViolation
from .money import Money, check_amount
from .periods import PeriodKind
from .validation import check_id, check_rule_code, check_text

#: Approval timeouts allowed in an escalation policy, and the default.
MIN_APPROVAL_TIMEOUT = timedelta(seconds=1)
MAX_APPROVAL_TIMEOUT = timedelta(days=30)
DEFAULT_APPROVAL_TIMEOUT = timedelta(hours=24)
MAX_BENDABLE_RULES = 200
MAX_APPROVERS = 100
#: Split detection: how long actions on one case (or for one customer) count together, and the bounds of it.
DEFAULT_SPLIT_WINDOW = timedelta(hours=24)
MIN_SPLIT_WINDOW = timedelta(minutes=1)
MAX_SPLIT_WINDOW = timedelta(days=7)


class ActionKind(str, Enum):
    """What an employee may do for a customer. Values are stored in events: never rename them."""

    REFUND = "REFUND"
    CREDIT = "CREDIT"
    RULE_BEND = "RULE_BEND"
    GIFT = "GIFT"


class EscalationMode(str, Enum):
    """What happens to an action above one of the employee's own limits. Stored: never rename."""

    REFUSE = "REFUSE"
    APPROVAL = "APPROVAL"


@dataclass(frozen=True)
class BendableRule:
    """A business rule the employee may bend; ``max_per_period`` 0 means no count limit."""

    rule_code: str
    description: str = ""
    max_per_period: int = 0
    max_value: Money | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_code": self.rule_code,
            "description": self.description,
            "max_per_period": self.max_per_period,
            "max_value": None if self.max_value is None else self.max_value.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BendableRule:
        value = data.get("max_value")
        return cls(
            rule_code=data["rule_code"],
            description=data.get("description", ""),
            max_per_period=int(data.get("max_per_period", 0)),
            max_value=None if value is None else Money.from_dict(value),
        )


def _money_or_none(data: dict[str, Any], key: str) -> Money | None:
    value = data.get(key)
    return None if value is None else Money.from_dict(value)


@dataclass(frozen=True)
class Escalation:
    """Refuse over-limit actions, or hold them for approval by ``approver_ids`` / holders of ``approver_role``;
    at most ``max_held`` waits at once (None: one period allowance, ``Policy.max_held``)."""

    mode: EscalationMode = EscalationMode.REFUSE
    approval_timeout: timedelta = DEFAULT_APPROVAL_TIMEOUT
    approver_ids: tuple[str, ...] = ()
    approver_role: str = ""
    max_held: Money | None = None

    def to_dict(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "mode": self.mode.value,
            "approval_timeout_seconds": int(self.approval_timeout.total_seconds()),
            "approver_ids": list(self.approver_ids),
            "approver_role": self.approver_role,
        }
        if self.max_held is not None:  # only when set: policies stored before it existed read the same
            stored["max_held"] = self.max_held.to_dict()
        return stored

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Escalation:
        return cls(
            mode=EscalationMode(data.get("mode", "REFUSE")),
            approval_timeout=timedelta(seconds=int(data.get("approval_timeout_seconds", 86400))),
            approver_ids=tuple(data.get("approver_ids", ())),
            approver_role=data.get("approver_role", ""),
            max_held=_money_or_none(data, "max_held"),
        )

    def check(self, field: str) -> list[FieldViolation]:
        problems: list[FieldViolation] = []
        if not MIN_APPROVAL_TIMEOUT <= self.approval_timeout <= MAX_APPROVAL_TIMEOUT:
            problems.append(FieldViolation(f"{field}.approval_timeout", "must be between 1 second and 30 days"))
        if len(self.approver_ids) > MAX_APPROVERS:
            problems.append(FieldViolation(f"{field}.approver_ids", f"must name at most {MAX_APPROVERS} approvers"))
        for index, approver in enumerate(self.approver_ids):
            problems += check_id(approver, f"{field}.approver_ids[{index}]")
        if self.approver_role:
            problems += check_id(self.approver_role, f"{field}.approver_role")
        if self.mode is EscalationMode.APPROVAL and not self.approver_ids and not self.approver_role:
            problems.append(
                FieldViolation(f"{field}.approver_ids", "approver_ids or approver_role is required with MODE_APPROVAL")
            )
        return problems


@dataclass(frozen=True)
class SplitDetection:
    """Actions of the employee on one case (and, with ``same_customer``, for one customer) within ``window`` count
    together against the per-action limit."""

    window: timedelta = DEFAULT_SPLIT_WINDOW
    same_customer: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"window_seconds": int(self.window.total_seconds()), "same_customer": self.same_customer}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SplitDetection:
        data = data or {}
        seconds = data.get("window_seconds")
        window = DEFAULT_SPLIT_WINDOW if seconds is None else timedelta(seconds=int(seconds))
        return cls(window, bool(data.get("same_customer", False)))

    def check(self, field: str) -> list[FieldViolation]:
        if MIN_SPLIT_WINDOW <= self.window <= MAX_SPLIT_WINDOW:
            return []
        return [FieldViolation(f"{field}.window", "must be between 1 minute and 7 days")]


@dataclass(frozen=True)
class ApprovalLimits:
    """What the policy's employee may approve of other people's actions: at most ``per_action`` for one action and
    ``per_period`` in one period of this policy (None: no such limit)."""

    per_action: Money | None = None
    per_period: Money | None = None

    @property
    def limited(self) -> bool:
        return self.per_action is not None or self.per_period is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_action": None if self.per_action is None else self.per_action.to_dict(),
            "per_period": None if self.per_period is None else self.per_period.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ApprovalLimits:
        data = data or {}
        return cls(_money_or_none(data, "per_action"), _money_or_none(data, "per_period"))


@dataclass(frozen=True)
class Policy:
    """Limits for one employee. All amounts share one currency (the budget's)."""

    period_allowance: Money
    period: PeriodKind
    per_action_limit: Money | None
    allowed_kinds: tuple[ActionKind, ...]
    per_customer_limit: Money | None = None
    bendable_rules: tuple[BendableRule, ...] = ()
    escalation: Escalation = dc_field(default_factory=Escalation)
    split_detection: SplitDetection = dc_field(default_factory=SplitDetection)
    approval_limits: ApprovalLimits = dc_field(default_factory=ApprovalLimits)

    @property
    def currency(self) -> str:
        return self.period_allowance.currency

    @property
    def max_held(self) -> Money:
        """The most that may wait for approval at once: ``escalation.max_held``, by default one period allowance."""
        held = self.escalation.max_held
        return self.period_allowance if held is None else held

    @classmethod
    def build(
        cls,
        *,
        period_allowance: Money | None,
        period: PeriodKind | None,
        per_action_limit: Money | None,
        allowed_kinds: list[ActionKind],
        per_customer_limit: Money | None = None,
        bendable_rules: list[BendableRule] | None = None,
        escalation: Escalation | None = None,
        split_detection: SplitDetection | None = None,
        approval_limits: ApprovalLimits | None = None,
        field: str = "policy",
    ) -> tuple[Policy | None, list[FieldViolation]]:
        """Validates the parts of a policy; returns the policy, or None and every problem found."""
        problems: list[FieldViolation] = []
        if period_allowance is None:
            problems.append(FieldViolation(f"{field}.period_allowance", "is required"))
        else:
            problems += check_amount(period_allowance.amount, period_allowance.currency, f"{field}.period_allowance")
        if period is None:
            problems.append(FieldViolation(f"{field}.period", "is required (PERIOD_DAY ... PERIOD_YEAR)"))
        currency = period_allowance.currency if period_allowance is not None else None

        def check_limit(limit: Money | None, path: str, *, allow_zero: bool = True) -> None:
            if limit is None:
                return
            problems.extend(check_amount(limit.amount, limit.currency, path, allow_zero=allow_zero))
            if currency is not None and limit.currency != currency:
                problems.append(
                    FieldViolation(f"{path}.currency_code", f"must equal period_allowance's currency {currency}")
                )

        check_limit(per_action_limit, f"{field}.per_action_limit")
        check_limit(per_customer_limit, f"{field}.per_customer_limit")
        if not allowed_kinds:
            problems.append(FieldViolation(f"{field}.allowed_kinds", "must name at least one action kind"))
        rules = list(bendable_rules or [])
        if len(rules) > MAX_BENDABLE_RULES:
            problems.append(FieldViolation(f"{field}.bendable_rules", f"must list at most {MAX_BENDABLE_RULES} rules"))
        seen: set[str] = set()
        for index, rule in enumerate(rules):
            path = f"{field}.bendable_rules[{index}]"
            problems += check_rule_code(rule.rule_code, f"{path}.rule_code")
            if rule.rule_code in seen:
                problems.append(FieldViolation(f"{path}.rule_code", f"{rule.rule_code} is listed twice"))
            seen.add(rule.rule_code)
            problems += check_text(rule.description, f"{path}.description", required=False)
            if rule.max_per_period < 0:
                problems.append(FieldViolation(f"{path}.max_per_period", "must not be negative (0: no limit)"))
            check_limit(rule.max_value, f"{path}.max_value")
        escalation = escalation or Escalation()
        problems += escalation.check(f"{field}.escalation")
        check_limit(escalation.max_held, f"{field}.escalation.max_held", allow_zero=False)
        split_detection = split_detection or SplitDetection()
        problems += split_detection.check(f"{field}.split_detection")
        approval_limits = approval_limits or ApprovalLimits()
        check_limit(approval_limits.per_action, f"{field}.approval_limits.per_action")
        check_limit(approval_limits.per_period, f"{field}.approval_limits.per_period")
        if problems:
            return None, problems
        assert period_allowance is not None and period is not None
        kinds = tuple(sorted(set(allowed_kinds), key=list(ActionKind).index))
        return (
            cls(
                period_allowance, period, per_action_limit, kinds, per_customer_limit, tuple(rules), escalation,
                split_detection, approval_limits,
            ),
            [],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "period_allowance": self.period_allowance.to_dict(),
            "period": self.period.value,
            "per_action_limit": None if self.per_action_limit is None else self.per_action_limit.to_dict(),
            "allowed_kinds": [k.value for k in self.allowed_kinds],
            "per_customer_limit": None if self.per_customer_limit is None else self.per_customer_limit.to_dict(),
            "bendable_rules": [r.to_dict() for r in self.bendable_rules],
            "escalation": self.escalation.to_dict(),
            # Only when not the default, so that a policy stored before these existed reads back the same.
            **({"split_detection": self.split_detection.to_dict()} if self.split_detection != SplitDetection() else {}),
            **({"approval_limits": self.approval_limits.to_dict()} if self.approval_limits.limited else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        """Reads a stored policy. Tolerates keys added by later versions and defaults keys it lacks."""
        limit = data.get("per_action_limit")
        per_customer = data.get("per_customer_limit")
        return cls(
            period_allowance=Money.from_dict(data["period_allowance"]),
            period=PeriodKind(data["period"]),
            per_action_limit=None if limit is None else Money.from_dict(limit),
            allowed_kinds=tuple(ActionKind(k) for k in data.get("allowed_kinds", [])),
            per_customer_limit=None if per_customer is None else Money.from_dict(per_customer),
            bendable_rules=tuple(BendableRule.from_dict(r) for r in data.get("bendable_rules", [])),
            escalation=Escalation.from_dict(data.get("escalation") or {}),
            split_detection=SplitDetection.from_dict(data.get("split_detection")),
            approval_limits=ApprovalLimits.from_dict(data.get("approval_limits")),
        )

    def allows(self, kind: ActionKind) -> bool:
        return kind in self.allowed_kinds

    def bendable_rule(self, rule_code: str) -> BendableRule | None:
        return next((r for r in self.bendable_rules if r.rule_code == rule_code), None)
