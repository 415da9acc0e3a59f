"""The playing field a manager gives an employee."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import FieldViolation
from .money import Money, check_amount
from .periods import PeriodKind


class ActionKind(str, Enum):
    """What an employee may do for a customer. Values are stored in events: never rename them."""

    REFUND = "REFUND"
    CREDIT = "CREDIT"
    RULE_BEND = "RULE_BEND"
    GIFT = "GIFT"


@dataclass(frozen=True)
class Policy:
    """Limits for one employee. All amounts share one currency (the budget's)."""

    period_allowance: Money
    period: PeriodKind
    per_action_limit: Money | None
    allowed_kinds: tuple[ActionKind, ...]

    @property
    def currency(self) -> str:
        return self.period_allowance.currency

    @classmethod
    def build(
        cls,
        *,
        period_allowance: Money | None,
        period: PeriodKind | None,
        per_action_limit: Money | None,
        allowed_kinds: list[ActionKind],
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
        if per_action_limit is not None:
            problems += check_amount(
                per_action_limit.amount, per_action_limit.currency, f"{field}.per_action_limit", allow_zero=True
            )
            if period_allowance is not None and per_action_limit.currency != period_allowance.currency:
                problems.append(
                    FieldViolation(
                        f"{field}.per_action_limit.currency_code",
                        f"must equal period_allowance's currency {period_allowance.currency}",
                    )
                )
        if not allowed_kinds:
            problems.append(FieldViolation(f"{field}.allowed_kinds", "must name at least one action kind"))
        if problems:
            return None, problems
        assert period_allowance is not None and period is not None
        kinds = tuple(sorted(set(allowed_kinds), key=list(ActionKind).index))
        return cls(period_allowance, period, per_action_limit, kinds), []

    def to_dict(self) -> dict[str, Any]:
        return {
            "period_allowance": self.period_allowance.to_dict(),
            "period": self.period.value,
            "per_action_limit": None if self.per_action_limit is None else self.per_action_limit.to_dict(),
            "allowed_kinds": [k.value for k in self.allowed_kinds],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        """Reads a stored policy. Tolerates keys added by later versions and defaults keys it lacks."""
        limit = data.get("per_action_limit")
        return cls(
            period_allowance=Money.from_dict(data["period_allowance"]),
            period=PeriodKind(data["period"]),
            per_action_limit=None if limit is None else Money.from_dict(limit),
            allowed_kinds=tuple(ActionKind(k) for k in data.get("allowed_kinds", [])),
        )

    def allows(self, kind: ActionKind) -> bool:
        return kind in self.allowed_kinds
