"""`make chaos`: the full-size fault scenarios of issue 8 against real `leeway serve` processes and the local
PostgreSQL, plus the hostile-input fuzzing, then a table of what happened.

- crash under load (32 clients, SIGKILL + restart several times), database outage (PostgreSQL gone for some
  seconds under load: through a TCP proxy, or a real `pg_ctlcluster stop/start` with --real-postgres-stop),
  two replicas spending on the same budgets: the same code as tests/faults (tests/faults/harness.py), at
  ``Scale.full()``;
- holds, slow-loris and projection crashes: tests/faults/test_holds.py and test_slowloris.py, and the projection
  tests that kill a projection mid-batch (in its transaction, and a separate `leeway projections run` process
  by SIGKILL) and compare the read models with a rebuild (pytest);
- the idle-stream siege (issue 18, tests/faults/siege.py): 2,000 idle Watch / follow / reflection streams and 200
  unary calls whose message never arrives, half without credentials; Health/Check, GetBudget and RecordAction
  must keep answering with a p99 within 2x of the idle server's;
- fuzzing: tests/e2e/test_fuzz.py with LEEWAY_FUZZ_EXAMPLES=530 (about 10,000 cases) and LEEWAY_FUZZ_KEEP_GOING=1.

PostgreSQL: LEEWAY_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test); every scenario gets a
schema of its own, dropped afterwards. Exit status 0 only if everything passed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from faults.harness import Scale, ScenarioResult, crash_under_load, database_outage, two_replicas  # noqa: E402
from faults.siege import SiegeResult, siege  # noqa: E402
from pgschema import PostgresSchema  # noqa: E402

FUZZ_LINE = re.compile(r"fuzz cases tried: (\d+); INTERNAL/UNKNOWN seen: (\d+) \(of which undecodable bytes answered by grpcio: (\d+)\)")


def run_scenario(name: str, function, scale: Scale, workdir: Path, **kwargs) -> ScenarioResult | str:
    print(f"\n=== {name} ...", flush=True)
    started = time.monotonic()
    schema = None
    try:
        schema = PostgresSchema("chaos")
        result = function(schema.url, workdir / name.replace(" ", "-"), scale, **kwargs)
        print(result.describe(), flush=True)
        return result
    except BaseException as error:  # noqa: BLE001 - pytest.fail() raises a BaseException; report, go on
        if isinstance(error, KeyboardInterrupt):
            raise
        text = f"{type(error).__name__}: {error}"
        print(f"{name} crashed after {time.monotonic() - started:.1f} s: {text}\n{traceback.format_exc()}", flush=True)
        return text
    finally:
        if schema is not None:
            try:
                schema.drop()
            except Exception as error:  # noqa: BLE001
                print(f"(could not drop schema {schema.name}: {error})")


def run_pytest(paths: list[str], env: dict[str, str], workdir: Path, label: str, timeout: float) -> tuple[dict[str, str], str, float]:
    """Runs pytest on ``paths``; returns ({test: passed|failed|skipped|error}, captured output, seconds)."""
    print(f"\n=== {label} ...", flush=True)
    junit = workdir / f"{label.replace(' ', '-')}.xml"
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", f"--junitxml={junit}", *paths]
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as expired:
        output = f"TIMEOUT after {timeout} s\n{expired.stdout or ''}"
    seconds = time.monotonic() - started
    results: dict[str, str] = {}
    if junit.exists():
        for case in ET.parse(junit).iter("testcase"):
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
            results[case.get("name", "?")] = outcome
    tail = "\n".join(output.strip().splitlines()[-3:])
    print(f"{label}: {Counter(results.values())} in {seconds:.0f} s\n{tail}", flush=True)
    return results, output, seconds


#: The siege at full size (issue 18): idle streams, calls whose message never arrives, the p99 bound.
SIEGE_STREAMS, SIEGE_SILENT, SIEGE_ROUNDS, SIEGE_MAX_P99_RATIO = 2000, 200, 300, 2.0


def run_siege(workdir: Path) -> SiegeResult | str:
    from faults.harness import Cluster
    from leeway_client import make_policy

    print("\n=== idle-stream siege ...", flush=True)
    schema = PostgresSchema("chaos")
    (workdir / "siege").mkdir(parents=True, exist_ok=True)
    try:
        return siege(
            lambda extra: Cluster(schema.url, workdir / "siege", extra_env=extra),
            make_policy(currency="EUR", period_allowance=1_000_000),
            idle_streams=SIEGE_STREAMS, silent_calls=SIEGE_SILENT, rounds=SIEGE_ROUNDS, workdir=workdir / "siege",
        )
    except Exception as error:  # noqa: BLE001 - reported with the table
        traceback.print_exc()
        return f"{type(error).__name__}: {error}"
    finally:
        schema.drop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-postgres-stop", action="store_true",
                        help="stop and start the real PostgreSQL cluster (pg_ctlcluster, as root) for the outage "
                             "instead of cutting a TCP proxy; it is always started again")
    parser.add_argument("--fuzz-examples", type=int, default=530, help="LEEWAY_FUZZ_EXAMPLES (530: ~10,000 cases)")
    parser.add_argument("--skip-fuzz", action="store_true")
    parser.add_argument("--clients", type=int, help="client threads (default 32)")
    parser.add_argument("--kills", type=int, help="SIGKILLs in the crash scenario (default 6)")
    args = parser.parse_args()

    scale = Scale.full()
    if args.clients:
        scale = replace(scale, clients=args.clients)
    if args.kills:
        scale = replace(scale, kills=args.kills)
    os.environ["LEEWAY_REQUIRE_POSTGRES"] = "1"  # no silent skips in a chaos run
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="leeway-chaos-"))
    print(f"leeway chaos: {scale}; work files in {workdir}", flush=True)

    crash = run_scenario("crash under load", crash_under_load, scale, workdir)
    outage = run_scenario("database outage", database_outage, scale, workdir, real_postgres_stop=args.real_postgres_stop)
    replicas = run_scenario("two replicas", two_replicas, scale, workdir)
    siege_result = run_siege(workdir)

    env = {**os.environ, "LEEWAY_REQUIRE_POSTGRES": "1"}
    pytest_results, _, pytest_seconds = run_pytest(
        [
            "tests/faults/test_holds.py",
            "tests/faults/test_slowloris.py",
            "tests/integration/test_projections.py::test_a_batch_killed_inside_its_transaction_leaves_nothing",
            "tests/integration/test_projections.py::test_two_runners_on_one_view_at_once",
            "tests/e2e/test_insights.py::test_external_projections_killed_mid_catch_up",
        ],
        env,
        workdir,
        "holds, slow-loris and projection crashes",
        600,
    )

    fuzz = None
    if not args.skip_fuzz:
        fuzz_env = {**env, "LEEWAY_FUZZ_EXAMPLES": str(args.fuzz_examples), "LEEWAY_FUZZ_KEEP_GOING": "1"}
        fuzz_results, fuzz_output, fuzz_seconds = run_pytest(["tests/e2e/test_fuzz.py"], fuzz_env, workdir, "fuzz", 900)
        match = FUZZ_LINE.search(fuzz_output)
        failed = [name for name, outcome in fuzz_results.items() if outcome in ("failed", "error")]
        fuzz = {
            "cases": int(match.group(1)) if match else None,
            "internals": int(match.group(2)) if match else None,
            "undecodable": int(match.group(3)) if match else None,
            "failed": failed,
            "tests": len(fuzz_results),
            "seconds": fuzz_seconds,
        }

    # ------------------------------------------------------------------ the table
    rows = []
    ok = True
    for name, result in (("crash under load", crash), ("database outage", outage), ("two replicas", replicas)):
        if isinstance(result, str):
            rows.append((name, "-", "-", "-", "-", "-", f"FAIL ({result[:60]})"))
            ok = False
            continue
        r = result.report
        ok &= result.ok
        rows.append((name, str(r.acknowledged), str(r.refused), str(len(r.lost)), str(len(r.duplicated)),
                     str(len(set(r.overspent) | set(r.below_zero))), ("PASS" if result.ok else "FAIL") + f" ({result.seconds:.0f} s)"))
    header = ("scenario", "acknowledged", "refused", "lost", "duplicated", "overspent budgets", "result")
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print("\n\nLeeway chaos run ({:.0f} s, {} client threads, {} SIGKILLs, {} s outage via {})".format(
        time.monotonic() - began, scale.clients, scale.kills, scale.outage_seconds,
        "pg_ctlcluster stop/start" if args.real_postgres_stop else "TCP proxy cut"))
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))

    print()
    if isinstance(outage, ScenarioResult):
        codes = ", ".join(f"{code}={n}" for code, n in outage.outage_statuses.most_common()) or "none"
        print(f"statuses seen during the outage: {codes}")
        health = ", ".join(f"{code}={n}" for code, n in outage.outage_health.most_common()) or "none"
        print(f"Health.Check during the outage (every 0.1 s): {health}")
        recovery = f"{outage.recovery_seconds:.1f} s" if outage.recovery_seconds is not None else "not recovered"
        print(f"recovery after the database came back (health SERVING + GetBudget OK): {recovery}")
    for result in (crash, outage, replicas):
        if isinstance(result, ScenarioResult):
            for note in result.notes:
                print(f"  {result.name}: {note}")
    for name, outcome in pytest_results.items():
        ok &= outcome == "passed"
        print(f"{name}: {outcome.upper()}")
    if not pytest_results:
        ok = False
        print("holds, slow-loris and projection crashes: no results (pytest did not run?)")
    if fuzz is not None:
        fuzz_ok = not fuzz["failed"] and fuzz["tests"] > 0 and fuzz["cases"] is not None
        ok &= fuzz_ok
        print(f"fuzz cases tried: {fuzz['cases']}; INTERNAL/UNKNOWN seen: {fuzz['internals']} "
              f"(undecodable bytes answered by grpcio: {fuzz['undecodable']}); {fuzz['tests']} fuzz tests, "
              f"failed: {fuzz['failed'] or 'none'}; {fuzz['seconds']:.0f} s: {'PASS' if fuzz_ok else 'FAIL'}")
    if isinstance(siege_result, str):
        ok = False
        print(f"idle-stream siege: FAIL ({siege_result[:200]})")
    else:
        worst = max(siege_result.ratio(m) for m in siege_result.idle.seconds)
        siege_ok = siege_result.besieged.all_ok() and worst <= SIEGE_MAX_P99_RATIO
        ok &= siege_ok
        print(f"\nidle-stream siege ({SIEGE_STREAMS} idle Watch/follow/reflection streams + {SIEGE_SILENT} calls whose "
              f"message never arrives, half without credentials; {SIEGE_ROUNDS} sequential calls of each kind):")
        print(siege_result.table())
        print(f"worst p99 ratio {worst:.2f} (at most {SIEGE_MAX_P99_RATIO:g}): {'PASS' if siege_ok else 'FAIL'}")
    print(f"\nchaos: {'PASS' if ok else 'FAIL'} in {time.monotonic() - began:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
