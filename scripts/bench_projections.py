"""Projection benchmark (`make bench-projections`): a script that prints figures, not a test.

For each engine (PostgreSQL at $LEEWAY_TEST_POSTGRES_URL in a fresh schema, and SQLite in a temp directory) it
writes --events events straight through the application (--budgets budgets, each saved in large batches of
actions), then measures, over the same log:

1. raw: reading and decoding every notification (``app.recorder.select_notifications`` in pages of 2,000, a
   rebuild's batch, + ``app.mapper.to_domain_event``), the ceiling for anything that replays the log in Python;
2. a full rebuild of each projection (``Projections.rebuild``: reset, replay, view changes + tracking per batch);
3. StreamEvents (AuditService, follow=false, from position 0) read to its end through the gRPC stub from a real
   `leeway serve` process on the same database: one event per message, and batched (``max_events_per_message``,
   each of --batches; the median of --repeats runs of each);

and prints events/s of each with the ratios rebuild/raw and stream/raw. Each rebuild and each stream is run between
two raw reads, --repeats times: its ratio is to the mean raw rate of those two reads, and the median ratio is shown
(the machine this runs on is shared: the raw rate itself moves by 2x from one minute to the next).

Usage: .venv/bin/python scripts/bench_projections.py [--events 30000] [--budgets 300] [--engines postgres,sqlite]
       [--batches 100,500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import start_server  # noqa: E402


def write_events(database_url: str, events: int, budgets: int) -> tuple[int, float]:
    """``events`` Budget events over ``budgets`` budgets (opened, then actions of every kind); returns the log's
    notification count and the seconds it took."""
    from leeway.application import LeewayApplication
    from leeway.domain.actions import ActionRequest
    from leeway.domain.budget import Budget
    from leeway.domain.money import Money
    from leeway.domain.periods import PeriodKind
    from leeway.domain.policy import ActionKind, BendableRule, Policy
    from leeway.settings import Settings

    started = time.perf_counter()
    app = LeewayApplication(env=Settings(database_url=database_url).eventsourcing_env())
    policy, problems = Policy.build(
        period_allowance=Money(Decimal(10) ** 11, "EUR"), period=PeriodKind.YEAR, per_action_limit=None,
        allowed_kinds=[ActionKind.GIFT, ActionKind.REFUND, ActionKind.CREDIT, ActionKind.RULE_BEND],
        bendable_rules=[BendableRule("LATE_FEE")],
    )
    assert policy is not None, problems
    now = datetime.now(timezone.utc)
    requests = [
        ActionRequest(customer_id=f"guest-{i}", case_id="", kind=kind, amount=Money(Decimal(f"{i % 50 + 1}.25"), "EUR"),
                      reason="bench", details=details)
        for i, (kind, details) in enumerate([
            (ActionKind.GIFT, {"gift_type": "flowers"}), (ActionKind.REFUND, {"order_id": "o-1"}),
            (ActionKind.CREDIT, {"account_ref": "a-1"}), (ActionKind.GIFT, {"gift_type": "tea"}),
        ] * 4)
    ]
    per_budget = max(1, events // budgets - 1)
    opened = [
        Budget.open(employee_id=f"bench-{i:05d}", team_id=f"team-{i % 10}", display_name="", policy=policy, now=now)
        for i in range(budgets)
    ]
    chunk = 50  # budgets per save
    for first in range(0, budgets, chunk):
        group = opened[first:first + chunk]
        for budget in group:
            for n in range(per_budget):
                budget.record_action(requests[n % len(requests)], request_id="", now=now)
        app.save(*group)
    count = int(app.recorder.max_notification_id() or 0)
    app.close()
    return count, time.perf_counter() - started


def raw_read(app, page: int = 0) -> tuple[int, float]:
    """Reads and decodes every notification (``select_notifications`` + ``mapper.to_domain_event``, the domain
    events a rebuild decodes) in pages of ``page`` (default: a rebuild's batch, ``REBUILD_BATCH``: the larger of the
    page sizes the measured paths read in, so the fastest raw rate); returns (events, seconds)."""
    from leeway.projections.runner import REBUILD_BATCH

    page = page or REBUILD_BATCH
    started = time.perf_counter()
    position, count = 0, 0
    while True:
        chunk = app.recorder.select_notifications(start=position, limit=page, inclusive_of_start=False)
        if not chunk:
            break
        for notification in chunk:
            app.mapper.to_domain_event(notification)
        count += len(chunk)
        position = chunk[-1].id
    return count, time.perf_counter() - started


def stream_all(target: str, batch: int = 0) -> tuple[int, float]:
    """Reads the whole log through StreamEvents (``batch``: its max_events_per_message; 0: one event per
    message), counting the events received; returns (events, seconds). Read again if the server could not reach
    the database (UNAVAILABLE: the shared build machine's PostgreSQL is full), up to 10 times."""
    for _ in range(9):
        try:
            return _stream_all(target, batch)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            print(f"retrying StreamEvents: {error.details()}", file=sys.stderr, flush=True)
            time.sleep(10)
    return _stream_all(target, batch)


def _stream_all(target: str, batch: int = 0) -> tuple[int, float]:
    from leeway.v1 import audit_pb2, audit_pb2_grpc

    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    request = audit_pb2.StreamEventsRequest(after_position=0, follow=False, max_events_per_message=batch)
    with grpc.insecure_channel(target, options=options) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        started = time.perf_counter()
        count = 0
        for response in stub.StreamEvents(request, timeout=600):
            count += len(response.events) if batch > 1 else 1
        return count, time.perf_counter() - started


def bench_engine(
    label: str, database_url: str, events: int, budgets: int, workdir: Path, batches: tuple[int, ...] = (),
    repeats: int = 1,
) -> list[tuple]:
    from leeway.application import LeewayApplication
    from leeway.projections.runner import Projections
    from leeway.settings import Settings

    total, seconds = write_events(database_url, events, budgets)
    print(f"{label}: wrote {total:,} notifications in {seconds:.1f} s", file=sys.stderr, flush=True)
    app = LeewayApplication(env=Settings(database_url=database_url).eventsourcing_env())
    rows = []
    raws: list[tuple[float, int, float]] = []  # (events/s, events, seconds) of each raw read

    def raw_rate() -> float:
        count, seconds = raw_read(app)
        raws.append((count / seconds, count, seconds))
        return raws[-1][0]

    try:
        raw_read(app)  # warm the caches once, as every later reader finds them
        projections = Projections(app)
        for name in projections.runners:
            # Each rebuild between two raw reads, --repeats times: its ratio is to the mean of the two (on a shared
            # machine the raw rate moves as much as anything measured), and the median ratio is shown.
            runs = []
            for _ in range(repeats):
                before = raw_rate()
                started = time.perf_counter()
                done = projections.rebuild(name)
                elapsed = time.perf_counter() - started
                runs.append((done / elapsed / ((before + raw_rate()) / 2), done, elapsed))
            ratio, done, elapsed = sorted(runs)[len(runs) // 2]
            rows.append((label, f"rebuild {name}", done, elapsed, done / elapsed, ratio))
            print(f"{label}: rebuilt {name}", file=sys.stderr, flush=True)
        projections.close()
        process, target = start_server(database_url, workdir, LEEWAY_EXPIRY_INTERVAL_SECONDS="0",
                                       LEEWAY_PROJECTIONS="external")
        try:
            stream_all(target)  # warm-up (connections, caches)
            for batch in (0, *batches):
                runs = []
                for _ in range(repeats):
                    before = raw_rate()
                    count, elapsed = stream_all(target, batch)
                    runs.append((count / elapsed / ((before + raw_rate()) / 2), count, elapsed))
                ratio, count, elapsed = sorted(runs)[len(runs) // 2]
                what = "StreamEvents (follow=false)" if batch <= 1 else f"StreamEvents, {batch} per message"
                rows.append((label, what, count, elapsed, count / elapsed, ratio))
        finally:
            process.terminate()
            process.wait(30)
    finally:
        app.close()
    rate, count, seconds = sorted(raws)[len(raws) // 2]
    rows.insert(0, (label, f"raw read + decode ({len(raws)} runs)", count, seconds, rate, 1.0))
    return rows


def main() -> None:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000, help="events to write per engine")
    parser.add_argument("--budgets", type=int, default=300, help="budgets they are spread over")
    parser.add_argument("--engines", default="postgres,sqlite")
    parser.add_argument("--batches", default="100,500",
                        help="max_events_per_message values to stream with besides one event per message")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each rebuild and stream mode (the median is shown)")
    args = parser.parse_args()
    batches = tuple(int(b) for b in args.batches.split(",") if b)
    rows: list[tuple] = []
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory(prefix="leeway-bench-proj-") as tmp:
            workdir = Path(tmp)
            if engine == "postgres":
                from pgschema import PostgresSchema

                schema = PostgresSchema("bench")
                try:
                    rows += bench_engine("PostgreSQL", schema.url, args.events, args.budgets, workdir, batches, args.repeats)
                finally:
                    schema.drop()
            elif engine == "sqlite":
                rows += bench_engine("SQLite", f"sqlite:///{workdir}/leeway.sqlite", args.events, args.budgets, workdir,
                                     batches, args.repeats)
            else:
                raise SystemExit(f"unknown engine {engine!r}")
    print()
    print(f"{'engine':<11} {'what':<34} {'events':>8} {'seconds':>8} {'events/s':>10} {'vs raw':>7}")
    for label, what, count, seconds, rate, ratio in rows:
        print(f"{label:<11} {what:<34} {count:>8,} {seconds:>8.2f} {rate:>10,.0f} {ratio:>7.2f}")
    print(f"\n(vs raw = events/s divided by the raw read + decode rate of the same log; total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
