"""`leeway export --format parquet` (issue 21), on SQLite and PostgreSQL: one typed row per event that DuckDB reads
back as it is, sealed like the JSON lines export, and `leeway verify` finds tampering in it the same way (plus a typed
column changed away from its payload)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from integration.test_audit import build_history, cli_budgets, run_cli
from leeway.application.export_parquet import HEADER_KEY, SEAL_KEY, ROW_GROUP
from leeway.domain.ids import budget_id_for


@pytest.fixture
def app(app_factory):
    return app_factory()


def export(database_url: str, tmp_path: Path, name: str, *extra: str) -> Path:
    file = tmp_path / name
    done = run_cli("export", *extra, "-o", str(file), database_url=database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return file


def rewrite(source: Path, target: Path, change) -> None:
    """A copy of a Parquet export with ``change(rows)`` applied, keeping its header and seal (as a forger would)."""
    file = pq.ParquetFile(str(source))
    rows = file.read().to_pylist()
    change(rows)
    schema = file.schema_arrow
    with pq.ParquetWriter(str(target), schema) as writer:
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        writer.add_key_value_metadata({SEAL_KEY: file.metadata.metadata[SEAL_KEY.encode()].decode()})


def test_duckdb_reads_one_typed_row_per_event(app, clock, database_url, tmp_path) -> None:
    build_history(app, clock)
    file = export(database_url, tmp_path, "log.parquet", "--format", "parquet")
    events = app.recorder.max_notification_id()
    con = duckdb.connect()
    total, first, last = con.execute(
        f"SELECT count(*), min(position), max(position) FROM read_parquet('{file}')").fetchone()
    assert (total, first, last) == (events, 1, events)
    types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{file}'))")
                 .fetchall())
    assert types["amount"] == "DECIMAL(38,9)" and types["time"] == "TIMESTAMP WITH TIME ZONE"
    assert types["position"] == types["version"] == "BIGINT"
    recorded = con.execute(
        f"SELECT employee_id, customer_id, kind, amount, currency, payload, time FROM read_parquet('{file}') "
        "WHERE type = 'Budget.ActionRecorded' ORDER BY position LIMIT 1").fetchone()
    employee, customer, kind, amount, currency, payload, time = recorded
    assert (employee, customer, kind, amount, currency) == ("emp-1", "cust-1", "REFUND", Decimal("17.25"), "USD")
    assert json.loads(payload)["reason"] == "Café ☕ — 日本の顧客" and "__hash__" not in json.loads(payload)
    assert time is not None
    # Every budget event names its employee, even those whose payload does not.
    assert con.execute(f"SELECT count(*) FROM read_parquet('{file}') WHERE type LIKE 'Budget.%' "
                       "AND employee_id IS NULL").fetchone() == (0,)
    # The JSON lines export of the same log: the same events, hashes and checkpoint.
    lines = [json.loads(line) for line in export(database_url, tmp_path, "log.jsonl").read_text().splitlines()]
    rows = con.execute(f"SELECT position, hash, prev_hash FROM read_parquet('{file}') ORDER BY position").fetchall()
    assert rows == [(e["position"], e["state"]["__hash__"], e["state"]["__prev__"]) for e in lines[1:-1]]
    seal = json.loads(pq.ParquetFile(str(file)).metadata.metadata[SEAL_KEY.encode()])
    assert seal == lines[-1]["seal"]


def test_leeway_verify_accepts_a_parquet_export(app, clock, database_url, tmp_path) -> None:
    build_history(app, clock)
    head = app.verify_integrity(full=True).head
    file = export(database_url, tmp_path, "log.parquet", "--format", "parquet")
    checked = run_cli("verify", "--checkpoint", str(head), str(file), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    from_json = run_cli("verify", str(export(database_url, tmp_path, "log.jsonl")), cwd=tmp_path)
    assert cli_budgets(checked.stdout) == cli_budgets(from_json.stdout) and cli_budgets(checked.stdout)

    # Continuing another export: its header is the other's seal.
    middle = head.position // 2
    rest = export(database_url, tmp_path, "rest.parquet", "--format", "parquet", "--after", str(middle))
    header = json.loads(pq.ParquetFile(str(rest)).metadata.metadata[HEADER_KEY.encode()])
    assert header["after"] == middle
    assert run_cli("verify", "--checkpoint", str(head), str(rest), cwd=tmp_path).returncode == 0

    assert run_cli("export", "--format", "parquet", database_url=database_url, cwd=tmp_path).returncode == 2


def test_a_value_changed_in_a_parquet_row_is_found_and_named(app, clock, database_url, tmp_path) -> None:
    build_history(app, clock)
    file = export(database_url, tmp_path, "log.parquet", "--format", "parquet")
    rows = pq.read_table(str(file)).to_pylist()
    target = next(r for r in rows if r["type"] == "Budget.ActionRecorded" and r["amount"] == Decimal("17.25"))
    where = f"BROKEN at position {target['position']}: aggregate {target['aggregate_id']} version {target['version']}"

    def in_payload(rows: list[dict]) -> None:  # the figure, in the payload and in its typed column alike
        for row in rows:
            if row["position"] == target["position"]:
                row["payload"] = row["payload"].replace('"17.25"', '"1.25"')
                row["amount"] = Decimal("1.25")

    def in_column(rows: list[dict]) -> None:  # only where an auditor's tool reads it
        for row in rows:
            if row["position"] == target["position"]:
                row["amount"] = Decimal("1.25")

    for change, kind in ((in_payload, "HASH_MISMATCH"), (in_column, "COLUMN_MISMATCH")):
        forged = tmp_path / f"{kind}.parquet"
        rewrite(file, forged, change)
        checked = run_cli("verify", str(forged), cwd=tmp_path)
        assert checked.returncode == 1, checked.stdout
        assert f"{where}: {kind}" in checked.stdout, checked.stdout

    removed = tmp_path / "removed.parquet"
    rewrite(file, removed, lambda rows: rows.remove(next(r for r in rows if r["position"] == target["position"])))
    assert "SEAL_MISMATCH" in run_cli("verify", str(removed), cwd=tmp_path).stdout

    cut = tmp_path / "cut.parquet"
    cut.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    truncated = run_cli("verify", str(cut), cwd=tmp_path)
    assert truncated.returncode == 1 and "EXPORT_TRUNCATED" in truncated.stdout


def test_a_large_export_is_written_in_row_groups(app, clock, database_url, tmp_path) -> None:
    from leeway.application.export_parquet import write_parquet

    build_history(app, clock)
    notifications = list(app.all_notifications())
    # The same log many times over (positions renumbered): enough rows for several row groups.
    many = [n for _ in range(2 * ROW_GROUP // len(notifications) + 2) for n in notifications]
    renumbered = [type(n)(**{**vars(n), "id": index}) for index, n in enumerate(many, 1)]
    file = tmp_path / "big.parquet"
    write_parquet(renumbered, file)
    meta = pq.ParquetFile(str(file)).metadata
    assert meta.num_rows == len(many) and meta.num_row_groups >= 2
    assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= ROW_GROUP
    assert budget_id_for("emp-1")  # (the ids are those of the log)


def test_a_verify_in_partitions_gives_the_same_verdict(app, clock, database_url, tmp_path) -> None:
    """`leeway verify --partitions N` (bounded memory, through temporary files) finds what a single pass finds,
    and rebuilds the same budgets, on intact and tampered exports of both formats."""
    build_history(app, clock)
    head = app.verify_integrity(full=True).head
    jsonl = export(database_url, tmp_path, "log.jsonl")
    parquet = export(database_url, tmp_path, "log.parquet", "--format", "parquet")
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines[1:-1]]
    newest = max((e for e in events if e["topic"].endswith("Budget.ActionRecorded")), key=lambda e: e["position"])
    edited = next(e for e in events if e["topic"].endswith("Ledger.ActionCounted"))

    def variant(name: str, keep) -> Path:
        file = tmp_path / name
        file.write_text("\n".join(keep(lines)) + "\n", encoding="utf-8")
        return file

    files = [
        jsonl,
        parquet,
        variant("edited.jsonl", lambda ls: [
            line.replace('"amount":', '"amount_":') if json.loads(line).get("position") == edited["position"] else line
            for line in ls]),
        variant("removed.jsonl", lambda ls: [line for line in ls if json.loads(line).get("position")
                                             != newest["position"]]),
        variant("swapped.jsonl", lambda ls: ls[:5] + [ls[6], ls[5]] + ls[7:]),
        variant("cut.jsonl", lambda ls: ls[: len(ls) // 2]),
    ]
    for file in files:
        single = run_cli("verify", "--checkpoint", str(head), "--partitions", "1", str(file), cwd=tmp_path)
        split = run_cli("verify", "--checkpoint", str(head), "--partitions", "3", str(file), cwd=tmp_path)
        assert split.returncode == single.returncode, (file.name, single.stdout, split.stdout)
        assert sorted(split.stdout.splitlines()) == sorted(single.stdout.splitlines()), file.name
        assert split.stderr.splitlines()[-1] == single.stderr.splitlines()[-1], file.name
        if file not in (jsonl, parquet):
            assert single.returncode == 1 and "BROKEN at position" in single.stdout, file.name
