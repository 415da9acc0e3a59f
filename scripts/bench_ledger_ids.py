"""What keyed customer ledger ids (issue 22) cost the writer: a script that prints figures, not a test.

The group-commit writer alone (``execute_batch`` of 32 RecordActions, no gRPC, a key store, 100 employees, 1,000
customers, each with a ledger before timing), on SQLite and PostgreSQL, in three modes, each on its own database
and in its own process:

- ``before``: the code of another checkout (``--before``, default ../main: the code before keyed ids), whose
  customer ledgers have the name-based id (one ledger read per action);
- ``keyed ids``: this checkout, customers first seen with keyed ids (their keyed ledger read, the legacy id
  looked for: absent);
- ``keyed + legacy``: this checkout, customers whose ledgers were written under legacy ids before the upgrade
  (both ledgers read and counted on every action).

Paired rounds, the order of the modes rotating each round; medians over the rounds.

Usage: .venv/bin/python scripts/bench_ledger_ids.py [--rounds 7] [--seconds 3] [--engines sqlite,postgres]
       [--before ../main]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODES = ("before", "keyed ids", "keyed + legacy")
WARM_BATCHES = 40  # 1,280 actions: every one of the 1,000 customers has a ledger before timing


def application(url: str, key: str, legacy: bool) -> Any:
    from leeway.adapters.keystore import StaticMasterKey
    from leeway.application import LeewayApplication
    from leeway.settings import Settings

    app = LeewayApplication(env=Settings(database_url=url).eventsourcing_env(), master_key=StaticMasterKey(key.encode()))
    if legacy:  # this checkout writing ledgers as the code before keyed ids did (the log before the upgrade)
        from leeway.domain.ledgers import LEGACY_LEDGER_IDS

        app.conventions = replace(app.conventions, customer_ledgers=LEGACY_LEDGER_IDS)
    return app


def batch(employees: list[str], n: int) -> list[Any]:
    from leeway.application.commands import RecordAction
    from leeway.domain.money import Money
    from leeway.domain.policy import ActionKind

    return [
        RecordAction(
            request_id=f"ids-{uuid.uuid4()}", employee_id=employees[(n * 32 + i) % len(employees)],
            customer_id=f"guest-{(n * 32 + i) % 1000}", case_id=f"case-{n}", kind=ActionKind.GIFT,
            amount=Money(Decimal(1), "EUR"), reason="a reason", details={"gift_type": "tea", "note": "a note"},
        )
        for i in range(32)
    ]


def prepare(url: str, key: str, mode: str, employees: list[str]) -> None:
    """Opens the budgets and gives every customer a ledger (``keyed + legacy``: under legacy ids)."""
    from builders import make_policy
    from leeway.application.commands import OpenBudget

    app = application(url, key, legacy=mode == "keyed + legacy")
    try:
        app.execute_batch([OpenBudget(f"o-{e}", e, f"team-{i % 10}", e, make_policy(10**9, limit=None, currency="EUR"))
                           for i, e in enumerate(employees)])
        for n in range(WARM_BATCHES):
            app.execute_batch(batch(employees, n))
    finally:
        app.close()


def writer_rate(url: str, key: str, employees: list[str], seconds: float) -> tuple[float, float]:
    app = application(url, key, legacy=False)
    try:
        for n in range(8):  # warm-up of this process's caches
            app.execute_batch(batch(employees, n))
        done, n = 0, 8
        cpu, began = time.process_time(), time.perf_counter()
        while time.perf_counter() - began < seconds:
            app.execute_batch(batch(employees, n))
            done, n = done + 32, n + 1
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        return done / elapsed, cpu * 1e6 / done
    finally:
        app.close()


def worker(job: dict[str, Any]) -> None:
    """One job in this process, with the checkout's code on sys.path; prints its result as JSON."""
    sys.path[:0] = [str(Path(job["code"]) / "service"), str(Path(job["code"]) / "tests")]
    if job["what"] == "prepare":
        prepare(job["url"], job["key"], job["mode"], job["employees"])
        print(json.dumps({}))
    else:
        from leeway.domain import ledgers

        rate, cpu = writer_rate(job["url"], job["key"], job["employees"], job["seconds"])
        print(json.dumps({"rate": rate, "cpu": cpu, "code": ledgers.__file__}))


def run(job: dict[str, Any]) -> dict[str, Any]:
    code = Path(job["code"])
    env = {**os.environ, "PYTHONPATH": f"{code / 'service'}{os.pathsep}{code / 'tests'}"}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env, check=True,
                          capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--before", default=str(ROOT.parent / "main"))
    parser.add_argument("--worker", default="")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    key = secrets.token_hex(32)
    tmp = Path(tempfile.mkdtemp())
    employees = [f"bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(100)]
    code = {"before": args.before, "keyed ids": str(ROOT), "keyed + legacy": str(ROOT)}
    schemas: list[Any] = []
    rows: list[str] = []
    try:
        for engine in args.engines.split(","):
            urls: dict[str, str] = {}
            for number, mode in enumerate(MODES):
                if engine == "postgres":
                    from pgschema import PostgresSchema

                    schemas.append(PostgresSchema(f"bl{number}"))
                    urls[mode] = schemas[-1].url
                else:
                    urls[mode] = f"sqlite:///{tmp}/mode{number}.sqlite"
                run({"what": "prepare", "code": code[mode], "url": urls[mode], "key": key, "mode": mode,
                     "employees": employees})
            measured: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
            for round_ in range(args.rounds):
                for mode in MODES[round_ % 3:] + MODES[: round_ % 3]:
                    measured[mode].append(run({"what": "measure", "code": code[mode], "url": urls[mode], "key": key,
                                               "employees": employees, "seconds": args.seconds}))
                    print(f"[{engine} {mode}] {measured[mode][-1]['rate']:.0f}/s ({measured[mode][-1]['code']})",
                          file=sys.stderr)
            med = {m: {k: statistics.median(r[k] for r in measured[m]) for k in ("rate", "cpu")} for m in MODES}
            name = "PostgreSQL" if engine == "postgres" else "SQLite"
            for mode in MODES:
                rows.append(f"| {name} | {mode} | {med[mode]['rate']:.0f} | {med[mode]['cpu']:.0f} | "
                            f"{med[mode]['rate'] / med['before']['rate']:.2f} | "
                            f"{med[mode]['cpu'] / med['before']['cpu']:.2f} |")
    finally:
        for schema in schemas:
            schema.drop()
    title = (f"The writer alone (execute_batch of 32 RecordActions, a key store), customer ledger ids; medians of "
             f"{args.rounds} rounds of {args.seconds:g} s, order rotating; before = {args.before}.")
    header = ["| engine | ledgers | actions/s | CPU µs per action | actions/s vs before | CPU vs before |",
              "|---|---|---|---|---|---|"]
    print("\n".join(["", title, "", *header, *rows]))


if __name__ == "__main__":
    main()
