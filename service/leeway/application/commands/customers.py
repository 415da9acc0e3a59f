"""Commands on customer ids: noting the older spellings of customers' keys, found by a scan of the log
(``application/customers.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from ...domain.errors import FieldViolation
from ...domain.ledgers import LEGACY_LEDGER_IDS, CustomerLedgerIds, OrgLimits
from .base import Request, customer_ledger

if TYPE_CHECKING:
    from ..conventions import Conventions
    from ..reader import Reader
    from ..unit_of_work import UnitOfWork


@dataclass(frozen=True)
class SpellingsResult:
    """NoteCustomerSpellings: how many keys got spellings they did not have."""

    noted: int

    def to_record(self) -> dict[str, Any]:
        return {"noted": self.noted}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> SpellingsResult:
        return cls(int(data["noted"]))


@dataclass(frozen=True)
class NoteCustomerSpellings(Request):
    """Notes, on the ledger of each key, the ids its customer was stored under before (``spellings``: (key, ids)
    pairs), and that the log was scanned for ``form`` up to ``position``. Run by the scan, never by a client; a
    spelling noted already is not noted again, so replicas scanning at once agree."""

    method: ClassVar[str] = "leeway.internal/NoteCustomerSpellings"
    result_type: ClassVar[type[SpellingsResult]] = SpellingsResult
    form: str
    position: int
    spellings: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Where customers' ledgers are (the deployment's key store, applied by ``admitted``).
    ledger_ids: CustomerLedgerIds = field(default=LEGACY_LEDGER_IDS, compare=False, repr=False)

    def admitted(self, conventions: Conventions) -> NoteCustomerSpellings:
        return replace(self, ledger_ids=conventions.customer_ledgers)

    def validate(self) -> list[FieldViolation]:
        return super().validate()

    def payload(self) -> dict[str, Any]:
        return {"f": self.form, "p": self.position, "s": [[key, list(ids)] for key, ids in self.spellings]}

    def decide(self, uow: UnitOfWork, now: datetime) -> SpellingsResult:
        noted = 0
        for key, ids in self.spellings:
            ledger = customer_ledger(uow, key, self.ledger_ids)
            before = len(ledger.spellings)
            ledger.note_spellings(list(ids), now)
            noted += len(ledger.spellings) > before
        uow.get_or_create(OrgLimits.the_id(), OrgLimits.new).mark_scanned(self.form, self.position, now)
        return SpellingsResult(noted)

    def render(self, reader: Reader, result: SpellingsResult) -> SpellingsResult:
        return result
