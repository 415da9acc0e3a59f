"""Data subjects' rights (issue 22): erasure (article 17) and access (article 15).

An erasure, in order (every step idempotent, so a retry with the same ``request_id`` after a failure finishes it):

1. ``EraseCustomer`` / ``EraseEmployee`` records a ``DataSubjectErased`` event through the writer (who, when, why;
   the subject by its keyed pseudonym). A retried request is answered from its record.
2. Under the writer's lock (no batch runs meanwhile): the subject's data keys created before the erasure are
   shredded (``KeyStore.shred``), the writer's and the repository's cached aggregates are forgotten, and every
   snapshot is deleted (snapshots are a cache of aggregates' state, personal fields included, in clear).
3. The read models are rewritten from the log as it now reads (``projections/purge.py``), once at once and once
   more after the projections caught up with the log (a projection may have been writing an event it decoded
   before the shred).

Afterwards the subject's fields read ``[erased]`` (identifiers ``[erased:<pseudonym>]``) everywhere; amounts,
kinds and times are untouched, so balances, caps and KPIs do not change, and the hash chain, which covers the
stored (encrypted) form, still verifies.

Data that arrives for the same customer after the erasure is new data, under a new key: a returning customer's
new actions are readable, and their erased ones still count towards the per-customer limit and split detection
(the erased identifiers compare by pseudonym: ``Conventions.erased_spelling``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any

import structlog

from ..adapters.keystore import KeyStore, sqlite_checkpoint
from ..adapters.snapshot_seal import SUBJECT as SNAPSHOTS
from ..domain.errors import FieldViolation, InvalidArgument, PreconditionFailed
from ..domain.personal import erased_identifier
from ..domain.reasons import Reason
from ..domain.validation import check_id
from ..projections.purge import customer_action_ids, customer_ids_with_pseudonym, purge_actions, purge_employee
from .commands.privacy import EraseCustomer, EraseEmployee, ErasureResult, RedactionResult, RedactLegacyData
from .redaction import apply as apply_redactions
from .redaction import find_legacy

if TYPE_CHECKING:
    from ..projections.runner import Projections
    from .app import LeewayApplication

log = structlog.get_logger("leeway.privacy")

#: Who erasures by retention are recorded as.
RETENTION_ACTOR = "leeway-retention"
#: How long an erasure waits for the projections to catch up before purging the read models a second time.
PROJECTION_WAIT_SECONDS = 10.0


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return value


class Privacy:
    """Erasure and access requests on one application (and its read models, when it has them)."""

    def __init__(self, app: LeewayApplication, projections: Projections | None = None):
        self.app = app
        self.projections = projections

    @property
    def keys(self) -> KeyStore:
        if self.app.keystore is None:
            raise PreconditionFailed(
                "personal data is not encrypted in this deployment (no key store), so it cannot be erased",
                reason=Reason.PERSONAL_DATA_NOT_ENCRYPTED,
            )
        return self.app.keystore

    # ------------------------------------------------------------------ erasure (article 17)

    def erase_customer(
        self, request_id: str, customer_id: str, reason: str, *, actor: str = "", deadline: float = float("inf")
    ) -> ErasureResult:
        _require_id(customer_id, "customer_id")
        keys = self.keys
        key = self.app.conventions.customer_key(customer_id)
        pseudonym = keys.pseudonym("customer", key)
        result = self.app.execute(EraseCustomer(request_id, pseudonym, reason), actor=actor, deadline=deadline)
        self._shred(f"customer:{pseudonym}", result)
        with self.app.store_errors():  # a read model that cannot be purged now: UNAVAILABLE, a retry purges again
            self._purge_customer((*self.app.customer_spellings(key), erased_identifier(pseudonym)))
        log.info("privacy.customer_erased", pseudonym=pseudonym, actor=actor)
        return result  # type: ignore[no-any-return]

    def erase_employee(
        self, request_id: str, employee_id: str, reason: str, *, actor: str = "", deadline: float = float("inf")
    ) -> ErasureResult:
        _require_id(employee_id, "employee_id")
        keys = self.keys
        pseudonym = keys.pseudonym("employee", employee_id)
        result = self.app.execute(EraseEmployee(request_id, pseudonym, reason), actor=actor, deadline=deadline)
        self._shred(f"employee:{pseudonym}", result)
        with self.app.store_errors():
            self._purge_employee(employee_id)
        log.info("privacy.employee_erased", pseudonym=pseudonym, actor=actor)
        return result  # type: ignore[no-any-return]

    def _shred(self, subject: str, result: Any, first: Callable[[], Any] | None = None) -> Any:
        """Under the writer's lock (no batch runs meanwhile): ``first()`` (its result is returned), shreds the keys
        of ``subject`` ("": none) and of the snapshots created before ``result.at``, forgets what memory caches and
        deletes the snapshots."""
        app = self.app
        with app.writer.lock, app.store_errors():
            done = first() if first is not None else None
            if subject:
                self.keys.shred(subject, created_before=result.at)
            self.keys.shred(SNAPSHOTS, created_before=result.at)  # every snapshot taken so far: unreadable
            forget_in_memory(app)
            drop_snapshots(app)
        if self.projections is not None:
            self.projections.forget_decoded()  # events decoded (decrypted) before the shred
        return done

    def _purge_employee(self, employee_id: str) -> None:
        if self.projections is not None:
            purge_employee(self.projections.store, employee_id)
            self._caught_up()
            purge_employee(self.projections.store, employee_id)

    def _purge_customer(self, spellings: tuple[str, ...]) -> None:
        if self.projections is None:
            return
        store = self.projections.store
        for _ in range(2):
            ids = customer_action_ids(store, spellings)
            purge_actions(store, ids, self._view_or_none)
            self._caught_up()

    def _view_or_none(self, action_id: str) -> Any:
        try:
            return self.app.get_action(action_id)
        except Exception:  # noqa: BLE001 - an action the log does not have: nothing to rewrite
            return None

    def _caught_up(self) -> None:
        projections = self.projections
        if projections is None:
            return
        head = projections.head()
        for name in projections.runners:
            if not projections.wait_for(name, head, PROJECTION_WAIT_SECONDS):
                log.warning("privacy.projection_behind", projection=name, position=head)

    # ------------------------------------------------------------------ logs written before encryption

    def redact_legacy(
        self, request_id: str, reason: str, *, customer_id: str = "", employee_id: str = "", actor: str = "",
        deadline: float = float("inf"),
    ) -> RedactionResult:
        """Overwrites a subject's personal fields in events stored in clear (before encryption) with the erased
        marker, after recording which events, their hashes and why (``redaction.py``); then forgets what memory,
        snapshots and the read models hold, like an erasure. Idempotent with ``request_id``."""
        if bool(customer_id) == bool(employee_id):
            raise InvalidArgument([FieldViolation("customer_id", "give exactly one of customer_id and employee_id")])
        _require_id(customer_id or employee_id, "customer_id" if customer_id else "employee_id")
        keys, app = self.keys, self.app
        kind, ident = ("customer", app.conventions.customer_key(customer_id)) if customer_id else (
            "employee", employee_id)
        pseudonym = keys.pseudonym(kind, ident)
        spellings = app.customer_spellings(ident) if customer_id else ()
        with app.store_errors():
            found = find_legacy(app.all_notifications(), kind, ident, pseudonym, keys, app.conventions.customer_key,
                                app.recorded_redactions())
        command = RedactLegacyData(request_id, kind, pseudonym, reason, tuple(r.recorded() for r in found))
        result = app.execute(command, actor=actor, deadline=deadline)
        changed = self._shred("", result, lambda: apply_redactions(app.recorder, found, app.recorded_redactions()))
        if customer_id:
            self._purge_customer((*spellings, erased_identifier(pseudonym)))
        else:
            self._purge_employee(employee_id)
        log.info("privacy.legacy_redacted", subject=kind, pseudonym=pseudonym, events=result.events, rows=changed,
                 actor=actor)
        return result  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ retention (article 5(1)(e))

    def sweep_retention(self, days: int, *, limit: int = 100) -> int:
        """Erases customers whose data key was last used (new personal data written for them) ``days`` ago or
        more; returns how many. Safe on every replica at once: each erasure is an idempotent command whose
        request_id names the subject and its last use, so racing replicas record it once (the others are
        answered from its record) and shredding twice is harmless."""
        keys = self.keys
        cutoff = self.app.clock() - timedelta(days=days)
        erased = 0
        for subject, last_used in keys.subjects_idle_since(int(cutoff.timestamp() * 1_000_000), limit=limit):
            kind, _, pseudonym = subject.partition(":")
            if kind != "customer":
                continue  # employees' data follows their employment, not this setting
            command = EraseCustomer(f"retention-{pseudonym}-{last_used}", pseudonym,
                                    f"retention: no new personal data for {days} days")
            result = self.app.execute(command, actor=RETENTION_ACTOR)
            self._shred(subject, result)
            if self.projections is not None:
                spellings = customer_ids_with_pseudonym(self.projections.store, keys, pseudonym)
                self._purge_customer((*spellings, erased_identifier(pseudonym)))
            erased += 1
        if erased:
            log.info("privacy.retention", erased=erased, days=days)
        return erased

    # ------------------------------------------------------------------ access (article 15)

    def export_customer(self, customer_id: str, page_size: int, page_token: str) -> tuple[dict[str, Any], str]:
        """One page of everything held about a customer (their actions, by anyone, with decisions, reversals and
        wins) as a JSON-ready document, and the next page's token ("" for the last)."""
        _require_id(customer_id, "customer_id")
        page = self.app.list_actions("", customer_id, None, page_size, page_token)
        key = self.app.conventions.customer_key(customer_id)
        keys = self.app.keystore
        document = {
            "customer_id": key,
            "generated_at": self.app.clock().isoformat(),
            "erased": bool(keys and keys.is_erased(f"customer:{keys.pseudonym('customer', key)}")),
            "actions": [_json(view) for view in page.items],
        }
        return document, page.next_page_token


def export_json(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, ensure_ascii=False)


def _require_id(value: str, field: str) -> None:
    problems: list[FieldViolation] = check_id(value, field)
    if problems:
        raise InvalidArgument(problems)


def forget_in_memory(app: Any) -> None:
    """Forgets every aggregate cached in memory (the writer's and the repository's), so the next read decrypts
    again from the store. Call it under the writer's lock."""
    memory = app.writer.memory
    memory.aggregates.clear()
    memory.current.clear()
    memory.absent.clear()
    repository = app.repository
    cache = getattr(repository, "cache", None)
    if cache is not None:
        maxsize = getattr(cache, "maxsize", None)
        repository.cache = type(cache)(maxsize=maxsize) if maxsize is not None else type(cache)()


def drop_snapshots(app: Any) -> None:
    """Deletes every snapshot (a cache of aggregates' state, personal fields in clear): aggregates replay from
    their events (decrypting them as they now read) and are snapshotted again as they grow."""
    snapshots = getattr(app, "snapshots", None)
    recorder = getattr(snapshots, "recorder", None)
    datastore = getattr(recorder, "datastore", None)
    if datastore is None:
        return
    table = recorder.events_table_name
    sqlite = type(recorder).__module__.startswith("eventsourcing.sqlite")
    name = table if sqlite else f'"{datastore.schema}".{table}'
    with datastore.transaction(commit=True) as cursor:
        if sqlite:
            cursor.execute("PRAGMA secure_delete = ON")
        cursor.execute(f"DELETE FROM {name}")
    if sqlite:
        sqlite_checkpoint(datastore)


def iter_pages(privacy: Privacy, customer_id: str, page_size: int = 100) -> Iterator[dict[str, Any]]:
    token = ""
    while True:
        document, token = privacy.export_customer(customer_id, page_size, token)
        yield document
        if not token:
            return
