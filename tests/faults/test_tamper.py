"""Tamper evidence with no blind spot (issue 19), against a real `leeway serve` on PostgreSQL: a history written by
concurrent clients (group-committed batches, holds, decisions, a closing with holds, a reopening, a move, a
reversal), a checkpoint taken over gRPC and by `leeway checkpoint`, and an export by `leeway export`. Then each
kind of tampering, with the events in the database and with the export file, must be named:

- in the database (VerifyIntegrity, with the checkpoint): a budget's newest event deleted (REFERENCE_MISSING; the
  retry of its request_id and the customer's list answer DATA_LOSS, not INTERNAL), a middle event deleted, a
  request record deleted and the log's end cut off (only the checkpoint sees them), an amount edited, the newest
  event of a ledger edited and re-hashed, events reordered;
- in the file (`leeway verify --checkpoint`): emptied, cut, a line deleted, edited, swapped, cut and sealed anew.

Each tampering is undone before the next, and the log verifies again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from integration.test_audit import run_cli
from leeway.adapters.hash_chain import GENESIS, parse_state
from leeway.application.audit import event_hash, log_link, read_export
from leeway.domain.ids import budget_id_for, parse_action_id
from leeway.v1 import audit_pb2, audit_pb2_grpc
from leeway_client import LeewayClient, LeewayError, RefundDetails, make_cap, make_policy
from stored_rows import Row, StoredRows

from .harness import CURRENCY, Cluster

EMPLOYEES = [f"tamper-{i}" for i in range(6)]


@pytest.fixture
def cluster(postgres_url, tmp_path):
    with Cluster(postgres_url, tmp_path, replicas=1) as cluster:
        yield cluster


def refund(client: LeewayClient, employee: str, value: str, rid: str, customer: str = "cust-1"):
    return client.record_action(employee, customer, Decimal(value), CURRENCY, RefundDetails(order_id=rid),
                                reason="tamper test", request_id=rid)


def write_history(client: LeewayClient) -> dict[str, str]:
    """A history with every kind of event; returns the ids worth tampering with."""
    policy = make_policy(currency=CURRENCY, period_allowance="5000", period="YEAR", per_action_limit="40",
                         escalate_to=["sup"], approval_timeout=timedelta(hours=1))
    client.set_team_cap("team-0", make_cap("100000", CURRENCY))
    client.set_customer_cap(make_cap("100000", CURRENCY))
    for i, employee in enumerate(EMPLOYEES):
        client.open_budget(employee, f"team-{i % 2}", policy, request_id=f"open-{employee}")
    held: list[str] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        for n in range(20):
            employee = EMPLOYEES[(worker + n) % len(EMPLOYEES)]
            value = "55" if n % 5 == 0 else f"{1 + n % 9}.{worker}5"
            action = refund(client, employee, value, f"w{worker}-{n}", customer=f"cust-{n % 4}").action
            if value == "55":
                with lock:
                    held.append(action.action_id)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(held) > 10
    for number, action_id in enumerate(held[:6]):
        (client.approve_action if number % 2 else client.deny_action)(action_id, "sup", note="decided")
    client.close_budget(EMPLOYEES[0], "left", request_id="close-0")  # with holds still waiting
    client.reopen_budget(EMPLOYEES[0], "back", request_id="reopen-0")
    client.move_employee(EMPLOYEES[1], "team-0", reason="moved", request_id="move-1")
    recorded = refund(client, EMPLOYEES[2], "1", "to-reverse").action.action_id
    client.reverse_action(recorded, reason="typo", actor_id="sup")
    last = refund(client, EMPLOYEES[3], "3.21", "the-one", customer="cust-9").action.action_id
    return {"last": last}


def verify(stub: audit_pb2_grpc.AuditServiceStub, checkpoint: audit_pb2.Checkpoint | None = None):
    # Full: these tests change events already verified, which only a full verify reads again.
    request = audit_pb2.VerifyIntegrityRequest(full=True)
    if checkpoint is not None:
        request.checkpoint.CopyFrom(checkpoint)
    return stub.VerifyIntegrity(request, timeout=60)


def kinds(reply) -> set[str]:
    return {v.kind for v in reply.violations}


def test_every_tampering_is_named(cluster, postgres_url, tmp_path: Path) -> None:
    target = cluster.target()
    assert target is not None
    client = LeewayClient(target, timeout=30)
    channel = grpc.insecure_channel(target)
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    rows = StoredRows(postgres_url)
    try:
        ids = write_history(client)
        clean = verify(stub)
        assert clean.ok, clean.violations
        head = clean.head
        pinned = run_cli("checkpoint", database_url=postgres_url, cwd=tmp_path)
        assert pinned.returncode == 0 and pinned.stdout.strip() == f"{head.position}:{head.log_hash}", pinned.stderr
        export = tmp_path / "events.jsonl"
        assert run_cli("export", "-o", str(export), database_url=postgres_url, cwd=tmp_path).returncode == 0
        lines = export.read_text(encoding="utf-8").splitlines()
        budget_id, version = parse_action_id(ids["last"])  # type: ignore[misc]

        # ------------------------------------------------------------------ the database
        # Each tampering returns how to undo it.
        Undo = list[Callable[[], None]]

        def removed(*victims: Row) -> Undo:
            for row in victims:
                rows.remove(row)
            return [lambda row=row: rows.restore(row) for row in victims]

        def edited(row: Row, change: Callable[[dict], None], *, rehash: bool) -> Undo:
            state = parse_state(row.state)
            change(state)
            if rehash:
                state["__hash__"] = event_hash(state["__prev__"], str(row.aggregate_id), row.version, row.topic, state)
            rows.set_state(row.aggregate_id, row.version, json.dumps(state).encode())
            return [lambda: rows.set_state(row.aggregate_id, row.version, row.state)]

        def newest_of_budget() -> Undo:
            return removed(rows.row(budget_id, version))

        def middle_of_budget() -> Undo:
            return removed(rows.row(budget_id_for(EMPLOYEES[4]), 3))

        def a_request_record() -> Undo:
            inside = rows.last(40)[:-10]  # not at the log's end (that is the next case)
            return removed(next(r for r in reversed(inside) if r.topic.endswith("RequestRecord.Recorded")))

        def the_end() -> Undo:
            return removed(*rows.last(5))

        def content() -> Undo:
            return edited(rows.row(budget_id, version), lambda s: s.update(reason="nothing to see"), rehash=False)

        def a_ledger_rehashed() -> Undo:
            row = next(r for r in reversed(rows.last(10)) if r.topic.endswith("CustomerLedger.ActionNoted"))
            return edited(row, lambda s: s.update(employee_id="someone-else"), rehash=True)

        def swapped_across_aggregates() -> Undo:
            first, second = rows.last(2)
            assert first.aggregate_id != second.aggregate_id
            rows.swap(first, second)
            return [lambda: rows.swap(rows.row(first.aggregate_id, first.version),
                                      rows.row(second.aggregate_id, second.version))]

        def swapped_in_a_budget() -> Undo:
            one, two = rows.row(budget_id_for(EMPLOYEES[5]), 2), rows.row(budget_id_for(EMPLOYEES[5]), 3)
            rows.set_state(one.aggregate_id, 2, two.state)
            rows.set_state(one.aggregate_id, 3, one.state)
            return [lambda: rows.set_state(one.aggregate_id, 2, one.state),
                    lambda: rows.set_state(one.aggregate_id, 3, two.state)]

        database_cases: list[tuple[str, Callable[[], Undo], set[str], set[str]]] = [
            # (what, tamper, named without the checkpoint, named with it)
            ("a budget's newest event deleted", newest_of_budget, {"REFERENCE_MISSING"},
             {"REFERENCE_MISSING", "CHECKPOINT_MISMATCH"}),
            ("a middle event deleted", middle_of_budget, {"VERSION_GAP"}, {"VERSION_GAP", "CHECKPOINT_MISMATCH"}),
            ("a request record deleted", a_request_record, set(), {"CHECKPOINT_MISMATCH"}),
            ("the log's last 5 events deleted", the_end, set(), {"CHECKPOINT_NOT_REACHED"}),
            ("an event's content edited", content, {"HASH_MISMATCH"}, {"HASH_MISMATCH"}),
            ("a ledger's newest event edited and re-hashed", a_ledger_rehashed, set(), {"CHECKPOINT_MISMATCH"}),
            ("two events of different aggregates swapped", swapped_across_aggregates, set(), {"CHECKPOINT_MISMATCH"}),
            ("two events of one budget swapped", swapped_in_a_budget, {"HASH_MISMATCH"},
             {"HASH_MISMATCH", "CHECKPOINT_MISMATCH"}),
        ]
        seen: dict[str, tuple[set[str], set[str]]] = {}
        for what, tamper, _, _ in database_cases:
            undo = tamper()
            seen[what] = (kinds(verify(stub)), kinds(verify(stub, head)))
            if what == "a budget's newest event deleted":
                _assert_data_loss(client, budget_id, version)
            for step in undo:
                step()
            again = verify(stub, head)
            assert again.ok, (what, again.violations)
        assert seen == {what: (plain, pinned_) for what, _, plain, pinned_ in database_cases}

        # ------------------------------------------------------------------ the export file
        newest_line = next(i for i, line in enumerate(lines) if f'"version":{version},' in line
                           and str(budget_id) in line)
        records = list(read_export(lines[:-11]))
        value = GENESIS
        for record in records:
            value = log_link(value, record.position, record.state["__hash__"])
        resealed = lines[:-11] + [json.dumps({"seal": {"position": records[-1].position, "events": len(records),
                                                        "log_hash": value}})]
        edited_line = lines[newest_line].replace('"tamper test"', '"nothing to see"')
        assert edited_line != lines[newest_line]
        file_cases: list[tuple[str, list[str], set[str]]] = [
            ("intact", lines, set()),
            ("emptied", [], {"EXPORT_TRUNCATED", "CHECKPOINT_NOT_REACHED"}),
            ("cut at the end", lines[:-10], {"EXPORT_TRUNCATED", "CHECKPOINT_NOT_REACHED"}),
            ("a budget's newest line deleted", lines[:newest_line] + lines[newest_line + 1:],
             {"REFERENCE_MISSING", "SEAL_MISMATCH", "CHECKPOINT_MISMATCH"}),
            ("a line edited", lines[:newest_line] + [edited_line] + lines[newest_line + 1:], {"HASH_MISMATCH"}),
            ("two lines swapped", lines[:-3] + [lines[-2], lines[-3], lines[-1]],
             {"OUT_OF_ORDER", "SEAL_MISMATCH", "CHECKPOINT_MISMATCH"}),
            ("cut and sealed anew", resealed, {"CHECKPOINT_NOT_REACHED"}),
        ]
        found: dict[str, set[str]] = {}
        for what, content, _ in file_cases:
            file = tmp_path / "tampered.jsonl"
            file.write_text("".join(line + "\n" for line in content), encoding="utf-8")
            checked = run_cli("verify", "--checkpoint", f"{head.position}:{head.log_hash}", str(file), cwd=tmp_path)
            named = {line.split(": ")[2] for line in checked.stdout.splitlines() if line.startswith("BROKEN")}
            assert checked.returncode == (1 if named else 0), (what, checked.stdout, checked.stderr)
            found[what] = named
        assert found == {what: expected for what, _, expected in file_cases}
    finally:
        client.close()
        channel.close()


def _assert_data_loss(client: LeewayClient, budget_id, version: int) -> None:
    """The request whose action is gone, retried, and the list of its customer: DATA_LOSS, never INTERNAL."""
    for call in (
        lambda: refund(client, EMPLOYEES[3], "3.21", "the-one", customer="cust-9"),
        lambda: client.list_actions(customer_id="cust-9"),
    ):
        with pytest.raises(LeewayError) as lost:
            call()
        assert (lost.value.code, lost.value.reason) == (grpc.StatusCode.DATA_LOSS, "EVENT_MISSING"), lost.value
        assert lost.value.metadata["resource_name"] == f"events/{budget_id}/{version}"
