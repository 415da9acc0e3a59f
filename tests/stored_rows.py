"""Direct access to the stored events table behind the application's back, to tamper with it in tests (SQLite
and PostgreSQL): read, change, delete and put back rows, and move them to other positions.

Import it as ``from stored_rows import StoredRows`` (tests/ is on sys.path, like ``builders``)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID


@dataclass(frozen=True)
class Row:
    """One stored event, with its position (to put it back exactly where it was)."""

    position: int
    aggregate_id: UUID
    version: int
    topic: str
    state: bytes


class StoredRows:
    """Direct access to the stored events table, behind the application's back (to tamper with it)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        parts = urlsplit(database_url)
        self.sqlite = parts.scheme == "sqlite"
        if self.sqlite:
            self.path = database_url[len("sqlite:///") :]
            with sqlite3.connect(self.path, timeout=10) as db:
                names = [
                    name
                    for (name, sql) in db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
                    if "originator_version" in (sql or "") and "snapshot" not in name
                ]
            assert len(names) == 1, names
            self.table = f'"{names[0]}"'
        else:
            self.base = f"{parts.scheme}://{parts.netloc}{parts.path}"
            self.schema = parse_qs(parts.query)["schema"][0]
            with self._pg() as conn:
                names = [
                    name
                    for (name,) in conn.execute(
                        "SELECT table_name FROM information_schema.columns WHERE table_schema = %s "
                        "AND column_name = 'notification_id' AND table_name NOT LIKE 'leeway_view%%'",
                        (self.schema,),
                    )
                ]
            assert len(names) == 1, names
            self.table = f'"{self.schema}"."{names[0]}"'

    def _pg(self):
        import psycopg

        return psycopg.connect(self.base, autocommit=True, connect_timeout=5)

    def _key(self, aggregate_id: UUID) -> Any:
        return aggregate_id.hex if self.sqlite else aggregate_id

    def _run(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self.sqlite:
            db = sqlite3.connect(self.path, timeout=10)
            try:
                with db:
                    rows = db.execute(sql.replace("%s", "?"), params).fetchall()
                return rows
            finally:
                db.close()
        with self._pg() as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else [("rowcount", cursor.rowcount)]

    def get(self, aggregate_id: UUID, version: int) -> tuple[str, bytes]:
        rows = self._run(
            f"SELECT topic, state FROM {self.table} WHERE originator_id = %s AND originator_version = %s",
            (self._key(aggregate_id), version),
        )
        assert len(rows) == 1, rows
        topic, state = rows[0]
        return str(topic), bytes(state)

    def set_state(self, aggregate_id: UUID, version: int, state: bytes) -> None:
        self._run(
            f"UPDATE {self.table} SET state = %s WHERE originator_id = %s AND originator_version = %s",
            (state, self._key(aggregate_id), version),
        )
        assert self.get(aggregate_id, version)[1] == state

    def text(self, aggregate_id: UUID, version: int) -> bytes:
        """The event's JSON as stored: a JSON row's bytes, or a packed row's body (``adapters/packing.py``)."""
        from leeway.adapters import packing

        state = self.get(aggregate_id, version)[1]
        return packing.unpack(state)[0] if packing.is_packed(state) else state

    def edit(self, aggregate_id: UUID, version: int, old: bytes, new: bytes, count: int = -1) -> None:
        """Changes an event's content in place, in its own stored form, behind the chain's back: ``old`` replaced
        by ``new`` in its JSON; a packed row is unpacked, changed and packed again with its header's hashes."""
        from leeway.adapters import packing

        state = self.get(aggregate_id, version)[1]
        if packing.is_packed(state):
            body, prev, this = packing.unpack(state)
            assert old in body, (old, body)
            changed = packing.pack(prev, this, body.replace(old, new, count))
        else:
            assert old in state, (old, state)
            changed = state.replace(old, new, count)
        self.set_state(aggregate_id, version, changed)

    def delete(self, aggregate_id: UUID, version: int) -> None:
        self._run(
            f"DELETE FROM {self.table} WHERE originator_id = %s AND originator_version = %s",
            (self._key(aggregate_id), version),
        )

    # ------------------------------------------------------------------ by position (issue 19)

    @property
    def _position(self) -> str:
        return "rowid" if self.sqlite else "notification_id"

    def _uuid(self, value: Any) -> UUID:
        return UUID(hex=value) if isinstance(value, str) else value

    def row(self, aggregate_id: UUID, version: int) -> Row:
        rows = self._run(
            f"SELECT {self._position}, topic, state FROM {self.table} WHERE originator_id = %s AND originator_version = %s",
            (self._key(aggregate_id), version),
        )
        assert len(rows) == 1, rows
        position, topic, state = rows[0]
        return Row(int(position), aggregate_id, version, str(topic), bytes(state))

    def last(self, count: int = 1) -> list[Row]:
        """The ``count`` rows at the end of the log, in position order."""
        rows = self._run(
            f"SELECT {self._position}, originator_id, originator_version, topic, state FROM {self.table} "
            f"ORDER BY {self._position} DESC LIMIT %s",
            (count,),
        )
        return [Row(int(p), self._uuid(a), int(v), str(t), bytes(s)) for p, a, v, t, s in reversed(rows)]

    def remove(self, row: Row) -> Row:
        self.delete(row.aggregate_id, row.version)
        return row

    def restore(self, row: Row) -> None:
        """Puts a removed row back, at its position."""
        self._run(
            f"INSERT INTO {self.table} ({self._position}, originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s, %s)",
            (row.position, self._key(row.aggregate_id), row.version, row.topic, row.state),
        )

    def move(self, row: Row, position: int) -> None:
        self._run(
            f"UPDATE {self.table} SET {self._position} = %s WHERE originator_id = %s AND originator_version = %s",
            (position, self._key(row.aggregate_id), row.version),
        )

    def swap(self, a: Row, b: Row) -> None:
        """Swaps the positions of two rows (each keeps its content)."""
        self.move(a, -a.position)
        self.move(b, a.position)
        self.move(a, b.position)
