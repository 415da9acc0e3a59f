"""leeway.application.integrity without I/O (issue 19): what each kind of event points at (one table), and the
one-pass Verifier on small hand-made logs: missing newest events, checkpoints (matched, moved, cut, over a gap in
the positions), records out of order."""

from __future__ import annotations

from uuid import uuid4

import pytest
from leeway.adapters.hash_chain import GENESIS, event_hash
from leeway.application.integrity import Checkpoint, Record, Verifier, log_link, references, verify
from leeway.domain.directory import TeamRoster
from leeway.domain.ids import budget_id_for, format_action_id
from leeway.domain.ledgers import TeamLedger

BUDGET = budget_id_for("emp-1")
ACTION = format_action_id(BUDGET, 7)


def record(topic: str, state: dict, *, aggregate: str = "", version: int = 1, position: int = 1) -> Record:
    return Record(position, aggregate or str(uuid4()), version, topic, state)


@pytest.mark.parametrize(
    ("topic", "state", "expected"),
    [
        pytest.param("leeway.domain.limits:TeamLedger.ActionCounted", {"action_id": ACTION},
                     [(str(BUDGET), 7, f"action {ACTION}")], id="team ledger counts an action"),
        pytest.param("leeway.domain.limits:TeamLedger.HoldSettled", {"action_id": ACTION}, [(str(BUDGET), 7, f"action {ACTION}")],
                     id="team ledger settles a hold"),
        pytest.param("leeway.domain.indexes:CustomerLedger.ActionNoted", {"action_id": ACTION},
                     [(str(BUDGET), 7, f"action {ACTION}")], id="customer ledger notes an action"),
        pytest.param("leeway.domain.indexes:CustomerLedger.ActionReversed", {"action_id": ACTION},
                     [(str(BUDGET), 7, f"action {ACTION}")], id="customer ledger reverses an action"),
        pytest.param("leeway.domain.limits:HoldBook.HoldOpened", {"action_id": ACTION}, [(str(BUDGET), 7, f"action {ACTION}")],
                     id="hold book opens a hold"),
        pytest.param("leeway.domain.limits:HoldBook.HoldClosed", {"action_id": "junk"}, [], id="not an action id"),
        pytest.param("leeway.domain.indexes:RequestRecord.Recorded",
                     {"request_id": "r-1", "result": {"budget_id": BUDGET.hex, "version": 9, "action_id": ACTION}},
                     [(str(BUDGET), 9, "the result of request_id 'r-1'")], id="a request's budget"),
        pytest.param("leeway.domain.indexes:RequestRecord.Recorded",
                     {"request_id": "c-1", "result": {"team_id": "desk", "version": 3, "at": "2025-01-01"}},
                     [(str(TeamLedger.create_id("desk")), 3, "the result of request_id 'c-1'")], id="a team cap's ledger"),
        pytest.param("leeway.domain.indexes:RequestRecord.Recorded", {"request_id": "x", "result": {"cap": None}}, [],
                     id="a customer cap names nothing"),
        pytest.param("leeway.domain.indexes:TeamRoster.MemberAdded", {"employee_id": "emp-1"},
                     [(str(BUDGET), 1, "the budget of emp-1")], id="a roster entry"),
        pytest.param("leeway.domain.indexes:TeamRoster.MemberRemoved", {"employee_id": "emp-1"},
                     [(str(BUDGET), 1, "the budget of emp-1")], id="a roster exit"),
        pytest.param("leeway.domain.indexes:Directory.BudgetListed", {"employee_id": "emp-1"},
                     [(str(BUDGET), 1, "the budget of emp-1")], id="the directory"),
        pytest.param("leeway.domain.budget:Budget.TeamChanged", {"team_id": "ops", "roster_version": 4},
                     [(str(TeamRoster.create_id("ops")), 4, "team ops's roster entry")], id="a move"),
        pytest.param("leeway.domain.budget:Budget.ActionRecorded", {"request_id": "r-1"}, [], id="an action names nothing"),
    ],
)
def test_what_each_event_points_at(topic: str, state: dict, expected: list) -> None:
    assert references(record(topic, state)) == expected


# ============================================================================ small logs


class Log:
    """A hand-made log: events chained per aggregate, at the positions given."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.last: dict[str, tuple[int, str]] = {}

    def add(self, position: int, aggregate: str, topic: str, **state: object) -> Record:
        version, prev = self.last.get(aggregate, (0, GENESIS))
        body = dict(state)
        body["__prev__"] = prev
        body["__hash__"] = event_hash(prev, aggregate, version + 1, topic, body)
        item = Record(position, aggregate, version + 1, topic, body)
        self.last[aggregate] = (version + 1, body["__hash__"])
        self.records.append(item)
        return item

    def head(self, upto: int) -> Checkpoint:
        value = GENESIS
        for item in self.records:
            if item.position <= upto:
                value = log_link(value, item.position, item.state["__hash__"])
        return Checkpoint(upto, value)


def small_log() -> Log:
    """A budget with an action (version 2) that a team ledger and a request record point at; positions 1, 2, 4 ...
    (3 was never committed, as a PostgreSQL sequence can leave out)."""
    log = Log()
    budget, team, request = str(BUDGET), str(TeamLedger.create_id("desk")), str(uuid4())
    log.add(1, budget, "leeway.domain.budget:Budget.Opened", employee_id="emp-1")
    log.add(2, budget, "leeway.domain.budget:Budget.ActionRecorded", amount="5")
    log.add(4, team, "leeway.domain.limits:TeamLedger.ActionCounted", action_id=format_action_id(BUDGET, 2))
    log.add(5, request, "leeway.domain.indexes:RequestRecord.Recorded", request_id="r-1",
            result={"budget_id": BUDGET.hex, "version": 2})
    return log


def kinds(records: list[Record], *checkpoints: Checkpoint) -> list[str]:
    return sorted(v.kind for v in verify(records, checkpoints=checkpoints).violations)


def test_a_whole_log_verifies_and_its_head_is_its_checkpoint() -> None:
    log = small_log()
    result = verify(log.records)
    assert result.ok and result.events_checked == 4
    assert result.head == log.head(5) == Checkpoint(5, log.head(5).log_hash)
    assert kinds(log.records, log.head(2), log.head(3), log.head(5)) == [], "a checkpoint in a gap of positions"


def test_the_newest_event_removed_is_named_by_what_points_at_it() -> None:
    log = small_log()
    cut = [r for r in log.records if r.position != 2]
    result = verify(cut)
    assert [(v.kind, v.position) for v in result.violations] == [("REFERENCE_MISSING", 4)]
    assert "version 2 of aggregate" in result.violations[0].description
    assert kinds(cut, log.head(5)) == ["CHECKPOINT_MISMATCH", "REFERENCE_MISSING"]


def test_checkpoints_pin_everything_up_to_their_position() -> None:
    log = small_log()
    assert kinds(log.records[:-1], log.head(5)) == ["CHECKPOINT_NOT_REACHED"], "the end cut off"
    assert kinds(log.records[:-1], log.head(4)) == []
    assert kinds(log.records, Checkpoint(4, "0" * 64)) == ["CHECKPOINT_MISMATCH"]
    moved = [Record(9 if r.position == 5 else r.position, r.aggregate_id, r.version, r.topic, r.state)
             for r in log.records]
    assert kinds(moved) == [] and kinds(moved, log.head(5)) == ["CHECKPOINT_MISMATCH"], "a record moved to 9"


def test_records_out_of_order_and_a_partial_start() -> None:
    log = small_log()
    swapped = [log.records[0], log.records[2], log.records[1], log.records[3]]
    assert "OUT_OF_ORDER" in kinds(swapped)
    # From a checkpoint on: chains start at their first record, what points before it is not judged.
    verifier = Verifier(partial=True, start=log.head(2), checkpoints=[log.head(5)])
    for item in log.records[2:]:
        verifier.add(item)
    assert verifier.finish().ok
    # One aggregate's records alone: what they point at is elsewhere.
    alone = [r for r in log.records if r.topic.endswith("RequestRecord.Recorded")]
    assert kinds(alone) == ["REFERENCE_MISSING"] and verify(alone, whole=False).ok


# ---------------------------------------------------------------------------- legacy redactions (issue 22)

_TOPIC = "leeway.domain.budget:Budget.Closed"
_REDACTION = "leeway.domain.privacy:Erasures.LegacyRedacted"


def _chain(aggregate: str, states: list[dict], start: int = 1) -> list[Record]:
    out, prev = [], GENESIS
    for version, state in enumerate(states, 1):
        this = event_hash(prev, aggregate, version, _TOPIC, state)
        out.append(Record(start + version - 1, aggregate, version, _TOPIC, {**state, "__prev__": prev, "__hash__": this}))
        prev = this
    return out


def _redacted(item: Record, **change: str) -> tuple[Record, str]:
    """The record with ``change`` applied (its chain fields kept) and the hash its content then has."""
    state = {**item.state, **change}
    content = event_hash(state["__prev__"], item.aggregate_id, item.version, item.topic, state)
    return Record(item.position, item.aggregate_id, item.version, item.topic, state), content


def _record_of(position: int, *entries: tuple[Record, str]) -> Record:
    redactions = [{"aggregate_id": r.aggregate_id, "version": r.version, "hash": r.state["__hash__"],
                   "redacted_hash": content, "fields": ["reason"]} for r, content in entries]
    aggregate, state = str(uuid4()), {"redactions": redactions}
    this = event_hash(GENESIS, aggregate, 1, _REDACTION, state)
    return Record(position, aggregate, 1, _REDACTION, {**state, "__prev__": GENESIS, "__hash__": this})


def test_a_change_a_later_redaction_record_lists_is_accepted_exactly() -> None:
    aggregate = str(uuid4())
    log = _chain(aggregate, [{"reason": "Jane Doe"}, {"reason": "next"}])
    changed, content = _redacted(log[0], reason="[erased]")
    result = verify([changed, log[1], _record_of(3, (changed, content))])
    assert result.ok and result.redactions == 1
    # The same record, known beforehand (a per-employee check reads it first): the same verdict.
    assert verify([changed, log[1]], redacted={(aggregate, 1): (log[0].state["__hash__"], content)}).redactions == 1
    # Anything else: the record names another content, or none, or the row changed again afterwards.
    other, _ = _redacted(log[0], reason="[erased]", amount="1")
    assert [v.kind for v in verify([other, log[1], _record_of(3, (changed, content))]).violations] == ["HASH_MISMATCH"]
    assert [(v.kind, v.position) for v in verify([changed, log[1]]).violations] == [("HASH_MISMATCH", 1)]
    known = {(aggregate, 1): (log[0].state["__hash__"], content)}
    assert [v.kind for v in verify([other, log[1]], redacted=known).violations] == ["HASH_MISMATCH"]


def test_an_unexplained_change_is_reported_in_order_and_once_per_chain() -> None:
    one, two = str(uuid4()), str(uuid4())
    first = _chain(one, [{"reason": "a"}, {"reason": "b"}, {"reason": "c"}])
    second = _chain(two, [{"reason": "x"}], start=4)
    changed, _ = _redacted(first[0], reason="[erased]")
    later, _ = _redacted(first[2], reason="also changed")
    gap_hash = event_hash(second[0].state["__hash__"], two, 3, _TOPIC, {"reason": "y"})
    gap = Record(5, two, 3, _TOPIC, {"reason": "y", "__prev__": second[0].state["__hash__"], "__hash__": gap_hash})
    result = verify([changed, first[1], later, *second, gap])
    assert [(v.aggregate_id, v.position, v.kind) for v in result.violations] == [
        (one, 1, "HASH_MISMATCH"), (two, 5, "VERSION_GAP")]
