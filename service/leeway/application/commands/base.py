"""What every command is (``Command``), the typed results they return, and helpers they share.

A command validates its own shape (``validate``), describes itself for the idempotency fingerprint
(``payload``), makes its decision against the aggregates of a unit of work (``decide``, which returns a small
typed result, stored with the request_id in today's dict shape: ``to_record`` / ``from_record``) and builds its
response from a result (``render``, through a narrow ``Reader``): right after the decision from the aggregates in
memory, or from the store for a retried request_id.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from uuid import UUID

from ...domain.budget import Budget
from ...domain.customers import CustomerIdForm, spellings_in
from ...domain.errors import FieldViolation, action_not_found, budget_not_found
from ...domain.ids import budget_id_for, parse_action_id
from ...domain.ledgers import LEGACY_LEDGER_IDS, CustomerLedger, CustomerLedgerIds, TeamLedger
from ...domain.tally import Cap
from ...domain.validation import Id, Text, check_fields, check_id, check_request_id
from ...domain.views import ActionView, action_view

if TYPE_CHECKING:
    from ..conventions import Conventions
    from ..reader import Reader, TeamLookup
    from ..unit_of_work import UnitOfWork


class Result(Protocol):
    def to_record(self) -> dict[str, Any]: ...


class Command(Protocol):
    method: ClassVar[str]
    request_id: str
    result_type: ClassVar[Any]

    def validate(self) -> list[FieldViolation]: ...

    def payload(self) -> dict[str, Any]: ...

    def decide(self, uow: UnitOfWork, now: datetime) -> Result: ...

    def render(self, reader: Reader, result: Any) -> Any: ...

    def prefetch(self, teams: TeamLookup) -> list[UUID]: ...

    def prefetch_events(self) -> list[tuple[UUID, int]]: ...

    def prefetch_named(self, events: dict[tuple[UUID, int], Any]) -> list[UUID]: ...

    def admitted(self, conventions: Conventions) -> Command: ...


class NoHints:
    """Commands that give the writer nothing to read ahead."""

    def prefetch(self, teams: TeamLookup) -> list[UUID]:
        return []

    def prefetch_events(self) -> list[tuple[UUID, int]]:
        """Stored events ``decide`` will read (aggregate id, version), read ahead in one query for the batch."""
        return []

    def prefetch_named(self, events: dict[tuple[UUID, int], Any]) -> list[UUID]:
        """The aggregates named by those events that ``decide`` will load (read ahead with the others)."""
        return []


@dataclass(frozen=True)
class Request(NoHints):
    """A command's request_id, first of its fields. Each command class checks the fields it declares after
    those of its base (``validate`` extends ``super().validate()``)."""

    request_id: str

    def validate(self) -> list[FieldViolation]:
        return check_request_id(self.request_id)

    def admitted(self, conventions: Conventions) -> Request:
        """The command as this deployment reads it (customer ids as keys, ...), before it is validated: itself
        unless a command has something to apply."""
        return self


@dataclass(frozen=True)
class OnBudget(Request):
    """A command on an employee's budget."""

    employee_id: str

    def validate(self) -> list[FieldViolation]:
        return [*super().validate(), *check_id(self.employee_id, "employee_id")]


@dataclass(frozen=True)
class OnAction(Request):
    """A command on a recorded action."""

    action_id: str
    #: Where customers' ledgers are (the deployment's key store, applied by ``admitted``).
    ledger_ids: CustomerLedgerIds = field(default=LEGACY_LEDGER_IDS, kw_only=True, compare=False, repr=False)
    #: Besides the action's budget, ``decide`` loads the ledgers of the team and the customer it was recorded for.
    touches_ledgers: ClassVar[bool] = True

    def admitted(self, conventions: Conventions) -> OnAction:
        if not self.touches_ledgers or conventions.customer_ledgers is self.ledger_ids:
            return self
        return replace(self, ledger_ids=conventions.customer_ledgers)

    #: The command's own fields: their shape checks, in order, and their keys in the idempotency fingerprint.
    field_checks: ClassVar[tuple[Id | Text, ...]] = ()
    payload_keys: ClassVar[dict[str, str]] = {}

    def validate(self) -> list[FieldViolation]:
        return [*super().validate(), *check_action_id(self.action_id), *check_fields(self, self.field_checks)]

    def payload(self) -> dict[str, Any]:
        return {"a": self.action_id, **{key: getattr(self, name) for key, name in self.payload_keys.items()}}

    def prefetch(self, teams: TeamLookup) -> list[UUID]:
        parsed = parse_action_id(self.action_id)
        return [parsed[0]] if parsed is not None else []

    def prefetch_events(self) -> list[tuple[UUID, int]]:
        parsed = parse_action_id(self.action_id)
        return [parsed] if parsed is not None and parsed[1] > 0 else []

    def prefetch_named(self, events: dict[tuple[UUID, int], Any]) -> list[UUID]:
        parsed = parse_action_id(self.action_id)
        event = events.get(parsed) if parsed is not None and self.touches_ledgers else None
        if not isinstance(event, Budget.ActionRecorded):
            return []
        return [TeamLedger.create_id(event.team_id), *self.ledger_ids.of(event.customer_id)]


# ---------------------------------------------------------------------------- results (stored in request records)


@dataclass(frozen=True)
class BudgetResult:
    """A budget as a command left it."""

    budget_id: UUID
    version: int

    def to_record(self) -> dict[str, Any]:
        return {"budget_id": self.budget_id.hex, "version": self.version}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> BudgetResult:
        return cls(UUID(hex=data["budget_id"]), int(data["version"]))

    @classmethod
    def of(cls, budget: Budget) -> BudgetResult:
        return cls(budget.id, budget.version)


@dataclass(frozen=True)
class RecordResult(BudgetResult):
    """RecordAction: the action recorded (pending approval or not) and its budget."""

    action_id: str = ""
    pending: bool = False

    def to_record(self) -> dict[str, Any]:
        return {**super().to_record(), "action_id": self.action_id, "pending": self.pending}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> RecordResult:
        return cls(UUID(hex=data["budget_id"]), int(data["version"]), str(data["action_id"]), bool(data["pending"]))


@dataclass(frozen=True)
class ActionResult(BudgetResult):
    """A command on one recorded action (decide, document a win): the action's version and its budget's."""

    action_version: int = 0

    def to_record(self) -> dict[str, Any]:
        return {**super().to_record(), "action_version": self.action_version}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ActionResult:
        return cls(UUID(hex=data["budget_id"]), int(data["version"]), int(data["action_version"]))


@dataclass(frozen=True)
class ExpiryResult(ActionResult):
    """ExpireAction: ``expired`` False when the action had been decided already (nothing expired)."""

    expired: bool = False

    def to_record(self) -> dict[str, Any]:
        return {**super().to_record(), "expired": True} if self.expired else super().to_record()

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ExpiryResult:
        base = ActionResult.from_record(data)
        return cls(base.budget_id, base.version, base.action_version, bool(data.get("expired")))


@dataclass(frozen=True)
class ReversalResult(ActionResult):
    """ReverseAction: whether the amount went back into the current period."""

    restored: bool = False

    def to_record(self) -> dict[str, Any]:
        return {**super().to_record(), "restored": self.restored}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ReversalResult:
        base = ActionResult.from_record(data)
        return cls(base.budget_id, base.version, base.action_version, bool(data["restored"]))


@dataclass(frozen=True)
class TeamCapResult:
    """SetTeamCap: the team ledger's version and when the cap was set."""

    team_id: str
    version: int
    at: datetime

    def to_record(self) -> dict[str, Any]:
        return {"team_id": self.team_id, "version": self.version, "at": self.at.isoformat()}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> TeamCapResult:
        return cls(str(data["team_id"]), int(data["version"]), datetime.fromisoformat(data["at"]))


@dataclass(frozen=True)
class CustomerCapResult:
    """SetCustomerCap: the cap as set (None: removed), and every cap in force after it (by currency)."""

    cap: Cap | None
    caps: tuple[Cap, ...] | None = None

    @property
    def in_force(self) -> tuple[Cap, ...]:
        """Every cap in force (a record from before caps per currency: the one cap set)."""
        if self.caps is not None:
            return self.caps
        return () if self.cap is None else (self.cap,)

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"cap": self.cap.to_dict() if self.cap is not None else None}
        if self.in_force != (() if self.cap is None else (self.cap,)):  # caps in several currencies
            record["caps"] = [cap.to_dict() for cap in self.in_force]
        return record

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> CustomerCapResult:
        caps = data.get("caps")
        return cls(
            Cap.from_dict(data["cap"]),
            None if caps is None else tuple(Cap.from_dict(c) for c in caps),  # type: ignore[misc]
        )


# ---------------------------------------------------------------------------- helpers


def require_budget(uow: UnitOfWork, employee_id: str) -> Budget:
    budget = uow.get(budget_id_for(employee_id))
    if budget is None:
        raise budget_not_found(employee_id)
    assert isinstance(budget, Budget)
    return budget


def team_ledger(uow: UnitOfWork, team_id: str) -> TeamLedger:
    """The team's ledger, created with its first action or cap."""
    return uow.get_or_create(TeamLedger.create_id(team_id), lambda: TeamLedger(team_id=team_id))


def existing_customer_ledgers(uow: UnitOfWork, customer_id: str, ids: CustomerLedgerIds) -> list[CustomerLedger]:
    """The ledgers ``customer_id`` has: its keyed one, then its legacy one (created before keyed ids; see
    ``CustomerLedgerIds``), those that exist."""
    found = (uow.get(aggregate_id) for aggregate_id in reversed(ids.of(customer_id)))
    return [ledger for ledger in found if ledger is not None]


def customer_ledger(uow: UnitOfWork, customer_id: str, ids: CustomerLedgerIds) -> CustomerLedger:
    """The customer's ledger that takes a reversal or a spelling: its keyed one if it has one, else its legacy one if
    it has one, else a new one (under the keyed id; ``ids.new``)."""
    found = existing_customer_ledgers(uow, customer_id, ids)
    if found:
        return found[0]
    ledger = ids.new(customer_id)
    uow.add(ledger)
    return ledger


def customer_ledgers(uow: UnitOfWork, key: str, form: CustomerIdForm, ids: CustomerLedgerIds) -> list[CustomerLedger]:
    """The ledger that counts a new action for the customer's key (its keyed ledger, created with the first action
    after the key store existed; the legacy one without a key store), then the customer's legacy ledger (what was
    counted for the key before: never appended to by a new action), then the ledgers that hold the customer under
    older spellings of its id. The organisation's cap counts them together."""
    keyed = ids.keyed(key)
    primary_id = keyed if keyed is not None else ids.legacy(key)
    ledger = uow.get_or_create(primary_id, lambda: ids.new(key))
    legacy = uow.get(ids.legacy(key)) if keyed is not None else None
    mine = [ledger] if legacy is None else [ledger, legacy]
    spellings = {s for held in mine for s in spellings_in(held.spellings, key, form)}
    others = (uow.get(aggregate_id) for s in sorted(spellings) for aggregate_id in ids.of(s))
    return [*mine, *(o for o in others if o is not None)]


def check_action_id(action_id: str, field: str = "action_id") -> list[FieldViolation]:
    if not action_id:
        return [FieldViolation(field, "is required")]
    if parse_action_id(action_id) is None:
        return [FieldViolation(field, "is not an action id")]
    return []


def load_action(uow: UnitOfWork, action_id: str) -> tuple[Budget, ActionView]:
    """The budget an action is on, and the action (NOT_FOUND unless the id names a recorded action)."""
    parsed = parse_action_id(action_id)
    assert parsed is not None
    budget_id, version = parsed
    budget = uow.get(budget_id)
    event = uow.event_at(budget_id, version) if budget is not None and 0 < version <= budget.version else None
    if budget is None or not isinstance(event, Budget.ActionRecorded):
        raise action_not_found(action_id)
    return budget, action_view(event, budget.outcome(version))
