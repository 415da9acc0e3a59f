"""Taking an action: the request, its shape, and the one decision across the aggregates it changes.

An action is checked and recorded on the employee's budget (their own walls and limits, escalation), then
checked against and counted on the team ledger (``rules.check_team_cap``) and the customer ledger
(``rules.check_customer_cap``, the organisation's per-customer cap), and, if it waits for approval, put in the
hold book. All of it is one transaction: a wall above the employee refuses the whole action. Deciding, expiring
or reversing it later settles, releases or reverses it on the same ledgers (``close_hold_everywhere``,
``reverse_everywhere``).

``ActionRequest`` is defined in ``rules`` (every check judges one, and the budget imports the rules) and
re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from .approvals import HoldBook
from .budget import Budget
from .errors import Breach
from .ledgers import CustomerLedger, OrgLimits, TeamLedger
from .policy import ActionKind
from .rules import MAX_CLOCK_SKEW, ActionRequest, check_customer_cap, check_occur_time, check_team_cap
from .views import APPROVED, ActionView

__all__ = [
    "DETAIL_FIELDS", "MAX_CLOCK_SKEW", "ActionRequest", "TakenAction", "check_occur_time", "close_hold_everywhere",
    "reverse_everywhere", "take_action",
]  # fmt: skip

#: Which detail keys each kind carries, and which of them are required.
DETAIL_FIELDS: dict[ActionKind, tuple[str, dict[str, bool]]] = {
    ActionKind.REFUND: ("refund", {"order_id": True}),
    ActionKind.CREDIT: ("credit", {"account_ref": True}),
    ActionKind.RULE_BEND: ("rule_bend", {"rule_code": True, "description": False}),
    ActionKind.GIFT: ("gift", {"gift_type": True, "note": False}),
}


@dataclass(frozen=True)
class TakenAction:
    """What ``take_action`` recorded: the action's id, and whether (until when) it waits for approval."""

    action_id: str
    pending: bool
    expires_at: datetime | None


def take_action(
    request: ActionRequest,
    *,
    budget: Budget,
    team: Callable[[], TeamLedger],
    customer: Callable[[], list[CustomerLedger]],
    org: Callable[[], OrgLimits | None],
    hold_book: Callable[[], HoldBook],
    request_id: str,
    now: datetime,
    actor: str,
) -> TakenAction:
    """Checks and records ``request`` on ``budget`` and every aggregate above it, in this order: the budget's
    walls and limits (escalation), the team cap, the organisation's per-customer cap, then the hold book if the
    action waits for approval. Raises the first refusal.

    The other aggregates are given as loaders, called in that order and only when needed, so that an action the
    budget refuses loads nothing else, and aggregates are first used (and saved) in the same order as always.
    ``customer`` gives the customer's ledger (noted), then the ledgers of its older spellings (counted).
    """
    action_id = budget.record_action(request, request_id=request_id, now=now, actor=actor)
    hold = budget.hold(budget.version)
    pending = hold is not None
    expires_at = hold["expires_at"] if hold is not None else None
    # What the team and customer ledgers count (the customer ledger notes the kind too).
    counted = {
        "action_id": action_id,
        "employee_id": budget.employee_id,
        "amount": request.amount.amount,
        "currency": request.amount.currency,
        "pending": pending,
        "expires_at": expires_at,
        "at": now,
    }
    team_ledger = team()
    _refuse_if(check_team_cap(team_ledger, request.amount, now))
    # Every argument named, straight to the event classes (as Budget.record_action): the same events as
    # ``count_action`` / ``note_action`` called, without the library's per-call argument handling.
    team_ledger.trigger_event(TeamLedger.ActionCounted, **counted)
    customer_ledgers = customer()
    customer_ledger = customer_ledgers[0]
    limits = org()
    caps = limits.customer_caps if limits is not None else {}
    _refuse_if(check_customer_cap(customer_ledgers, caps, request.amount, now))
    customer_ledger.trigger_event(CustomerLedger.ActionNoted, kind=request.kind.value, **counted)
    if hold is not None:
        hold_book().add(
            action_id=action_id,
            employee_id=budget.employee_id,
            customer_id=request.customer_id,
            expires_at=hold["expires_at"],
            approver_ids=tuple(hold["approver_ids"]),
            approver_role=hold["approver_role"],
            now=now,
        )
    return TakenAction(action_id, pending, expires_at)


def _refuse_if(breach: Breach | None) -> None:
    if breach is not None:
        raise breach.refusal()


def close_hold_everywhere(
    action_id: str,
    outcome: str,
    now: datetime,
    *,
    team: TeamLedger | None,
    customer: CustomerLedger | None,
    hold_book: HoldBook | None,
    other_customer_ledgers: Sequence[CustomerLedger | None] = (),
) -> None:
    """A decided hold leaves the ledgers (settled into spend if APPROVED, released if DENIED or EXPIRED) and the
    hold book. Aggregates that do not exist (None) have nothing to close; ``other_customer_ledgers`` (the
    customer's legacy ledger beside its keyed one, ``ledgers.CustomerLedgerIds``) close it if they hold it."""
    for ledger in (team, customer, *other_customer_ledgers):
        if ledger is None:
            continue
        if outcome == APPROVED:
            ledger.settle(action_id, now)
        else:
            ledger.release(action_id, outcome, now)
    if hold_book is not None:
        hold_book.close(action_id, outcome, now)


def reverse_everywhere(action: ActionView, now: datetime, *, team: TeamLedger, customer: CustomerLedger) -> None:
    """A reversed action's amount comes off the team and customer ledgers, on the day it was recorded."""
    day = action.record_time.date().isoformat()
    team.reverse(action.action_id, action.amount, day, now)
    customer.reverse(action.action_id, action.amount, day, now)
