"""The auditor's commands of ``leeway`` (see cli.py): ``export`` (the log as sealed JSON lines), ``verify`` (an
export, offline) and ``checkpoint`` (the database's log head, to keep somewhere else and verify against later).
Every check is one streaming pass (application/integrity.py, application/export.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .cli_common import fail, say, tool_settings


def _app() -> Any:
    """The application on LEEWAY_DATABASE_URL (read only: no tables are created); None after printing why not."""
    settings = tool_settings(LEEWAY_AUTH="off", LEEWAY_CREATE_TABLES="false")
    if settings is None:
        return None
    from .server import build_application

    return build_application(settings, read_only=True)


@contextmanager
def _opened() -> Iterator[Any]:
    """``_app()`` (None: it said why not), closed when the command is done with it."""
    app = _app()
    try:
        yield app
    finally:
        if app is not None:
            app.close()


def _checkpoints(texts: list[str]) -> list[Any] | None:
    from .application.audit import Checkpoint

    try:
        return [Checkpoint.parse(text) for text in texts]
    except ValueError as error:
        say("", error)
        return None


def _print_violations(result: Any) -> None:
    for violation in result.violations or []:
        where = f"aggregate {violation.aggregate_id} version {violation.version}" if violation.aggregate_id else "the log"
        print(f"BROKEN at position {violation.position}: {where}: {violation.kind}: {violation.description}")


def export(args: argparse.Namespace) -> int:
    """Writes a header, the stored events after a position (with their hash chain) and a seal, as JSON lines."""
    from .domain.errors import Unavailable

    if args.format == "parquet":
        return _export_parquet(args)
    from .application.export import ExportStats

    stats = ExportStats()
    try:
        with _opened() as app:
            if app is None:
                return 2
            out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
            last = ""
            try:
                for line in app.export(after=args.after, personal=args.personal, stats=stats):
                    out.write(line + "\n")
                    last = line
            finally:
                if args.output:
                    out.close()
    except Unavailable as error:
        return fail("export", error.__cause__ or error, 1)
    seal = json.loads(last)["seal"]
    print(f"leeway export: {seal['events']} events after position {args.after}; checkpoint "
          f"{seal['position']}:{seal['log_hash']}", file=sys.stderr)
    _legacy_note(args, stats)
    return 0


def _legacy_note(args: argparse.Namespace, stats: Any) -> None:
    """Says how many exported events hold personal text in clear in their stored form (written before encryption):
    ``--personal sealed`` cannot hide it without breaking their hashes (README: Personal data)."""
    if stats.legacy:
        print(f"leeway export: {stats.legacy} events were stored before personal data was encrypted and hold it in "
              f"clear in their stored form{' (--personal sealed cannot hide it)' if args.personal == 'sealed' else ''}"
              "; see `RedactLegacyData` in the README", file=sys.stderr)


def _export_parquet(args: argparse.Namespace) -> int:
    """``leeway export --format parquet -o FILE``: the same export as a Parquet file (application/export_parquet.py)."""
    from .domain.errors import Unavailable

    from .application.export import ExportStats

    if not args.output:
        return fail("export", "--format parquet writes a file: give it with --output", 2)
    stats = ExportStats()
    try:
        with _opened() as app:
            if app is None:
                return 2
            seal, events = app.export_parquet(args.output, after=args.after, personal=args.personal, stats=stats)
    except Unavailable as error:
        return fail("export", error.__cause__ or error, 1)
    except OSError as error:
        return fail("export", error, 1)
    say("export", f"{events} events after position {args.after}; checkpoint {seal}")
    _legacy_note(args, stats)
    return 0


#: ``leeway verify`` splits the work into one partition per this many bytes of JSON lines export (a Parquet file,
#: compressed, counts PARQUET_FACTOR times its size), so that its memory does not grow with the file.
PARTITION_BYTES = 32 * 1024 * 1024
PARQUET_FACTOR = 8
MAX_PARTITIONS = 512


def _partitions(path: str, parquet: bool, asked: int) -> int:
    if asked:
        return asked
    size = os.path.getsize(path) * (PARQUET_FACTOR if parquet else 1)
    return max(1, min(MAX_PARTITIONS, -(-size // PARTITION_BYTES)))


def _budget_line(budget: Any) -> dict[str, Any]:
    view = budget.view()
    return {
        "employee_id": view.employee_id,
        "state": view.state,
        "version": view.version,
        "policy_version": view.policy_version,
        "period_start": view.period_start.isoformat(),
        "allowance": f"{view.allowance.amount:f}",
        "spent": f"{view.spent.amount:f}",
        "held": f"{view.held.amount:f}" if view.held else "0",
        "remaining": f"{view.remaining.amount:f}",
        "currency": view.allowance.currency,
    }


def verify(args: argparse.Namespace) -> int:
    """Checks an export (chains, references, header and seal, checkpoints) and rebuilds every budget from it alone;
    a large file in partitions (application/export_spill.py), so that memory stays bounded. Exit 0 only if nothing
    is broken, 2 if the file is not an export."""
    from eventsourcing.persistence import JSONTranscoder, Mapper

    from .application import LeewayApplication
    from .application.audit import BudgetRebuilder, Export, verify_export
    from .application.export_parquet import ParquetExport, is_parquet

    checkpoints = _checkpoints(args.checkpoint)
    if checkpoints is None:
        return 2
    if args.partitions < 0:
        return fail("verify", "--partitions must not be negative", 2)
    transcoder = JSONTranscoder()
    LeewayApplication.register_transcodings(LeewayApplication.__new__(LeewayApplication), transcoder)
    rebuilder = BudgetRebuilder(Mapper(transcoder=transcoder))
    lines: list[dict[str, Any]] = []  # the budgets rebuilt so far (a line each: small), the rebuilder forgets them

    def collect() -> None:
        lines.extend(_budget_line(budget) for budget in rebuilder.budgets.values())
        rebuilder.budgets.clear()

    try:
        parquet = is_parquet(args.file)
        options = {"checkpoints": checkpoints, "on_record": rebuilder.add, "on_part_done": collect,
                   "partitions": _partitions(args.file, parquet, args.partitions)}
        if parquet:
            import pyarrow

            # The C library's allocator returns freed buffers to the system at once (Arrow's default pool keeps
            # them for reuse, and its peak grew with the file's row groups).
            pyarrow.set_memory_pool(pyarrow.system_memory_pool())
            export: Any = ParquetExport(args.file)
            result = verify_export(export, **options)
        else:
            with open(args.file, encoding="utf-8") as file:
                export = Export(file)
                result = verify_export(export, **options)
    except (OSError, ValueError) as error:
        return fail("verify", error, 2)
    collect()
    _print_violations(result)
    for line in sorted(lines, key=lambda b: b["employee_id"]):
        print(json.dumps(line))
    summary = f"{result.events_checked} events checked, {len(lines)} budgets rebuilt"
    if rebuilder.incomplete:
        summary += f", {len(rebuilder.incomplete)} budgets start before this export (not rebuilt)"
    if rebuilder.damaged:
        summary += f", {len(rebuilder.damaged)} budgets with an event missing or altered (not rebuilt)"
    if checkpoints:
        summary += f", {len(checkpoints)} checkpoint{'s' if len(checkpoints) > 1 else ''} checked"
    if export.views:
        mode = (export.header or {}).get("personal", "")
        summary += (f", {export.views} readable views of personal fields{f' ({mode})' if mode else ''} not checked "
                    "(they need the data keys: the stored, sealed form is what is verified)")
    if result.redactions:
        summary += f", {result.redactions} events redacted by a recorded legacy redaction"
    say("verify", f"{summary}: {'OK' if result.ok else 'BROKEN'}")
    return 0 if result.ok else 1


def checkpoint(args: argparse.Namespace) -> int:
    """Verifies the database's whole log (and that it holds the given checkpoints) and prints its head as
    ``position:log_hash``; exit 0 only if nothing is broken."""
    from .domain.errors import Unavailable

    checkpoints = _checkpoints(args.checkpoint)
    if checkpoints is None:
        return 2
    try:
        with _opened() as app:
            if app is None:
                return 2
            # Always the whole log, read from its start: what it prints is kept as an independent witness.
            result = app.verify_integrity(checkpoints=checkpoints, full=True, store=False)
    except Unavailable as error:
        return fail("checkpoint", error.__cause__ or error, 1)
    _print_violations(result)
    print(result.head)
    verdict = "OK" if result.ok else "BROKEN (the checkpoint pins the log as it is now)"
    say("checkpoint", f"{result.events_checked} events checked: {verdict}")
    return 0 if result.ok else 1


def add_commands(commands: Any) -> None:
    """The subcommands ``export``, ``verify`` and ``checkpoint`` of the ``leeway`` parser."""
    exporting = commands.add_parser(
        "export", help="write the event log (after a position) as sealed JSON lines, with its hash chain"
    )
    exporting.add_argument("--after", type=int, default=0, help="only events after this position (default: all)")
    exporting.add_argument("--output", "-o", default="", help="a file instead of standard output")
    exporting.add_argument(
        "--format", choices=("jsonl", "parquet"), default="jsonl",
        help="jsonl (default): sealed JSON lines; parquet: one typed row per event, sealed in the file's metadata "
        "(needs --output)",
    )
    exporting.add_argument(
        "--personal", choices=("clear", "sealed"), default="clear",
        help="the readable view written beside each event's sealed personal fields: clear (default: their text, "
        "or [erased] once erased, as the RPCs show them) or sealed ([sealed], or [erased]: no personal text, for an "
        "export that leaves the organisation)",
    )
    exporting.set_defaults(func=export)
    verifying = commands.add_parser(
        "verify", help="check an export (chains, references, seal, checkpoints) and rebuild every balance from it alone"
    )
    verifying.add_argument("file", help="a file written by `leeway export` (JSON lines or Parquet: told apart by its "
                           "first bytes)")
    verifying.add_argument(
        "--checkpoint", action="append", default=[], metavar="POSITION:LOG_HASH",
        help="a checkpoint the export must hold unchanged (from `leeway checkpoint`; repeatable)",
    )
    verifying.add_argument(
        "--partitions", type=int, default=0, metavar="N",
        help="check the file in N parts through temporary files (bounded memory; default: one per 32 MB of JSON "
        "lines, 1 for a small file: a single pass)",
    )
    verifying.set_defaults(func=verify)
    pinning = commands.add_parser(
        "checkpoint", help="verify the database's log and print its head (position:log_hash) to keep elsewhere"
    )
    pinning.add_argument(
        "--checkpoint", action="append", default=[], metavar="POSITION:LOG_HASH",
        help="an earlier checkpoint the log must still hold unchanged (repeatable)",
    )
    pinning.set_defaults(func=checkpoint)
