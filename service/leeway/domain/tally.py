"""Caps over many actions: spend per UTC day and open holds, kept by the team and customer ledgers (their caps
are checked by ``rules.check_team_cap`` and ``rules.check_customer_cap``, with ``cap_breach``).

A tally is a plain dict (it is stored in snapshots as JSON)::

    {"daily": {currency: {"YYYY-MM-DD": Decimal}},
     "holds": {action_id: {"currency": str, "day": str, "amount": Decimal, "expires_at": datetime}}}

Every period kind starts at 00:00 UTC, so the spend of any cap period is a sum of days, and a cap set or
changed in the middle of a period counts what was already spent in it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from .errors import Breach, PreconditionViolation
from .money import Money
from .periods import PeriodKind, period_bounds
from .reasons import Reason

#: Days of per-day spend a tally keeps: more than the longest period (a year).
HISTORY_DAYS = 400
#: The period over which spend is shown in a currency without a cap (GetTeam, GetCustomerUsage).
SPEND_PERIOD = PeriodKind.MONTH


@dataclass(frozen=True)
class Cap:
    """The most that may be spent (and held) per period by many actions together."""

    amount: Money
    period: PeriodKind

    def to_dict(self) -> dict[str, Any]:
        return {"amount": self.amount.to_dict(), "period": self.period.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Cap | None:
        if data is None:
            return None
        return cls(Money.from_dict(data["amount"]), PeriodKind(data["period"]))


@dataclass(frozen=True)
class CapUsage:
    """Where a cap stands in its current period; without a cap (``cap`` None, ``remaining`` None), what was spent
    and is held in one currency in the current ``SPEND_PERIOD`` (all None: nothing to show)."""

    cap: Cap | None
    period_start: datetime | None
    period_end: datetime | None
    spent: Money | None
    held: Money | None
    remaining: Money | None


def new_tally() -> dict[str, Any]:
    return {"daily": {}, "holds": {}}


def day_of(at: datetime) -> str:
    return at.date().isoformat()


def add_spend(tally: dict[str, Any], currency: str, day: str, amount: Decimal, at: datetime) -> None:
    days = tally["daily"].setdefault(currency, {})
    if day not in days:
        oldest = day_of(at - timedelta(days=HISTORY_DAYS))
        for old in [d for d in days if d < oldest]:
            del days[old]
    days[day] = days.get(day, Decimal(0)) + amount


def add_hold(
    tally: dict[str, Any], action_id: str, currency: str, day: str, amount: Decimal, expires_at: datetime
) -> None:
    tally["holds"][action_id] = {"currency": currency, "day": day, "amount": amount, "expires_at": expires_at}


def settle_hold(tally: dict[str, Any], action_id: str, at: datetime) -> None:
    """An approved hold becomes spend on the day it was requested."""
    hold = tally["holds"].pop(action_id, None)
    if hold is not None:
        add_spend(tally, hold["currency"], hold["day"], hold["amount"], at)


def release_hold(tally: dict[str, Any], action_id: str) -> None:
    tally["holds"].pop(action_id, None)


def usage(
    tally: dict[str, Any], currency: str, start: datetime, end: datetime, now: datetime
) -> tuple[Decimal, Decimal]:
    """(spent, held) in [start, end); holds that expired by ``now`` no longer count."""
    first, last = day_of(start), day_of(end)
    spent = sum((amount for day, amount in tally["daily"].get(currency, {}).items() if first <= day < last), Decimal(0))
    held = sum(
        (
            h["amount"]
            for h in tally["holds"].values()
            if h["currency"] == currency and first <= h["day"] < last and h["expires_at"] > now
        ),
        Decimal(0),
    )
    return spent, held


def merged(tallies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One tally counting what each of ``tallies`` counts (a customer's ledgers under several spellings)."""
    if len(tallies) == 1:
        return tallies[0]
    out = new_tally()
    for tally in tallies:
        for currency, days in tally["daily"].items():
            into = out["daily"].setdefault(currency, {})
            for day, amount in days.items():
                into[day] = into.get(day, Decimal(0)) + amount
        out["holds"].update(tally["holds"])
    return out


def spend_usage(tally: dict[str, Any], currency: str, cap: Cap | None, now: datetime) -> CapUsage:
    """What was spent and is held in ``currency`` in the current period of ``cap`` (in that currency), or of
    ``SPEND_PERIOD`` without one."""
    start, end = period_bounds(cap.period if cap is not None else SPEND_PERIOD, now)
    spent, held = usage(tally, currency, start, end, now)
    remaining = Money(cap.amount.amount - spent - held, currency) if cap is not None else None
    return CapUsage(cap, start, end, Money(spent, currency), Money(held, currency), remaining)


def usages(tally: dict[str, Any], caps: Mapping[str, Cap], now: datetime) -> list[CapUsage]:
    """Every currency with a cap (first, by code) or with spend or holds in the tally (then, by code)."""
    seen = set(tally["daily"]) | {h["currency"] for h in tally["holds"].values()}
    currencies = sorted(caps) + sorted(seen - set(caps))
    return [spend_usage(tally, currency, caps.get(currency), now) for currency in currencies]


def cap_usage(tally: dict[str, Any], cap: Cap | None, now: datetime) -> CapUsage:
    if cap is None:
        return CapUsage(None, None, None, None, None, None)
    start, end = period_bounds(cap.period, now)
    currency = cap.amount.currency
    spent, held = usage(tally, currency, start, end, now)
    return CapUsage(
        cap,
        start,
        end,
        Money(spent, currency),
        Money(held, currency),
        Money(cap.amount.amount - spent - held, currency),
    )


def cap_breach(
    tally: dict[str, Any],
    cap: Cap | None,
    amount: Money,
    now: datetime,
    *,
    reason: str,
    kind: str,
    subject: str,
    owner: dict[str, str] | None = None,
) -> Breach | None:
    """Whether ``amount`` does not fit under ``cap`` in its current period; ``owner`` names the ledger in the
    metadata (after the figures)."""
    if cap is None:
        return None
    owner = owner or {}
    if amount.currency != cap.amount.currency:
        return Breach(
            Reason.CURRENCY_MISMATCH,
            f"the {kind} cap is in {cap.amount.currency}; it cannot count an amount in {amount.currency}",
            PreconditionViolation("CURRENCY", subject, f"the {kind} cap is in {cap.amount.currency}"),
            {"cap_currency": cap.amount.currency, "amount_currency": amount.currency, **owner},
        )
    state = cap_usage(tally, cap, now)
    assert state.remaining is not None and state.period_end is not None
    if amount.amount <= 0 or amount.amount <= state.remaining.amount:
        return None
    return Breach(
        reason,
        f"{amount} exceeds what remains of the {kind} cap ({state.remaining} of {cap.amount} this period)",
        PreconditionViolation(
            reason.removesuffix("_EXCEEDED"),
            subject,
            f"remaining {state.remaining} of {cap.amount} until {state.period_end.isoformat()}",
        ),
        {
            "cap": f"{cap.amount.amount:f}",
            "remaining": f"{state.remaining.amount:f}",
            "requested": f"{amount.amount:f}",
            "period_end": state.period_end.isoformat(),
            **owner,
        },
    )

