"""Verified checkpoints: where the last VerifyIntegrity of the whole log that found nothing broken got to, kept in
the log's own database so that the next one reads only what is new.

Two tables beside the event log (PostgreSQL: in the log's schema; SQLite: in the log's file), created the first time
a checkpoint is stored:

- ``leeway_verified_log``: one row, the checkpoint (position, log hash up to it, when, events checked to get there);
- ``leeway_verified_heads``: each aggregate's last (version, hash) at that position (not the single-event request
  records, which nothing follows).
- ``leeway_verified_marks``: the log hash at the first event at or past every ``MARK_EVERY`` positions of the log
  that verify covered (``Verifier(mark_every=...)``), so that ``leeway export --after`` a position reads from the
  nearest mark before it, not from the log's start, when the last verify ended after that position.

An incremental verify starts from them: the log hash continues from the stored one, and each aggregate's new events
must link to the stored hash of its last verified event (not to what its stored rows say now), so rewriting the
rows of verified events cannot make new events look linked. It cannot see rows changed at or before the checkpoint:
that is the full verify's job (``full``), and an auditor's own checkpoint kept outside the database (a request
checkpoint at or before the stored one makes the verify full).

The checkpoint only moves forward: it is written in one transaction with the heads, after taking a lock on its
row, and only if it is ahead of the stored one (two replicas verifying at once store the further one).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import structlog

from ..projections.store import Tx
from .integrity import Checkpoint

log = structlog.get_logger("leeway.audit")

LOG_TABLE, HEADS_TABLE, MARKS_TABLE = "leeway_verified_log", "leeway_verified_heads", "leeway_verified_marks"
#: Positions between two marks: an export after any verified position reads at most this many events before it.
MARK_EVERY = 10_000
#: Heads looked up or written per statement.
BATCH = 1000


@dataclass(frozen=True)
class VerifiedCheckpoint:
    checkpoint: Checkpoint
    #: When it was stored, and how many events the verify that stored it checked.
    verified_at: datetime
    events_checked: int


class VerifiedStore:
    """The verified checkpoint of the log in ``datastore`` (the application recorder's)."""

    def __init__(self, datastore: Any):
        self.datastore = datastore
        self.sqlite = not hasattr(datastore, "schema")
        self.schema = "" if self.sqlite else str(datastore.schema or "public")
        #: Whether this process created (``_create``: every table, the marks included) or found them.
        self._created = False
        self._found = False

    @classmethod
    def of(cls, recorder: Any) -> VerifiedStore | None:
        """The store beside ``recorder``'s events, or None if it has no database (the in-memory store)."""
        datastore = getattr(recorder, "datastore", None)
        if datastore is None or not hasattr(datastore, "transaction"):
            return None
        return cls(datastore)

    def _table(self, name: str) -> str:
        return name if self.sqlite else f'"{self.schema}".{name}'

    @contextmanager
    def _tx(self, *, commit: bool) -> Iterator[Tx]:
        with self.datastore.transaction(commit=commit) as cursor:
            yield Tx(cursor, self.sqlite, self.schema)

    def _create(self) -> None:
        if self._created:
            return
        bigint = "INTEGER" if self.sqlite else "BIGINT"
        statements = [
            f"CREATE TABLE IF NOT EXISTS {self._table(LOG_TABLE)} (id {bigint} PRIMARY KEY, position {bigint} NOT NULL,"
            f" log_hash TEXT NOT NULL, verified_us {bigint} NOT NULL, events_checked {bigint} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self._table(HEADS_TABLE)} (aggregate_id TEXT PRIMARY KEY, "
            f"version {bigint} NOT NULL, hash TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self._table(MARKS_TABLE)} (position {bigint} PRIMARY KEY, log_hash TEXT NOT NULL)",
        ]
        for statement in statements:
            try:
                with self._tx(commit=True) as tx:
                    tx.execute(statement)
            except Exception:  # noqa: BLE001 - two replicas creating it at once: one wins, the table is there
                if not self._exists():
                    raise
        self._created = True

    def _exists(self) -> bool:
        try:
            with self._tx(commit=False) as tx:
                tx.execute(f"SELECT position FROM {self._table(LOG_TABLE)} WHERE id = 1")
                tx.fetchall()
            return True
        except Exception:  # noqa: BLE001 - no such table
            return False

    def load(self) -> VerifiedCheckpoint | None:
        """The stored checkpoint, or None (none stored yet)."""
        if not self._found and not self._exists():
            return None
        self._found = True
        with self._tx(commit=False) as tx:
            row = tx.execute(
                f"SELECT position, log_hash, verified_us, events_checked FROM {self._table(LOG_TABLE)} WHERE id = 1"
            ).fetchone()
        if row is None:
            return None
        position, log_hash, verified_us, events = (row[k] for k in range(4)) if not isinstance(row, dict) else (
            row["position"], row["log_hash"], row["verified_us"], row["events_checked"])
        return VerifiedCheckpoint(
            Checkpoint(int(position), str(log_hash)),
            datetime.fromtimestamp(int(verified_us) / 1e6, tz=timezone.utc),
            int(events),
        )

    def heads(self, aggregates: Iterable[str]) -> dict[str, tuple[int, str]]:
        """The stored (version, hash) of each of ``aggregates`` that has one."""
        wanted = list(aggregates)
        found: dict[str, tuple[int, str]] = {}
        with self._tx(commit=False) as tx:
            for start in range(0, len(wanted), BATCH):
                part = wanted[start : start + BATCH]
                marks = ", ".join(f"%(a{i})s" for i in range(len(part)))
                rows = tx.execute(
                    f"SELECT aggregate_id, version, hash FROM {self._table(HEADS_TABLE)} WHERE aggregate_id IN ({marks})",
                    {f"a{i}": a for i, a in enumerate(part)},
                ).fetchall()
                for row in rows:
                    aggregate, version, hash_ = (row["aggregate_id"], row["version"], row["hash"]) if isinstance(
                        row, dict) else (row[0], row[1], row[2])
                    found[str(aggregate)] = (int(version), str(hash_))
        return found

    def mark_at_or_before(self, position: int) -> Checkpoint | None:
        """The verified log's checkpoint at the furthest mark at or before ``position`` (None: no such mark, or no
        marks table yet)."""
        try:
            with self._tx(commit=False) as tx:
                row = tx.execute(
                    f"SELECT position, log_hash FROM {self._table(MARKS_TABLE)} WHERE position <= %(p)s "
                    "ORDER BY position DESC LIMIT 1", {"p": position},
                ).fetchone()
        except Exception:  # noqa: BLE001 - no marks table (stored by an older release, or never): no mark
            return None
        if row is None:
            return None
        found, log_hash = (row["position"], row["log_hash"]) if isinstance(row, dict) else (row[0], row[1])
        return Checkpoint(int(found), str(log_hash))

    def store(
        self,
        checkpoint: Checkpoint,
        heads: dict[str, tuple[int, str]],
        events_checked: int,
        *,
        replace: bool,
        marks: Iterable[Checkpoint] = (),
    ) -> bool:
        """Stores ``checkpoint`` with ``heads`` (every aggregate's, ``replace``: a full verify; else the ones that
        moved since the stored checkpoint) and the ``marks`` that verify passed, if it is ahead of the stored one;
        True if it was stored."""
        self._create()
        now_us = int(datetime.now(timezone.utc).timestamp() * 1e6)
        with self._tx(commit=True) as tx:
            # The row's lock first: verifies storing at once are serialized, and the further one wins.
            tx.execute(
                f"INSERT INTO {self._table(LOG_TABLE)} (id, position, log_hash, verified_us, events_checked) "
                "VALUES (1, -1, '', 0, 0) ON CONFLICT (id) DO NOTHING"
            )
            row = tx.execute(
                f"SELECT position FROM {self._table(LOG_TABLE)} WHERE id = 1" + ("" if self.sqlite else " FOR UPDATE")
            ).fetchone()
            stored = int(row["position"] if isinstance(row, dict) else row[0])
            if stored >= checkpoint.position and not (replace and stored == checkpoint.position):
                return False
            if replace:
                tx.execute(f"DELETE FROM {self._table(HEADS_TABLE)}")
            rows = [{"a": a, "v": v, "h": h} for a, (v, h) in heads.items()]
            upsert = (
                f"INSERT INTO {self._table(HEADS_TABLE)} (aggregate_id, version, hash) VALUES (%(a)s, %(v)s, %(h)s) "
                "ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version, hash = excluded.hash"
            )
            for start in range(0, len(rows), BATCH):
                tx.executemany(upsert, rows[start : start + BATCH])
            if replace:
                tx.execute(f"DELETE FROM {self._table(MARKS_TABLE)}")
            marked = [{"p": mark.position, "h": mark.log_hash} for mark in marks]
            if marked:
                tx.executemany(
                    f"INSERT INTO {self._table(MARKS_TABLE)} (position, log_hash) VALUES (%(p)s, %(h)s) "
                    "ON CONFLICT (position) DO NOTHING", marked)
            tx.execute(
                f"UPDATE {self._table(LOG_TABLE)} SET position = %(p)s, log_hash = %(h)s, verified_us = %(t)s, "
                "events_checked = %(n)s WHERE id = 1",
                {"p": checkpoint.position, "h": checkpoint.log_hash, "t": now_us, "n": events_checked},
            )
        log.info("audit.verified_checkpoint", position=checkpoint.position, heads=len(heads), full=replace)
        return True
