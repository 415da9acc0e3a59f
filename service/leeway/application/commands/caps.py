"""Commands on the caps above employees: a team's cap, the organisation's per-customer cap."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from ...domain.errors import FieldViolation
from ...domain.ledgers import OrgLimits
from ...domain.money import check_amount, currency_places
from ...domain.tally import Cap
from ...domain.validation import check_id
from .base import CustomerCapResult, Request, TeamCapResult, team_ledger

if TYPE_CHECKING:
    from ..queries import TeamView
    from ..reader import Reader
    from ..unit_of_work import UnitOfWork


def _check_cap(cap: Cap | None, problems: tuple[FieldViolation, ...], field: str = "cap") -> list[FieldViolation]:
    if problems or cap is None:
        return list(problems)
    return check_amount(cap.amount.amount, cap.amount.currency, f"{field}.amount", allow_zero=True)


@dataclass(frozen=True)
class SetTeamCap(Request):
    method: ClassVar[str] = "leeway.v1.TeamService/SetTeamCap"
    result_type: ClassVar[type[TeamCapResult]] = TeamCapResult
    team_id: str
    cap: Cap | None
    cap_problems: tuple[FieldViolation, ...] = ()

    def validate(self) -> list[FieldViolation]:
        return [*super().validate(), *check_id(self.team_id, "team_id"), *_check_cap(self.cap, self.cap_problems)]

    def payload(self) -> dict[str, Any]:
        return {"t": self.team_id, "c": self.cap}

    def decide(self, uow: UnitOfWork, now: datetime) -> TeamCapResult:
        team = team_ledger(uow, self.team_id)
        team.set_cap(self.cap, now, actor=uow.actor)
        return TeamCapResult(self.team_id, team.version, now)

    def render(self, reader: Reader, result: TeamCapResult) -> TeamView:
        return reader.get_team(result.team_id, version=result.version, at=result.at)


@dataclass(frozen=True)
class SetCustomerCap(Request):
    """Sets the organisation-wide per-customer cap of the cap's currency (the caps of other currencies stay); with
    no cap, removes the cap of ``currency_code``, or every cap when it is empty."""

    method: ClassVar[str] = "leeway.v1.TeamService/SetCustomerCap"
    result_type: ClassVar[type[CustomerCapResult]] = CustomerCapResult
    cap: Cap | None
    cap_problems: tuple[FieldViolation, ...] = ()
    currency_code: str = ""

    def validate(self) -> list[FieldViolation]:
        problems = [*super().validate(), *_check_cap(self.cap, self.cap_problems)]
        currency = self.currency_code
        if currency and currency_places(currency) is None:
            problems.append(FieldViolation("currency_code", f"'{currency}' is not an ISO 4217 currency code"))
        elif currency and self.cap is not None and self.cap.amount.currency != currency:
            problems.append(
                FieldViolation("currency_code", f"must be the cap's currency ({self.cap.amount.currency}) or empty")
            )
        return problems

    def payload(self) -> dict[str, Any]:
        return {"c": self.cap, **({"cur": self.currency_code} if self.currency_code else {})}

    def decide(self, uow: UnitOfWork, now: datetime) -> CustomerCapResult:
        org = uow.get_or_create(OrgLimits.the_id(), OrgLimits.new)
        org.set_customer_cap(self.cap, now, actor=uow.actor, currency=self.currency_code)
        caps = org.customer_caps
        return CustomerCapResult(self.cap, tuple(caps[currency] for currency in sorted(caps)))

    def render(self, reader: Reader, result: CustomerCapResult) -> CustomerCapResult:
        return result
