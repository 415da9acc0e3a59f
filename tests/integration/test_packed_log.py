"""Issue 21: events are stored packed (``adapters/packing.py``). A log written before, in the JSON form, stays
readable and verifiable as it is, and goes on packed: reads, idempotent retries, VerifyIntegrity (whole log and
one budget), the export and its offline verify see one log; a change to a row of either form is found."""

from __future__ import annotations

import pytest
from builders import action_cmd, make_policy, open_cmd, reverse_cmd
from leeway.adapters import packing
from leeway.adapters.hash_chain import parse_state
from leeway.application import audit
from leeway.application.commands import DecideAction
from leeway.domain.errors import AlreadyExists
from leeway.domain.ids import budget_id_for, parse_action_id
from stored_rows import StoredRows


def policy():
    return make_policy(allowance=1000, limit=50, role="supervisor")


def test_an_old_json_log_reads_verifies_and_goes_on_packed(app_factory, clock, database_url) -> None:
    old = app_factory()
    old.mapper.pack = False  # the encoding of the releases before issue 21
    old.execute(open_cmd("ann", policy=policy()))
    old.execute(open_cmd("bob", policy=policy()))
    first = action_cmd("ann", 20, customer="cust-1", request_id="r-old")
    answered_then = old.execute(first)
    held, _ = old.execute(action_cmd("bob", 70, customer="cust-2"))
    undone, _ = old.execute(action_cmd("ann", 5, customer="cust-2"))
    old.execute(reverse_cmd(undone.action_id))
    ann_then = old.get_budget("ann")
    old_rows = list(old.all_notifications())
    assert old_rows and all(bytes(n.state)[:1] == b"{" for n in old_rows)

    new = app_factory()  # a restart on the new release
    assert new.mapper.pack
    # A retry of a request recorded in the old form answers exactly as then; its request_id is still taken.
    assert new.execute(first) == answered_then
    with pytest.raises(AlreadyExists) as refused:
        new.execute(action_cmd("ann", 21, customer="cust-1", request_id="r-old"))
    assert refused.value.reason == "REQUEST_ID_REUSED"
    # The old events read as they were.
    assert new.budget_at(budget_id_for("ann"), ann_then.version) == ann_then
    assert new.get_action(undone.action_id) == old.get_action(undone.action_id)

    # New events continue the same chains, packed: ann's budget, the team's and the customers' ledgers.
    later = action_cmd("ann", 10, customer="cust-1", request_id="r-new")
    answered_now = new.execute(later)
    new.execute(DecideAction("d-1", held.action_id, "sup-1", "ok", True, frozenset({"supervisor"}),
                             frozenset({"team-a"})))
    new_rows = list(new.all_notifications(after=old_rows[-1].id))
    assert new_rows and all(packing.is_packed(n.state) for n in new_rows)
    budget = budget_id_for("ann")
    first_packed = next(n for n in new_rows if n.originator_id == budget)
    before = next(n for n in reversed(old_rows) if n.originator_id == budget)
    assert first_packed.originator_version == before.originator_version + 1
    assert parse_state(first_packed.state)["__prev__"] == parse_state(before.state)["__hash__"]
    assert new.get_budget("ann").spent.amount == ann_then.spent.amount + 10

    # One log to every verifier: the whole log, one budget, the export and its offline verify.
    everything = list(new.all_notifications())
    result = new.verify_integrity(full=True, store=False)
    assert result.ok, result.violations
    assert result.events_checked == len(everything)
    assert new.verify_integrity("ann").ok and new.verify_integrity("bob").ok
    lines = [audit.export_line(n) for n in everything]
    offline = audit.verify(audit.read_export(lines))
    assert offline.ok and offline.events_checked == len(everything)

    # Retries after another restart: the packed record and the old one both answer as they did.
    again = app_factory()
    assert again.execute(later) == answered_now
    assert again.execute(first) == answered_then

    # A change to an old JSON row and one to a packed row are both found, where they are.
    rows = StoredRows(database_url)
    old_target = next(n for n in old_rows if n.topic.endswith("TeamLedger.ActionCounted"))
    new_target = next(n for n in new_rows if n.topic.endswith("Budget.ActionRecorded"))
    rows.edit(old_target.originator_id, old_target.originator_version, b'"20"', b'"2"')
    rows.edit(new_target.originator_id, new_target.originator_version, b'"10"', b'"1"')
    broken = again.verify_integrity(full=True, store=False)
    assert sorted((v.position, v.kind) for v in broken.violations) == sorted(
        [(old_target.id, "HASH_MISMATCH"), (new_target.id, "HASH_MISMATCH")])
    assert [v.kind for v in again.verify_integrity("ann").violations] == ["HASH_MISMATCH"]
    tampered = [audit.export_line(n) for n in again.all_notifications()]
    assert sorted(v.position for v in audit.verify(audit.read_export(tampered)).violations) == sorted(
        [old_target.id, new_target.id])
    assert parse_action_id(answered_now[0].action_id)[0] == budget
