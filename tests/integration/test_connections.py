"""Pooled PostgreSQL connections are checked before use only after sitting idle (storegate.check_idle_connections).

POSTGRES_PRE_PING is off (it costs a round trip on every checkout, about a fifth of the group-commit writer's
time); instead a connection unused for more than a second is checked, and one that fails the check is dropped
and the next one tried. Real PostgreSQL, real dead backends (pg_terminate_backend).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import OperationalError
from leeway.application import LeewayApplication
from leeway.settings import Settings
from leeway.adapters.storegate import check_idle_connections
from pgschema import PostgresSchema

pytestmark = pytest.mark.postgres


BASE_URL = ""


@pytest.fixture
def app() -> Iterator[LeewayApplication]:
    global BASE_URL
    schema = PostgresSchema("conn")
    BASE_URL = schema.base
    settings = Settings(database_url=schema.url, postgres_pool_size=2)
    made = LeewayApplication(env=settings.eventsourcing_env())
    try:
        yield made
    finally:
        made.close()
        schema.drop()


def backend_pids(datastore) -> list[int]:
    """The backends of every connection the pool may hold (all checked out at once, so it holds no other)."""
    count = datastore.pool.max_size
    pids = []

    def take(left: int) -> None:
        if not left:
            return
        with datastore.get_connection() as connection:
            pids.append(connection.info.backend_pid)
            take(left - 1)

    take(count)
    return pids


def terminate(pids: list[int]) -> None:
    with psycopg.connect(BASE_URL, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.2)


def test_pre_ping_is_off_and_the_idle_check_is_installed(app) -> None:
    assert app.recorder.datastore.pre_ping is False
    assert app.recorder.datastore.get_connection.__qualname__.startswith("check_idle_connections")


def test_dead_idle_connections_are_dropped_before_use(app) -> None:
    datastore = app.recorder.datastore
    pids = backend_pids(datastore)
    terminate(pids)
    time.sleep(1.1)  # longer than IDLE_CHECK_SECONDS: both connections are checked before their next use
    # No retry involved: the checkout itself hands out a working connection.
    with datastore.get_connection() as connection:
        assert connection.execute("SELECT 1").fetchone() is not None
        assert connection.info.backend_pid not in pids


def test_a_busy_connection_is_not_checked(app) -> None:
    """Within the idle window the connection is handed out unchecked (no round trip): a backend killed in that
    window surfaces as a failed statement, which the library's retry covers with a fresh connection."""
    datastore = app.recorder.datastore
    pids = backend_pids(datastore)
    terminate(pids)
    with pytest.raises(OperationalError):
        with datastore.get_connection() as connection:
            connection.execute("SELECT 1")
    # The application's own reads retry: they work with the pool's replacement connections.
    assert app.recorder.max_notification_id() in (None, 0)


def test_the_check_gives_up_when_the_database_is_gone() -> None:
    """Every connection failing its check: the last failure is raised (the store gate turns it into
    UNAVAILABLE), not a hang."""

    class Connection:
        def __init__(self) -> None:
            self.closed = False

        def execute(self, sql: str) -> None:
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        def close(self) -> None:
            self.closed = True

    class Datastore:
        class pool:
            max_size = 3

        def __init__(self) -> None:
            self.handed_out: list[Connection] = []

        def get_connection(self):
            from contextlib import contextmanager

            @contextmanager
            def checkout():
                connection = Connection()
                self.handed_out.append(connection)
                yield connection

            return checkout()

    datastore = Datastore()
    check_idle_connections(datastore)
    with pytest.raises(psycopg.OperationalError):
        with datastore.get_connection():
            pytest.fail("a connection that failed its check was used")
    assert len(datastore.handed_out) == 4 and all(c.closed for c in datastore.handed_out)


# ---------------------------------------------------------------------------------------------- a fixed, warm pool


def test_the_pool_has_a_fixed_size() -> None:
    """No overflow: a replica holds exactly LEEWAY_POSTGRES_POOL_SIZE connections per pool, never more."""
    env = Settings(database_url="postgresql://postgres@127.0.0.1:5432/test", postgres_pool_size=7).eventsourcing_env()
    assert (env["POSTGRES_POOL_SIZE"], env["POSTGRES_MAX_OVERFLOW"]) == ("7", "0")


def test_the_server_opens_every_pooled_connection_before_it_serves_and_a_burst_opens_none() -> None:
    """Connections are opened at start (storegate.open_pools), not on a caller's path: a burst of reads wider than
    the pool waits for pooled connections and opens no new one."""
    from concurrent.futures import ThreadPoolExecutor

    from leeway.server import create_server

    schema = PostgresSchema("warm")
    server = None
    try:
        settings = Settings(database_url=schema.url, grpc_address="127.0.0.1:0", postgres_pool_size=3,
                            metrics_address="off", projections="inprocess")
        server, _ = create_server(settings)
        pools = [server.app.recorder.datastore.pool, server.projections.store.datastore.pool]
        for pool in pools:
            stats = pool.get_stats()
            assert (pool.min_size, pool.max_size) == (3, 3)
            assert stats["pool_size"] == 3 and stats["pool_available"] == 3, stats
        opened = [pool.get_stats().get("connections_num", 0) for pool in pools]
        with ThreadPoolExecutor(max_workers=12) as burst:
            list(burst.map(lambda _: server.app.recorder.max_notification_id(), range(200)))
        assert [pool.get_stats().get("connections_num", 0) for pool in pools] == opened
        assert pools[0].get_stats()["pool_size"] == 3
    finally:
        if server is not None:
            server.stop(0)
        schema.drop()


def test_opening_the_pools_gives_up_in_time_when_the_database_does_not_answer() -> None:
    """Nothing listens there: open_pools says so within its timeout instead of holding up the start, and the pool
    stays open (it goes on trying in the background)."""
    from leeway.adapters.storegate import open_pools

    from eventsourcing.postgres import PostgresDatastore

    unused = socket_port()
    datastore = PostgresDatastore(dbname="test", host="127.0.0.1", port=str(unused), user="postgres", password="",
                                  pool_size=2, max_overflow=0, connect_timeout=1)
    try:
        started = time.monotonic()
        assert open_pools(datastore, timeout_seconds=0.5) is False
        assert time.monotonic() - started < 2.0
        assert not datastore.pool.closed
    finally:
        datastore.close()


def socket_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ============================================================================ how many connections one replica holds


def connection_bound(pool_size: int, projections: str) -> tuple[int, int]:
    """(at least, at most) the PostgreSQL connections of one `leeway serve`, as README's "PostgreSQL connections"
    subsection adds them up: each pool holds exactly pool_size connections (no overflow: they are all opened at
    start, storegate.open_pools); the server has two pools (the log, the read models); the projections child
    (subprocess) two more of min(pool_size, 5) each; the health probe and the store gate's probe one short-lived
    connection each."""
    child = min(pool_size, 5)
    pools = 2 * pool_size + (2 * child if projections == "subprocess" else 0)
    return pools, pools + 2


@pytest.mark.parametrize("projections", ["subprocess", "inprocess"])
def test_one_server_under_load_stays_within_the_documented_connection_bound(tmp_path, projections) -> None:
    """A real `leeway serve` (pool size 3) under writes, reads of every kind, KPIs and following streams: the
    connections PostgreSQL sees from it (told apart by PGAPPNAME, which libpq sends as application_name for every
    connection the process and its child open) never exceed the documented bound."""
    import threading
    from uuid import uuid4

    import grpc
    from e2e.conftest import ServerProcess
    from leeway.v1 import (action_pb2, action_pb2_grpc, audit_pb2, audit_pb2_grpc, budget_pb2, budget_pb2_grpc,
                           insights_pb2, insights_pb2_grpc)
    from leeway_client import LeewayClient, RefundDetails

    pool_size = 3
    name = f"leeway-conn-{uuid4().hex[:12]}"
    least, most = connection_bound(pool_size, projections)
    schema = PostgresSchema("conn")
    server = ServerProcess(schema.url, tmp_path, {
        "PGAPPNAME": name, "LEEWAY_POSTGRES_POOL_SIZE": str(pool_size), "LEEWAY_PROJECTIONS": projections,
        "LEEWAY_RATE_LIMIT_PER_SECOND": "0", "LEEWAY_HEALTH_INTERVAL_SECONDS": "0.2",
    })
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(schema.base, autocommit=True) as admin:
            while not stop.is_set():
                (count,) = admin.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = %s",
                                         (name,)).fetchone()
                seen.append(int(count))
                stop.wait(0.02)

    try:
        server.start()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with grpc.insecure_channel(server.target) as channel:
            client = LeewayClient(channel=channel, timeout=30.0)
            employees = [f"emp-{i}" for i in range(6)]
            from e2e.helpers import policy

            for employee in employees:
                client.open_budget(employee, f"team-{employee[-1]}", policy("100000"))
            budgets = budget_pb2_grpc.BudgetServiceStub(channel)
            actions = action_pb2_grpc.ActionServiceStub(channel)
            audit = audit_pb2_grpc.AuditServiceStub(channel)
            insights = insights_pb2_grpc.InsightsServiceStub(channel)
            followers = [audit.StreamEvents(audit_pb2.StreamEventsRequest(follow=True)) for _ in range(8)]
            errors: list[BaseException] = []

            def call(method: Any, request: Any) -> Any:
                # UNAVAILABLE is retryable (a pool of 3 under this load may time out waiting for a connection).
                for attempt in range(20):
                    try:
                        return method(request, timeout=30)
                    except grpc.RpcError as error:
                        if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 19:
                            raise
                        time.sleep(0.1)

            def work(n: int) -> None:
                try:
                    for i in range(20):
                        employee = employees[(n + i) % len(employees)]
                        client.record_action(employee, f"c-{n}-{i}", "1.5", "EUR", RefundDetails(order_id="o"), reason="r")
                        call(budgets.GetBudget, budget_pb2.GetBudgetRequest(employee_id=employee))
                        call(actions.ListActions, action_pb2.ListActionsRequest(employee_id=employee, page_size=10))
                        call(insights.GetKpis, insights_pb2.GetKpisRequest())
                        call(audit.GetAuditTrail, audit_pb2.GetAuditTrailRequest(employee_id=employee, page_size=10))
                        if i % 10 == 0:
                            call(audit.VerifyIntegrity, audit_pb2.VerifyIntegrityRequest())
                except BaseException as error:  # noqa: BLE001 - reported below
                    errors.append(error)

            threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(240)
            for follower in followers:
                follower.cancel()
            assert not errors, errors[:3]
        stop.set()
        sampler.join(5)
    finally:
        stop.set()
        if server.proc is not None:
            server.stop_cleanly()
        schema.drop()
    assert len(seen) > 20
    # Under load the pools were in use (a count of zero would mean PGAPPNAME did not reach PostgreSQL) ...
    assert max(seen) >= least, (max(seen), least, seen[-20:])
    # ... and never beyond the bound.
    assert max(seen) <= most, (max(seen), most)
