"""The key store of crypto-shredding (issue 22): one data key per data subject (a customer, an employee), each
wrapped by the master key, in the table ``leeway_data_keys`` beside the events (same SQLite file, same PostgreSQL
schema).

- A data key is 32 random bytes (AES-256-GCM), stored wrapped with the master key (RFC 3394 AES key wrap) with the
  id of the master key that wrapped it. Erasing a subject (``shred``) sets its wrapped keys to NULL: what was
  encrypted with them can never be read again, by anyone, while the events (and their hash chain) stay as stored.
- The pseudonym key (one row, never shredded) keys the HMAC that names subjects and gives erased identifiers a
  stable pseudonym (``pseudonym``).
- The master key comes from a ``MasterKeySource`` (the plug point for a key-management service: anything with
  ``load() -> bytes``): a file (``LEEWAY_MASTER_KEY_FILE``) or, for the embedded/dev mode, a key generated into
  the data directory (0600, with a warning). ``rotate_master`` re-wraps every data key with a new master key in
  one transaction: events are never re-encrypted.

Keys read are cached in memory; a shred on this process clears the cache at once, and another replica's shred is
seen within ``check_seconds`` (the cache is dropped when the newest erasure time in the table changes: one
indexed query a second, whatever the number of subjects).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import structlog
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

log = structlog.get_logger("leeway.keystore")

TABLE = "leeway_data_keys"
#: Keys cached in memory at most (the cache is dropped when full).
MAX_CACHED = 200_000
PSEUDONYM_SUBJECT = "__pseudonym__"


class KeyStoreError(Exception):
    """The key store cannot be used as configured (a wrong master key, an unreadable key file)."""


class MasterKeySource(Protocol):
    """Where the master key comes from: the plug point for a key-management service (KMS, HSM, Vault).
    ``load`` returns the 32-byte key; ``describe`` says where it came from (for logs, never the key)."""

    def load(self) -> bytes: ...

    def describe(self) -> str: ...


def _parse_key(raw: bytes, where: str) -> bytes:
    text = raw.strip()
    for decode in (lambda t: bytes.fromhex(t.decode()), lambda t: base64.b64decode(t, validate=True)):
        try:
            key = decode(text)
        except ValueError:
            continue
        if len(key) == 32:
            return key
    if len(raw) == 32:
        return raw
    raise KeyStoreError(f"{where}: a master key is 32 bytes (raw, 64 hex digits or base64)")


@dataclass(frozen=True)
class FileMasterKey:
    """A master key in a file: 32 raw bytes, 64 hex digits or base64 (``LEEWAY_MASTER_KEY_FILE``)."""

    path: Path

    def load(self) -> bytes:
        try:
            return _parse_key(self.path.read_bytes(), str(self.path))
        except OSError as error:
            raise KeyStoreError(f"cannot read the master key file {self.path}: {error.strerror}") from error

    def describe(self) -> str:
        return f"file {self.path}"


@dataclass(frozen=True)
class GeneratedMasterKey:
    """The embedded/dev default: a master key generated once into ``path`` (mode 0600). Anyone who can read the
    data directory can read the key too, so this protects nothing against a stolen disk: production deployments
    set ``LEEWAY_MASTER_KEY_FILE`` (a secret mounted from elsewhere) or plug in a KMS."""

    path: Path

    def load(self) -> bytes:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
            log.warning("keystore.master_key_generated", path=str(self.path),
                        hint="set LEEWAY_MASTER_KEY_FILE to a key kept outside the data directory in production")
        return FileMasterKey(self.path).load()

    def describe(self) -> str:
        return f"generated file {self.path} (development default)"


@dataclass(frozen=True)
class StaticMasterKey:
    """A master key given in memory (tests, or a KMS adapter that has already fetched it)."""

    key: bytes
    name: str = "in memory"

    def load(self) -> bytes:
        return _parse_key(self.key, self.name)

    def describe(self) -> str:
        return self.name


def sqlite_checkpoint(datastore: Any) -> None:
    """SQLite: moves the WAL into the database file and truncates it, so no page of an erased value stays in the
    WAL (with ``secure_delete`` on, the pages freed in the file were zeroed)."""
    with datastore.get_connection(commit=True) as connection:
        busy, _, _ = connection._sqlite_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()  # noqa: SLF001
    if busy:
        log.warning("sqlite.checkpoint_busy", hint="a reader held the WAL: it is emptied at the next checkpoint")


def master_key_id(key: bytes) -> str:
    return hashlib.sha256(b"leeway-master-key-id\n" + key).hexdigest()[:16]


class _Backend:
    """The table on one engine: SQL with ``%s`` parameters (``?`` on SQLite)."""

    def __init__(self, datastore: Any, sqlite: bool):
        self.datastore = datastore
        self.sqlite = sqlite
        schema = "" if sqlite else str(getattr(datastore, "schema", "") or "public")
        self.table = TABLE if sqlite else f'"{schema}".{TABLE}'

    @contextmanager
    def transaction(self, commit: bool = True) -> Iterator[Any]:
        with self.datastore.transaction(commit=commit) as cursor:
            yield cursor

    def execute(self, cursor: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        sql = sql.replace("{t}", self.table)
        if self.sqlite:
            sql = sql.replace("%s", "?")
        cursor.execute(sql, params)
        try:
            rows = cursor.fetchall()
        except Exception:  # noqa: BLE001 - a statement without a result set
            return []
        return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows or []]

    def create(self) -> None:
        blob = "BLOB" if self.sqlite else "BYTEA"
        with self.transaction() as cursor:
            self.execute(cursor, f"CREATE TABLE IF NOT EXISTS {{t}} (key_id TEXT PRIMARY KEY, subject TEXT NOT NULL, "
                                 f"wrapped {blob}, master_id TEXT NOT NULL, created_us BIGINT NOT NULL, "
                                 f"last_used_us BIGINT NOT NULL, erased_us BIGINT)")
            self.execute(cursor, f"CREATE INDEX IF NOT EXISTS {TABLE}_subject ON {{t}} (subject)")
            self.execute(cursor, f"CREATE INDEX IF NOT EXISTS {TABLE}_erased ON {{t}} (erased_us)")


    def in_use(self) -> bool:
        """Whether the table exists and holds the pseudonym key (a key store was used on this database)."""
        with self.transaction(commit=False) as cursor:
            if self.sqlite:
                found = self.execute(cursor, "SELECT name FROM sqlite_master WHERE type = 'table' AND name = %s",
                                     (TABLE,))
            else:
                found = self.execute(cursor, "SELECT to_regclass(%s)", (self.table,))
                found = [row for row in found if row[0] is not None]
            return bool(found) and bool(
                self.execute(cursor, "SELECT key_id FROM {t} WHERE subject = %s", (PSEUDONYM_SUBJECT,))
            )


def key_store_in_use(datastore: Any, *, sqlite: bool) -> bool:
    """Whether a key store was used on this database (an application opened without its master key must not
    write: it would store personal data in clear and miss the customers' keyed ledgers)."""
    return datastore is not None and _Backend(datastore, sqlite).in_use()


class KeyStore:
    """Data keys per subject, wrapped by the master key."""

    def __init__(self, datastore: Any | None, master: MasterKeySource, *, sqlite: bool = False,
                 check_seconds: float = 1.0):
        self._master = master.load()
        self.master_id = master_key_id(self._master)
        self.master_source = master.describe()
        self._backend = _Backend(datastore, sqlite) if datastore is not None else None
        self._memory: dict[str, list[Any]] = {}  # key_id -> [subject, wrapped, master_id, created, used, erased]
        self._lock = threading.Lock()
        self._check_seconds = check_seconds
        self._checked_at = time.monotonic()
        self._newest_erasure: Any = None
        self._by_id: dict[str, tuple[float, bytes | None]] = {}
        self._current: dict[str, tuple[float, str, bytes]] = {}
        self._touched: dict[str, float] = {}
        self._ledger_ids: dict[str, UUID] = {}
        if self._backend is not None:
            self._backend.create()
        self._pseudonym_key = self._load_pseudonym_key()

    #: The application's clock (key creation and erasure times are compared on it); None: the wall clock.
    clock: Callable[[], datetime] | None = None

    def _now_us(self) -> int:
        if self.clock is None:
            return int(time.time() * 1_000_000)
        return int(self.clock().timestamp() * 1_000_000)

    # ------------------------------------------------------------------ pseudonyms

    def _load_pseudonym_key(self) -> bytes:
        rows = self._select("SELECT key_id, wrapped, master_id FROM {t} WHERE subject = %s", (PSEUDONYM_SUBJECT,))
        if not rows:
            self._insert(PSEUDONYM_SUBJECT, PSEUDONYM_SUBJECT, secrets.token_bytes(32), ignore_conflict=True)
            rows = self._select("SELECT key_id, wrapped, master_id FROM {t} WHERE subject = %s", (PSEUDONYM_SUBJECT,))
        _, wrapped, master_id = rows[0]
        return self._unwrap(bytes(wrapped), master_id)

    def pseudonym(self, kind: str, value: str) -> str:
        """The keyed pseudonym of ``value`` (HMAC-SHA-256 with the pseudonym key, 128 bits in hex)."""
        return hmac.new(self._pseudonym_key, f"{kind}\n{value}".encode(), hashlib.sha256).hexdigest()[:32]

    def customer_ledger_id(self, customer_id: str) -> UUID:
        """The keyed id of a customer's ledger: the pseudonym (kind ``customer-ledger``) of the customer's own
        pseudonym, as a UUID. Not computable from the customer id without the pseudonym key (which is never
        shredded, so an erased customer's ledger keeps its id), and computable from an erased id
        (``[erased:<pseudonym>]``): the decisions and reversals of an erased customer's actions find it."""
        found = self._ledger_ids.get(customer_id)
        if found is None:
            if customer_id.startswith(("[erased:", "[sealed:")) and customer_id.endswith("]"):
                pseudonym = customer_id[customer_id.index(":") + 1 : -1]
            else:
                pseudonym = self.pseudonym("customer", customer_id)
            found = UUID(hex=self.pseudonym("customer-ledger", pseudonym))
            if len(self._ledger_ids) >= MAX_CACHED:
                self._ledger_ids.clear()
            self._ledger_ids[customer_id] = found
        return found

    def subject(self, kind: str, value: str) -> str:
        """The key-store name of a data subject: ``customer:<pseudonym>`` or ``employee:<pseudonym>``."""
        return f"{kind}:{self.pseudonym(kind, value)}"

    # ------------------------------------------------------------------ data keys

    def current_key(self, subject: str) -> tuple[str, bytes]:
        """(key id, key) to encrypt new data of ``subject`` with: its live key, or a new one."""
        now = self._fresh()
        with self._lock:
            cached = self._current.get(subject)
        if cached is not None:
            return cached[1], cached[2]
        rows = self._select(
            "SELECT key_id, wrapped, master_id FROM {t} WHERE subject = %s AND wrapped IS NOT NULL ORDER BY key_id",
            (subject,),
        )
        if rows:
            key_id, wrapped, master_id = rows[0]
            key = self._unwrap(bytes(wrapped), master_id)
            if now - self._touched.get(key_id, -1e12) > 3600:  # retention needs days, not seconds: hourly
                self._touch(key_id)
                self._touched[key_id] = now
        else:
            key_id, key = secrets.token_hex(16), secrets.token_bytes(32)
            self._insert(key_id, subject, key)
        with self._lock:
            if len(self._by_id) > MAX_CACHED:
                self._current.clear()
                self._by_id.clear()
            self._current[subject] = (now, key_id, key)
            self._by_id[key_id] = (now, key)
        return key_id, key

    def key(self, key_id: str) -> bytes | None:
        """The data key ``key_id``; None once its subject was erased. Raises KeyStoreError for an unknown id."""
        now = self._fresh()
        with self._lock:
            cached = self._by_id.get(key_id)
        if cached is not None:
            return cached[1]
        rows = self._select("SELECT wrapped, master_id FROM {t} WHERE key_id = %s", (key_id,))
        if not rows:
            raise KeyStoreError(f"data key {key_id} is not in the key store (was {TABLE} lost or restored apart?)")
        wrapped, master_id = rows[0]
        key = None if wrapped is None else self._unwrap(bytes(wrapped), master_id)
        with self._lock:
            if len(self._by_id) > MAX_CACHED:
                self._current.clear()
                self._by_id.clear()
            self._by_id[key_id] = (now, key)
        return key

    def _fresh(self) -> float:
        """Drops the cached keys if another process erased a subject since the last look (at most once per
        ``check_seconds``); returns time.monotonic()."""
        now = time.monotonic()
        if now - self._checked_at < self._check_seconds:
            return now
        self._checked_at = now
        rows = self._select("SELECT MAX(erased_us) AS newest FROM {t}", ())
        newest = rows[0][0] if rows else None
        if newest != self._newest_erasure:
            with self._lock:
                self._current.clear()
                self._by_id.clear()
            self._newest_erasure = newest
        return now

    def shred(self, subject: str, *, created_before: datetime | None = None) -> int:
        """Erases the data keys of ``subject`` (those created before ``created_before``, if given: a retried
        erasure never shreds the key of data that arrived after it); idempotent. Returns how many live keys it
        shredded."""
        if subject == PSEUDONYM_SUBJECT:
            raise KeyStoreError("the pseudonym key is never shredded")
        before = self._now_us() + 1 if created_before is None else int(created_before.timestamp() * 1_000_000) + 1
        if self._backend is None:
            count = 0
            with self._lock:
                for row in self._memory.values():
                    if row[0] == subject and row[1] is not None and row[3] < before:
                        row[1], row[5] = None, self._now_us()
                        count += 1
        else:
            with self._backend.transaction() as cursor:
                if self._backend.sqlite:  # the freed bytes are zeroed in the file (and the WAL is checkpointed below)
                    cursor.execute("PRAGMA secure_delete = ON")
                count = len(self._backend.execute(
                    cursor, "SELECT key_id FROM {t} WHERE subject = %s AND wrapped IS NOT NULL AND created_us < %s",
                    (subject, before),
                ))
                self._backend.execute(
                    cursor,
                    "UPDATE {t} SET wrapped = NULL, erased_us = %s "
                    "WHERE subject = %s AND wrapped IS NOT NULL AND created_us < %s",
                    (self._now_us(), subject, before),
                )
            self.checkpoint()
        with self._lock:
            self._current.pop(subject, None)
            self._by_id.clear()
        return count

    def checkpoint(self) -> None:
        """SQLite: moves the WAL into the database file and truncates it, so no old page stays in the WAL."""
        if self._backend is None or not self._backend.sqlite:
            return
        sqlite_checkpoint(self._backend.datastore)

    def subjects_idle_since(self, before_us: int, limit: int = 100) -> list[tuple[str, int]]:
        """(subject, last use) of subjects with live keys whose keys were last used before ``before_us``
        (retention)."""
        rows = self._select(
            "SELECT subject, MAX(last_used_us) AS used FROM {t} WHERE wrapped IS NOT NULL AND subject <> %s "
            "GROUP BY subject HAVING MAX(last_used_us) < %s ORDER BY subject LIMIT %s",
            (PSEUDONYM_SUBJECT, before_us, limit),
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    def is_erased(self, subject: str) -> bool:
        rows = self._select("SELECT COUNT(*) AS total, COUNT(wrapped) AS live FROM {t} WHERE subject = %s", (subject,))
        total, live = rows[0] if rows else (0, 0)
        return bool(total) and not live

    # ------------------------------------------------------------------ the master key

    def rotate_master(self, new: MasterKeySource) -> int:
        """Re-wraps every data key (and the pseudonym key) with ``new``, in one transaction; returns how many.
        The events are not touched: their data keys do not change."""
        new_key = new.load()
        new_id = master_key_id(new_key)
        if self._backend is None:
            rows = [(k, r[1], r[2]) for k, r in self._memory.items() if r[1] is not None]
            for key_id, wrapped, master_id in rows:
                self._memory[key_id][1:3] = [aes_key_wrap(new_key, self._unwrap(wrapped, master_id)), new_id]
        else:
            with self._backend.transaction() as cursor:
                rows = self._backend.execute(cursor, "SELECT key_id, wrapped, master_id FROM {t} WHERE wrapped IS NOT NULL")
                for key_id, wrapped, master_id in rows:
                    rewrapped = aes_key_wrap(new_key, self._unwrap(bytes(wrapped), master_id))
                    self._backend.execute(
                        cursor, "UPDATE {t} SET wrapped = %s, master_id = %s WHERE key_id = %s",
                        (rewrapped, new_id, key_id),
                    )
        self._master, self.master_id = new_key, new_id
        log.info("keystore.master_rotated", keys=len(rows), master_id=new_id, source=new.describe())
        return len(rows)

    # ------------------------------------------------------------------ storage

    def _unwrap(self, wrapped: bytes, master_id: str) -> bytes:
        if master_id != self.master_id:
            raise KeyStoreError(
                f"a data key was wrapped by master key {master_id}, not by the one configured ({self.master_id}, "
                f"{self.master_source}): set LEEWAY_MASTER_KEY_FILE to that key (after a rotation, to the new one)"
            )
        try:
            return aes_key_unwrap(self._master, wrapped)
        except InvalidUnwrap as error:
            raise KeyStoreError("a data key does not unwrap with the master key (tampered or wrong key)") from error

    def _insert(self, key_id: str, subject: str, key: bytes, *, ignore_conflict: bool = False) -> None:
        row = (key_id, subject, aes_key_wrap(self._master, key), self.master_id, self._now_us(), self._now_us())
        if self._backend is None:
            with self._lock:
                if key_id in self._memory and ignore_conflict:
                    return
                self._memory[key_id] = [subject, row[2], row[3], row[4], row[5], None]
            return
        conflict = " ON CONFLICT (key_id) DO NOTHING" if ignore_conflict else ""
        with self._backend.transaction() as cursor:
            self._backend.execute(
                cursor,
                "INSERT INTO {t} (key_id, subject, wrapped, master_id, created_us, last_used_us) "
                f"VALUES (%s, %s, %s, %s, %s, %s){conflict}",
                row,
            )

    def _touch(self, key_id: str) -> None:
        if self._backend is None:
            with self._lock:
                if key_id in self._memory:
                    self._memory[key_id][4] = self._now_us()
            return
        with self._backend.transaction() as cursor:
            self._backend.execute(cursor, "UPDATE {t} SET last_used_us = %s WHERE key_id = %s", (self._now_us(), key_id))

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._backend is None:
            return self._select_memory(sql, params)
        with self._backend.transaction(commit=False) as cursor:
            return self._backend.execute(cursor, sql, params)

    def _select_memory(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The same few queries on the in-memory table (the POPO persistence of unit tests)."""
        with self._lock:
            rows = {k: list(v) for k, v in self._memory.items()}
        if sql.startswith("SELECT wrapped, master_id FROM {t} WHERE key_id"):
            row = rows.get(params[0])
            return [] if row is None else [(row[1], row[2])]
        if sql.startswith("SELECT MAX(erased_us)"):
            erased = [r[5] for r in rows.values() if r[5] is not None]
            return [(max(erased) if erased else None,)]
        if sql.startswith("SELECT COUNT(*)"):
            mine = [r for r in rows.values() if r[0] == params[0]]
            return [(len(mine), sum(1 for r in mine if r[1] is not None))]
        if sql.startswith("SELECT subject, MAX"):
            used: dict[str, int] = {}
            for r in rows.values():
                if r[1] is not None and r[0] != PSEUDONYM_SUBJECT:
                    used[r[0]] = max(used.get(r[0], 0), r[4])
            return [(s, u) for s, u in sorted(used.items()) if u < params[1]][: params[2]]
        live = "wrapped IS NOT NULL" in sql
        found = sorted(
            (k, r[1], r[2]) for k, r in rows.items() if r[0] == params[0] and (not live or r[1] is not None)
        )
        return [(k,) for k, _, _ in found] if sql.startswith("SELECT key_id FROM") else found
