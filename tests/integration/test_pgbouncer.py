"""Leeway behind PgBouncer in transaction mode (issue 21: "works behind PgBouncer in transaction mode").

A real PgBouncer (Debian's, 1.18: it does not carry server-side prepared statements over, which 1.21+ can with
``max_prepared_statements``) in front of the test PostgreSQL, ``pool_mode = transaction`` and a server pool of 4,
and a real `leeway serve` (with its projections child) through it: tables made by `leeway migrate` directly
against PostgreSQL (creating them takes a session-level advisory lock, which transaction pooling cannot hold),
``LEEWAY_CREATE_TABLES=false`` and ``LEEWAY_POSTGRES_PREPARED_STATEMENTS=false`` on the server. Under concurrent
writes, reads, KPIs and following streams every answer is exact, the log verifies, and the replica's 30
connections share PgBouncer's 4. Without the setting the server's first statements fail ("prepared statement
... already exists"), which is what the README's "PostgreSQL connections" says.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from integration.test_audit import run_cli
from integration.test_connections import socket_port
from pgschema import PostgresSchema

pytestmark = pytest.mark.postgres

PGBOUNCER = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
SERVER_POOL = 4


class PgBouncer:
    """A PgBouncer in transaction mode in front of the test database; ``url(schema)`` reaches it."""

    def __init__(self) -> None:
        base = urlsplit(os.environ.get("LEEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
        self.user = base.username or "postgres"
        self.dbname = base.path.lstrip("/") or "test"
        self.port = socket_port()
        # PgBouncer refuses to run as root: as root it is started with -u postgres, which must read its files.
        self.dir = Path(tempfile.mkdtemp(prefix="leeway-pgbouncer-"))
        self.dir.chmod(0o777)
        (self.dir / "users.txt").write_text(f'"{self.user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{self.dbname} = host={base.hostname or '127.0.0.1'} port={base.port or 5432} dbname={self.dbname}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {SERVER_POOL}\nmax_client_conn = 500\n"
            f"admin_users = {self.user}\nignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        for path in self.dir.iterdir():
            path.chmod(0o666)
        command = [PGBOUNCER or "pgbouncer", str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "postgres"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2, autocommit=True) as probe:
                    probe.execute("SELECT 1")
                return
            except psycopg.Error:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"PgBouncer did not start: {self.log()}") from None
                time.sleep(0.1)

    def url(self, schema: str = "") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}" + (f"?schema={schema}" if schema else "")

    def pools(self) -> dict[str, int]:
        """PgBouncer's own SHOW POOLS row of the test database: clients and server connections."""
        with psycopg.connect(f"postgresql://{self.user}@127.0.0.1:{self.port}/pgbouncer", autocommit=True,
                             prepare_threshold=None) as admin:
            cursor = admin.cursor()
            cursor.execute("SHOW POOLS")  # the admin console speaks the simple protocol only
            names = [column.name for column in cursor.description or ()]
            for row in cursor.fetchall():
                found = dict(zip(names, row, strict=True))
                if found["database"] == self.dbname:
                    return {key: int(value) for key, value in found.items() if isinstance(value, int)}
        return {}

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    if PGBOUNCER is None:
        if os.environ.get("CI"):
            pytest.fail("PgBouncer is required in CI (.ci/run installs Debian's pgbouncer)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    started = PgBouncer()
    try:
        yield started
    finally:
        started.stop()


def migrate(url: str) -> None:
    """`leeway migrate` directly against PostgreSQL (not through PgBouncer)."""
    done = run_cli("migrate", database_url=url)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_server_through_pgbouncer_in_transaction_mode_answers_exactly(bouncer: PgBouncer, tmp_path) -> None:
    import grpc
    from e2e.conftest import ServerProcess
    from e2e.helpers import policy
    from leeway.v1 import (action_pb2, action_pb2_grpc, audit_pb2, audit_pb2_grpc, budget_pb2, budget_pb2_grpc,
                           insights_pb2, insights_pb2_grpc)
    from leeway_client import LeewayClient, RefundDetails

    schema = PostgresSchema("bouncer")
    migrate(schema.url)
    server = ServerProcess(bouncer.url(schema.name), tmp_path, {
        "LEEWAY_CREATE_TABLES": "false", "LEEWAY_POSTGRES_PREPARED_STATEMENTS": "false",
        "LEEWAY_RATE_LIMIT_PER_SECOND": "0",
    })
    try:
        server.start()
        with grpc.insecure_channel(server.target) as channel:
            client = LeewayClient(channel=channel, timeout=30.0)
            employees = [f"emp-{i}" for i in range(6)]
            for employee in employees:
                client.open_budget(employee, f"team-{int(employee[-1]) % 2}", policy("100000"))
            budgets = budget_pb2_grpc.BudgetServiceStub(channel)
            actions = action_pb2_grpc.ActionServiceStub(channel)
            audit = audit_pb2_grpc.AuditServiceStub(channel)
            insights = insights_pb2_grpc.InsightsServiceStub(channel)
            followers = [audit.StreamEvents(audit_pb2.StreamEventsRequest(follow=True)) for _ in range(4)]
            errors: list[BaseException] = []
            during: list[dict[str, int]] = []

            def work(n: int) -> None:
                try:
                    for i in range(15):
                        employee = employees[(n + i) % len(employees)]
                        client.record_action(employee, f"c-{n}-{i}", "1.25", "EUR", RefundDetails(order_id="o"),
                                             reason="r", request_id=f"r-{n}-{i}")
                        # A retry answers from the request record, through another server connection.
                        client.record_action(employee, f"c-{n}-{i}", "1.25", "EUR", RefundDetails(order_id="o"),
                                             reason="r", request_id=f"r-{n}-{i}")
                        budgets.GetBudget(budget_pb2.GetBudgetRequest(employee_id=employee), timeout=30)
                        actions.ListActions(action_pb2.ListActionsRequest(employee_id=employee, page_size=10),
                                            timeout=30)
                        insights.GetKpis(insights_pb2.GetKpisRequest(), timeout=30)
                        audit.GetAuditTrail(audit_pb2.GetAuditTrailRequest(employee_id=employee, page_size=10),
                                            timeout=30)
                        if i % 5 == 0:
                            during.append(bouncer.pools())
                except BaseException as error:  # noqa: BLE001 - reported below
                    errors.append(error)

            threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(240)
            assert not errors, (errors[:3], server.logs()[-3000:])

            # Exact answers: 120 actions of 1.25 EUR, each recorded once however often it was sent.
            for index, employee in enumerate(employees):
                count = sum(1 for n in range(8) for i in range(15) if (n + i) % len(employees) == index)
                budget = client.get_budget(employee)
                spent = Decimal(budget.spent.units) + Decimal(budget.spent.nanos) / Decimal(10**9)
                assert (spent, budget.period_action_count) == (Decimal("1.25") * count, count)
            verified = audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(), timeout=60)
            assert verified.ok and verified.events_checked > 120
            # The projections child reads and writes through PgBouncer too: the KPIs catch up with every action.
            deadline = time.monotonic() + 30
            while insights.GetKpis(insights_pb2.GetKpisRequest(), timeout=30).action_count != 120:
                assert time.monotonic() < deadline, "the read models did not catch up through PgBouncer"
                time.sleep(0.2)
            # The followers got the whole log in order.
            seen = []
            for message in followers[0]:
                seen.append(message.event.position)
                if message.event.position >= verified.head.position:
                    break
            assert seen == sorted(seen) and seen[-1] == verified.head.position
            for follower in followers:
                follower.cancel()
        # The replica's pooled connections (2 pools of 10, the child's 2 of 5) are PgBouncer's clients; PostgreSQL
        # saw no more than PgBouncer's server pool of 4 for them.
        assert during and max(row.get("cl_active", 0) + row.get("cl_waiting", 0) for row in during) >= 20, during
        assert all(row.get("sv_active", 0) + row.get("sv_idle", 0) + row.get("sv_used", 0) <= SERVER_POOL
                   for row in during), during
        assert "prepared statement" not in server.logs()
    finally:
        if server.proc is not None:
            server.stop_cleanly()
        schema.drop()


def test_without_the_setting_the_server_cannot_use_pgbouncer_in_transaction_mode(bouncer: PgBouncer) -> None:
    """What the setting is for: the library prepares its statements (``prepare=True``), and a prepared statement
    made on one server connection is unknown, or already taken, on the next."""
    from leeway.application import LeewayApplication
    from leeway.settings import Settings

    schema = PostgresSchema("bouncer")
    try:
        migrate(schema.url)
        failures: list[str] = []
        for prepared in (True, False):
            settings = Settings(database_url=bouncer.url(schema.name), create_tables=False, postgres_pool_size=3,
                                postgres_prepared_statements=prepared)
            app = LeewayApplication(env=settings.eventsourcing_env())
            errors: list[BaseException] = []

            def read(app: Any = app, errors: list[BaseException] = errors) -> None:
                try:
                    for _ in range(30):
                        app.recorder.max_notification_id()
                        app.recorder.select_notifications(start=1, limit=10)
                except BaseException as error:  # noqa: BLE001 - counted below
                    errors.append(error)

            try:
                threads = [threading.Thread(target=read) for _ in range(6)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(60)
            finally:
                app.close()
            failures.append(" / ".join(sorted({str(error)[:80] for error in errors})))
        assert "prepared statement" in failures[0], failures
        assert failures[1] == "", failures
    finally:
        schema.drop()
