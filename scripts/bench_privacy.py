"""What crypto-shredding (issue 22) costs RecordAction: a script that prints figures, not a test.

Paired runs, alternating the order in each round, medians over the rounds:

1. PostgreSQL, a real `leeway serve`: RecordAction/s and p50/p99 at 32 in flight, 100 employees, 1,000 customers,
   personal fields in clear (no LEEWAY_MASTER_KEY_FILE) vs encrypted (a master key file). Each mode has its own
   schema, set up once.
2. The group-commit writer alone (``execute_batch`` of 32 RecordActions in this process, no gRPC), on PostgreSQL
   and on SQLite: actions/s and CPU µs per action, without vs with a key store.

Usage: .venv/bin/python scripts/bench_privacy.py [--rounds 3] [--seconds 4] [--engines postgres,sqlite]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import run_load, settle, start_server  # noqa: E402
from leeway_client import GiftDetails, LeewayClient, make_policy  # noqa: E402

MODES = ("clear", "encrypted")


def server_rate(database_url: str, key_file: str | None, employees: list[str], seconds: float) -> tuple[float, float, float]:
    extra = {"LEEWAY_MASTER_KEY_FILE": key_file} if key_file else {}
    with tempfile.TemporaryDirectory() as tmp:
        process, target = start_server(database_url, Path(tmp), **extra)
        try:
            with LeewayClient(target, timeout=60) as client:
                def record(n: int) -> None:
                    client.record_action(
                        employees[n % 100], f"guest-{n % 1000}", 1, "EUR", GiftDetails(gift_type="tea", note="a note"),
                        reason="Jane Doe +1-555-0100", case_id=f"case-{n}",
                    )

                run_load(32, 1.0, record)  # warm-up: caches, data keys of the first customers
                settle(database_url)
                return run_load(32, seconds, record)
        finally:
            process.terminate()
            process.wait(timeout=30)


def open_budgets(database_url: str, key_file: str | None, employees: list[str]) -> None:
    extra = {"LEEWAY_MASTER_KEY_FILE": key_file} if key_file else {}
    with tempfile.TemporaryDirectory() as tmp:
        process, target = start_server(database_url, Path(tmp), **extra)
        try:
            with LeewayClient(target, timeout=60) as client:
                for i, employee in enumerate(employees):
                    client.open_budget(employee, f"team-{i % 10}", make_policy(currency="EUR", period_allowance=10**9))
        finally:
            process.terminate()
            process.wait(timeout=30)


def writer_rate(database_url: str, master: Any, employees: list[str], seconds: float) -> tuple[float, float]:
    from leeway.application import LeewayApplication
    from leeway.application.commands import RecordAction
    from leeway.domain.money import Money
    from leeway.domain.policy import ActionKind
    from leeway.settings import Settings

    app = LeewayApplication(env=Settings(database_url=database_url).eventsourcing_env(), master_key=master)
    try:
        def batch(n: int) -> list[RecordAction]:
            return [
                RecordAction(
                    request_id=f"alone-{uuid.uuid4()}", employee_id=employees[(n * 32 + i) % len(employees)],
                    customer_id=f"guest-{(n * 32 + i) % 1000}", case_id=f"case-{n}", kind=ActionKind.GIFT,
                    amount=Money(Decimal(1), "EUR"), reason="Jane Doe +1-555-0100",
                    details={"gift_type": "tea", "note": "a note"},
                )
                for i in range(32)
            ]

        for n in range(40):  # warm-up: budgets, ledgers and (encrypted) the data keys of the 1,000 customers
            app.execute_batch(batch(n))
        done, n = 0, 40
        cpu, began = time.process_time(), time.perf_counter()
        while time.perf_counter() - began < seconds:
            app.execute_batch(batch(n))
            done, n = done + 32, n + 1
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        return done / elapsed, cpu * 1e6 / done
    finally:
        app.close()


def mapper_cost(master: Any, count: int = 5000) -> float:
    """µs to store and read back one ActionRecorded (the mapper's encode, hash and decode; with a key store, the
    sealing and opening of its personal fields), data keys cached as in a running server."""
    from datetime import datetime, timezone

    from leeway.adapters.hash_chain import ChainedMapper
    from leeway.adapters.keystore import KeyStore
    from leeway.adapters.pii import Sealer
    from leeway.application import LeewayApplication
    from leeway.domain.actions import ActionRequest
    from leeway.domain.budget import Budget
    from leeway.domain.money import Money
    from leeway.domain.periods import PeriodKind
    from leeway.domain.policy import ActionKind, Policy
    from eventsourcing.persistence import JSONTranscoder

    transcoder = JSONTranscoder()
    LeewayApplication.register_transcodings(LeewayApplication.__new__(LeewayApplication), transcoder)
    sealer = Sealer(lambda _id, _v: None, KeyStore(None, master) if master is not None else None)
    mapper = ChainedMapper(transcoder=transcoder, read_previous=lambda _id, _v: None, sealer=sealer)
    policy, _ = Policy.build(period_allowance=Money(Decimal(10) ** 9, "EUR"), period=PeriodKind.YEAR,
                             per_action_limit=None, allowed_kinds=[ActionKind.GIFT])
    now = datetime.now(timezone.utc)
    budget = Budget.open(employee_id="bench", team_id="t", display_name="B", policy=policy, now=now)
    for n in range(count):
        request = ActionRequest(customer_id=f"guest-{n % 1000}", case_id=f"case-{n}", kind=ActionKind.GIFT,
                                amount=Money(Decimal(1), "EUR"), reason="Jane Doe +1-555-0100",
                                details={"gift_type": "tea", "note": "a note"})
        budget.record_action(request, request_id="", now=now)
    events = [e for e in budget.collect_events() if type(e).__name__ == "ActionRecorded"]
    for event in events[:1000]:  # warm-up: the data keys of the 1,000 customers
        mapper.to_domain_event(mapper.to_stored_event(event))
    began = time.perf_counter()
    for event in events:
        mapper.to_domain_event(mapper.to_stored_event(event))
    return (time.perf_counter() - began) * 1e6 / len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--engines", default="postgres,sqlite")
    args = parser.parse_args()
    from leeway.adapters.keystore import StaticMasterKey

    tmp = Path(tempfile.mkdtemp())
    key_file = tmp / "master.key"
    key_file.write_text(secrets.token_hex(32))
    key_file.chmod(0o600)
    employees = [f"bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(100)]
    rows: list[str] = []
    schemas: list[Any] = []
    costs: dict[str, list[float]] = {m: [] for m in MODES}
    for round_ in range(max(3, args.rounds)):
        for mode in (MODES if round_ % 2 == 0 else MODES[::-1]):
            costs[mode].append(mapper_cost(StaticMasterKey(b"\x07" * 32) if mode == "encrypted" else None))
    clear_us, sealed_us = statistics.median(costs["clear"]), statistics.median(costs["encrypted"])
    rows.append(f"| the mapper: store + read back one ActionRecorded | µs per event | {clear_us:.0f} | {sealed_us:.0f} "
                f"| {sealed_us / clear_us:.2f} |")
    try:
        urls: dict[tuple[str, str], str] = {}
        for engine in args.engines.split(","):
            for mode in MODES:
                if engine == "postgres":
                    from pgschema import PostgresSchema

                    schemas.append(PostgresSchema(f"bp{mode[:1]}"))
                    urls[(engine, mode)] = schemas[-1].url
                else:
                    urls[(engine, mode)] = f"sqlite:///{tmp}/{mode}.sqlite"
                if engine == "postgres":
                    open_budgets(urls[(engine, mode)], str(key_file) if mode == "encrypted" else None, employees)
        for engine in args.engines.split(","):
            if engine == "postgres":
                served: dict[str, list[tuple[float, float, float]]] = {m: [] for m in MODES}
                for round_ in range(args.rounds):
                    for mode in (MODES if round_ % 2 == 0 else MODES[::-1]):
                        key = str(key_file) if mode == "encrypted" else None
                        served[mode].append(server_rate(urls[(engine, mode)], key, employees, args.seconds))
                        print(f"[{engine} server {mode}] {served[mode][-1][0]:.0f}/s", file=sys.stderr)
                med = {m: [statistics.median(x[i] for x in served[m]) for i in range(3)] for m in MODES}
                rows.append(
                    f"| PostgreSQL, leeway serve, 32 in flight | RecordAction/s | {med['clear'][0]:.0f} "
                    f"(p50 {med['clear'][1]:.1f} / p99 {med['clear'][2]:.1f} ms) | {med['encrypted'][0]:.0f} "
                    f"(p50 {med['encrypted'][1]:.1f} / p99 {med['encrypted'][2]:.1f} ms) | "
                    f"{med['encrypted'][0] / med['clear'][0]:.2f} |"
                )
            alone: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
            if engine == "sqlite":
                for mode in MODES:  # SQLite: the budgets are opened in process
                    from leeway.application import LeewayApplication
                    from leeway.application.commands import OpenBudget
                    from leeway.settings import Settings

                    from builders import make_policy as domain_policy

                    master = StaticMasterKey(key_file.read_bytes()) if mode == "encrypted" else None
                    app = LeewayApplication(env=Settings(database_url=urls[(engine, mode)]).eventsourcing_env(),
                                            master_key=master)
                    app.execute_batch([OpenBudget(f"o-{e}", e, f"team-{i % 10}", e, domain_policy(10**9, limit=None,
                                                  currency="EUR")) for i, e in enumerate(employees)])
                    app.close()
            for round_ in range(args.rounds):
                for mode in (MODES if round_ % 2 == 0 else MODES[::-1]):
                    master = StaticMasterKey(key_file.read_bytes()) if mode == "encrypted" else None
                    alone[mode].append(writer_rate(urls[(engine, mode)], master, employees, args.seconds))
                    print(f"[{engine} writer {mode}] {alone[mode][-1][0]:.0f}/s", file=sys.stderr)
            med2 = {m: [statistics.median(x[i] for x in alone[m]) for i in range(2)] for m in MODES}
            name = "PostgreSQL" if engine == "postgres" else "SQLite"
            rows.append(
                f"| {name}, the writer alone (execute_batch of 32) | actions/s (CPU µs per action) | "
                f"{med2['clear'][0]:.0f} ({med2['clear'][1]:.0f}) | {med2['encrypted'][0]:.0f} "
                f"({med2['encrypted'][1]:.0f}) | {med2['encrypted'][0] / med2['clear'][0]:.2f} |"
            )
    finally:
        for schema in schemas:
            schema.drop()
    print(f"\nRecordAction with personal fields in clear vs encrypted (issue 22); medians of {args.rounds} paired "
          f"rounds of {args.seconds:g} s, order alternating.\n")
    print("| where | figure | clear | encrypted | encrypted / clear |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
