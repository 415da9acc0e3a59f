"""`leeway export` of a log with personal data (issue 22), on SQLite and PostgreSQL: each event keeps its stored,
sealed form (what the hash chain covers: `leeway verify` checks it without keys) and carries a readable view of
its personal fields: their text, or `[erased]` / `[erased:<pseudonym>]` once the subject was erased, exactly as
the RPCs render them; `--personal sealed` writes no personal text at all. Both JSON lines and Parquet; a tampered
export still fails, and a Parquet file written before the view existed still verifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from builders import open_cmd
from integration.test_privacy import SECRET, gift
from leeway.application import LeewayApplication
from leeway.application import commands as c
from leeway.application.audit import verify_export
from leeway.application.export import ExportStats
from leeway.application.export_parquet import SEAL_KEY, ParquetExport
from leeway.application.privacy import Privacy
from leeway.domain.ids import parse_action_id

KEPT = "Kept Person kept@example.com"


@pytest.fixture
def make(make_keyed):
    return make_keyed


def erased_history(app: LeewayApplication) -> tuple[str, str, str]:
    """Ann gives to jane (then erased) and to kept-1 (not); returns (jane's action, kept-1's action, pseudonym)."""
    app.execute(open_cmd("ann", display_name="Ann Example"))
    jane, _ = app.execute(gift("ann", "jane-x", 20, case="case-x"))
    app.execute(c.DocumentWin("w-x", jane.action_id, "kept " + SECRET, "thanks " + SECRET, "stayed"))
    kept, _ = app.execute(gift("ann", "kept-1", 10, reason=KEPT, note="note " + KEPT))
    result = Privacy(app).erase_customer("erase-x", "jane-x", "GDPR art. 17, ticket 1", actor="dpo")
    return jane.action_id, kept.action_id, result.pseudonym


def records(lines: list[str]) -> list[dict[str, Any]]:
    return [item for item in map(json.loads, lines) if "state" in item]


def of_action(items: list[dict[str, Any]], action_id: str, event: str) -> dict[str, Any]:
    budget, version = parse_action_id(action_id)
    for item in items:
        if item["aggregate_id"] != str(budget):
            continue
        state = item["state"]
        if not item["topic"].endswith(event):
            continue
        if event == "ActionRecorded" and item["version"] == version:
            return item
        if event == "WinDocumented" and state.get("action_version") == version:
            return item
    raise AssertionError(f"no {event} of {action_id}")


def test_export_after_an_erasure_shows_erased_and_verifies(make) -> None:
    app = make()
    jane, kept, pseudonym = erased_history(app)
    lines = list(app.export())
    text = "\n".join(lines)
    assert SECRET not in text and "jane-x" not in text and "case-x" not in text
    assert json.loads(lines[0])["header"]["personal"] == "clear"
    items = records(lines)
    erased = of_action(items, jane, "ActionRecorded")
    assert erased["personal"]["customer_id"] == f"[erased:{pseudonym}]"
    assert erased["personal"]["case_id"].startswith("[erased:")
    assert (erased["personal"]["reason"], erased["personal"]["details.description"]) == ("[erased]", "[erased]")
    assert erased["state"]["reason"] != "[erased]"  # the stored form is the ciphertext the chain covers
    win = of_action(items, jane, "WinDocumented")["personal"]
    assert (win["story"], win["customer_quote"], win["outcome"]) == ("[erased]",) * 3
    readable = of_action(items, kept, "ActionRecorded")["personal"]
    assert (readable["customer_id"], readable["reason"], readable["details.description"]) == (
        "kept-1", KEPT, "note " + KEPT)
    assert "details.rule_code" not in readable  # not personal: in clear in the stored form
    opened = next(i for i in items if i["topic"].endswith("Budget.Opened"))
    assert opened["personal"] == {"display_name": "Ann Example"}
    verdict = verify_export(lines)
    assert verdict.ok, verdict.violations
    assert verdict.events_checked == len(items)


def test_a_sealed_export_holds_no_personal_text(make) -> None:
    app = make()
    jane, kept, pseudonym = erased_history(app)
    stats = ExportStats()
    lines = list(app.export(personal="sealed", stats=stats))
    text = "\n".join(lines)
    for clear in (SECRET, KEPT, "kept-1", "jane-x", "Ann Example"):
        assert clear not in text
    assert json.loads(lines[0])["header"]["personal"] == "sealed" and stats.legacy == 0
    items = records(lines)
    assert of_action(items, jane, "ActionRecorded")["personal"]["reason"] == "[erased]"
    sealed = of_action(items, kept, "ActionRecorded")["personal"]
    assert sealed["reason"] == "[sealed]" and sealed["customer_id"].startswith("[sealed:")
    assert verify_export(lines).ok


def test_a_tampered_export_still_fails_and_the_view_is_not_what_is_verified(make) -> None:
    app = make()
    jane, _, _ = erased_history(app)
    lines = list(app.export())
    target = of_action(records(lines), jane, "ActionRecorded")
    index = next(n for n, line in enumerate(lines) if json.loads(line).get("position") == target["position"])

    def changed(change) -> list[str]:
        item = json.loads(lines[index])
        change(item)
        return [*lines[:index], json.dumps(item), *lines[index + 1:]]

    def envelope(item: dict[str, Any]) -> None:  # one character of the sealed reason
        reason = item["state"]["reason"]
        item["state"]["reason"] = reason[:-2] + ("A" if reason[-2] != "A" else "B") + reason[-1]

    broken = verify_export(changed(envelope))
    assert [v.kind for v in broken.violations or []] == ["HASH_MISMATCH"]

    def amount(item: dict[str, Any]) -> None:
        item["state"]["amount"]["_data_"] = "1"

    assert not verify_export(changed(amount)).ok
    # The readable view is beside what the chain covers: without keys nothing can check it (README says so).
    assert verify_export(changed(lambda item: item["personal"].update(reason="invented"))).ok


def test_parquet_export_carries_the_view_and_verifies(make, tmp_path: Path) -> None:
    app = make()
    jane, kept, pseudonym = erased_history(app)
    path = tmp_path / "log.parquet"
    _, events = app.export_parquet(str(path))
    rows = pq.read_table(str(path)).to_pylist()
    assert len(rows) == events
    views = {(r["aggregate_id"], r["version"]): r["personal"] for r in rows}
    jane_view = json.loads(views[_key(jane)])
    kept_view = json.loads(views[_key(kept)])
    assert (jane_view["reason"], jane_view["customer_id"]) == ("[erased]", f"[erased:{pseudonym}]")
    assert kept_view["reason"] == KEPT
    assert SECRET.encode() not in path.read_bytes()
    assert verify_export(ParquetExport(path)).ok

    # Tampered: a payload's sealed field changed (the forger keeps the header and seal).
    target = next(r for r in rows if json.loads(r["personal"] or "{}").get("reason") == "[erased]")
    payload = json.loads(target["payload"])
    payload["reason"] = payload["reason"][:-1] + ("A" if payload["reason"][-1] != "A" else "B")
    target["payload"] = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    forged = tmp_path / "forged.parquet"
    _rewrite(path, forged, rows)
    assert "HASH_MISMATCH" in [v.kind for v in verify_export(ParquetExport(forged)).violations or []]

    # A file written before the view existed (no `personal` column) still verifies.
    older = tmp_path / "older.parquet"
    _rewrite(path, older, pq.read_table(str(path)).drop_columns(["personal"]).to_pylist(), drop="personal")
    assert verify_export(ParquetExport(older)).ok


def _key(action_id: str) -> tuple[str, int]:
    budget, version = parse_action_id(action_id)
    return str(budget), version


def _rewrite(source: Path, target: Path, rows: list[dict[str, Any]], drop: str = "") -> None:
    file = pq.ParquetFile(str(source))
    schema = file.schema_arrow
    if drop:
        schema = schema.remove(schema.get_field_index(drop))
    with pq.ParquetWriter(str(target), schema) as writer:
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        writer.add_key_value_metadata({SEAL_KEY: file.metadata.metadata[SEAL_KEY.encode()].decode()})


def test_leeway_export_and_verify_after_an_erasure(make, database_url: str, tmp_path: Path) -> None:
    """The commands themselves, with the deployment's master key file: `export` (both formats, both modes) and
    `verify` on each."""
    app = make()
    erased_history(app)
    key_file = tmp_path / "master.key"
    key_file.write_text(bytes(range(32)).hex())
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env.update(LEEWAY_DATABASE_URL=database_url, LEEWAY_MASTER_KEY_FILE=str(key_file))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "leeway.cli", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)

    for name, extra in (("c.jsonl", ()), ("s.jsonl", ("--personal", "sealed")), ("c.parquet", ("--format", "parquet")),
                        ("s.parquet", ("--format", "parquet", "--personal", "sealed"))):
        done = run("export", *extra, "-o", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
        checked = run("verify", str(tmp_path / name))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "readable views of personal fields" in checked.stderr and "OK" in checked.stderr
    clear, sealed = (tmp_path / "c.jsonl").read_text(), (tmp_path / "s.jsonl").read_text()
    assert '"reason":"[erased]"' in clear and KEPT in clear
    assert '"reason":"[erased]"' in sealed and KEPT not in sealed and SECRET not in clear + sealed
