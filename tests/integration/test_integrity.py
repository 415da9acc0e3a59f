"""Tamper evidence with no blind spot (issue 19), on a real event store (SQLite and PostgreSQL): what the log points
at must be there (the newest event of an aggregate included), checkpoints kept outside the database pin everything up
to their position, exports are sealed, and a request whose action was deleted answers DATA_LOSS, never INTERNAL.

(test_audit.py covers the hash chains themselves; tests/faults/test_tamper.py does all of it through a server.)"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from builders import action_cmd, make_policy, open_cmd, usd
from integration.test_audit import build_history, run_cli
from leeway.application import audit
from leeway.application.audit import Checkpoint
from leeway.application.commands import CloseBudget, SetTeamCap
from leeway.domain.errors import DataLoss, InvalidArgument, NotFound
from leeway.domain.ids import budget_id_for, parse_action_id
from leeway.domain.ledgers import TeamLedger
from leeway.domain.periods import PeriodKind
from leeway.domain.tally import Cap
from leeway.adapters.hash_chain import GENESIS
from leeway.adapters.hash_chain import parse_state
from stored_rows import Row


def kinds(result) -> list[str]:
    return sorted(v.kind for v in result.violations)


def head_by_hand(app) -> Checkpoint:
    """The log hash as the README defines it, from each event's position and stored hash alone."""
    value, position = GENESIS, 0
    for n in app.all_notifications():
        position = n.id
        value = hashlib.sha256(f"{value}\n{n.id}\n{parse_state(n.state)['__hash__']}".encode()).hexdigest()
    return Checkpoint(position, value)


# ============================================================================ checkpoints


def test_the_head_is_a_checkpoint_that_verifies_later(app, clock) -> None:
    empty = app.verify_integrity(full=True)
    assert empty.ok and empty.head == Checkpoint(0, GENESIS)
    build_history(app, clock)
    first = app.verify_integrity(full=True)
    assert first.ok and first.head == head_by_hand(app)
    assert first.head.position == app.recorder.max_notification_id()
    assert Checkpoint.parse(str(first.head)) == first.head

    app.execute(action_cmd("emp-2", 1))
    later = app.verify_integrity(full=True, checkpoints=[first.head, empty.head])
    assert later.ok, later.violations
    assert later.head.position > first.head.position and later.head == head_by_hand(app)
    assert app.verify_integrity("emp-1").head is None, "one employee's chain is no checkpoint of the log"
    with pytest.raises(InvalidArgument) as both:
        app.verify_integrity("emp-1", checkpoints=[first.head])
    assert [v.field for v in both.value.violations] == ["checkpoint"]
    for junk in ("", "12", "12:abc", "x:" + "0" * 64, "1:" + "A" * 64):
        with pytest.raises(ValueError):
            Checkpoint.parse(junk)


# ============================================================================ the newest event of an aggregate


def test_deleting_a_budgets_newest_event_is_named_and_its_request_answers_data_loss(app, clock, rows) -> None:
    build_history(app, clock)
    action, _ = app.execute(action_cmd("emp-2", "3.21", customer="cust-9", request_id="the-one"))
    checkpoint = app.verify_integrity(full=True).head
    budget_id, version = parse_action_id(action.action_id)  # type: ignore[misc]
    assert app.get_budget("emp-2").version == version, "the action is the budget's newest event"
    removed = rows.remove(rows.row(budget_id, version))

    result = app.verify_integrity(full=True)
    assert kinds(result) == ["REFERENCE_MISSING"], result.violations
    assert str(budget_id) in result.violations[0].description and f"version {version}" in result.violations[0].description
    assert kinds(app.verify_integrity(full=True, checkpoints=[checkpoint])) == ["CHECKPOINT_MISMATCH", "REFERENCE_MISSING"]

    with pytest.raises(DataLoss) as lost:
        app.execute(action_cmd("emp-2", "3.21", customer="cust-9", request_id="the-one"))
    assert lost.value.reason == "EVENT_MISSING"
    assert lost.value.metadata == {"resource_name": f"events/{budget_id}/{version}", "referenced_by": "request_id 'the-one'"}
    with pytest.raises(DataLoss):
        app.list_actions("", "cust-9", None, 50, "")
    with pytest.raises(NotFound) as gone:
        app.get_action(action.action_id)
    assert gone.value.reason == "ACTION_NOT_FOUND"

    rows.restore(removed)
    assert app.verify_integrity(full=True, checkpoints=[checkpoint]).ok
    again, _ = app.execute(action_cmd("emp-2", "3.21", customer="cust-9", request_id="the-one"))
    assert again == action


def _closed_budget(app, rows) -> Row:
    app.execute(CloseBudget(request_id="close-emp-2", employee_id="emp-2", reason="left"))
    return rows.row(budget_id_for("emp-2"), app.get_budget("emp-2").version)


def _team_cap(app, rows) -> Row:
    app.execute(SetTeamCap(request_id="cap-b", team_id="team-b", cap=Cap(usd(900), PeriodKind.MONTH)))
    ledger = app.get_or_none(TeamLedger.create_id("team-b"))
    return rows.row(ledger.id, ledger.version)


def _request_record(app, rows) -> Row:
    app.execute(action_cmd("emp-2", 1, request_id="last-request"))
    return rows.last(1)[0]


def _opened_budget(app, rows) -> Row:
    app.execute(open_cmd("emp-9", "team-z"))
    return rows.row(budget_id_for("emp-9"), 1)


@pytest.mark.parametrize(
    ("newest", "without_checkpoint"),
    [
        pytest.param(_closed_budget, ["REFERENCE_MISSING"], id="a budget's Closed (its request record names it)"),
        pytest.param(_team_cap, ["REFERENCE_MISSING"], id="a team ledger's CapSet (SetTeamCap's record names it)"),
        pytest.param(_opened_budget, ["REFERENCE_MISSING"], id="a whole budget (roster, directory, record name it)"),
        pytest.param(_request_record, [], id="a request record (nothing names it: only a checkpoint tells)"),
    ],
)
def test_deleting_the_newest_event_of_an_aggregate(
    app, clock, rows, newest: Callable[..., Row], without_checkpoint: list[str]
) -> None:
    build_history(app, clock)
    row = newest(app, rows)
    checkpoint = app.verify_integrity(full=True).head
    rows.remove(row)
    assert kinds(app.verify_integrity(full=True)) == without_checkpoint
    found = kinds(app.verify_integrity(full=True, checkpoints=[checkpoint]))
    assert "CHECKPOINT_MISMATCH" in found or "CHECKPOINT_NOT_REACHED" in found
    rows.restore(row)
    assert app.verify_integrity(full=True, checkpoints=[checkpoint]).ok


# ============================================================================ what only a checkpoint sees


def test_what_only_a_checkpoint_sees(app, clock, rows) -> None:
    build_history(app, clock)
    checkpoint = app.verify_integrity(full=True).head

    # Two events of different aggregates swap places: every chain still holds.
    first, second = rows.last(2)
    assert first.aggregate_id != second.aggregate_id
    rows.swap(first, second)
    assert kinds(app.verify_integrity(full=True)) == []
    assert kinds(app.verify_integrity(full=True, checkpoints=[checkpoint])) == ["CHECKPOINT_MISMATCH"]
    rows.swap(rows.row(first.aggregate_id, first.version), rows.row(second.aggregate_id, second.version))
    assert app.verify_integrity(full=True, checkpoints=[checkpoint]).ok

    # The newest event of an aggregate (a customer's ledger) rewritten with a new, valid hash.
    assert first.topic.endswith("CustomerLedger.ActionNoted"), first.topic
    state = parse_state(first.state)
    state["employee_id"] = "someone-else"
    state["__hash__"] = audit.event_hash(state["__prev__"], str(first.aggregate_id), first.version, first.topic, state)
    rows.set_state(first.aggregate_id, first.version, json.dumps(state).encode())
    assert kinds(app.verify_integrity(full=True)) == []
    assert kinds(app.verify_integrity(full=True, checkpoints=[checkpoint])) == ["CHECKPOINT_MISMATCH"]
    rows.set_state(first.aggregate_id, first.version, first.state)

    # The end of the log cut off.
    tail = rows.last(3)
    for row in tail:
        rows.remove(row)
    found = kinds(app.verify_integrity(full=True, checkpoints=[checkpoint]))
    assert "CHECKPOINT_NOT_REACHED" in found and "CHECKPOINT_MISMATCH" not in found
    for row in tail:
        rows.restore(row)
    # A checkpoint of another log, and one beyond this log's end.
    other = Checkpoint(checkpoint.position, "f" * 64)
    beyond = Checkpoint(checkpoint.position + 10, checkpoint.log_hash)
    result = app.verify_integrity(full=True, checkpoints=[checkpoint, other, beyond])
    assert kinds(result) == ["CHECKPOINT_MISMATCH", "CHECKPOINT_NOT_REACHED"]
    assert {v.position for v in result.violations} == {checkpoint.position}


# ============================================================================ exports


def lines_of(app, after: int = 0) -> list[str]:
    return list(app.export(after))


def test_an_export_is_sealed_and_any_cut_is_named(app, clock) -> None:
    build_history(app, clock)
    head = app.verify_integrity(full=True).head
    lines = lines_of(app)
    # "personal": how the readable view of sealed personal fields is written (issue 22; the default, clear).
    assert json.loads(lines[0]) == {"header": {"format": 1, "after": 0, "after_hash": GENESIS, "personal": "clear"}}
    assert json.loads(lines[-1]) == {"seal": {"position": head.position, "events": len(lines) - 2, "log_hash": head.log_hash}}
    whole = audit.verify_export(lines, checkpoints=[head])
    assert whole.ok and whole.head == head

    def check(changed: list[str], *checkpoints: Checkpoint) -> list[str]:
        return kinds(audit.verify_export(changed, checkpoints=checkpoints))

    assert check([]) == ["EXPORT_TRUNCATED", "EXPORT_TRUNCATED"], "an empty file"
    assert check(lines[:-5]) == ["EXPORT_TRUNCATED"], "cut at the end"
    assert check(lines[:-1]) == ["EXPORT_TRUNCATED"], "the seal cut off"
    assert check(lines[1:]) == ["EXPORT_TRUNCATED"], "the header cut off"
    assert check(lines + [lines[3]]) == ["SEAL_MISMATCH"], "a line after the seal"
    swapped = list(lines)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    assert check(swapped) == ["OUT_OF_ORDER", "SEAL_MISMATCH"]
    # The newest event of a budget left out: the seal does not add up, and the ledgers point at it.
    newest = max(i for i, line in enumerate(lines) if '"aggregate_id":"' + str(budget_id_for("emp-1")) in line)
    assert check(lines[:newest] + lines[newest + 1:]) == ["REFERENCE_MISSING", "SEAL_MISMATCH"]
    # Cut and sealed anew (the seal is no signature): only a checkpoint kept elsewhere tells.
    cut = lines[:-4]
    records = list(audit.read_export(cut))
    value = GENESIS
    for record in records:
        value = audit.log_link(value, record.position, record.state["__hash__"])
    resealed = cut + [json.dumps({"seal": {"position": records[-1].position, "events": len(records), "log_hash": value}})]
    assert check(resealed) == []
    assert check(resealed, head) == ["CHECKPOINT_NOT_REACHED"]
    # Written before exports were sealed: records only.
    assert check(lines[1:-1]) == ["EXPORT_TRUNCATED", "EXPORT_TRUNCATED"]


def test_an_export_after_a_position_continues_the_checkpoint_there(app, clock) -> None:
    build_history(app, clock)
    middle = app.verify_integrity(full=True).head
    app.execute(action_cmd("emp-2", 2))
    app.execute(open_cmd("emp-7", "team-b", make_policy(100)))
    head = app.verify_integrity(full=True).head
    rest = lines_of(app, middle.position)
    assert json.loads(rest[0])["header"] == {"format": 1, "after": middle.position, "after_hash": middle.log_hash,
                                             "personal": "clear"}
    assert audit.verify_export(rest, checkpoints=[middle, head]).ok
    assert kinds(audit.verify_export(rest, checkpoints=[Checkpoint(middle.position, "0" * 64)])) == ["CHECKPOINT_MISMATCH"]
    with pytest.raises(ValueError):
        audit.verify_export(rest, checkpoints=[Checkpoint(middle.position - 1, middle.log_hash)])
    nothing = lines_of(app, head.position)
    assert [json.loads(line) for line in nothing] == [
        {"header": {"format": 1, "after": head.position, "after_hash": head.log_hash, "personal": "clear"}},
        {"seal": {"position": head.position, "events": 0, "log_hash": head.log_hash}},
    ]
    assert audit.verify_export(nothing, checkpoints=[head]).ok


# ============================================================================ the command line


def test_checkpoint_export_and_verify_on_the_command_line(app, clock, database_url, tmp_path: Path, rows) -> None:
    build_history(app, clock)
    head = app.verify_integrity(full=True).head
    pinned = run_cli("checkpoint", database_url=database_url, cwd=tmp_path)
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.strip() == str(head)
    assert "OK" in pinned.stderr

    file = tmp_path / "events.jsonl"
    exported = run_cli("export", "-o", str(file), database_url=database_url, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert f"checkpoint {head}" in exported.stderr
    checked = run_cli("verify", "--checkpoint", str(head), str(file), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 checkpoint checked: OK" in checked.stderr

    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(file.read_text(encoding="utf-8").splitlines()[:-3]) + "\n", encoding="utf-8")
    broken = run_cli("verify", "--checkpoint", str(head), str(cut), cwd=tmp_path)
    assert broken.returncode == 1
    assert "EXPORT_TRUNCATED" in broken.stdout and "CHECKPOINT_NOT_REACHED" in broken.stdout
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    nothing = run_cli("verify", str(empty), cwd=tmp_path)
    assert nothing.returncode == 1 and "EXPORT_TRUNCATED" in nothing.stdout
    assert run_cli("verify", "--checkpoint", "12:nothex", str(file), cwd=tmp_path).returncode == 2

    rows.remove(rows.row(budget_id_for("emp-1"), app.get_budget("emp-1").version))
    damaged = run_cli("checkpoint", "--checkpoint", str(head), database_url=database_url, cwd=tmp_path)
    assert damaged.returncode == 1
    found = [line.split(": ")[2] for line in damaged.stdout.splitlines() if line.startswith("BROKEN")]
    assert sorted(found) == ["CHECKPOINT_MISMATCH", "REFERENCE_MISSING"], damaged.stdout
    assert "BROKEN" in damaged.stderr
