"""The record of erasures (issue 22): one ``DataSubjectErased`` event per erasure of a customer's or an employee's
personal data, saying who erased whom (by keyed pseudonym, never by the data), when and why. The erasure itself is
the shredding of the subject's data key (``adapters/keystore.py``); this aggregate is its audit trail. There is
one.

A ``LegacyRedacted`` event is the record of a redaction of events stored before encryption (``RedactLegacyData``):
which events (aggregate id and version), their hash as stored and the hash of their content once redacted, the
fields redacted, who and why. Verification accepts exactly those events, in exactly that form, as redacted
(``application/integrity.py``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate, event

from .singleton import Singleton, created


class Erasures(Singleton, Aggregate):
    """Every erasure of a data subject, in order."""

    NAME = "erasures"
    ID_PREFIX = "erasures"
    __init__ = created()

    def _start(self) -> None:
        #: "<subject>:<pseudonym>" -> when it was (last) erased.
        self.erased: dict[str, datetime] = {}

    @event("DataSubjectErased")
    def _data_subject_erased(self, subject: str, pseudonym: str, reason: str, at: datetime, actor: str = "") -> None:
        self.erased[f"{subject}:{pseudonym}"] = at

    def record(self, *, subject: str, pseudonym: str, reason: str, now: datetime, actor: str = "") -> None:
        self._data_subject_erased(subject=subject, pseudonym=pseudonym, reason=reason, at=now, actor=actor)

    @event("LegacyRedacted")
    def _legacy_redacted(
        self, subject: str, pseudonym: str, reason: str, at: datetime, redactions: list[dict[str, Any]], actor: str = ""
    ) -> None:
        """``redactions``: one ``{"aggregate_id", "version", "hash", "redacted_hash", "fields"}`` per event."""

    def record_redaction(
        self, *, subject: str, pseudonym: str, reason: str, redactions: list[dict[str, Any]], now: datetime,
        actor: str = "",
    ) -> None:
        self._legacy_redacted(subject=subject, pseudonym=pseudonym, reason=reason, at=now, redactions=redactions,
                              actor=actor)
