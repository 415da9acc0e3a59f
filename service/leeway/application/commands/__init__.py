"""Commands: every write to Leeway is one of these, run by ``LeewayApplication.execute`` through the writer."""

from .actions import (
    DecideAction,
    DecisionResponse,
    DocumentWin,
    ExpireAction,
    RecordAction,
    ReverseAction,
    ReverseResult,
)
from .base import (
    ActionResult,
    BudgetResult,
    Command,
    CustomerCapResult,
    ExpiryResult,
    RecordResult,
    ReversalResult,
    TeamCapResult,
)
from .budgets import CloseBudget, MoveEmployee, OpenBudget, ReopenBudget, UpdatePolicy
from .caps import SetCustomerCap, SetTeamCap
from .customers import NoteCustomerSpellings, SpellingsResult

__all__ = [
    "ActionResult",
    "BudgetResult",
    "CloseBudget",
    "Command",
    "CustomerCapResult",
    "DecideAction",
    "DecisionResponse",
    "DocumentWin",
    "ExpireAction",
    "ExpiryResult",
    "MoveEmployee",
    "NoteCustomerSpellings",
    "OpenBudget",
    "RecordAction",
    "RecordResult",
    "ReopenBudget",
    "ReversalResult",
    "ReverseAction",
    "ReverseResult",
    "SetCustomerCap",
    "SetTeamCap",
    "SpellingsResult",
    "TeamCapResult",
    "UpdatePolicy",
]
