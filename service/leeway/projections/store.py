"""Where read models live: tables beside a tracking table, on SQLite or PostgreSQL.

The view store is the eventsourcing library's tracking recorder (``SQLiteTrackingRecorder`` /
``PostgresTrackingRecorder``) extended with the read-model tables. A projection writes its view changes and its
new tracking position in one transaction (``ViewStore.apply``), and that transaction first moves the tracking
position with a compare-and-set: a batch computed from a stale position (a second runner, a rebuild that reset
the view meanwhile) changes nothing. So every event is counted exactly once, whoever runs the projection and
however often it is killed.

SQLite keeps the views in their own file beside the event log (``leeway.sqlite`` -> ``leeway.views.sqlite``),
so rebuilding a view never locks the log; PostgreSQL keeps them in the log's schema, as ``leeway_view_*`` tables.
"""

from __future__ import annotations

import re
from operator import itemgetter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from eventsourcing.persistence import InfrastructureFactory, TrackingRecorder
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from eventsourcing.utils import Environment

from ..adapters.storegate import check_idle_connections, table_creation_lock, tune_factory
from .bulk import Bulk
from .rollups import (
    CASED_TABLE, DAYS_TABLE, FIRSTS_TABLE, GIFTS_TABLE, MONTHS_TABLE, REACH_TABLE, TOP_TABLE, WIN_TOTALS_TABLE, WINS_TABLE,
)

#: Read-model tables: name -> (column definitions, indexes). ``{int}`` is the engine's 64-bit integer type; ``{c}``
#: orders a text column by code point (SQLite's default; PostgreSQL's "C" collation).
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "leeway_view_actions": (
        "action_id TEXT PRIMARY KEY, budget_id TEXT NOT NULL, action_version {int} NOT NULL, "
        "employee_id TEXT NOT NULL, team_id TEXT NOT NULL, customer_id TEXT NOT NULL, kind TEXT NOT NULL, "
        "gift_type TEXT NOT NULL, amount_units {int} NOT NULL, amount_nanos {int} NOT NULL, currency TEXT NOT NULL, "
        "reason TEXT NOT NULL, state TEXT NOT NULL, escalated {int} NOT NULL, reversed {int} NOT NULL, "
        "expires_us {int}, recorded_us {int} NOT NULL, position {int} NOT NULL",
        # (state, recorded_us): the pending actions KPIs count; (kind, recorded_us): the gifts whose customers they
        # count (both read from here, not from the rollups). Indexes are named by their place: add at the end.
        ("team_id, recorded_us", "employee_id, recorded_us", "recorded_us", "state, recorded_us", "kind, recorded_us"),
    ),
    "leeway_view_wins": (
        "action_id TEXT PRIMARY KEY, position {int} NOT NULL, employee_id TEXT NOT NULL, team_id TEXT NOT NULL, "
        "customer_id TEXT NOT NULL, kind TEXT NOT NULL, amount_units {int} NOT NULL, amount_nanos {int} NOT NULL, "
        "currency TEXT NOT NULL, reason TEXT NOT NULL, story TEXT NOT NULL, customer_quote TEXT NOT NULL, "
        "outcome TEXT NOT NULL, documented_by TEXT NOT NULL, documented_us {int} NOT NULL",
        ("position", "team_id, position", "employee_id, position", "documented_us"),
    ),
    "leeway_view_trail": (
        "position {int} PRIMARY KEY, employee_id TEXT NOT NULL, customer_id TEXT NOT NULL, action_id TEXT NOT NULL, "
        "time_us {int} NOT NULL, actor TEXT NOT NULL, event_type TEXT NOT NULL, policy_version {int} NOT NULL, "
        "amount TEXT, currency TEXT NOT NULL, reason TEXT NOT NULL, summary TEXT NOT NULL",
        # (actor, position): what one approver decided (ListActions decided_by). Indexes are named by their place
        # in this list: add new ones at the end.
        ("employee_id, position", "customer_id, position", "actor, position"),
    ),
    "leeway_view_balances": (
        "employee_id TEXT PRIMARY KEY, budget_id TEXT NOT NULL, team_id TEXT NOT NULL, display_name TEXT NOT NULL, "
        "currency TEXT NOT NULL, allowance TEXT NOT NULL, spent TEXT NOT NULL, held TEXT NOT NULL, "
        "remaining TEXT NOT NULL, period_start_us {int} NOT NULL, period_end_us {int} NOT NULL, "
        "period_action_count {int} NOT NULL, pending_action_count {int} NOT NULL, state TEXT NOT NULL, "
        "policy_version {int} NOT NULL, version {int} NOT NULL, update_us {int} NOT NULL, position {int} NOT NULL",
        ("team_id, employee_id",),
    ),
    # The KPI rollups (rollups.py): organisation, team and employee rows per UTC day.
    "leeway_view_kpi_days": (DAYS_TABLE, ("employee_id, day",)),
    "leeway_view_kpi_months": (MONTHS_TABLE, ("employee_id, day",)),
    "leeway_view_kpi_wins": (WINS_TABLE, ("employee_id, day", "day, employee_id")),
    # Customers' effective gifts per day and their first and last days in each bucket (rollups.py): customers gifted
    # as a sum over days. kpi_firsts: retired (version 3's), emptied on upgrade.
    "leeway_view_kpi_gifts": (GIFTS_TABLE, ("customer_id",)),
    "leeway_view_kpi_firsts": (FIRSTS_TABLE, ()),
    "leeway_view_kpi_reach": (REACH_TABLE, ()),
    "leeway_view_kpi_cased": (CASED_TABLE, ()),
    "leeway_view_kpi_win_totals": (WIN_TOTALS_TABLE, ("level, wins DESC, employee_id, team_id",)),
    "leeway_view_kpi_top": (TOP_TABLE, ("grain, level, bucket, wins DESC, employee_id, team_id",)),
    # Which version of each projection built its tables (a newer one empties and rebuilds them).
    "leeway_view_versions": ("name TEXT PRIMARY KEY, version {int} NOT NULL", ()),
}

_NAMED = re.compile(r"%\((\w+)\)s")
#: An INSERT whose values are all parameters, nothing else: PostgreSQL may take a run of them as one COPY.
_PLAIN_INSERT = re.compile(r"INSERT INTO (\S+) \(([\w, ]+)\) VALUES \(((?:%\(\w+\)s(?:, )?)+)\)")
#: The shortest run of plain inserts sent as a COPY on PostgreSQL (below it, a pipelined executemany).
COPY_FROM = 8


class StaleTracking(Exception):
    """The view's tracking position moved since the batch was computed (another runner, or a rebuild)."""


class Tx:
    """One transaction on the view store, with the same SQL on both engines (``%(name)s`` parameters)."""

    def __init__(self, cursor: Any, sqlite: bool, schema: str):
        self._cursor = cursor
        self._sqlite = sqlite
        #: Whether the store is SQLite (for the few queries written per engine).
        self.sqlite = sqlite
        self._schema = schema
        self.rowcount = 0

    def table(self, name: str) -> str:
        return name if self._sqlite else f'"{self._schema}".{name}'

    def execute(self, sql: str, params: dict[str, Any] | Sequence[Any] = ()) -> Tx:
        sql = sql.replace("{tracking}", self.table("tracking") if self._sqlite else f'"{self._schema}".{TRACKING}')
        sql = re.sub(r"\{(leeway_view_\w+)\}", lambda m: self.table(m.group(1)), sql)
        if self._sqlite:
            cursor = self._cursor.sqlite_cursor
            cursor.execute(_NAMED.sub(r":\1", sql), params)
        else:
            cursor = self._cursor
            cursor.execute(sql, params or None, prepare=True)
        self.rowcount = cursor.rowcount
        self._last = cursor
        return self

    def executemany(self, sql: str | Bulk, rows: Sequence[Any]) -> None:
        """Runs ``sql`` once per row (dicts); a ``Bulk`` change over its rows (tuples, ``bulk``)."""
        if isinstance(sql, Bulk):
            self.bulk(sql, rows)
            return
        if len(rows) == 1:
            self.execute(sql, rows[0])
            return
        sql = re.sub(r"\{(leeway_view_\w+)\}", lambda m: self.table(m.group(1)), sql)
        if self._sqlite:
            self._cursor.sqlite_cursor.executemany(_NAMED.sub(r":\1", sql), rows)
            return
        plain = _PLAIN_INSERT.fullmatch(sql) if len(rows) >= COPY_FROM else None
        if plain is None:
            self._cursor.executemany(sql, rows)
            return
        # A run of plain inserts (no ON CONFLICT, every value a parameter): one COPY instead of a statement a row.
        table, columns, values = plain.groups()
        names = _NAMED.findall(values)
        # A row's values in the columns' order (itemgetter: in C; of one name it gives the value, not a tuple).
        values_of = itemgetter(*names) if len(names) > 1 else (lambda row: (row[names[0]],))
        with self._cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            write_row = copy.write_row
            for row in rows:
                write_row(values_of(row))

    def bulk(self, change: Bulk, rows: Sequence[Sequence[Any]]) -> None:
        """Runs ``change`` over ``rows`` (tuples in its columns' order, distinct keys): on PostgreSQL one statement
        over an array per column, on SQLite an executemany."""
        if not rows:
            return
        if self._sqlite:
            sql = re.sub(r"\{(leeway_view_\w+)\}", lambda m: self.table(m.group(1)), change.sqlite)
            self._cursor.sqlite_cursor.executemany(sql, rows)
            self.rowcount = -1
        elif change.copy:
            sql = re.sub(r"\{(leeway_view_\w+)\}", lambda m: self.table(m.group(1)), change.postgres)
            with self._cursor.copy(sql) as copy:
                write_row = copy.write_row
                for row in rows:
                    write_row(row)
            self.rowcount = len(rows)
        else:
            self.execute(change.postgres, [list(column) for column in zip(*rows)])

    def fetchall(self) -> list[Any]:
        return list(self._last.fetchall())

    def fetchone(self) -> Any:
        return self._last.fetchone()


#: The tracking table's name on PostgreSQL (SQLite's is "tracking", in the views file).
TRACKING = "leeway_view_tracking"


class _ViewTables:
    """The mixin that gives a tracking recorder our tables and a transaction helper."""

    is_sqlite: bool

    def view_statements(self) -> list[str]:
        bigint = "INTEGER" if self.is_sqlite else "BIGINT"
        collate = "" if self.is_sqlite else ' COLLATE "C"'
        prefix = "" if self.is_sqlite else f'"{self._schema_name()}".'
        statements = []
        for name, (columns, indexes) in TABLES.items():
            statements.append(f"CREATE TABLE IF NOT EXISTS {prefix}{name} ({columns.format(int=bigint, c=collate)})")
            for number, index in enumerate(indexes):
                statements.append(f"CREATE INDEX IF NOT EXISTS {name}_i{number} ON {prefix}{name} ({index})")
        return statements

    def _schema_name(self) -> str:
        return str(getattr(self.datastore, "schema", "") or "public")  # type: ignore[attr-defined]

    @contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[Tx]:
        with self.datastore.transaction(commit=commit) as cursor:  # type: ignore[attr-defined]
            tx = Tx(cursor, self.is_sqlite, self._schema_name())
            if commit and self.is_sqlite:
                # SQLite's write lock first, waited for like any writer's: a transaction that reads and then writes
                # would otherwise fail at once ("database is locked") if another connection wrote since its read
                # began (WAL: the erasure's purge racing the projections child).
                tx.execute("UPDATE {leeway_view_actions} SET position = position WHERE 0")
            yield tx

    def position(self, name: str) -> int:
        """How far projection ``name`` has processed the log (0: nothing yet)."""
        return int(self.max_tracking_id(name) or 0)  # type: ignore[attr-defined]

    def apply(self, name: str, start: int, end: int, changes: Sequence[tuple[Any, Any]]) -> None:
        """Moves projection ``name`` from ``start`` to ``end`` and applies ``changes`` in one transaction, or raises
        StaleTracking (changing nothing) if the position is no longer ``start``."""
        with self.transaction() as tx:
            self._move(tx, name, start, end)
            # Runs of the same statement go as one executemany (psycopg pipelines it): far fewer round trips. The
            # rows of a run of one bulk change (each change: a sequence of rows) go as one ``Tx.bulk``.
            run: list[Any] = []
            for index, (sql, params) in enumerate(changes):
                if isinstance(sql, Bulk):
                    run.extend(params)
                else:
                    run.append(params)
                if index + 1 == len(changes) or changes[index + 1][0] != sql:
                    tx.executemany(sql, run)
                    run = []

    def _move(self, tx: Tx, name: str, start: int, end: int) -> None:
        # The first statement writes, so SQLite takes its write lock before reading anything.
        tx.execute(
            "UPDATE {tracking} SET notification_id = %(end)s WHERE application_name = %(name)s "
            "AND notification_id = %(start)s",
            {"name": name, "start": start, "end": end},
        )
        if tx.rowcount == 1:
            return
        if start == 0:
            tx.execute(
                "INSERT INTO {tracking} (application_name, notification_id) VALUES (%(name)s, %(end)s) "
                "ON CONFLICT (application_name) DO NOTHING",
                {"name": name, "end": end},
            )
            if tx.rowcount == 1:
                return
        raise StaleTracking(f"projection {name} is no longer at position {start}")

    def ensure_version(self, name: str, version: int, tables: Sequence[str]) -> bool:
        """Makes sure projection ``name``'s tables were built by ``version`` of it: if an older version (or one
        that predates versions, with a tracking position) built them, empties them and forgets the position in
        one transaction, so that the runner rebuilds them from the log. True if it did. Concurrent callers:
        the version row's compare-and-set lets exactly one of them reset."""
        with self.transaction() as tx:
            tx.execute(
                "UPDATE {leeway_view_versions} SET version = %(version)s WHERE name = %(name)s AND version < %(version)s",
                {"name": name, "version": version},
            )
            if tx.rowcount == 0:
                tx.execute(
                    "INSERT INTO {leeway_view_versions} (name, version) VALUES (%(name)s, %(version)s) "
                    "ON CONFLICT (name) DO NOTHING",
                    {"name": name, "version": version},
                )
                if tx.rowcount == 0:
                    return False  # this version or a newer one built them
                # First time versions are recorded: a projection with a position was built by version 1.
                row = tx.execute(
                    "SELECT notification_id FROM {tracking} WHERE application_name = %(name)s", {"name": name}
                ).fetchone()
                if row is None or version == 1:
                    return False
            tx.execute("DELETE FROM {tracking} WHERE application_name = %(name)s", {"name": name})
            for table in tables:
                tx.execute(f"DELETE FROM {{{table}}}")
            return True

    def reset(self, name: str, tables: Sequence[str]) -> None:
        """Empties projection ``name``'s tables and forgets its position, in one transaction."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM {tracking} WHERE application_name = %(name)s", {"name": name})
            for table in tables:
                tx.execute(f"DELETE FROM {{{table}}}")


class SQLiteViewStore(_ViewTables, SQLiteTrackingRecorder):
    is_sqlite = True

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *self.view_statements()]


class PostgresViewStore(_ViewTables, PostgresTrackingRecorder):
    is_sqlite = False

    def __init__(self, datastore: Any, **kwargs: Any):
        kwargs["tracking_table_name"] = TRACKING
        super().__init__(datastore, **kwargs)
        from psycopg.sql import SQL

        self.sql_create_statements.extend(SQL(s) for s in self.view_statements())  # type: ignore[arg-type]


ViewStore = SQLiteViewStore | PostgresViewStore


def views_env(app_env: dict[str, str]) -> dict[str, str]:
    """The eventsourcing environment of the view store, derived from the application's."""
    env = dict(app_env)
    if env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite":
        path = env.get("SQLITE_DBNAME", "")
        if path and path != ":memory:" and not path.startswith("file:"):
            stem = path[: -len(".sqlite")] if path.endswith(".sqlite") else path
            env["SQLITE_DBNAME"] = f"{stem}.views.sqlite"
        elif path == ":memory:":
            # A private in-memory database shared by this process's connections.
            env["SQLITE_DBNAME"] = "file:leeway_views_{id}?mode=memory&cache=shared"
    return env


_memory_counter = iter(range(1, 1 << 62))


def open_view_store(app_env: dict[str, str]) -> ViewStore:
    env = views_env(app_env)
    if "{id}" in env.get("SQLITE_DBNAME", ""):
        env["SQLITE_DBNAME"] = env["SQLITE_DBNAME"].format(id=next(_memory_counter))
    module = env.get("PERSISTENCE_MODULE")
    factory = tune_factory(InfrastructureFactory.construct(Environment("LeewayViews", env)), env)
    store: TrackingRecorder
    if module == "eventsourcing.sqlite":
        store = factory.tracking_recorder(SQLiteViewStore)  # type: ignore[arg-type]
    elif module == "eventsourcing.postgres":
        with table_creation_lock(env):
            store = factory.tracking_recorder(PostgresViewStore)  # type: ignore[arg-type]
        check_idle_connections(store.datastore)  # type: ignore[attr-defined]
    else:
        raise ValueError(f"projections need SQLite or PostgreSQL, not {module!r}")
    return store  # type: ignore[return-value]
