"""The record of an erasure (issue 22): ``EraseCustomer`` / ``EraseEmployee`` record a ``DataSubjectErased`` event
(who, when, why; the subject by its keyed pseudonym, never by its data), idempotent with ``request_id`` like every
command. The erasure itself (shredding the subject's key, forgetting what memory and snapshots hold, purging the
read models) is ``application/privacy.py``'s, after the record is saved."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from ...domain.errors import FieldViolation
from ...domain.privacy import Erasures
from ...domain.validation import check_text
from .base import Request

if TYPE_CHECKING:
    from ..reader import Reader
    from ..unit_of_work import UnitOfWork


@dataclass(frozen=True)
class ErasureResult:
    """An erasure as recorded: whose (kind and pseudonym), when, and the Erasures aggregate's version."""

    subject: str
    pseudonym: str
    at: datetime
    version: int

    def to_record(self) -> dict[str, Any]:
        return {"subject": self.subject, "pseudonym": self.pseudonym, "at": self.at.isoformat(), "version": self.version}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ErasureResult:
        return cls(str(data["subject"]), str(data["pseudonym"]), datetime.fromisoformat(data["at"]), int(data["version"]))


def _subject_problems(pseudonym: str, reason: str) -> list[FieldViolation]:
    """What an erasure or a redaction must name: its subject (as a pseudonym) and why."""
    problems = list(check_text(reason, "reason", required=True, max_length=500))
    if not pseudonym:
        problems.append(FieldViolation("pseudonym", "is required"))
    return problems


@dataclass(frozen=True)
class EraseSubject(Request):
    subject_kind: ClassVar[str]
    result_type: ClassVar[type[ErasureResult]] = ErasureResult
    #: The subject's keyed pseudonym (``KeyStore.pseudonym``), computed by the application from the id sent.
    pseudonym: str
    reason: str

    def validate(self) -> list[FieldViolation]:
        return [*super().validate(), *_subject_problems(self.pseudonym, self.reason)]

    def payload(self) -> dict[str, Any]:
        return {"s": self.subject_kind, "p": self.pseudonym, "r": self.reason}

    def decide(self, uow: UnitOfWork, now: datetime) -> ErasureResult:
        erasures = uow.get_or_create(Erasures.the_id(), Erasures.new)
        erasures.record(subject=self.subject_kind, pseudonym=self.pseudonym, reason=self.reason, now=now,
                        actor=uow.actor)
        return ErasureResult(self.subject_kind, self.pseudonym, now, erasures.version)

    def render(self, reader: Reader, result: ErasureResult) -> ErasureResult:
        return result


@dataclass(frozen=True)
class EraseCustomer(EraseSubject):
    method: ClassVar[str] = "leeway.v1.PrivacyService/EraseCustomer"
    subject_kind: ClassVar[str] = "customer"


@dataclass(frozen=True)
class EraseEmployee(EraseSubject):
    method: ClassVar[str] = "leeway.v1.PrivacyService/EraseEmployee"
    subject_kind: ClassVar[str] = "employee"


@dataclass(frozen=True)
class RedactionResult:
    """A legacy redaction as recorded: whose, when, the Erasures aggregate's version and how many events."""

    subject: str
    pseudonym: str
    at: datetime
    version: int
    events: int

    def to_record(self) -> dict[str, Any]:
        return {"subject": self.subject, "pseudonym": self.pseudonym, "at": self.at.isoformat(),
                "version": self.version, "events": self.events}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> RedactionResult:
        return cls(str(data["subject"]), str(data["pseudonym"]), datetime.fromisoformat(data["at"]),
                   int(data["version"]), int(data["events"]))


#: Redacted events listed per LegacyRedacted event (a subject with more is recorded in several, in one save).
REDACTIONS_PER_EVENT = 200


@dataclass(frozen=True)
class RedactLegacyData(Request):
    """Records the redaction of a subject's events stored in clear (``application/redaction.py`` finds them and,
    once this is saved, overwrites them). The redactions are not part of the request: a retry with the same
    ``request_id`` is answered from its record, whatever the log holds by then."""

    method: ClassVar[str] = "leeway.v1.PrivacyService/RedactLegacyData"
    result_type: ClassVar[type[RedactionResult]] = RedactionResult
    subject_kind: str
    pseudonym: str
    reason: str
    #: ``{"aggregate_id", "version", "hash", "redacted_hash", "fields"}`` per event to redact.
    redactions: tuple[dict[str, Any], ...] = ()

    def validate(self) -> list[FieldViolation]:
        return [*super().validate(), *_subject_problems(self.pseudonym, self.reason)]

    def payload(self) -> dict[str, Any]:
        return {"s": self.subject_kind, "p": self.pseudonym, "r": self.reason, "legacy": 1}

    def decide(self, uow: UnitOfWork, now: datetime) -> RedactionResult:
        erasures = uow.get_or_create(Erasures.the_id(), Erasures.new)
        items = list(self.redactions)
        for start in range(0, max(len(items), 1), REDACTIONS_PER_EVENT):
            erasures.record_redaction(subject=self.subject_kind, pseudonym=self.pseudonym, reason=self.reason,
                                      redactions=items[start:start + REDACTIONS_PER_EVENT], now=now, actor=uow.actor)
        return RedactionResult(self.subject_kind, self.pseudonym, now, erasures.version, len(items))

    def render(self, reader: Reader, result: RedactionResult) -> RedactionResult:
        return result
