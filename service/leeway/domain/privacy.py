"""The record of erasures (issue 22): one ``DataSubjectErased`` event per erasure of a customer's or an employee's
personal data, saying who erased whom (by keyed pseudonym, never by the data), when and why. The erasure itself is
the shredding of the subject's data key (``adapters/keystore.py``); this aggregate is its audit trail. There is
one."""

from __future__ import annotations

from datetime import datetime

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
