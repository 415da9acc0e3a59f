"""Operations: metrics, correlation ids, `leeway health`, `leeway migrate`, and SIGTERM under load."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from leeway.v1 import audit_pb2, audit_pb2_grpc, budget_pb2, budget_pb2_grpc
from pgschema import PostgresSchema

from leeway_client import GiftDetails, LeewayClient, LeewayError, RefundDetails, from_money

from .helpers import policy


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition, keyed by ``name{labels}``."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The value of the one sample of ``name`` whose labels include ``labels`` (0 if there is none)."""
    total = 0.0
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


def test_metrics_move_after_calls(server, client, uid) -> None:
    url = server.metrics_url()
    before = scrape(url)
    emp, approver = uid("emp"), uid("boss")
    client.open_budget(emp, uid("team"), policy("100", per_action_limit=20, escalate_to=[approver]))
    client.record_action(emp, uid("cust"), "5", "EUR", GiftDetails(gift_type="tea"), reason="r")
    pending = client.record_action(emp, uid("cust"), "30", "EUR", RefundDetails(order_id="o"), reason="r").action
    with pytest.raises(LeewayError):
        client.record_action(emp, uid("cust"), "5", "USD", GiftDetails(gift_type="tea"), reason="r")
    client.approve_action(pending.action_id, approver)
    with grpc.insecure_channel(server.target) as channel:
        streamed = list(
            audit_pb2_grpc.AuditServiceStub(channel).StreamEvents(
                audit_pb2.StreamEventsRequest(employee_id=emp), timeout=10
            )
        )
    after = scrape(url)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    rpc = {"grpc_service": "leeway.v1.ActionService", "grpc_method": "RecordAction", "grpc_type": "unary"}
    assert moved("grpc_server_started_total", **rpc) == 3
    assert moved("grpc_server_handled_total", **rpc, grpc_code="OK") == 2
    assert moved("grpc_server_handled_total", **rpc, grpc_code="FAILED_PRECONDITION") == 1
    assert moved("grpc_server_handling_seconds_count", **rpc) == 3
    assert moved("grpc_server_msg_received_total", **rpc) == 3
    assert moved("grpc_server_msg_sent_total", **rpc) == 2  # the refused call sent no message
    stream = {"grpc_service": "leeway.v1.AuditService", "grpc_method": "StreamEvents", "grpc_type": "server_stream"}
    assert len(streamed) >= 4  # opened, two actions, the approval
    assert moved("grpc_server_msg_sent_total", **stream) == len(streamed)
    assert moved("grpc_server_handled_total", **stream, grpc_code="OK") == 1
    assert moved("grpc_server_handled_total", grpc_method="ApproveAction", grpc_code="OK") == 1
    assert moved("leeway_actions_total", kind="GIFT", outcome="recorded") == 1
    assert moved("leeway_actions_total", kind="REFUND", outcome="pending_approval") == 1
    assert moved("leeway_action_amount_total", kind="REFUND", currency="EUR") == 30
    assert moved("leeway_refusals_total", grpc_method="RecordAction", reason="CURRENCY_MISMATCH") == 1
    assert moved("leeway_action_decisions_total", outcome="approved") == 1
    assert sample(after, "leeway_event_store_up") == 1
    # The writer's counters: each RecordAction is its own batch here (one at a time); none conflicted.
    assert moved("leeway_write_batches_total") >= 3
    assert moved("leeway_write_conflicts_total") == 0
    assert "leeway_write_read_aheads_skipped_total" in {k.partition("{")[0] for k in after}
    assert "leeway_pending_approvals" in {k.partition("{")[0] for k in after}
    # The health service is counted too (the fixture's readiness checks went through it).
    assert sample(after, "grpc_server_handled_total", grpc_service="grpc.health.v1.Health", grpc_code="OK") >= 1


def test_pending_approvals_gauge_follows_the_hold_book(server, client, uid) -> None:
    url = server.metrics_url()
    emp, approver = uid("emp"), uid("boss")
    client.open_budget(emp, uid("team"), policy("100", per_action_limit=1, escalate_to=[approver]))
    start = sample(scrape(url), "leeway_pending_approvals")
    first = client.record_action(emp, uid("c"), "2", "EUR", GiftDetails(gift_type="x"), reason="r").action
    client.record_action(emp, uid("c"), "3", "EUR", GiftDetails(gift_type="x"), reason="r")
    assert sample(scrape(url), "leeway_pending_approvals") == start + 2
    client.deny_action(first.action_id, approver)
    assert sample(scrape(url), "leeway_pending_approvals") == start + 1


def test_projection_position_and_lag_are_exported(server, client, uid) -> None:
    """Each projection's position and lag are gauges; after a read that waits for the projections, the lag of
    the insights projection is 0 and its position is the one the KPIs report."""
    url = server.metrics_url()
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy("100"))
    client.record_action(emp, uid("cust"), "5", "EUR", GiftDetails(gift_type="tea"), reason="r")
    kpis = client.get_kpis(employee_id=emp)
    samples = scrape(url)
    names = {k.partition("{")[0] for k in samples}
    assert {"leeway_projection_position", "leeway_projection_lag_events"} <= names
    for projection in ("insights", "balances", "trail"):
        assert f'leeway_projection_lag_events{{projection="{projection}"}}' in samples
    assert sample(samples, "leeway_projection_position", projection="insights") >= kpis.position
    assert kpis.position > 0 and kpis.flower_stats.gifts_sent == 1


def test_correlation_id_is_returned_and_echoed(channel, uid) -> None:
    stub = budget_pb2_grpc.BudgetServiceStub(channel)
    # An error reply (NOT_FOUND) still carries the correlation id next to the google.rpc.Status details.
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetBudget(budget_pb2.GetBudgetRequest(employee_id=uid("nobody")), timeout=5)
    trailers = dict(caught.value.trailing_metadata())
    assert re.fullmatch(r"[0-9a-f]{32}", trailers["x-correlation-id"])
    assert "grpc-status-details-bin" in trailers
    # The caller's own id is used when it sends one.
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetBudget(
            budget_pb2.GetBudgetRequest(employee_id=uid("nobody")),
            timeout=5,
            metadata=(("x-correlation-id", "crm-trace-42"),),
        )
    assert dict(caught.value.trailing_metadata())["x-correlation-id"] == "crm-trace-42"
    # And on success.
    health = health_pb2_grpc.HealthStub(channel)
    _, call = health.Check.with_call(
        health_pb2.HealthCheckRequest(service=""), timeout=5, metadata=(("x-request-id", "req-7"),)
    )
    assert dict(call.trailing_metadata())["x-correlation-id"] == "req-7"


def test_rpc_log_line_has_method_code_duration_principal_request_and_correlation_id(server, client, uid) -> None:
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy("100"), request_id=f"open-{emp}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in server.logs().splitlines() if f"open-{emp}" in line]
        if lines:
            break
        time.sleep(0.05)
    entry = json.loads(lines[0])
    assert entry["event"] == "rpc" and entry["method"] == "/leeway.v1.BudgetService/OpenBudget"
    assert entry["code"] == "OK" and entry["duration_ms"] >= 0 and entry["principal"] == "anonymous"
    assert re.fullmatch(r"[0-9a-f]{32}", entry["correlation_id"]) and entry["request_id"] == f"open-{emp}"


def leeway_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "leeway.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_health_command(server) -> None:
    ok = leeway_cli("health", "--address", server.target)
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    assert leeway_cli("health", "--address", server.target, "--service", "leeway.v1.TeamService").returncode == 0
    down = leeway_cli("health", "--address", "127.0.0.1:1", "--timeout", "1")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


@pytest.mark.postgres
def test_migrate_creates_tables_when_the_service_may_not(make_server) -> None:
    schema = PostgresSchema("ops")
    try:
        server = make_server(schema.url, {"LEEWAY_CREATE_TABLES": "false"})
        # No tables and not allowed to create them: the service refuses to start and says what to do.
        refused = leeway_cli("serve", env=server.env())
        assert refused.returncode == 1
        assert "startup.store_unavailable" in refused.stderr and "leeway migrate" in refused.stderr
        migrate = leeway_cli("migrate", env=server.env())
        assert migrate.returncode == 0, migrate.stderr
        assert '"migrate.done"' in migrate.stderr
        assert leeway_cli("migrate", env=server.env()).returncode == 0  # idempotent
        server.start()
        with LeewayClient(server.target) as client:
            assert client.open_budget("ann", "t", policy("10")).employee_id == "ann"
            # migrate made the read models' tables too: the projections run and the insights answer.
            assert client.get_kpis(employee_id="ann").position > 0
            assert client.get_audit_trail(employee_id="ann").entries[0].event_type == "Budget.Opened"
            for n in range(3):  # group-commit batches: the writer's checked insert (and its fast path)
                client.record_action("ann", "guest", "1", "EUR", GiftDetails(gift_type="tea"), reason=f"r{n}")
        # ... and the event store's insert functions, which the service uses (no fallback).
        with psycopg.connect(schema.base, autocommit=True) as connection:
            functions = connection.execute(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = %s AND (p.proname LIKE %s OR p.proname LIKE %s) ORDER BY 1",
                (schema.name, "%_insert_locked", "%_insert_checked"),
            ).fetchall()
        assert [name.rsplit("_", 1)[-1] for (name,) in functions] == ["checked"], functions
        server.stop_cleanly()
        logs = server.logs()
        assert "security.off" in logs  # warnings reach this log
        assert "recorder.insert_function_missing" not in logs
    finally:
        schema.drop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds a thread by its name in /proc (Linux)")
@pytest.mark.parametrize("thread", ["leeway-health", "leeway-writer"])
def test_sigterm_that_reaches_another_thread_still_stops_the_server(make_server, engine_url, uid, thread) -> None:
    """The kernel may hand a process's SIGTERM to any of its threads. CPython runs the handler in the main thread
    only when that thread runs Python code: a main thread blocked in Event.wait() without a timeout never did,
    and the server ignored the signal (seen once in CI). kill() on a thread's own id hands it to that thread."""
    server = make_server(engine_url)
    server.start()
    with LeewayClient(server.target) as client:
        client.open_budget(uid("emp"), uid("team"), policy("10"))  # the writer thread exists from here on
    proc = server.proc
    assert proc is not None
    tasks = {task.name: (task / "comm").read_text().strip() for task in Path(f"/proc/{proc.pid}/task").iterdir()}
    tid = next(int(task) for task, name in tasks.items() if name == thread)
    assert tid != proc.pid
    os.kill(tid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"SIGTERM to the {thread} thread did not stop the server:\n{server.logs()}")
    server.proc = None
    assert code == 0, server.logs()
    assert '"shutdown.signal"' in server.logs() and '"shutdown.done"' in server.logs()


def test_sigterm_during_a_stream_of_calls_loses_no_acknowledged_action(make_server, engine_url, uid) -> None:
    """Clients keep recording while the server gets SIGTERM: every acknowledged action survives the restart,
    and the process exits 0 within the grace period."""
    server = make_server(engine_url, {"LEEWAY_SHUTDOWN_GRACE_SECONDS": "5"})
    server.start()
    employees = [uid(f"emp{i}") for i in range(4)]
    with LeewayClient(server.target) as setup:
        for emp in employees:
            setup.open_budget(emp, uid("team"), policy("1000000"))
    acknowledged: list[tuple[str, Decimal]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work(emp: str) -> None:
        with LeewayClient(server.target, retries=0, timeout=5) as client:
            while not stop.is_set():
                try:
                    action = client.record_action(emp, "guest", "1", "EUR", GiftDetails(gift_type="x"), reason="r").action
                except LeewayError:
                    continue  # refused or cut off by the shutdown: not acknowledged
                with lock:
                    acknowledged.append((action.action_id, from_money(action.amount)))

    threads = [threading.Thread(target=work, args=(emp,)) for emp in employees for _ in range(2)]
    for thread in threads:
        thread.start()
    while len(acknowledged) < 40:
        time.sleep(0.01)
    started = time.monotonic()
    code = server.stop()
    took = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(30)
    assert code == 0, server.logs()
    assert took < 5 + 3, f"shutdown took {took:.1f}s with a 5 s grace period"
    assert '"shutdown.done"' in server.logs()
    server.start()
    with LeewayClient(server.target) as client:
        for action_id, value in acknowledged:
            assert from_money(client.get_action(action_id).amount) == value
        spent = sum((from_money(client.get_budget(emp).spent) for emp in employees), Decimal(0))
    assert spent >= len(acknowledged)  # acknowledged ones are all there (unacknowledged ones may be too)
    server.stop_cleanly()


def test_keepalive_and_connection_age_settings_are_applied() -> None:
    from leeway.settings import Settings

    settings = Settings.from_env({"LEEWAY_GRPC_MAX_CONNECTION_AGE_SECONDS": "120", "LEEWAY_GRPC_KEEPALIVE_TIME_SECONDS": "30"})
    options = dict(settings.grpc_options())
    assert options["grpc.max_connection_age_ms"] == 120_000
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert timedelta(milliseconds=options["grpc.max_connection_idle_ms"]) == timedelta(minutes=10)


def test_liveness_health_service_is_serving(channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.postgres
def test_health_follows_the_event_store_and_liveness_does_not(make_server) -> None:
    schema = PostgresSchema("ops")
    try:
        server = make_server(schema.url, {"LEEWAY_HEALTH_INTERVAL_SECONDS": "0.2"})
        server.start()
        with grpc.insecure_channel(server.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> int:
                return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

            assert status("") == health_pb2.HealthCheckResponse.SERVING
            schema.drop()  # the event store's tables are gone: it no longer answers
            deadline = time.monotonic() + 10
            while status("") != health_pb2.HealthCheckResponse.NOT_SERVING and time.monotonic() < deadline:
                time.sleep(0.1)
            assert status("") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert status("leeway.v1.ActionService") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert status("liveness") == health_pb2.HealthCheckResponse.SERVING
        assert leeway_cli("health", "--address", server.target).returncode == 1
        server.stop_cleanly()
    finally:
        schema.drop()
