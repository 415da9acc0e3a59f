"""The measurement scripts still run and print their tables (tiny sizes: these check that they work, not the
figures; `make bench` and scripts/write_path_model.py at full size are for the figures)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_") or k == "LEEWAY_TEST_POSTGRES_URL"}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table_rows(output: str, first_cell: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in output.splitlines() if line.startswith("| ")]
    return [row for row in rows if row[0] == first_cell]


@pytest.mark.timeout(300)
def test_bench_prints_both_tables_on_sqlite() -> None:
    output = run("scripts/bench.py", "--engines", "sqlite", "--seconds", "0.5", "--big-history", "300")
    rows = table_rows(output, "SQLite")
    levels = [row for row in rows if row[1] in ("1", "8", "32")]
    assert [row[1] for row in levels] == ["1", "8", "32"]
    for row in levels:
        assert float(row[2].replace(",", "")) > 0 and float(row[6]) > 0  # RecordAction/s, ratio
    assert any(row[1] == "GetBudget" and "300 events" in row[3] for row in rows)
    variants = [row[0] for row in table_rows(output, "SQLite, LEEWAY_PROJECTIONS=inprocess")]
    assert variants == ["SQLite, LEEWAY_PROJECTIONS=inprocess"]
    calls = {row[1]: row for row in rows if row[1] in ("RecordAction", "Check", "ratios")}
    assert set(calls) == {"RecordAction", "Check", "ratios"}
    assert float(calls["RecordAction"][5]) > 0  # the server's CPU ms per RecordAction
    writer, front = (float(cell) for cell in calls["RecordAction"][6].split(" / "))
    assert writer > 0 and front > 0  # found the writer thread by its OS-level name, and split the server's CPU
    assert float(calls["Check"][6].split(" / ")[0]) < writer  # a Check never reaches the writer
    assert float(calls["ratios"][6].split()[0]) > 0  # the front ratio
    assert float(calls["ratios"][-1]) > 0  # total CPU per Check over per RecordAction


@pytest.mark.timeout(120)
def test_write_path_model_prints_its_table() -> None:
    output = run("scripts/write_path_model.py", "--seconds", "0.5", "--work", "0,200")
    rows = table_rows(output, "sync")
    assert [row[1] for row in rows] == ["0", "200"]
    assert all(float(row[6]) > 0 for row in rows)


@pytest.mark.timeout(120)
def test_bench_http_prints_its_table() -> None:
    output = run("scripts/bench_http.py", "--seconds", "0.3", "--rounds", "1")
    rows = table_rows(output, "SQLite")
    assert [row[1] for row in rows] == ["gRPC", "HTTP JSON", "HTTP proto"]
    assert all(float(row[2].replace(",", "")) > 0 and float(row[5]) > 0 for row in rows)


@pytest.mark.timeout(300)
def test_tracing_bench_compares_before_off_and_on() -> None:
    output = run("scripts/bench_tracing.py", "--rounds", "1", "--seconds", "0.5")
    for name in ("base", "off", "on"):
        (row,) = table_rows(output, name)
        assert float(row[1].replace(",", "")) > 0 and float(row[4]) > 0  # RecordAction/s, CPU ms per call
    spans = int(output.split("spans received by the collector:")[1].split()[0].replace(",", ""))
    assert spans > 0, "tracing on exported spans to the script's collector"
    assert "off / base:" in output and "on / off:" in output


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_bench_scale_prints_its_table_at_a_small_size() -> None:
    """`make bench-scale` at a tiny size: seeds through the write path, measures at two sizes, prints the table."""
    output = run("scripts/bench_scale.py", "--sizes", "300,600", "--employees", "40", "--teams", "4", "--customers", "100",
                 "--repeats", "2", "--window", "500", "--batch", "200")
    header = [row for row in (line.strip().strip("|").split("|") for line in output.splitlines() if line.startswith("| what"))]
    assert header and [c.strip() for c in header[0]][1:] == ["300 actions", "600 actions", "ratio 600/300"]
    for name in ("GetKpis everyone, all time (ms)", "GetKpiSeries everyone, 30 days (ms)", "GetBudget (ms)",
                 "ListActions by customer (ms)", "StreamEvents of the window (events/s)", "log bytes per action",
                 "read-model bytes per action", "VerifyIntegrity everything / raw",
                 "regulars: ListActions by customer, full page (ms)", "regulars: GetBudget (ms)"):
        (row,) = table_rows(output, name)
        assert all(float(cell.replace(",", "")) > 0 for cell in row[1:]), row
    (events,) = table_rows(output, "events in the log")
    assert float(events[2].replace(",", "")) > float(events[1].replace(",", ""))
    assert "seeding to 600" in output


@pytest.mark.timeout(300)
def test_log_bytes_prints_its_tables_on_sqlite() -> None:
    """`make bench-log-bytes` at a tiny size: bytes per topic and per command, and the writer's CPU comparison."""
    output = run("scripts/log_bytes.py", "--sqlite-only", "--actions", "40", "--employees", "4", "--customers", "8",
                 "--cpu-rounds", "1", "--cpu-seconds", "0.2")
    assert output.count("| command | events per command | state + topic bytes per command |") == 2
    recorded = table_rows(output, "RecordAction (mean of a batch of 20)")
    assert len(recorded) == 2
    for row in recorded:
        assert 3.5 < float(row[1]) < 6 and 300 < float(row[2].replace(",", "")) < 2000, row
    assert "ratio packed/JSON" in output


@pytest.mark.timeout(300)
def test_bench_audit_prints_its_table_on_sqlite() -> None:
    output = run("scripts/bench_audit.py", "--engine", "sqlite", "--sizes", "150,300", "--employees", "20",
                 "--customers", "50", "--new", "20")
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in output.splitlines()
            if line.startswith("| 1") or line.startswith("| 3")]
    whats = [row[2] for row in rows]
    for size in ("150", "300"):
        sized = [row for row in rows if row[0] == size]
        assert [row[2] for row in sized][:4] == [
            "leeway export (jsonl)", "leeway export (parquet)", "leeway verify (jsonl)", "leeway verify (parquet)"]
        assert all(float(row[3].replace(",", "")) > 0 for row in sized)  # events/s
        assert all(float(row[4]) > 0 for row in sized[:4])  # peak RSS of each child
    assert sum(w.startswith("VerifyIntegrity, incremental") for w in whats) == 2
    # the parts of the log, each next to the whole-log pass it replaced
    assert sum(w.startswith("VerifyIntegrity, one budget") for w in whats) == 2
    assert sum(w.startswith("leeway export --after the verified checkpoint (") for w in whats) == 2
    assert sum(w.startswith("the same as before") for w in whats) == 4


@pytest.mark.timeout(300)
def test_bench_projections_streams_batched_on_sqlite() -> None:
    output = run("scripts/bench_projections.py", "--engines", "sqlite", "--events", "600", "--budgets", "6",
                 "--batches", "100", "--repeats", "1")
    lines = [line for line in output.splitlines() if line.startswith("SQLite")]
    assert any("StreamEvents (follow=false)" in line for line in lines)
    batched = [line for line in lines if "StreamEvents, 100 per message" in line]
    assert len(batched) == 1 and int(batched[0].split()[5].replace(",", "")) > 0
