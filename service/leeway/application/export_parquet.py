"""``leeway export --format parquet``: the log as a Parquet file that auditors' tools (DuckDB, pandas, Spark) read,
sealed and verifiable like the JSON lines export (``export.py``), written and read in row groups (bounded memory).

One row per event, in position order, with typed columns::

    position int64, aggregate_id string, version int64, topic string, type string (e.g. Budget.ActionRecorded),
    time timestamp[us, UTC] (when it was recorded), employee_id, customer_id, kind, currency (strings, null where
    the event has none), amount decimal128(38, 9), hash, prev_hash (strings), payload string (the event's stored
    JSON state without the two chain fields, canonical: sorted keys, no whitespace; what ``hash`` covers),
    personal string (the readable view of the event's sealed personal fields as a JSON object, null for an event
    with none: see ``export.py``; not verified, it needs the keys; absent from files written before it)

The typed ``customer_id`` column is derived from the payload, so for a sealed event it holds the stored envelope;
its readable form is ``personal``'s ``customer_id`` (DuckDB: ``personal->>'customer_id'``).

The header and the seal of the JSON export are the file's key-value metadata ``leeway.export.header`` (written
first) and ``leeway.export.seal`` (written last, in the footer), as the same JSON objects.

Verification (``ParquetExport``, through ``export.verify_export``): the records are rebuilt from ``payload``,
``hash`` and ``prev_hash`` and checked exactly like an exported line (chains, references, header, seal,
checkpoints). The typed columns are derived from the payload, and the verifier derives them again: a typed value
that differs from its payload is COLUMN_MISMATCH, so a figure changed where an auditor's tool reads it is found
just like one changed in the payload. A file cut short (no Parquet footer) is EXPORT_TRUNCATED.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..adapters.hash_chain import HASH, PREV, canonical, parse_state
from .export import ExportFile, ExportStats, View, header_fields
from .integrity import START, Checkpoint, Record, Verifier, log_link

__all__ = ["MAGIC", "ParquetExport", "is_parquet", "write_parquet"]

MAGIC = b"PAR1"
HEADER_KEY, SEAL_KEY = "leeway.export.header", "leeway.export.seal"
#: Rows per row group: what the writer and the reader hold in memory at once.
ROW_GROUP = 20_000
#: Typed columns derived from each event's payload (checked again on verify).
DERIVED = ("type", "time", "employee_id", "customer_id", "kind", "amount", "currency")
_BUDGET = "leeway.domain.budget:Budget."
_AMOUNT_DIGITS, _AMOUNT_SCALE = 38, 9


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("position", pa.int64()), ("aggregate_id", pa.string()), ("version", pa.int64()), ("topic", pa.string()),
        ("type", pa.string()), ("time", pa.timestamp("us", tz="UTC")), ("employee_id", pa.string()),
        ("customer_id", pa.string()), ("kind", pa.string()),
        ("amount", pa.decimal128(_AMOUNT_DIGITS, _AMOUNT_SCALE)), ("currency", pa.string()),
        ("hash", pa.string()), ("prev_hash", pa.string()), ("payload", pa.string()), ("personal", pa.string()),
    ])  # fmt: skip


#: Columns a file may lack (written before they existed).
OPTIONAL = frozenset({"personal"})


def is_parquet(path: str | Path) -> bool:
    """Whether ``path`` starts like a Parquet file (the format ``leeway verify`` then reads)."""
    with open(path, "rb") as file:
        return file.read(4) == MAGIC


# ---------------------------------------------------------------------------- typed columns from a payload


def _marker(value: Any, name: str) -> Any:
    """The data of a value the library stored as ``{"_type_": name, "_data_": ...}``, else None."""
    if isinstance(value, dict) and len(value) == 2 and value.get("_type_") == name:
        return value.get("_data_")
    return None


def _time(state: dict[str, Any]) -> datetime | None:
    for key in ("at", "timestamp"):
        text = _marker(state.get(key), "datetime_iso")
        if isinstance(text, str):
            try:
                value = datetime.fromisoformat(text)
            except ValueError:
                continue
            value = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
            return value.astimezone(timezone.utc)
    return None


def _amount(state: dict[str, Any]) -> Decimal | None:
    text = _marker(state.get("amount"), "decimal_str")
    if not isinstance(text, str):
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    exponent = value.as_tuple().exponent
    if not value.is_finite() or not isinstance(exponent, int) or exponent < -_AMOUNT_SCALE:
        return None
    if abs(value) >= Decimal(10) ** (_AMOUNT_DIGITS - _AMOUNT_SCALE):
        return None
    return value


def _text(state: dict[str, Any], key: str) -> str | None:
    value = state.get(key)
    return value if isinstance(value, str) else None


class _Derive:
    """The typed columns of each event, from its payload (and, for a budget's events that do not name their
    employee, from the budget's first event seen before it in the same file)."""

    def __init__(self) -> None:
        self.employees: dict[str, str] = {}

    def __call__(self, aggregate_id: str, topic: str, state: dict[str, Any]) -> tuple[Any, ...]:
        employee = _text(state, "employee_id")
        if topic.startswith(_BUDGET):
            if employee is not None and aggregate_id not in self.employees:
                self.employees[aggregate_id] = employee
            employee = employee or self.employees.get(aggregate_id)
        return (
            topic.rpartition(":")[2], _time(state), employee, _text(state, "customer_id"), _text(state, "kind"),
            _amount(state), _text(state, "currency"),
        )


# ---------------------------------------------------------------------------- writing


def write_parquet(
    notifications: Iterable[Any], path: str | Path, after: int = 0, start: Checkpoint = START, *,
    view: View | None = None, personal: str = "", stats: ExportStats | None = None,
) -> tuple[Checkpoint, int]:
    """Writes the export of the events after position ``after`` (from every stored event after ``start``, as
    ``export_lines``, in position order: those up to ``after`` are read for the header's log hash) to ``path``, a
    row group at a time, through a temporary file renamed at the end (a failed export leaves no partial file).
    Returns (the seal's checkpoint, events). ``view``, ``personal``, ``stats``: as for ``export.export_lines``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    names = schema.names
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    head, count, writer = start, 0, None
    columns: list[list[Any]] = [[] for _ in names]
    derive = _Derive()

    def flush() -> None:
        if columns[0]:
            assert writer is not None
            writer.write_table(pa.table(dict(zip(names, columns, strict=True)), schema=schema))
            for column in columns:
                column.clear()

    try:
        for n in notifications:
            try:
                state = parse_state(n.state)
            except ValueError:
                state = {}
            stored_hash = state.get(HASH)
            if n.id > after:
                if writer is None:
                    writer = _open(pq, partial, schema, Checkpoint(after, head.log_hash), personal)
                aggregate = str(n.originator_id)
                stored_prev = state.get(PREV)
                if stats is not None:
                    stats.note(n.topic, state)
                readable = view(n.topic, state) if view is not None else None
                row = (
                    n.id, aggregate, n.originator_version, n.topic, *derive(aggregate, n.topic, state),
                    stored_hash if isinstance(stored_hash, str) else None,
                    stored_prev if isinstance(stored_prev, str) else None, canonical(state).decode(),
                    None if readable is None else json.dumps(readable, separators=(",", ":"), ensure_ascii=False),
                )
                for column, value in zip(columns, row, strict=True):
                    column.append(value)
                count += 1
                if len(columns[0]) >= ROW_GROUP:
                    flush()
            head = Checkpoint(n.id, log_link(head.log_hash, n.id, stored_hash if isinstance(stored_hash, str) else ""))
        if writer is None:
            writer = _open(pq, partial, schema, Checkpoint(after, head.log_hash), personal)
        flush()
        seal = Checkpoint(max(after, head.position), head.log_hash)
        writer.add_key_value_metadata({SEAL_KEY: json.dumps(
            {"position": seal.position, "events": count, "log_hash": seal.log_hash}, separators=(",", ":"))})
        writer.close()
        writer = None
        os.replace(partial, target)
        return seal, count
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)


def _open(pq: Any, path: Path, schema: Any, start: Checkpoint, personal: str) -> Any:
    header = json.dumps(header_fields(start, personal), separators=(",", ":"))
    return pq.ParquetWriter(str(path), schema.with_metadata({HEADER_KEY: header}), compression="zstd")


# ---------------------------------------------------------------------------- reading


class ParquetExport(ExportFile):
    """A Parquet export read a row group at a time, as ``export.verify_export`` reads an export: its header and
    seal (from the file's metadata), ``records()``; the typed columns are checked against the payloads on the way
    (``attach`` the verifier that reports what is wrong). ValueError if the file is not a Leeway export."""

    def __init__(self, path: str | Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.after_seal = 0
        self.views = 0
        self.header: dict[str, Any] | None = None
        self.seal: dict[str, Any] | None = None
        self._verifier: Verifier | None = None
        self._unreadable = ""
        try:
            # Read ahead by 1 MB at most, one column chunk at a time, in this thread: what is held at once is one
            # batch of rows, not whole row groups buffered ahead (measured: the peak grew with the file otherwise).
            self._file: Any = pq.ParquetFile(str(self.path), pre_buffer=False, buffer_size=1 << 20)
        except (pa.ArrowInvalid, OSError) as error:
            if not is_parquet(self.path):
                raise ValueError(f"{self.path} is not a Parquet file") from None
            self._file, self._unreadable = None, str(error)
            return
        names = self._file.schema_arrow.names
        missing = [name for name in _schema().names if name not in names and name not in OPTIONAL]
        self._columns = [name for name in _schema().names if name in names]
        if missing:
            raise ValueError(f"{self.path} is not a Leeway export: no column {', '.join(missing)}")
        metadata = {k.decode(): v.decode() for k, v in (self._file.metadata.metadata or {}).items()}
        self.header = _mark(metadata.get(HEADER_KEY), ("format", "after", "after_hash"))
        self.seal = _mark(metadata.get(SEAL_KEY), ("position", "events", "log_hash"))

    def attach(self, verifier: Verifier) -> None:
        self._verifier = verifier
        if self._unreadable:
            verifier.fail(None, "EXPORT_TRUNCATED", f"the Parquet file cannot be read to its end (it was cut, or its "
                          f"footer damaged): {self._unreadable}")

    def records(self) -> Iterator[Record]:
        if self._file is None:
            return
        derive = _Derive()
        names = self._columns
        for batch in self._file.iter_batches(batch_size=4096, columns=names, use_threads=False):
            columns = [batch.column(name).to_pylist() for name in names]
            for row in zip(*columns, strict=True):
                yield self._record(dict(zip(names, row, strict=True)), derive)

    def _record(self, row: dict[str, Any], derive: _Derive) -> Record:
        position, aggregate, version, topic = row["position"], row["aggregate_id"], row["version"], row["topic"]
        if position is None or aggregate is None or version is None or topic is None:
            raise ValueError(f"{self.path}: a row without its position, aggregate, version or topic")
        try:
            state = parse_state((row["payload"] or "").encode())
        except ValueError as error:
            raise ValueError(f"{self.path}: the payload at position {position} is not an event's JSON state: "
                             f"{error}") from None
        if row["prev_hash"] is not None:
            state[PREV] = row["prev_hash"]
        if row["hash"] is not None:
            state[HASH] = row["hash"]
        if row.get("personal") is not None:
            self.views += 1
        record = Record(int(position), str(aggregate), int(version), str(topic), state)
        expected = derive(record.aggregate_id, record.topic, state)
        wrong = [name for name, want in zip(DERIVED, expected, strict=True) if not _same(row[name], want)]
        if wrong and self._verifier is not None:
            self._verifier.fail(record, "COLUMN_MISMATCH", f"the column{'s' if len(wrong) > 1 else ''} "
                                f"{', '.join(wrong)} of the row do{'' if len(wrong) > 1 else 'es'} not match the "
                                "event's payload: the file was altered")
        return record


def _same(found: Any, expected: Any) -> bool:
    if isinstance(found, Decimal) or isinstance(expected, Decimal):
        return found is not None and expected is not None and Decimal(found) == Decimal(expected)
    return bool(found == expected) and (found is None) == (expected is None)


def _mark(text: str | None, fields: tuple[str, ...]) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        raise ValueError(f"a malformed export metadata entry: {text[:80]!r}") from None
    if not isinstance(body, dict) or any(
        not isinstance(body.get(f), int if f != fields[-1] else str) for f in fields
    ):
        raise ValueError(f"a malformed export metadata entry: {text[:80]!r}")
    return body
