"""What the report shows, gathered through the application's queries and the insights read models: the same
figures GetKpis, ListBudgets, GetTeam and ListWins answer, per week for the trends."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ..application.insights import GoodwillSpread, Insights, Kpis, WinEntry
from ..domain.money import Money
from ..domain.tally import CapUsage
from ..domain.views import OPEN, BudgetView

#: The most weeks one report covers (about two years).
MAX_WEEKS = 104
#: Wins listed in the feed, newest first.
WINS_SHOWN = 30
#: Budgets read per page while listing them.
PAGE = 200


@dataclass(frozen=True)
class Week:
    start: datetime
    end: datetime
    kpis: Kpis


@dataclass(frozen=True)
class TeamCap:
    team_id: str
    usage: CapUsage


@dataclass
class ReportData:
    title: str
    team_id: str
    start: datetime
    end: datetime
    generated: datetime
    #: Budget use is shown for each budget's period that contains this moment (the report's last, or now).
    budget_day: datetime | None = None
    weeks: list[Week] = field(default_factory=list)
    totals: Kpis | None = None
    budgets: list[BudgetView] = field(default_factory=list)
    teams: list[TeamCap] = field(default_factory=list)
    wins: list[WinEntry] = field(default_factory=list)
    goodwill: list[GoodwillSpread] = field(default_factory=list)


def week_start(moment: datetime) -> datetime:
    """00:00 UTC on the Monday of ``moment``'s week (weeks are ISO weeks, in UTC)."""
    day = moment.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def week_bounds(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The ISO weeks that cover [start, end), the first and last cut to the range."""
    if end <= start:
        raise ValueError("the report's end must be after its start")
    bounds = []
    cursor = week_start(start)
    while cursor < end:
        following = cursor + timedelta(days=7)
        bounds.append((max(cursor, start), min(following, end)))
        cursor = following
    if len(bounds) > MAX_WEEKS:
        raise ValueError(f"a report covers at most {MAX_WEEKS} weeks; this range has {len(bounds)}")
    return bounds


def gather(app: Any, insights: Insights, *, team_id: str, start: datetime, end: datetime, now: datetime) -> ReportData:
    """Everything the report shows, for one team ("" for the whole organisation) and [start, end)."""
    title = f"Team {team_id}" if team_id else "The whole organisation"
    data = ReportData(title=title, team_id=team_id, start=start, end=end, generated=now)
    week_bounds(start, end)  # at most MAX_WEEKS
    # One read of the daily rollups for every week (GetKpiSeries' buckets: ISO weeks in UTC, the first and last
    # cut to the range).
    data.weeks = [Week(p.start, p.end, p.kpis) for p in insights.get_kpi_series(team_id, "", start, end, "WEEK")]
    data.totals = insights.get_kpis(team_id, "", start, end)
    data.budget_day = min(end - timedelta(microseconds=1), now)
    data.budgets = [app.get_budget(b.employee_id, period_start=data.budget_day) for b in _budgets(app, team_id)]
    for team in sorted({b.team_id for b in data.budgets}):
        data.teams.append(TeamCap(team, app.get_team(team).usage))
    page = insights.list_wins(team_id, "", WINS_SHOWN, "")
    data.wins = [w for w in page.wins if start <= w.document_time < end]
    data.goodwill = insights.goodwill_spread(team_id, start, end)
    return data


def _budgets(app: Any, team_id: str) -> list[BudgetView]:
    budgets, token = [], ""
    while True:
        page = app.list_budgets(team_id, PAGE, token)
        budgets += [b for b in page.items if b.state == OPEN]
        token = page.next_page_token
        if not token:
            return budgets


def held(budget: BudgetView) -> Decimal:
    return budget.held.amount if budget.held is not None else Decimal(0)


def amount_of(money: Money | None) -> Decimal:
    return money.amount if money is not None else Decimal(0)


def fullest(data: ReportData) -> list[BudgetView]:
    """The budgets, the largest share of their allowance spent or held first."""

    def use(b: BudgetView) -> Decimal:
        allowance = amount_of(b.allowance)
        return (amount_of(b.spent) + held(b)) / allowance if allowance else Decimal(0)

    return sorted(data.budgets, key=lambda b: (-use(b), b.team_id, b.employee_id))
