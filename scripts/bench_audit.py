"""Auditor benchmark (`make bench-audit`): a script that prints a table, not a test.

On a fresh PostgreSQL schema ($LEEWAY_TEST_POSTGRES_URL; or SQLite with --engine sqlite) it seeds actions through
the application's own write path (``execute_batch`` of RecordAction commands, as the group-commit writer runs them:
budgets, ledgers, request records and all) over --employees employees in --employees/25 teams, customers drawn from
a pool of --customers, growing the log to each of --sizes actions in turn. At each size it measures, each in a
child process (peak RSS from ``os.wait4``, the kernel's high-water mark of the whole process):

- ``leeway export`` (JSON lines) and ``leeway export --format parquet``;
- ``leeway verify`` of each file (chains, references, seal, and every budget rebuilt from the file);

and, in this process, VerifyIntegrity's work (``verify_integrity``): a full verify of the whole log, then --new more
actions, then the incremental re-verify from the checkpoint the full one stored; VerifyIntegrity of one budget
(the median of 5); then --new more actions and ``leeway export --after`` the verified checkpoint. The last two are
each shown next to the same work done as before they read only their part of the log (a pass over the whole log,
in this process). It prints events/s and peak RSS of each, and each figure's ratio to the smallest size's (the
target for RSS: within 1.2x).

Usage: .venv/bin/python scripts/bench_audit.py [--sizes 10000,100000] [--employees 5000] [--customers 100000]
       [--new 1000] [--engine postgres]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

KINDS = ("REFUND", "CREDIT", "GIFT", "RULE_BEND")


def seed(app, employees: int, customers: int, start: int, stop: int, batch: int = 250) -> float:
    """Actions ``start`` .. ``stop`` - 1 through ``execute_batch``; returns the seconds it took."""
    from leeway.application.commands import RecordAction
    from leeway.domain.money import Money
    from leeway.domain.policy import ActionKind

    details = {
        ActionKind.REFUND: {"order_id": "o-1"}, ActionKind.CREDIT: {"account_ref": "acc-1"},
        ActionKind.GIFT: {"gift_type": "voucher"}, ActionKind.RULE_BEND: {"rule_code": "LATE_FEE"},
    }  # fmt: skip
    began = time.perf_counter()
    for first in range(start, stop, batch):
        commands = []
        for i in range(first, min(stop, first + batch)):
            kind = ActionKind[KINDS[i % len(KINDS)]]
            commands.append(RecordAction(
                request_id=f"seed-{uuid4()}", employee_id=f"emp-{i % employees:05d}",
                customer_id=f"cust-{(i * 7919) % customers:06d}", case_id="", kind=kind,
                amount=Money(Decimal(0) if kind is ActionKind.RULE_BEND else Decimal(f"{i % 40 + 1}.25"), "EUR"),
                reason="bench", details=dict(details[kind]),
            ))
        outcomes = app.execute_batch(commands)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise SystemExit(f"seeding failed: {failed[0]!r}")
    return time.perf_counter() - began


def open_budgets(app, employees: int) -> None:
    from leeway.application.commands import OpenBudget
    from leeway.domain.money import Money
    from leeway.domain.periods import PeriodKind
    from leeway.domain.policy import ActionKind, BendableRule, Policy

    policy, problems = Policy.build(
        period_allowance=Money(Decimal(10) ** 9, "EUR"), period=PeriodKind.YEAR, per_action_limit=None,
        allowed_kinds=list(ActionKind), bendable_rules=[BendableRule("LATE_FEE")],
    )
    assert policy is not None, problems
    for first in range(0, employees, 250):
        app.execute_batch([
            OpenBudget(request_id=f"open-{i}", employee_id=f"emp-{i:05d}", team_id=f"team-{i % max(1, employees // 25):03d}",
                       display_name="", policy=policy)
            for i in range(first, min(employees, first + 250))
        ])


def child(args: list[str], database_url: str, workdir: Path) -> tuple[float, float, str]:
    """Runs ``leeway <args>``; returns (seconds, peak RSS in MB, stderr's last line). A run that could not get a
    PostgreSQL connection (the shared build machine's server is full) is run again, up to 10 times."""
    for _ in range(9):
        try:
            return _child(args, database_url, workdir)
        except ConnectionError as error:
            print(f"retrying leeway {args[0]}: {error}", file=sys.stderr, flush=True)
            time.sleep(10)
    return _child(args, database_url, workdir)


def _child(args: list[str], database_url: str, workdir: Path) -> tuple[float, float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env.update(LEEWAY_DATABASE_URL=database_url, LEEWAY_LOG_LEVEL="warning")
    began = time.perf_counter()
    # Through a small launcher: Linux keeps a process's peak RSS across exec, so a child forked straight from this
    # (large) process would report at least this process's RSS. The launcher's own child starts small.
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "leeway.cli", *args], env=env, cwd=workdir,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    _, err = process.communicate()
    seconds = time.perf_counter() - began
    lines = err.strip().splitlines() or [""]
    if process.returncode != 0 and ("get a connection" in err or "too many clients" in err):
        raise ConnectionError(err.strip().splitlines()[0][:200])
    if process.returncode != 0 or not lines[-1].startswith("maxrss_kb="):
        raise SystemExit(f"leeway {' '.join(args)} failed ({process.returncode}): {err[-2000:]}")
    return seconds, int(lines[-1].split("=")[1]) / 1024, (lines[:-1] or [""])[-1]


LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print(f"maxrss_kb={usage.ru_maxrss}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(app, database_url: str, workdir: Path, actions: int, new: int, employees: int, customers: int) -> list:
    events = int(app.recorder.max_notification_id() or 0)
    rows = []
    files = {"jsonl": workdir / "log.jsonl", "parquet": workdir / "log.parquet"}
    for name, file in files.items():
        seconds, rss, _ = child(["export", "--format", name, "-o", str(file)], database_url, workdir)
        rows.append((actions, events, f"leeway export ({name})", events / seconds, rss, file.stat().st_size))
    for name, file in files.items():
        seconds, rss, last = child(["verify", str(file)], database_url, workdir)
        if not last.endswith(": OK"):
            raise SystemExit(f"leeway verify {file}: {last}")
        rows.append((actions, events, f"leeway verify ({name})", events / seconds, rss, None))
    began = time.perf_counter()
    full = app.verify_integrity(full=True)
    elapsed = time.perf_counter() - began
    assert full.ok, full.violations[:3]
    rows.append((actions, events, "VerifyIntegrity, full", full.events_checked / elapsed, None, None))
    seed(app, employees, customers, actions, actions + new)
    began = time.perf_counter()
    again = app.verify_integrity()
    elapsed = time.perf_counter() - began
    assert again.ok and again.verified_from == full.head, (again.violations or [])[:3]
    rows.append((actions, events, f"VerifyIntegrity, incremental after {new:,} actions "
                 f"({again.events_checked:,} events, {elapsed:.2f} s)", again.events_checked / elapsed, None, None))
    rows += parts_of_the_log(app, actions, new, employees, customers, again.head)
    return rows


def parts_of_the_log(app, actions: int, new: int, employees: int, customers: int, verified: Any) -> list:
    """VerifyIntegrity of one budget, and ``leeway export --after`` the verified checkpoint once ``new`` more
    actions were written: each next to the same work done as before (a pass over the whole log), in this run."""
    from leeway.application.audit import export_lines, records_from_notifications, verify
    from leeway.domain.ids import budget_id_for

    events = int(app.recorder.max_notification_id() or 0)
    budget = budget_id_for("emp-00000")

    def whole_log_pass() -> Any:
        return verify(records_from_notifications(n for n in app.all_notifications() if n.originator_id == budget),
                      whole=False)

    rows = []
    for what, call in (("VerifyIntegrity, one budget", lambda: app.verify_integrity("emp-00000")),
                       ("  the same as before: a pass over the whole log", whole_log_pass)):
        runs = []
        for _ in range(5):
            began = time.perf_counter()
            result = call()
            runs.append(time.perf_counter() - began)
        assert result.ok, result.violations[:3]
        elapsed = sorted(runs)[2]
        rows.append((actions, events, f"{what} ({result.events_checked} events, {elapsed * 1000:.1f} ms)",
                     result.events_checked / elapsed, None, None))
    seed(app, employees, customers, actions + new, actions + 2 * new)
    head = int(app.recorder.max_notification_id() or 0)
    for what, lines in (("leeway export --after the verified checkpoint", lambda: app.export(verified.position)),
                        ("  the same as before: from the log's start",
                         lambda: export_lines(app.all_notifications(), verified.position))):
        began = time.perf_counter()
        count = sum(1 for _ in lines()) - 2  # the header and the seal
        elapsed = time.perf_counter() - began
        assert count == head - verified.position, (count, head, verified)
        rows.append((actions, head, f"{what} ({count:,} events, {elapsed:.2f} s, in this process)", count / elapsed,
                     None, None))
    return rows


def main() -> None:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="log sizes, in actions, measured in turn")
    parser.add_argument("--employees", type=int, default=5000)
    parser.add_argument("--customers", type=int, default=100_000, help="the pool customers are drawn from")
    parser.add_argument("--new", type=int, default=1000, help="actions written between the full and the incremental verify")
    parser.add_argument("--engine", default="postgres", choices=("postgres", "sqlite"))
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    from leeway.application import LeewayApplication
    from leeway.settings import Settings

    with tempfile.TemporaryDirectory(prefix="leeway-bench-audit-") as tmp:
        workdir = Path(tmp)
        schema = None
        if args.engine == "postgres":
            from pgschema import PostgresSchema

            schema = PostgresSchema("benchaudit")
            url = schema.url
        else:
            url = f"sqlite:///{workdir}/leeway.sqlite"
        app = LeewayApplication(env=Settings(database_url=url).eventsourcing_env())
        rows: list = []
        try:
            open_budgets(app, args.employees)
            done = 0
            for size in sizes:
                seconds = seed(app, args.employees, args.customers, done, size)
                print(f"seeded {size - done:,} actions in {seconds:.0f} s ({(size - done) / seconds:,.0f}/s)",
                      file=sys.stderr, flush=True)
                rows += measure(app, url, workdir, size, args.new, args.employees, args.customers)
                done = size + 2 * args.new
        finally:
            app.close()
            if schema is not None:
                schema.drop()
    smallest = {what: (rate, rss) for actions, _, what, rate, rss, _ in rows if actions == sizes[0]}
    print()
    print(f"| actions | events | what | events/s | peak RSS MB | RSS vs {sizes[0]:,} | file MB |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for actions, events, what, rate, rss, size in rows:
        base = smallest.get(what, (None, None))[1]
        ratio = f"{rss / base:.2f}" if rss and base else ""
        print(f"| {actions:,} | {events:,} | {what} | {rate:,.0f} | {f'{rss:.0f}' if rss else ''} | {ratio} | "
              f"{f'{size / 1e6:.1f}' if size else ''} |")
    print(f"\n(engine {args.engine}; {args.employees:,} employees, customers from a pool of {args.customers:,}; "
          f"total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
