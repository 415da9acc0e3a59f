"""Bytes the log stores per action (`make bench-log-bytes`): a script that prints figures, not a test.

It opens --employees budgets (one team per 10), then records --actions actions through the application's own
write path (``execute_batch``, batches of 100), of four shapes: a plain gift (most of them), one over the
per-action limit held and then approved, one reversed, one with a win documented. For each engine (SQLite, and
PostgreSQL when $LEEWAY_TEST_POSTGRES_URL answers) and each personal-data mode (a key store sealing personal
fields, and none) it prints:

- per topic (the events of the actions only, not the budgets' openings): count, mean stored state bytes, how many
  of them are the hash chain (``__prev__``/``__hash__`` keys and values), personal-field envelopes, the topic;
- per shape: the events one such action (or its follow-up command) stores, and their bytes (state + topic);
- PostgreSQL: the events table's growth over the actions, per action, from ``pg_relation_size`` of the heap, of its
  TOAST table and of each index (what ``bench_scale.py``'s "log bytes per action" counts for the events table;
  that figure also counts the snapshot and key tables, and the budgets' openings).

Usage: .venv/bin/python scripts/log_bytes.py [--actions 2000] [--employees 40] [--customers 200] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

UTC = timezone.utc


def usd(value: str | int) -> Any:
    from leeway.domain.money import Money

    return Money(Decimal(value), "USD")


def policy() -> Any:
    from leeway.domain.periods import PeriodKind
    from leeway.domain.policy import ActionKind, Escalation, EscalationMode, Policy

    built, _ = Policy.build(
        period_allowance=usd(1_000_000), period=PeriodKind.YEAR, per_action_limit=usd(100),
        allowed_kinds=[ActionKind.GIFT, ActionKind.REFUND, ActionKind.CREDIT],
        escalation=Escalation(EscalationMode.APPROVAL, timedelta(hours=24), (), "supervisor"),
    )
    return built


def chain_bytes(raw: bytes, state: dict[str, Any]) -> int:
    """Bytes of the hash chain as stored: in the JSON form the two keys ``,"__prev__":"<64 hex>","__hash__":"<64
    hex>"``; packed, the header (format byte and the two hashes as raw bytes)."""
    from leeway.adapters.hash_chain import HASH, PREV

    if raw[:1] == b"\x01":
        return 65
    return sum(len(f',"{k}":"{state[k]}"') for k in (PREV, HASH) if k in state)


def sealed_bytes(state: dict[str, Any]) -> int:
    """Bytes of the personal-field envelopes and of the ``__pii__`` list (0 for an unsealed state)."""
    import json

    from leeway.adapters.pii import MARK

    if MARK not in state:
        return 0
    total = len(json.dumps({MARK: state[MARK]}, separators=(",", ":"))) - 1
    for path in state[MARK]:
        value: Any = state
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            total += len(value) + 2
    return total


class Run:
    def __init__(self, app: Any, clock: list[datetime], employees: int, customers: int = 100_000) -> None:
        self.app, self.clock, self.employees, self.customers = app, clock, employees, customers
        self.serial = 0

    def rid(self) -> str:
        self.serial += 1
        return f"req-{self.serial:08d}"

    def batch(self, commands: list[Any]) -> list[Any]:
        results = self.app.execute_batch(commands, actor="crm-gateway")
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    def head(self) -> int:
        return int(self.app.recorder.max_notification_id() or 0)

    def open(self) -> None:
        from leeway.application import commands as c

        self.batch([c.OpenBudget(self.rid(), f"agent-{e:04d}", f"team-{e // 10:03d}", f"Agent {e}", policy())
                    for e in range(self.employees)])

    def action(self, n: int, amount: str) -> Any:
        from leeway.application import commands as c
        from leeway.domain.policy import ActionKind

        return c.RecordAction(self.rid(), f"agent-{n % self.employees:04d}", f"cust-{n * 7919 % self.customers:06d}",
                              f"case-{n:07d}", ActionKind.GIFT, usd(amount), "late delivery, apologies",
                              {"gift_type": "voucher"}, None)


def measure(app: Any, clock: list[datetime], employees: int, actions: int, customers: int,
            table_size: Any = None) -> tuple[dict[str, list[dict[str, int]]], dict[str, dict[str, float]], dict[str, float]]:
    """(per topic: one dict of byte counts per event; per shape: events and bytes per action; table growth)."""
    import json

    from leeway.adapters.hash_chain import parse_state
    from leeway.application import commands as c

    run = Run(app, clock, employees, customers)
    run.open()
    start = run.head()
    size_before = table_size() if table_size else None
    shapes: dict[str, list[tuple[int, int]]] = defaultdict(list)  # shape -> (first id, last id) ranges
    plain = held = reversed_ = won = 0
    n = 0
    while n < actions:
        kinds = ["plain"] * 16 + ["held", "reversed", "won", "plain"]
        commands, names = [], []
        for shape in kinds:
            n += 1
            commands.append(run.action(n, "150" if shape == "held" else "12.50"))
            names.append(shape)
        before = run.head()
        results = run.batch(commands)
        after = run.head()
        shapes["a batch of 20 RecordAction"].append((before, after))
        follow: list[Any] = []
        for shape, result in zip(names, results):
            record = result[0] if isinstance(result, tuple) else result
            if shape == "held":
                held += 1
                follow.append(c.DecideAction(run.rid(), record.action_id, "sup-1", "ok", True, frozenset({"supervisor"}),
                                             any_team=True))
            elif shape == "reversed":
                reversed_ += 1
                follow.append(c.ReverseAction(run.rid(), record.action_id, "mistake", "sup-1"))
            elif shape == "won":
                won += 1
                follow.append(c.DocumentWin(run.rid(), record.action_id, "kept the customer", "thanks", "stayed"))
            else:
                plain += 1
        clock[0] += timedelta(minutes=1)
        for command in follow:
            before = run.head()
            app.execute(command, actor="sup-1")
            shapes[type(command).__name__].append((before, run.head()))
    size_after = table_size() if table_size else None
    topics: dict[str, list[dict[str, int]]] = defaultdict(list)
    by_id: dict[int, int] = {}
    for notification in app.recorder.select_notifications(start + 1, 10_000_000):
        state = parse_state(notification.state)
        size = len(notification.state)
        by_id[notification.id] = size + len(notification.topic)
        topics[notification.topic].append({
            "state": size, "chain": chain_bytes(notification.state, state), "sealed": sealed_bytes(state), "topic": len(notification.topic),
            "timestamp": len(json.dumps(state.get("timestamp"))) + 14 if "timestamp" in state else 0,
        })
    per_shape: dict[str, dict[str, float]] = {}
    for shape, ranges in shapes.items():
        per = 20 if shape.startswith("a batch") else 1
        per_shape[shape] = {
            "events": statistics.mean((last - first) / per for first, last in ranges),
            "bytes": statistics.mean(sum(by_id.get(i, 0) for i in range(first + 1, last + 1)) / per
                                     for first, last in ranges),
        }
    growth: dict[str, float] = {}
    if size_before is not None and size_after is not None:
        everything = plain + held + reversed_ + won
        growth = {k: (size_after[k] - size_before.get(k, 0)) / everything for k in size_after}
        growth["events per action"] = (run.head() - start) / everything
    return topics, per_shape, growth


def print_report(title: str, topics: dict[str, list[dict[str, int]]], shapes: dict[str, dict[str, float]],
                 growth: dict[str, float]) -> None:
    print(f"\n### {title}\n")
    print("| topic | events | stored state bytes (mean) | of which chain | personal envelopes (unpacked) | "
          "timestamp (unpacked) | topic bytes |")
    print("|---|---|---|---|---|---|---|")
    for topic, rows in sorted(topics.items(), key=lambda item: -len(item[1])):
        mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        print(f"| `{topic}` | {len(rows)} | {mean['state']:.0f} | {mean['chain']:.0f} | {mean['sealed']:.0f} | "
              f"{mean['timestamp']:.0f} | {mean['topic']:.0f} |")
    print("\n| command | events per command | state + topic bytes per command |")
    print("|---|---|---|")
    for shape, figures in shapes.items():
        name = "RecordAction (mean of a batch of 20)" if shape.startswith("a batch") else shape
        print(f"| {name} | {figures['events']:.2f} | {figures['bytes']:.0f} |")
    if growth:
        print("\nevents table growth per action (every command of the four shapes counted, over the actions):")
        print("| part | bytes per action |")
        print("|---|---|")
        for part, value in growth.items():
            print(f"| {part} | {value:,.{2 if part == 'events per action' else 0}f} |")


def pg_sizes(url: str) -> Any:
    import psycopg

    from leeway.settings import Settings

    env = Settings(database_url=url).eventsourcing_env()
    schema = env.get("POSTGRES_SCHEMA", "public")

    def sizes() -> dict[str, int]:
        with psycopg.connect(dbname=env["POSTGRES_DBNAME"], host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"],
                             user=env["POSTGRES_USER"], password=env["POSTGRES_PASSWORD"], autocommit=True) as conn:
            conn.execute(f'VACUUM "{schema}".leeway_events')
            table = conn.execute(
                "SELECT c.oid, c.reltoastrelid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = 'leeway_events'", (schema,)).fetchone()
            out = {"heap (rows)": conn.execute("SELECT pg_relation_size(%s)", (table[0],)).fetchone()[0],
                   "TOAST": conn.execute("SELECT pg_total_relation_size(%s)", (table[1],)).fetchone()[0]
                   if table[1] else 0}
            for name, size in conn.execute(
                "SELECT i.relname, pg_relation_size(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                "WHERE x.indrelid = %s", (table[0],)):
                out[f"index {name}"] = size
            out["total (pg_total_relation_size)"] = conn.execute(
                "SELECT pg_total_relation_size(%s)", (table[0],)).fetchone()[0]
            return out

    return sizes


def writer_cpu(app: Any, rounds: int, seconds: float) -> dict[bool, list[float]]:
    """The writer's CPU µs per RecordAction (``execute_batch`` of 32, in this process, no gRPC), packed and in the
    JSON form, alternating ``rounds`` times ``seconds`` each on the same application and budgets (in the order
    AB BA AB ...: the log and the aggregates grow as it runs, so neither form always comes second)."""
    import time

    from leeway.application import commands as c
    from leeway.domain.policy import ActionKind

    clock = [datetime(2026, 3, 2, 9, tzinfo=UTC)]
    run = Run(app, clock, 100, 1000)
    app.execute_batch([c.OpenBudget(run.rid(), f"cpu-{e:03d}", f"cpu-team-{e // 10}", f"Cpu {e}", policy())
                       for e in range(100)], actor="crm-gateway")
    n = 0

    def batch() -> list[Any]:
        nonlocal n
        commands = [c.RecordAction(run.rid(), f"cpu-{(n + i) % 100:03d}", f"guest-{(n + i) % 1000}", "",
                                   ActionKind.GIFT,
                                   usd("1"), "bench", {"gift_type": "tea"}, None) for i in range(32)]
        n += 32
        return commands

    for _ in range(5):  # warm-up: loads and caches the budgets and ledgers
        app.execute_batch(batch(), actor="crm-gateway")
    out: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(rounds):
        for packed in (False, True) if round_ % 2 == 0 else (True, False):  # ABBA: a drift counts for both
            app.mapper.pack = packed
            done, cpu, began = 0, time.process_time(), time.perf_counter()
            while time.perf_counter() - began < seconds:
                app.execute_batch(batch(), actor="crm-gateway")
                done += 32
            out[packed].append((time.process_time() - cpu) * 1e6 / done)
    app.mapper.pack = True
    return out


def print_cpu(title: str, figures: dict[bool, list[float]]) -> None:
    json_form, packed = statistics.median(figures[False]), statistics.median(figures[True])
    print(f"\n{title}: writer CPU per RecordAction (execute_batch of 32, no gRPC), medians of "
          f"{len(figures[True])} alternating rounds: JSON form {json_form:.0f} µs, packed {packed:.0f} µs, "
          f"ratio packed/JSON {packed / json_form:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actions", type=int, default=2000)
    parser.add_argument("--employees", type=int, default=40)
    parser.add_argument("--customers", type=int, default=200,
                        help="distinct customers (200 for 2,000 actions: ten actions each, as in make bench-scale)")
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--cpu-rounds", type=int, default=5, help="alternating rounds of the writer CPU comparison")
    parser.add_argument("--cpu-seconds", type=float, default=2.0)
    parser.add_argument("--cpu-only", action="store_true", help="only the writer CPU comparison")
    parser.add_argument("--json-form", action="store_true",
                        help="store the events in the JSON form of the releases before issue 21 (not packed)")
    args = parser.parse_args()

    from leeway.adapters.keystore import StaticMasterKey
    from leeway.application import LeewayApplication
    from leeway.settings import Settings

    key = StaticMasterKey(b"k" * 32, "bench")
    if args.cpu_rounds:
        with tempfile.TemporaryDirectory() as tmp:
            env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": os.path.join(tmp, "cpu.sqlite")}
            app = LeewayApplication(env=env)
            try:
                print_cpu("SQLite", writer_cpu(app, args.cpu_rounds, args.cpu_seconds))
            finally:
                app.close()
        if not args.sqlite_only:
            from pgschema import PostgresSchema

            schema = PostgresSchema("log_cpu")
            try:
                app = LeewayApplication(env=Settings(database_url=schema.url, postgres_pool_size=2).eventsourcing_env())
                try:
                    print_cpu("PostgreSQL", writer_cpu(app, args.cpu_rounds, args.cpu_seconds))
                finally:
                    app.close()
            finally:
                schema.drop()
    form = ", the JSON form (before issue 21)" if args.json_form else ", packed"
    for sealed in () if args.cpu_only else (True, False):
        mode = "personal fields sealed (a key store)" if sealed else "no key store"
        with tempfile.TemporaryDirectory() as tmp:
            clock = [datetime(2026, 3, 2, 9, tzinfo=UTC)]
            env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": os.path.join(tmp, "log.sqlite")}
            app = LeewayApplication(env=env, clock=lambda clock=clock: clock[0], master_key=key if sealed else None)
            app.mapper.pack = not args.json_form
            try:
                print_report(f"SQLite, {mode}{form}", *measure(app, clock, args.employees, args.actions, args.customers))
            finally:
                app.close()
        if args.sqlite_only:
            continue
        from pgschema import PostgresSchema

        schema = PostgresSchema("log_bytes")
        try:
            clock = [datetime(2026, 3, 2, 9, tzinfo=UTC)]
            env = Settings(database_url=schema.url, postgres_pool_size=2).eventsourcing_env()
            app = LeewayApplication(env=env, clock=lambda clock=clock: clock[0], master_key=key if sealed else None)
            app.mapper.pack = not args.json_form
            try:
                print_report(f"PostgreSQL, {mode}{form}",
                             *measure(app, clock, args.employees, args.actions, args.customers, pg_sizes(schema.url)))
            finally:
                app.close()
        finally:
            schema.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
