"""Failing fast while PostgreSQL is away.

The eventsourcing PostgreSQL recorder retries each operation up to 10 times, and each attempt may wait for a
pool connection: during a database outage one store call could block for most of a minute, every worker thread
would end up waiting, and callers would see DEADLINE_EXCEEDED (or nothing at all) instead of a clear
UNAVAILABLE. The gate fixes that:

- a **probe** asks PostgreSQL directly (its own connection, a short connect and statement timeout, never the
  pool) whether it answers; the health service reports what the probe found;
- while the probe says the database is down the gate is **closed**: every attempt to take a pool connection
  raises ``StoreDown`` at once (a PersistenceError the library does not retry, which the application turns into
  UNAVAILABLE / STORE_UNAVAILABLE), so in-flight calls stop waiting and new ones are refused immediately;
- any connection-level failure seen by a call triggers a probe at once (not only the periodic health check),
  and while closed the gate probes every ``retry_seconds`` and opens again by itself.

A slow pool under load (PoolTimeout) alone never closes the gate: only the probe decides.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import structlog
from eventsourcing.persistence import InterfaceError, OperationalError, PersistenceError

from ..runtime import name_os_thread

log = structlog.get_logger("leeway.store")


class StoreDown(PersistenceError):
    """The database did not answer the last probe; nothing was attempted."""


class StoreGate:
    """Tracks whether the database answers, and makes pool users fail fast while it does not."""

    def __init__(
        self,
        probe: Callable[[], None],
        *,
        retry_seconds: float = 0.5,
        on_change: Callable[[bool], None] | None = None,
    ):
        self._probe = probe
        self.retry_seconds = retry_seconds
        self.on_change = on_change
        self._up = True
        self._lock = threading.Lock()
        self._probing = False
        self._stopping = threading.Event()
        self.last_error = ""

    @property
    def up(self) -> bool:
        return self._up

    def check(self) -> None:
        if not self._up:
            raise StoreDown(f"the database is not answering ({self.last_error}); not waiting for it")

    def probe(self) -> bool:
        """Asks the database now; updates (and returns) whether it is up."""
        try:
            self._probe()
        except Exception as error:  # noqa: BLE001 - any failure to answer means "down"
            self.last_error = f"{type(error).__name__}: {error}".strip()[:300]
            self._set(False)
            return False
        self._set(True)
        return True

    def suspect(self) -> None:
        """A call saw a connection-level failure: probe now in the background (once at a time)."""
        with self._lock:
            if self._probing or self._stopping.is_set():
                return
            self._probing = True
        threading.Thread(target=self._probe_until_up, name="leeway-store-probe", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def _probe_until_up(self) -> None:
        name_os_thread()
        try:
            while not self.probe() and not self._stopping.wait(self.retry_seconds):
                pass
        finally:
            with self._lock:
                self._probing = False

    def _set(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            log.warning("store.back")
        else:
            log.warning("store.down", error=self.last_error)
            self.suspect()  # keep probing until it answers, whoever noticed first
        if self.on_change is not None:
            self.on_change(up)

    # ------------------------------------------------------------------ installing it on a datastore

    def guard(self, datastore: Any) -> None:
        """Makes ``datastore.get_connection`` fail fast while the gate is closed, and report connection failures."""
        original = datastore.get_connection

        @contextmanager
        def get_connection(*args: Any, **kwargs: Any) -> Iterator[Any]:
            self.check()
            try:
                with original(*args, **kwargs) as connection:
                    yield connection
            except (OperationalError, InterfaceError):
                self.suspect()
                raise

        datastore.get_connection = get_connection


#: A pooled connection unused for longer than this is checked (one round trip) before it is handed out.
IDLE_CHECK_SECONDS = 1.0


def check_idle_connections(datastore: Any, idle_seconds: float = IDLE_CHECK_SECONDS) -> None:
    """Makes ``datastore.get_connection`` check a pooled connection before use only if it sat idle for more than
    ``idle_seconds`` (or was never used here), instead of on every use (the library's ``POSTGRES_PRE_PING``,
    off in settings.py): a busy service stops paying a round trip per checkout, and a connection that may have
    died while idle (a database restart, a proxy's idle timeout) is still found out before a caller's statement
    fails on it. A connection that fails the check is closed, so the pool drops it, and the next one is tried;
    a connection that breaks in use is left to the library's retries, which get a fresh one the same way."""
    import psycopg

    original = datastore.get_connection
    last_used: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
    lock = threading.Lock()
    attempts = int(getattr(getattr(datastore, "pool", None), "max_size", 0) or 0) + 1

    @contextmanager
    def get_connection(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for attempt in range(attempts):
            with original(*args, **kwargs) as connection:
                with lock:
                    since = last_used.get(connection)
                if since is None or time.monotonic() - since > idle_seconds:
                    try:
                        connection.execute("SELECT 1")
                    except psycopg.Error:
                        connection.close()  # the pool drops a closed connection when it gets it back
                        if attempt + 1 < attempts:
                            continue
                        raise
                try:
                    yield connection
                finally:
                    with lock:
                        last_used[connection] = time.monotonic()
                return

    datastore.get_connection = get_connection


def postgres_probe(env: dict[str, str], table: tuple[str, str], timeout_seconds: float = 2.0) -> Callable[[], None]:
    """A probe that opens its own short-lived connection (never the pool) and reads the events table ``table``
    (schema, name): a database that answers but has lost the event store is down too."""
    import psycopg
    from psycopg.sql import SQL, Identifier

    query = SQL("SELECT 1 FROM {}.{} LIMIT 1").format(Identifier(table[0]), Identifier(table[1]))

    def probe() -> None:
        started = time.monotonic()
        with psycopg.connect(
            dbname=env.get("POSTGRES_DBNAME", ""),
            host=env.get("POSTGRES_HOST", ""),
            port=env.get("POSTGRES_PORT", "5432"),
            user=env.get("POSTGRES_USER", ""),
            password=env.get("POSTGRES_PASSWORD", ""),
            connect_timeout=max(1, int(round(timeout_seconds))),
            options=f"-c statement_timeout={int(timeout_seconds * 1000)}",
            autocommit=True,
        ) as connection:
            connection.execute(query)
        if time.monotonic() - started > timeout_seconds * 2:
            raise TimeoutError("the database answered too slowly")

    return probe


def install(app: Any, *datastores: Any, retry_seconds: float = 0.5) -> StoreGate | None:
    """A gate for a PostgreSQL-backed application (None on SQLite: a local file has no outages to wait out)."""
    env = {k: str(v) for k, v in dict(app.env).items()}
    if env.get("PERSISTENCE_MODULE") != "eventsourcing.postgres":
        return None
    table = (str(app.recorder.datastore.schema or "public"), str(app.recorder.events_table_name))
    gate = StoreGate(postgres_probe(env, table), retry_seconds=retry_seconds)
    for datastore in (app.recorder.datastore, *datastores):
        gate.guard(datastore)
    return gate


def tune_factory(factory: Any, env: Mapping[str, str] | None) -> Any:
    """Applies Leeway's own PostgreSQL settings to a newly made infrastructure factory, before its pool opens:
    with ``POSTGRES_PREPARED_STATEMENTS=n`` (``LEEWAY_POSTGRES_PREPARED_STATEMENTS=false``) its connections
    prepare no statement (psycopg's ``prepare_threshold=None``, which overrides the library's ``prepare=True``), so
    that they work through PgBouncer in transaction mode, where consecutive statements of a client may run on
    different server connections and a prepared statement made on one is unknown on the next. The cost: every
    statement is parsed and planned each time."""
    datastore = getattr(factory, "datastore", None)
    pool = getattr(datastore, "pool", None)
    if pool is not None and (env or {}).get("POSTGRES_PREPARED_STATEMENTS", "y").strip().lower() in FALSE_WORDS:
        pool.kwargs["prepare_threshold"] = None
    return factory


#: Every spelling of "off": the library's ``Environment`` looks for ``<app name>_<key>`` first, and the application
#: is named Leeway, so ``LEEWAY_POSTGRES_PREPARED_STATEMENTS=false`` itself is what a server finds here.
FALSE_WORDS = ("n", "no", "f", "false", "off", "0")


def open_pools(*datastores: Any, timeout_seconds: float = 3.0) -> bool:
    """Opens the PostgreSQL connection pools of ``datastores`` and has each open all of its connections now (by
    taking every one of them once), so that no caller's request waits for a connection to be opened later. True
    when they are full; False when the database did not give them all within ``timeout_seconds`` (the pools go on
    filling in the background; the store gate and the health service report an outage, so starting is not
    refused for it). SQLite datastores have no pool."""
    import psycopg_pool

    deadline = time.monotonic() + timeout_seconds
    full = True
    for datastore in datastores:
        pool = getattr(datastore, "pool", None)
        if not isinstance(pool, psycopg_pool.ConnectionPool):
            continue
        pool.open(wait=False)  # (psycopg_pool's open(wait=True) closes the pool for good when it times out)
        taken = []
        try:
            for _ in range(pool.min_size):
                taken.append(pool.getconn(timeout=max(0.01, deadline - time.monotonic())))
        except psycopg_pool.PoolTimeout:
            full = False
        finally:
            for connection in taken:
                pool.putconn(connection)
    return full


@contextmanager
def table_creation_lock(env: dict[str, str] | None) -> Iterator[None]:
    """Serializes table creation on one PostgreSQL schema across processes (replicas and their projections
    children starting at once): a session-level advisory lock on a connection of its own, held for the block.

    The library creates composite types, tables and Leeway's insert function without guarding against a second
    process doing the same at that moment; two replicas starting together on an empty schema failed with "tuple
    concurrently updated" or a duplicate ``pg_type`` key (seen in CI). Nothing happens on SQLite, with
    CREATE_TABLE off, or if the lock's connection fails (the block then fails or succeeds as it would have)."""
    if not env or env.get("PERSISTENCE_MODULE") != "eventsourcing.postgres":
        yield
        return
    if env.get("CREATE_TABLE", "y").strip().lower() not in ("y", "yes", "t", "true", "on", "1"):
        yield
        return
    import psycopg

    key = f"leeway.create_tables:{env.get('POSTGRES_SCHEMA') or 'public'}"
    try:
        connection = psycopg.connect(
            dbname=env.get("POSTGRES_DBNAME", ""),
            host=env.get("POSTGRES_HOST", ""),
            port=env.get("POSTGRES_PORT", "5432"),
            user=env.get("POSTGRES_USER", ""),
            password=env.get("POSTGRES_PASSWORD", ""),
            connect_timeout=int(float(env.get("POSTGRES_CONNECT_TIMEOUT") or 5)),
            autocommit=True,
        )
    except psycopg.Error:
        yield
        return
    try:
        connection.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        yield
    finally:
        connection.close()  # ends the session: the lock goes with it
