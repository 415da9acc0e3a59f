"""What keyed customer ledger ids (issue 22) cost the writer: a script that prints figures, not a test.

The group-commit writer alone (``execute_batch`` of 32 RecordActions in this process, no gRPC, a key store, 100
employees, 1,000 customers), on SQLite and PostgreSQL, in three modes, each on its own database:

- ``legacy ids``: customer ledgers under the name-based id (what the code before keyed ids did: one ledger read
  per action);
- ``keyed ids``: customers first seen with keyed ids (the keyed ledger, and the legacy id looked for: absent);
- ``keyed + legacy``: customers whose ledgers were written under legacy ids before the upgrade (both ledgers read
  and counted on every action).

Paired rounds, the order of the modes rotating each round; medians over the rounds.

Usage: .venv/bin/python scripts/bench_ledger_ids.py [--rounds 5] [--seconds 3] [--engines sqlite,postgres]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MODES = ("legacy ids", "keyed ids", "keyed + legacy")
WARM_BATCHES = 40  # 1,280 actions: every one of the 1,000 customers has a ledger before timing


def application(url: str, master: Any, legacy: bool) -> Any:
    from leeway.application import LeewayApplication
    from leeway.domain.ledgers import LEGACY_LEDGER_IDS
    from leeway.settings import Settings

    app = LeewayApplication(env=Settings(database_url=url).eventsourcing_env(), master_key=master)
    if legacy:
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


def prepare(url: str, master: Any, mode: str, employees: list[str]) -> None:
    """Opens the budgets and gives every customer a ledger: under legacy ids for ``legacy ids`` and ``keyed +
    legacy`` (the log before the upgrade), under keyed ids for ``keyed ids``."""
    from builders import make_policy
    from leeway.application.commands import OpenBudget

    app = application(url, master, legacy=mode != "keyed ids")
    try:
        app.execute_batch([OpenBudget(f"o-{e}", e, f"team-{i % 10}", e, make_policy(10**9, limit=None, currency="EUR"))
                           for i, e in enumerate(employees)])
        for n in range(WARM_BATCHES):
            app.execute_batch(batch(employees, n))
    finally:
        app.close()


def writer_rate(url: str, master: Any, mode: str, employees: list[str], seconds: float) -> tuple[float, float]:
    app = application(url, master, legacy=mode == "legacy ids")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--engines", default="sqlite,postgres")
    args = parser.parse_args()
    from leeway.adapters.keystore import StaticMasterKey

    master = StaticMasterKey(secrets.token_bytes(32))
    tmp = Path(tempfile.mkdtemp())
    employees = [f"bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(100)]
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
                prepare(urls[mode], master, mode, employees)
            measured: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
            for round_ in range(args.rounds):
                order = MODES[round_ % 3:] + MODES[: round_ % 3]
                for mode in order:
                    measured[mode].append(writer_rate(urls[mode], master, mode, employees, args.seconds))
                    print(f"[{engine} {mode}] {measured[mode][-1][0]:.0f}/s", file=sys.stderr)
            med = {m: (statistics.median(r for r, _ in measured[m]), statistics.median(c for _, c in measured[m]))
                   for m in MODES}
            base = med["legacy ids"][0]
            name = "PostgreSQL" if engine == "postgres" else "SQLite"
            for mode in MODES:
                rate, cpu = med[mode]
                rows.append(f"| {name} | {mode} | {rate:.0f} | {cpu:.0f} | {rate / base:.2f} |")
    finally:
        for schema in schemas:
            schema.drop()
    print(f"\nThe writer alone (execute_batch of 32 RecordActions, a key store), customer ledger ids; medians of "
          f"{args.rounds} rounds of {args.seconds:g} s, order rotating.\n")
    print("| engine | ledgers | actions/s | CPU µs per action | actions/s vs legacy ids |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
