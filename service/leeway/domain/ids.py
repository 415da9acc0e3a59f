"""Leeway's deterministic ids: of budgets, of the aggregates that index them, and of actions."""

from __future__ import annotations

import re
from functools import lru_cache
from uuid import NAMESPACE_URL, UUID, uuid5

#: Namespace of every deterministic id Leeway derives (budgets, indexes, request records).
LEEWAY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:leeway:v1")

_ACTION_ID = re.compile(r"act_([0-9a-f]{32})_([1-9][0-9]{0,18})")


@lru_cache(maxsize=65_536)
def leeway_id(name: str) -> UUID:
    """The deterministic id for ``name`` ("budget:<employee>", "request:<request id>", ...): uuid5 in Leeway's
    namespace, remembered (the same ids are derived several times per request and across requests)."""
    return uuid5(LEEWAY_NAMESPACE, name)


def budget_id_for(employee_id: str) -> UUID:
    """The aggregate id of an employee's budget."""
    return leeway_id(f"budget:{employee_id}")


def format_action_id(budget_id: UUID, version: int) -> str:
    """An action's id names the budget and the version of its event in that budget's history."""
    return f"act_{budget_id.hex}_{version}"


def parse_action_id(action_id: str) -> tuple[UUID, int] | None:
    """(budget id, event version) of an action id, or None if it is not one."""
    match = _ACTION_ID.fullmatch(action_id)
    if match is None or int(match.group(2)) >= 2**63:
        return None
    return UUID(hex=match.group(1)), int(match.group(2))
