"""Incremental VerifyIntegrity (issue 21), on SQLite and PostgreSQL: a verify of the whole log that finds nothing
broken stores a verified checkpoint (its head and each aggregate's last hash) in the database, and the next one reads
only the events after it, linking them to the stored hashes. What it cannot see (rows changed at or before the
checkpoint) the full verify and `leeway verify` of an export still find; rewriting verified rows cannot make new
events look linked, and a forged stored hash is reported, never trusted silently."""

from __future__ import annotations

import json

from builders import action_cmd, bend_cmd
from integration.test_audit import build_history, run_cli
from leeway.adapters.hash_chain import HASH, PREV, event_hash, parse_state
from leeway.application.audit import Checkpoint
from leeway.application.integrity import START
from leeway.application.verified import HEADS_TABLE, VerifiedStore
from leeway.domain.ids import budget_id_for
from stored_rows import StoredRows


def kinds(result) -> list[str]:
    return sorted(v.kind for v in result.violations)


def rewrite(rows: StoredRows, budget, version: int, change) -> str:
    """Changes the stored event (budget, version) with ``change(state)`` and gives it the hash of its new content
    (as a forger would); returns that hash."""
    topic, raw = rows.get(budget, version)
    state = parse_state(raw)
    change(state)
    state[HASH] = event_hash(state[PREV], str(budget), version, topic, state)
    rows.set_state(budget, version, json.dumps(state).encode())
    return state[HASH]


def test_a_reverify_reads_only_what_is_new(app, clock) -> None:
    build_history(app, clock)
    first = app.verify_integrity()
    assert first.ok and first.verified_from is None  # nothing stored yet: the whole log
    assert first.events_checked == first.head.position == app.recorder.max_notification_id()

    nothing_new = app.verify_integrity()
    assert nothing_new.ok and nothing_new.events_checked == 0
    assert nothing_new.verified_from == first.head and nothing_new.head == first.head

    app.execute(action_cmd("emp-2", 1, customer="cust-9"))
    app.execute(bend_cmd("emp-2", customer="cust-1"))
    later = app.verify_integrity()
    assert later.ok, later.violations
    assert later.verified_from == first.head
    assert later.events_checked == app.recorder.max_notification_id() - first.head.position > 0
    full = app.verify_integrity(full=True, store=False)
    assert full.ok and full.verified_from is None and full.events_checked == later.head.position
    assert later.head == full.head  # the same log hash, continued from the stored one
    # Another application on the same database (a second replica) continues from it too.
    assert app.verify_integrity().verified_from == later.head


def test_a_new_event_changed_is_found_and_the_checkpoint_stays(app, clock, rows) -> None:
    build_history(app, clock)
    first = app.verify_integrity()
    app.execute(action_cmd("emp-2", 3, customer="cust-9"))
    budget = budget_id_for("emp-2")
    version = app.repository.get(budget).version
    rows.edit(budget, version, b'"cust-9"', b'"cust-8"')

    broken = app.verify_integrity()
    assert broken.verified_from == first.head
    assert [(v.kind, v.aggregate_id, v.version) for v in broken.violations] == [
        ("HASH_MISMATCH", str(budget), version)
    ]
    # A broken verify stores nothing: the next one starts from the same checkpoint, and finds it again.
    again = app.verify_integrity()
    assert again.verified_from == first.head and kinds(again) == ["HASH_MISMATCH"]


def test_an_old_event_changed_is_found_by_the_full_verify_and_leeway_verify(
    app, clock, rows, database_url, tmp_path
) -> None:
    build_history(app, clock)
    head = app.verify_integrity().head
    budget = budget_id_for("emp-1")
    rewrite(rows, budget, 2, lambda state: state.update(reason="nothing to see"))  # content and hash both

    assert app.verify_integrity().ok  # not read again: only what follows the verified checkpoint is
    full = app.verify_integrity(full=True)
    assert [(v.kind, v.aggregate_id, v.version) for v in full.violations] == [
        ("PREV_HASH_MISMATCH", str(budget), 3)
    ]
    with_checkpoint = app.verify_integrity(checkpoints=[head])  # at the stored position: a full verify
    assert with_checkpoint.verified_from is None
    assert kinds(with_checkpoint) == ["CHECKPOINT_MISMATCH", "PREV_HASH_MISMATCH"]

    file = tmp_path / "log.jsonl"
    assert run_cli("export", "-o", str(file), database_url=database_url, cwd=tmp_path).returncode == 0
    checked = run_cli("verify", str(file), cwd=tmp_path)
    assert checked.returncode == 1
    assert f"aggregate {budget} version 3: PREV_HASH_MISMATCH" in checked.stdout


def test_rewriting_verified_rows_cannot_make_new_events_look_linked(app, clock, rows) -> None:
    build_history(app, clock)
    first = app.verify_integrity()
    budget = budget_id_for("emp-2")
    old = app.repository.get(budget).version
    app.execute(action_cmd("emp-2", 4, customer="cust-9"))
    newest = app.repository.get(budget).version
    # The forger rewrites the budget's last verified event and re-links the new ones to it: one consistent chain.
    forged = rewrite(rows, budget, old, lambda state: state.update(reason="rewritten"))
    for version in range(old + 1, newest + 1):
        forged = rewrite(rows, budget, version, lambda state, previous=forged: state.update({PREV: previous}))

    found = app.verify_integrity()
    assert found.verified_from == first.head
    assert [(v.kind, v.aggregate_id, v.version) for v in found.violations] == [
        ("PREV_HASH_MISMATCH", str(budget), old + 1)
    ]
    # The full verify sees a consistent chain; what pins the old event is a checkpoint kept elsewhere.
    assert "PREV_HASH_MISMATCH" not in kinds(app.verify_integrity(full=True, store=False))
    assert "CHECKPOINT_MISMATCH" in kinds(app.verify_integrity(checkpoints=[first.head], store=False))


def test_a_forged_stored_hash_is_reported_and_a_full_verify_replaces_them(app, clock) -> None:
    build_history(app, clock)
    app.verify_integrity()
    store = VerifiedStore.of(app.recorder)
    assert store is not None
    budget = str(budget_id_for("emp-2"))
    version, _ = store.heads([budget])[budget]
    with store._tx(commit=True) as tx:  # noqa: SLF001 - behind the application's back
        tx.execute(f"UPDATE {store._table(HEADS_TABLE)} SET hash = %(h)s WHERE aggregate_id = %(a)s",  # noqa: SLF001
                   {"h": "f" * 64, "a": budget})
    app.execute(action_cmd("emp-2", 1, customer="cust-9"))
    found = app.verify_integrity()
    assert [(v.kind, v.aggregate_id, v.version) for v in found.violations] == [
        ("PREV_HASH_MISMATCH", budget, version + 1)
    ]
    assert app.verify_integrity(full=True).ok  # the events are fine; the full verify stores every head again
    assert store.heads([budget])[budget][1] != "f" * 64
    app.execute(action_cmd("emp-2", 1, customer="cust-9"))
    assert app.verify_integrity().ok


def test_a_log_cut_before_the_checkpoint_is_found(app, clock, rows) -> None:
    build_history(app, clock)
    head = app.verify_integrity().head
    removed = rows.last(1)[0]
    assert removed.position == head.position
    rows.remove(removed)
    cut = app.verify_integrity()
    assert cut.verified_from == head and kinds(cut) == ["CHECKPOINT_NOT_REACHED"]


def test_a_checkpoint_at_or_before_the_stored_one_makes_the_verify_full(app, clock) -> None:
    build_history(app, clock)
    first = app.verify_integrity().head
    app.execute(action_cmd("emp-2", 1, customer="cust-9"))
    second = app.verify_integrity().head
    app.execute(action_cmd("emp-2", 1, customer="cust-9"))
    at_stored = app.verify_integrity(checkpoints=[second])
    assert at_stored.ok and at_stored.verified_from is None and at_stored.events_checked == at_stored.head.position
    before = app.verify_integrity(checkpoints=[first])
    assert before.ok and before.verified_from is None
    app.execute(action_cmd("emp-2", 1, customer="cust-9"))
    third = app.verify_integrity(full=True, store=False).head
    # A checkpoint after the stored one: the incremental pass reaches it.
    beyond = app.verify_integrity(checkpoints=[third])
    assert beyond.ok and beyond.verified_from == at_stored.head
    wrong = app.verify_integrity(checkpoints=[Checkpoint(third.position, "0" * 64)])
    assert kinds(wrong) == ["CHECKPOINT_MISMATCH"]


def test_one_employee_is_always_verified_in_full(app, clock) -> None:
    build_history(app, clock)
    app.verify_integrity()
    mine = app.verify_integrity("emp-1")
    assert mine.ok and mine.verified_from is None and mine.events_checked == app.repository.get(
        budget_id_for("emp-1")).version


def test_one_budget_is_verified_from_its_own_rows_not_the_whole_log(app, clock, rows, monkeypatch) -> None:
    """VerifyIntegrity of one budget reads that budget's events through the primary key: the same verdict and
    positions as a pass over the whole log, without one; and a change to one of its events is still found."""
    from leeway.application.audit import records_from_notifications, verify

    build_history(app, clock)
    budget = budget_id_for("emp-1")
    expected = verify(records_from_notifications(n for n in app.all_notifications() if n.originator_id == budget),
                      whole=False)
    expected.head = None
    with monkeypatch.context() as patched:
        def whole_log(*args, **kwargs):
            raise AssertionError("read the whole log")

        patched.setattr(app.recorder, "select_notifications", whole_log)
        mine = app.verify_integrity("emp-1")
    assert mine.ok and mine == expected
    assert mine.events_checked == app.repository.get(budget).version
    rewrite(rows, budget, 2, lambda state: state.update(reason="changed"))
    assert kinds(app.verify_integrity("emp-1")) == ["PREV_HASH_MISMATCH"]  # its next event no longer links
    assert app.verify_integrity("emp-2").ok  # another budget's chain is not its business


def test_an_export_after_the_verified_checkpoint_reads_only_what_is_new(app, clock, monkeypatch) -> None:
    """``export --after`` a position at or after the stored verified checkpoint starts its header's log hash from
    that checkpoint: the same lines as an export that reads the log from its start, reading only the events after
    the checkpoint."""
    from leeway.application.audit import export_lines

    build_history(app, clock)
    verified = app.verify_integrity().head
    app.execute(action_cmd("emp-2", 1, customer="cust-9"))
    app.execute(bend_cmd("emp-2", customer="cust-1"))
    head = app.recorder.max_notification_id()
    for after in (verified.position, verified.position + 1, head, verified.position - 1, 0):
        from_start = list(export_lines(app.all_notifications(), after, view=app._personal_view("clear"),
                                       personal="clear"))
        exported, starts = _export_reading_from(app, after, monkeypatch)
        assert exported == from_start, after
        reads_from = verified.position if after >= verified.position else 0
        assert min(starts) == reads_from, (after, starts)
        assert app.export_start(after) == (verified if after >= verified.position else START)
    # And its check (`leeway verify`) accepts it, from the header's checkpoint to the seal, holding the verified
    # checkpoint's successor as the full verify computes it.
    from leeway.application.audit import verify_export

    result = verify_export(list(app.export(verified.position)),
                           checkpoints=[app.verify_integrity(full=True, store=False).head])
    assert result.ok, result.violations


def test_an_export_after_an_earlier_position_starts_at_the_verify_s_nearest_mark(app, clock, monkeypatch, rows) -> None:
    """A verify of the whole log leaves a mark (the log hash there) every ``MARK_EVERY`` positions: an export after
    a position before the verified checkpoint reads from the furthest mark at or before it, not from the log's
    start, and writes the same lines. Marks come from verifies that found nothing broken only; a full verify
    replaces them; a database whose verified tables predate the marks gets its marks table on the next store."""
    import leeway.application.audit_log as audit_log
    from leeway.application.audit import export_lines, verify_export
    from leeway.application.verified import MARKS_TABLE

    monkeypatch.setattr(audit_log, "MARK_EVERY", 7)
    build_history(app, clock)
    verified = app.verify_integrity().head
    assert verified.position > 14
    store = VerifiedStore.of(app.recorder)
    for after in range(1, verified.position + 1):
        mark = store.mark_at_or_before(after)
        if after < 7:  # the first mark is at the first event at or past position 7
            assert mark is None and app.export_start(after) == START
        else:
            assert mark is not None and 0 <= after - mark.position < 7, (after, mark)
            assert app.export_start(after) == (verified if after == verified.position else mark)
        exported, starts = _export_reading_from(app, after, monkeypatch)
        assert min(starts) == app.export_start(after).position, (after, starts)
        from_start = list(export_lines(app.all_notifications(), after, view=app._personal_view("clear"),
                                       personal="clear"))
        assert exported == from_start, after
        assert verify_export(exported).ok
    # Each mark is the log hash a full verify computes at that position.
    for mark in (store.mark_at_or_before(p) for p in (7, 14, verified.position)):
        full = app.verify_integrity(checkpoints=[mark], full=True, store=False)
        assert full.ok, (mark, full.violations)

    # An incremental verify marks what it passed; the marks before stay.
    for n in range(8):
        app.execute(action_cmd("emp-2", 1, customer=f"cust-x{n}"))
    later = app.verify_integrity()
    assert later.ok and later.verified_from == verified
    assert store.mark_at_or_before(later.head.position).position > verified.position
    assert store.mark_at_or_before(7).position == 7 or store.mark_at_or_before(7).position < 14

    # A broken log stores nothing: no new mark either.
    marks_before = _marks(store)
    for n in range(8):
        app.execute(action_cmd("emp-2", 1, customer=f"cust-y{n}"))
    budget = budget_id_for("emp-2")
    rows.edit(budget, app.repository.get(budget).version, b'"cust-y7"', b'"cust-y6"')
    assert kinds(app.verify_integrity()) == ["HASH_MISMATCH"]
    assert _marks(store) == marks_before
    # An older database: verified tables without the marks table; the export reads from its checkpoint or the start.
    with store._tx(commit=True) as tx:
        tx.execute(f"DROP TABLE {store._table(MARKS_TABLE)}")
    fresh = VerifiedStore.of(app.recorder)
    assert fresh.mark_at_or_before(later.head.position) is None
    assert app.export_start(later.head.position - 1) == START
    rows.edit(budget, app.repository.get(budget).version, b'"cust-y6"', b'"cust-y7"')  # mended
    assert app.verify_integrity(full=True).ok  # stores again: the table is created, marks from the full pass
    assert VerifiedStore.of(app.recorder).mark_at_or_before(10).position == 7
    assert len(_marks(store)) > len(marks_before)


def _marks(store: VerifiedStore) -> list[tuple[int, str]]:
    from leeway.application.verified import MARKS_TABLE

    with store._tx(commit=False) as tx:
        rows = tx.execute(f"SELECT position, log_hash FROM {store._table(MARKS_TABLE)} ORDER BY position").fetchall()
    return [tuple(r.values()) if isinstance(r, dict) else (r[0], r[1]) for r in rows]


def _export_reading_from(app, after: int, monkeypatch) -> tuple[list[str], list[int]]:
    """``app.export(after)``'s lines, and every position the export's reads of the log started after."""
    real = app.recorder.select_notifications
    starts: list[int] = []

    def counted(*args, **kwargs):
        starts.append(kwargs.get("start", args[0] if args else 0))
        return real(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(app.recorder, "select_notifications", counted)
        return list(app.export(after)), starts
