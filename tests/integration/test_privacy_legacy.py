"""Redacting a data subject from a log written before encryption (issue 22: ``RedactLegacyData``), on SQLite and
PostgreSQL. The old log is written by the code path that writes the pre-feature format (no key store: the format
``test_golden_log.py`` pins), including the whole golden scenario. After the redaction the subject's fields read
``[erased]`` everywhere and are gone from the stored rows; VerifyIntegrity, the per-employee check, checkpoints
taken before the redaction and ``leeway verify`` of an export all pass, because a ``LegacyRedacted`` record lists
each redacted event with its stored hash and the hash of its redacted content; any change it does not list still
fails."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from leeway.adapters.hash_chain import parse_state
from builders import make_policy, open_cmd
from integration.test_audit import run_cli
from integration.test_golden_log import run_scenario
from integration.test_privacy import SECRET, gift, raw_states
from leeway.application import commands as c
from leeway.application.audit import verify_export
from leeway.application.export import ExportStats
from leeway.application.privacy import Privacy
from leeway.domain.errors import InvalidArgument, PreconditionFailed
from leeway.domain.ids import parse_action_id
from leeway.domain.periods import PeriodKind
from stored_rows import StoredRows


@pytest.fixture
def make(make_keyed):
    return make_keyed


def legacy_log(make) -> tuple[str, str, str]:
    """A log written without a key store: ann's actions for jane-7 (one approved-win, one more) and for other-8;
    returns (jane's first action, jane's second, other-8's)."""
    old = make(None)
    old.execute(open_cmd("ann", display_name="Ann Old", policy=make_policy(allowance=500, limit=100,
                                                                           per_customer=100)))
    first, _ = old.execute(gift("ann", "JANE-7", 40, case="case-7"))
    old.execute(c.DocumentWin("w-7", first.action_id, "kept " + SECRET, "quote " + SECRET, "stayed"))
    second, _ = old.execute(gift("ann", "jane-7", 30, reason="again " + SECRET))
    other, _ = old.execute(gift("ann", "other-8", 10, reason="other reason", note="other note"))
    old.close()
    return first.action_id, second.action_id, other.action_id


def test_redacting_a_customer_in_a_legacy_log(make, database_url: str, tmp_path: Path) -> None:
    first, second, other = legacy_log(make)
    app = make()
    checkpoint = app.verify_integrity(full=True).head
    assert checkpoint is not None
    before_stats = ExportStats()
    assert sum(1 for _ in app.export(personal="sealed", stats=before_stats)) and before_stats.legacy == 7
    privacy = Privacy(app)
    privacy.erase_customer("erase-7", "jane-7", "GDPR art. 17, ticket 7")
    assert app.get_action(first).reason == SECRET  # stored in clear: nothing to shred

    result = privacy.redact_legacy("redact-7", "GDPR art. 17, ticket 7", customer_id="Jane-7", actor="dpo")
    assert result.subject == "customer" and result.events == 4  # 2 actions, a win, the customer's ledger
    erased_id = f"[erased:{result.pseudonym}]"
    for action in (first, second):
        view = app.get_action(action)
        assert (view.customer_id, view.reason, view.details["description"]) == (erased_id, "[erased]", "[erased]")
        assert view.details["rule_code"] == "LATE_FEE"
    assert app.get_action(first).case_id.startswith("[erased:")
    win = app.get_action(first).win
    assert win is not None and (win.story, win.customer_quote, win.outcome) == ("[erased]",) * 3
    assert app.get_action(other).reason == "other reason"  # another customer's legacy text stays
    stored = b"\n".join(raw_states(database_url))
    assert SECRET.encode() not in stored and b"jane-7" not in stored.lower() and b"case-7" not in stored
    # Amounts stay: the budget and the per-customer limit still count what jane-7 was given (70 of 100).
    assert app.get_budget("ann").spent.amount == Decimal(80)
    with pytest.raises(PreconditionFailed) as refused:
        app.execute(gift("ann", "jane-7", 40, reason="back"))
    assert refused.value.reason == "PER_CUSTOMER_LIMIT_EXCEEDED"

    verified = app.verify_integrity(checkpoints=[checkpoint], full=True)
    assert verified.ok, verified.violations
    assert verified.redactions == result.events
    assert app.verify_integrity("ann").ok
    # The record: who, why, which events, by hash (never the content).
    records = [e.payload for e in app.read_log(0) if e.event_type == "Erasures.LegacyRedacted"]
    assert [(r["actor"], r["reason"], r["subject"]) for r in records] == [("dpo", "GDPR art. 17, ticket 7", "customer")]
    listed = records[0]["redactions"]
    assert len(listed) == result.events and all(set(r) == {"aggregate_id", "version", "hash", "redacted_hash",
                                                           "fields"} for r in listed)
    assert SECRET not in json.dumps(records)
    # Idempotent: the same request is answered from its record; nothing more is recorded or changed.
    before = raw_states(database_url)
    assert privacy.redact_legacy("redact-7", "GDPR art. 17, ticket 7", customer_id="jane-7", actor="dpo") == result
    assert raw_states(database_url) == before

    # An export verifies, in one pass and in partitions; the export says nothing is left in clear of jane.
    stats = ExportStats()
    lines = list(app.export(stats=stats))
    assert stats.legacy == 3  # ann's display name and other-8's action and ledger: still in clear
    assert verify_export(lines).ok and verify_export(lines, partitions=3).ok
    assert verify_export(lines).redactions == result.events
    assert SECRET not in "\n".join(lines)
    file = tmp_path / "redacted.jsonl"
    file.write_text("\n".join(lines) + "\n")
    checked = run_cli("verify", str(file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{result.events} events redacted by a recorded legacy redaction" in checked.stderr


def test_changes_a_redaction_does_not_list_still_fail(make, database_url: str) -> None:
    first, second, other = legacy_log(make)
    app = make()
    result = Privacy(app).redact_legacy("redact-8", "art. 17", customer_id="jane-7")
    rows = StoredRows(database_url)
    budget, version = parse_action_id(first)
    lines = list(app.export())

    def tampered(aggregate: UUID, version: int, change) -> list[Any]:
        original = rows.get(aggregate, version)[1]
        state = parse_state(original)
        change(state)
        rows.set_state(aggregate, version, json.dumps(state).encode())
        try:
            found = app.verify_integrity(full=True).violations or []
            file = [line if json.loads(line).get("version") != version or json.loads(line).get(
                "aggregate_id") != str(aggregate) else _changed(line, change) for line in lines]
            assert [v.kind for v in verify_export(file).violations or []] == [v.kind for v in found]
            return [(v.kind, v.version) for v in found]
        finally:
            rows.set_state(aggregate, version, original)

    # A redacted event changed beyond its redaction (an amount), or its marker changed back to text.
    assert tampered(budget, version, lambda s: s["amount"].update(_data_="1")) == [("HASH_MISMATCH", version)]
    assert tampered(budget, version, lambda s: s.update(reason="invented")) == [("HASH_MISMATCH", version)]
    # An event the redaction does not list (another customer's, in clear), redacted the same way by hand.
    other_budget, other_version = parse_action_id(other)
    assert tampered(other_budget, other_version, lambda s: s.update(reason="[erased]")) == [
        ("HASH_MISMATCH", other_version)]
    assert result.events and app.verify_integrity(full=True).ok


def _changed(line: str, change) -> str:
    item = json.loads(line)
    change(item["state"])
    return json.dumps(item)


def test_redacting_the_golden_scenario(make, database_url: str) -> None:
    """The whole golden scenario (every command, the pre-feature format), then every customer and employee in it
    redacted: no stored row holds their ids or names in clear, and everything verifies."""
    now = [datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)]
    old = make(None, clock=lambda: now[0])
    run_scenario(old, now)
    old.close()
    app = make(clock=lambda: now[0])
    privacy = Privacy(app)
    total = 0
    for n, customer in enumerate(("g1", "g2", "g3")):
        total += privacy.redact_legacy(f"r-{n}", "art. 17", customer_id=customer).events
    for n, employee in enumerate(("ann", "bob")):
        total += privacy.redact_legacy(f"e-{n}", "art. 17", employee_id=employee).events
    stored = b"\n".join(raw_states(database_url))
    for clear in (b'"g1"', b'"g2"', b'"g3"', b'"display_name":"Ann"'):
        assert clear not in stored
    verified = app.verify_integrity(full=True)
    assert verified.ok, verified.violations
    assert verified.redactions == total > 10
    lines = list(app.export())
    assert verify_export(lines).ok and verify_export(lines, partitions=4).redactions == total


def test_redacting_an_employee_and_bad_requests(make) -> None:
    old = make(None)
    old.execute(open_cmd("eve", display_name="Eve " + SECRET))
    old.execute(c.CloseBudget("close-eve", "eve", "left: " + SECRET))
    old.close()
    app = make()
    privacy = Privacy(app)
    result = privacy.redact_legacy("r-eve", "art. 17", employee_id="eve")
    budget = app.get_budget("eve")
    assert (budget.display_name, budget.close_reason, budget.employee_id) == ("[erased]", "[erased]", "eve")
    assert result.events == 2 and app.verify_integrity(full=True).ok
    with pytest.raises(InvalidArgument):
        privacy.redact_legacy("r-x", "art. 17", customer_id="a", employee_id="b")
    with pytest.raises(InvalidArgument):
        privacy.redact_legacy("r-x", "", customer_id="a")
    with pytest.raises(PreconditionFailed) as refused:
        Privacy(make(None)).redact_legacy("r-y", "art. 17", customer_id="a")
    assert refused.value.reason == "PERSONAL_DATA_NOT_ENCRYPTED"


def test_an_event_naming_two_customers_is_redacted_for_each(make, database_url: str) -> None:
    """A policy change that moves to another period kind stores a recount keyed by every customer of the period:
    redacting one customer and then the other redacts the same event twice; both records verify."""
    old = make(None)
    old.execute(open_cmd("ann", policy=make_policy(allowance=500, limit=100, per_customer=100)))
    old.execute(gift("ann", "jane-r", 10))
    old.execute(gift("ann", "bob-r", 20))
    old.execute(c.UpdatePolicy(request_id="up-r", employee_id="ann",
                               policy=make_policy(allowance=500, limit=100, per_customer=100, period=PeriodKind.WEEK)))
    old.close()
    stored = b"\n".join(raw_states(database_url))
    assert stored.count(b'"jane-r"') > 2 and b'"recount"' in stored  # in the recount too (not vacuous)
    app = make()
    privacy = Privacy(app)
    first = privacy.redact_legacy("r-jane", "art. 17", customer_id="jane-r")
    second = privacy.redact_legacy("r-bob", "art. 17", customer_id="bob-r")
    stored = b"\n".join(raw_states(database_url))
    assert b'"jane-r"' not in stored and b'"bob-r"' not in stored
    verified = app.verify_integrity(full=True)
    assert verified.ok, verified.violations
    assert verified.redactions == first.events + second.events - 1  # the policy change is one event, redacted twice
    lines = list(app.export())
    assert verify_export(lines).ok and verify_export(lines, partitions=2).ok
    # Both customers' per-customer spend still counts in the new period's policy (recount keyed by pseudonym).
    with pytest.raises(PreconditionFailed) as refused:
        app.execute(gift("ann", "jane-r", 95))
    assert refused.value.reason == "PER_CUSTOMER_LIMIT_EXCEEDED"
