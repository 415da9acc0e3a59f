"""Tamper evidence end to end (issue 19), through a real `leeway serve` (SQLite and PostgreSQL): VerifyIntegrity
hands out the log's head as a checkpoint and checks one later (INVALID_ARGUMENT for a malformed one), names a
budget's deleted newest event, and a retried request whose action was deleted answers DATA_LOSS / EVENT_MISSING
(never INTERNAL). tests/faults/test_tamper.py tampers in every other way."""

from __future__ import annotations

import grpc
from leeway.domain.ids import parse_action_id
from leeway.v1 import audit_pb2, audit_pb2_grpc
from leeway_client import DataLossError, RefundDetails
from stored_rows import StoredRows

from .helpers import expect_error, expect_raw_error, policy


def verify(channel, checkpoint: audit_pb2.Checkpoint | None = None, employee_id: str = ""):
    # Full: these tests change events already verified, which only a full verify reads again.
    request = audit_pb2.VerifyIntegrityRequest(employee_id=employee_id, full=True)
    if checkpoint is not None:
        request.checkpoint.CopyFrom(checkpoint)
    return audit_pb2_grpc.AuditServiceStub(channel).VerifyIntegrity(request, timeout=60)


def test_the_head_is_a_checkpoint_to_verify_later(channel, client, uid):
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy("500"))
    first = verify(channel)
    assert first.ok and first.head.position > 0 and len(first.head.log_hash) == 64
    client.record_action(emp, uid("cust"), "5", "EUR", RefundDetails(order_id="o-1"), reason="r")
    later = verify(channel, first.head)
    assert later.ok and later.head.position > first.head.position
    assert not verify(channel, employee_id=emp).HasField("head")

    other = verify(channel, audit_pb2.Checkpoint(position=first.head.position, log_hash="a" * 64))
    assert not other.ok
    assert [(v.kind, v.position) for v in other.violations] == [("CHECKPOINT_MISMATCH", first.head.position)]
    beyond = verify(channel, audit_pb2.Checkpoint(position=later.head.position + 1000, log_hash=later.head.log_hash))
    assert [v.kind for v in beyond.violations] == ["CHECKPOINT_NOT_REACHED"]

    bad = expect_raw_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
                           lambda: verify(channel, audit_pb2.Checkpoint(position=-1, log_hash="nope")))
    assert {f for f, _ in bad.field_violations} == {"checkpoint.position", "checkpoint.log_hash"}
    both = expect_raw_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
                            lambda: verify(channel, first.head, employee_id=emp))
    assert [f for f, _ in both.field_violations] == ["checkpoint"]


def test_a_deleted_newest_event_is_named_and_its_retried_request_is_data_loss(server, channel, client, uid):
    emp, cust, rid = uid("emp"), uid("cust"), uid("req")
    client.open_budget(emp, uid("team"), policy("500"))
    action = client.record_action(emp, cust, "7", "EUR", RefundDetails(order_id="o-1"), reason="r", request_id=rid).action
    head = verify(channel).head
    budget_id, version = parse_action_id(action.action_id)
    rows = StoredRows(server.database_url)
    removed = rows.remove(rows.row(budget_id, version))
    try:
        damaged = verify(channel, head)
        assert sorted(v.kind for v in damaged.violations) == ["CHECKPOINT_MISMATCH", "REFERENCE_MISSING"]
        lost = expect_error(DataLossError, "EVENT_MISSING", lambda: client.record_action(
            emp, cust, "7", "EUR", RefundDetails(order_id="o-1"), reason="r", request_id=rid))
        assert lost.code == grpc.StatusCode.DATA_LOSS and not lost.retryable
        assert lost.metadata == {"resource_name": f"events/{budget_id}/{version}", "referenced_by": f"request_id {rid!r}"}
        listed = expect_error(DataLossError, "EVENT_MISSING", lambda: client.list_actions(customer_id=cust))
        assert (listed.code, listed.metadata["referenced_by"]) == (grpc.StatusCode.DATA_LOSS, f"customers/{cust}")
    finally:
        rows.restore(removed)
    assert verify(channel, head).ok
    again = client.record_action(emp, cust, "7", "EUR", RefundDetails(order_id="o-1"), reason="r", request_id=rid)
    assert again.action == action
