"""Redaction of personal data stored in clear, in events written before encryption (issue 22; ``RedactLegacyData``).

Such an event's text cannot be shredded (it has no key): the only way to forget it is to overwrite it, which its
hash forbids. A redaction therefore first **records** what it will change and then changes exactly that:

1. ``find_legacy`` reads the whole log once and lists the subject's events whose declared personal fields
   (``domain/personal.py``) are stored in clear: for each, its stored hash, the fields to redact, and its state
   with those fields replaced by the erased marker (``[erased]``; an id by ``[erased:<pseudonym>]``, the keyed
   pseudonym a shredded id reads as, so that limits still count it) and the hash that content has. An event whose
   content does not match its stored hash is never redacted (that would launder a tampered row): it is skipped,
   and verification goes on reporting it.
2. The application records a ``LegacyRedacted`` event listing them (``commands/privacy.RedactLegacyData``).
3. ``apply`` overwrites those rows (only where the row is still as read, so it is idempotent), in one
   transaction, the stored hash and chain link kept.

Verification (``integrity.Verifier``) accepts such an event exactly as recorded. A crash between 2 and 3 leaves
the record and the rows as they were (which verify: nothing changed); a retry with the same ``request_id`` is
answered from the record and applies it. With a key store, no new event is stored in clear, so the set of
legacy events only shrinks while this runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog

from ..adapters.hash_chain import HASH, PREV, event_hash, parse_state
from ..adapters.keystore import KeyStore, sqlite_checkpoint
from ..adapters.pii import legacy_paths
from ..domain.ids import budget_id_for
from ..domain.personal import ERASED, Form, Source, Subject, erased_identifier, personal_fields
from .integrity import Redactions

log = structlog.get_logger("leeway.redaction")

_B = "leeway.domain.budget:Budget."
_ACTION_RECORDED = _B + "ActionRecorded"
_LEDGER_CREATED = "leeway.domain.indexes:CustomerLedger.Created"


@dataclass(frozen=True)
class Redaction:
    """One stored event to redact: where, its stored hash, the fields, and its redacted state and hash."""

    aggregate_id: str
    version: int
    hash: str
    redacted_hash: str
    fields: tuple[str, ...]
    #: The row's state as read, and as it will be stored (JSON).
    before: bytes
    after: bytes

    @property
    def key(self) -> tuple[str, int]:
        return (self.aggregate_id, self.version)

    def recorded(self) -> dict[str, Any]:
        """What the ``LegacyRedacted`` event lists of it (never the content)."""
        return {"aggregate_id": self.aggregate_id, "version": self.version, "hash": self.hash,
                "redacted_hash": self.redacted_hash, "fields": list(self.fields)}


class _Subject:
    """Which personal fields of the log are one subject's: a customer (by any spelling of their key, or as a
    redacted id) or an employee."""

    def __init__(self, kind: str, ident: str, pseudonym: str, keys: KeyStore, customer_key: Callable[[str], str]):
        self.kind, self.ident, self.pseudonym, self.keys = kind, ident, pseudonym, keys
        self.customer_key = customer_key
        self.erased = erased_identifier(pseudonym)
        self.actions: set[tuple[str, int]] = set()  # the customer's actions (budget, version)
        self.ledgers: set[str] = set()  # the customer's ledgers (the key's and older spellings')
        self.budget = str(budget_id_for(ident)) if kind == Subject.EMPLOYEE else ""

    def is_customer(self, value: Any) -> bool:
        if not isinstance(value, str) or not value:
            return False
        return value == self.erased or self.customer_key(value) == self.ident

    def see(self, topic: str, aggregate: str, version: int, state: dict[str, Any]) -> None:
        """Notes what later events refer to (an action's customer, a ledger's customer)."""
        if self.kind != Subject.CUSTOMER:
            return
        customer = state.get("customer_id")
        if topic == _ACTION_RECORDED and self.is_customer(customer):
            self.actions.add((aggregate, version))
        elif topic == _LEDGER_CREATED and self.is_customer(customer):
            self.ledgers.add(aggregate)

    def owns(self, topic: str, aggregate: str, state: dict[str, Any], name: str) -> bool:
        personal = personal_fields(topic)[name]
        if personal.subject != self.kind:
            return False
        if personal.source is Source.FIELD:
            if self.kind == Subject.CUSTOMER:
                return self.is_customer(state.get("customer_id"))
            return state.get("employee_id") == self.ident
        if personal.source is Source.ACTION:
            return (aggregate, state.get("action_version")) in self.actions
        if personal.source is Source.AGGREGATE:
            return aggregate in self.ledgers if self.kind == Subject.CUSTOMER else aggregate == self.budget
        return True  # EACH: its values are matched one by one

    def identifier(self, name: str, value: str) -> str:
        kind = "customer" if name == "customer_id" else name.removesuffix("_id")
        return self.erased if kind == "customer" else erased_identifier(self.keys.pseudonym(kind, value))

    def redact(self, topic: str, state: dict[str, Any], path: str) -> bool:
        """Replaces the subject's part of ``path`` in ``state`` with the erased marker; whether anything changed."""
        name, _, sub = path.partition(".")
        personal = personal_fields(topic)[name]
        value = state[name]
        if personal.form is Form.TEXT_VALUES:
            state[name] = {**value, sub: ERASED}
        elif personal.form is Form.IDENTIFIER_KEYS:
            customers = value.get("customers", {})
            if not any(self.is_customer(k) and k != self.erased for k in customers):
                return False
            state[name] = {**value, "customers": {
                (self.erased if self.is_customer(k) else k): v for k, v in customers.items()
            }}  # fmt: skip
        elif personal.form is Form.IDENTIFIER_LIST:
            if not any(self.is_customer(v) and v != self.erased for v in value):
                return False
            state[name] = [self.erased if self.is_customer(v) else v for v in value]
        elif personal.form is Form.IDENTIFIER:
            state[name] = self.identifier(name, value)
        else:
            state[name] = ERASED
        return True


def find_legacy(
    notifications: Any, kind: str, ident: str, pseudonym: str, keys: KeyStore, customer_key: Callable[[str], str],
    recorded: Redactions | None = None,
) -> list[Redaction]:
    """The subject's events whose personal fields are stored in clear, each with its redacted form (see above).
    ``ident``: a customer's key or an employee id; ``notifications``: every stored event, in position order;
    ``recorded``: the redactions recorded so far (an event already redacted for another subject, such as a policy
    change's recount naming several customers, is as its record says, and may be redacted further)."""
    recorded = recorded or {}
    subject = _Subject(kind, ident, pseudonym, keys, customer_key)
    found: list[Redaction] = []
    for n in notifications:
        if not personal_fields(n.topic):
            continue
        try:
            state = parse_state(n.state)
        except ValueError:
            continue
        aggregate, version = str(n.originator_id), n.originator_version
        subject.see(n.topic, aggregate, version, state)
        paths = [p for p in legacy_paths(n.topic, state)
                 if subject.owns(n.topic, aggregate, state, p.partition(".")[0])]
        if not paths:
            continue
        stored_hash, prev = state.get(HASH), state.get(PREV)
        content = event_hash(prev, aggregate, version, n.topic, state) if isinstance(prev, str) else ""
        if not isinstance(stored_hash, str) or not content or (
            content != stored_hash and recorded.get((aggregate, version)) != (stored_hash, content)
        ):
            log.warning("redaction.skipped_altered_event", aggregate_id=aggregate, version=version)
            continue
        redacted = dict(state)
        fields = tuple(p for p in paths if subject.redact(n.topic, redacted, p))
        if not fields:
            continue
        found.append(Redaction(
            aggregate, version, stored_hash, event_hash(prev, aggregate, version, n.topic, redacted), fields,
            bytes(n.state), json.dumps(redacted, separators=(",", ":"), ensure_ascii=False).encode(),
        ))  # fmt: skip
    return found


def apply(recorder: Any, redactions: list[Redaction], recorded: Redactions) -> int:
    """Overwrites the rows of ``redactions`` that ``recorded`` lists as they are (hash and redacted hash), and
    only where a row is still as it was read, in one transaction (SQLite: with ``secure_delete``, then a WAL
    checkpoint, so that no file keeps the old text); returns how many rows changed."""
    wanted = [r for r in redactions if recorded.get(r.key) == (r.hash, r.redacted_hash)]
    if not wanted:
        return 0
    datastore = recorder.datastore
    sqlite = type(recorder).__module__.startswith("eventsourcing.sqlite")
    table = recorder.events_table_name
    name, mark = (table, "?") if sqlite else (f'"{datastore.schema}".{table}', "%s")
    sql = (f"UPDATE {name} SET state = {mark} "
           f"WHERE originator_id = {mark} AND originator_version = {mark} AND state = {mark}")
    changed = 0
    with datastore.transaction(commit=True) as cursor:
        if sqlite:
            cursor.execute("PRAGMA secure_delete = ON")
        for r in wanted:
            key: Any = UUID(r.aggregate_id).hex if sqlite else UUID(r.aggregate_id)
            cursor.execute(sql, (r.after, key, r.version, r.before))
            if sqlite:
                cursor.execute("SELECT changes()")
                changed += int(cursor.fetchone()[0])
            else:
                changed += max(cursor.rowcount, 0)
    if sqlite:
        sqlite_checkpoint(datastore)
    return changed
