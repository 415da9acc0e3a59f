"""One statement over many rows: how a projection writes a batch's rollup rows in one round.

A ``Bulk`` is a view change whose parameters are many rows (tuples, in its columns' order) instead of one dict
(``ViewStore.apply`` joins the rows of consecutive changes of one ``Bulk`` and runs them with ``Tx.executemany``).
PostgreSQL runs an upsert or a delete as ONE statement over one array per column (``unnest``): a batch's hundreds of
upserts of a rollup table cost one parse, one plan and one round trip instead of one each; plain inserts go as a
COPY. SQLite runs the same statement once per row (``executemany`` with positional parameters, in C). Tuples cost a
projection less to build than dicts, and the store less to take apart.

The rows of one ``Bulk`` change must have distinct keys: PostgreSQL refuses an ``INSERT ... ON CONFLICT DO UPDATE``
that would change one row twice. The projections sum their changes per key before they write (``Rollups.drain``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Column types (``int``, ``text``) as PostgreSQL's array casts name them.
_ARRAY = {"int": "bigint[]", "text": "text[]"}


@dataclass(frozen=True)
class Bulk:
    """The SQL of one bulk change on each engine (``{leeway_view_...}`` table names, as in every view change)."""

    #: Parameters: one list per column (``%b``: sent in binary, cheaper to build than text), turned into rows by
    #: ``unnest``.
    postgres: str
    #: Parameters: one tuple per row (``?``).
    sqlite: str
    #: How many values each row has.
    width: int
    #: Whether ``postgres`` is a COPY (plain inserts: rows are written to it one by one, not as arrays).
    copy: bool = False

    @classmethod
    def insert(cls, table: str, columns: Sequence[str]) -> Bulk:
        """Plain inserts of rows of ``columns`` into ``table`` (no conflict expected)."""
        names = ", ".join(columns)
        return cls(
            postgres=f"COPY {{{table}}} ({names}) FROM STDIN",
            sqlite=f"INSERT INTO {{{table}}} ({names}) VALUES ({', '.join('?' * len(columns))})",
            width=len(columns),
            copy=True,
        )

    @classmethod
    def upsert(
        cls, table: str, columns: Sequence[tuple[str, str]], key: Sequence[str] = (), summed: Sequence[str] = ()
    ) -> Bulk:
        """Inserts rows of ``columns`` ((name, type) pairs) into ``table``; a row whose ``key`` is there already adds
        its ``summed`` columns to the stored row's (no ``summed``: it is left as it is; no ``key``: plain inserts)."""
        names = ", ".join(name for name, _ in columns)
        conflict = ""
        if key:
            conflict = f" ON CONFLICT ({', '.join(key)}) DO " + (
                "UPDATE SET " + ", ".join(f"{c} = k.{c} + excluded.{c}" for c in summed) if summed else "NOTHING"
            )
        arrays = ", ".join(f"%b::{_ARRAY[kind]}" for _, kind in columns)
        return cls(
            postgres=f"INSERT INTO {{{table}}} AS k ({names}) SELECT * FROM unnest({arrays}){conflict}",
            sqlite=f"INSERT INTO {{{table}}} AS k ({names}) VALUES ({', '.join('?' * len(columns))}){conflict}",
            width=len(columns),
        )

    @classmethod
    def delete(cls, table: str, key: Sequence[tuple[str, str]], condition: str) -> Bulk:
        """Deletes, for each row (values of ``key``'s (name, type) columns), the stored row with that key if it meets
        ``condition`` (SQL over the stored row's columns, unqualified)."""
        names = [name for name, _ in key]
        arrays = ", ".join(f"%b::{_ARRAY[kind]}" for _, kind in key)
        matched = " AND ".join(f"t.{name} = v.{name}" for name in names)
        return cls(
            postgres=f"DELETE FROM {{{table}}} AS t USING unnest({arrays}) AS v ({', '.join(names)}) WHERE {matched} "
            f"AND {condition}",
            sqlite=f"DELETE FROM {{{table}}} WHERE {' AND '.join(f'{n} = ?' for n in names)} AND {condition}",
            width=len(names),
        )


__all__ = ["Bulk"]
