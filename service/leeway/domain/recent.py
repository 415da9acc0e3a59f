"""An employee's recent actions by case and, while their policy opts in, by customer: kept on the ``Budget`` for
split detection (``rules.check_split_action``). A plain dict (stored in snapshots as JSON)::

    {"case:<case_id>" or "customer:<customer_id>": {action version: [recorded at, amount]}}

Nothing older than ``MAX_SPLIT_WINDOW`` is kept: customer ids are personal data, kept here only while a policy asks
for them and no longer than the longest window. Denied, expired and reversed actions leave it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from .policy import MAX_SPLIT_WINDOW

Recent = dict[str, dict[str, list[Any]]]


def keys_of(case_id: str, customer_id: str, *, same_customer: bool) -> list[str]:
    """What an action counts under: its case, if it names one, and its customer if the policy opts in."""
    keys = [f"case:{case_id}"] if case_id else []
    return [*keys, f"customer:{customer_id}"] if same_customer else keys


def remember(recent: Recent, version: int, keys: list[str], amount: Decimal, at: datetime) -> None:
    """Notes an action under ``keys``, and forgets what is older than the longest window."""
    oldest = at - MAX_SPLIT_WINDOW
    for key in list(recent):
        kept = {v: entry for v, entry in recent[key].items() if entry[0] >= oldest}
        if kept:
            recent[key] = kept
        else:
            del recent[key]
    for key in keys:
        recent.setdefault(key, {})[str(version)] = [at, amount]


def forget(recent: Recent, version: int) -> None:
    """An action that no longer counts (denied, expired, reversed)."""
    for key in list(recent):
        if recent[key].pop(str(version), None) is not None and not recent[key]:
            del recent[key]


def without_customers(recent: Recent) -> Recent:
    """What is kept once a policy no longer asks for same-customer detection."""
    return {key: entries for key, entries in recent.items() if not key.startswith("customer:")}


def total(
    recent: Recent, holds: dict[str, dict[str, Any]], key: str, since: datetime, now: datetime
) -> tuple[Decimal, int]:
    """(amount, count) of the actions under ``key`` recorded after ``since`` that count at ``now``: recorded,
    approved, or still waiting (a hold past its timeout no longer does)."""
    amount, count = Decimal(0), 0
    for version, (at, value) in recent.get(key, {}).items():
        hold = holds.get(version)
        if at <= since or (hold is not None and hold["expires_at"] <= now):
            continue
        amount += value
        count += 1
    return amount, count
