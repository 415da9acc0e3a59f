"""``leeway export`` and ``leeway verify``: the log as JSON lines, sealed, verifiable away from the database.

An export is one JSON object per line::

    {"header": {"format": 1, "after": A, "after_hash": H_A, "personal": "clear"}}
    {"position": ..., "aggregate_id": ..., "version": ..., "topic": ..., "state": {... "__prev__", "__hash__"},
     "personal": {"reason": "...", "customer_id": "[erased:...]", ...}}
    ...  (every stored event after position A, in position order, as stored)
    {"seal": {"position": P, "events": N, "log_hash": H_P}}

``state`` is the event as stored: personal fields sealed (issue 22), what the hash chain covers and ``verify``
checks, without any key. ``personal`` (only on an event with sealed fields) is the readable view of those fields,
as the RPCs render them: with ``personal="clear"`` (the default of ``leeway export``) their text, or ``[erased]``
(``[erased:<pseudonym>]`` for an id) once their subject was erased; with ``personal="sealed"`` (for an export that
leaves the organisation) ``[sealed]`` / ``[sealed:<pseudonym>]`` instead of any text, ``[erased]`` still telling
what was erased. The view is not verified (it needs the data keys): the stored form is. Events stored before
encryption hold their personal text in ``state`` itself, in either mode (``ExportStats.legacy`` counts them).

``after_hash`` is the log hash up to position A (64 zeros for a whole export) and ``log_hash`` the log hash up to the
last event exported (see ``integrity.py``): the header and the seal are checkpoints. So a file that was cut
(empty, or without its seal) is EXPORT_TRUNCATED, records that do not add up to the seal (removed, added, edited
or reordered lines, lines after it) are SEAL_MISMATCH, and an export that continues another (``--after`` its seal's
position) has the other's seal as its header. The seal is no signature: whoever rewrites a file can write a new
one. What proves a file complete is a checkpoint kept elsewhere: ``leeway verify --checkpoint P:H`` checks the
file still holds it.

``verify_export`` checks a file in one pass (with ``BudgetRebuilder`` fed on the way, ``leeway verify`` rebuilds
every budget's balance from the same pass).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent

from ..adapters.hash_chain import HASH, PREV, parse_state
from ..adapters.pii import legacy_paths
from .integrity import START, Checkpoint, Record, Verification, Verifier, Violation, log_link

__all__ = [
    "PERSONAL_MODES", "BudgetRebuilder", "Export", "ExportStats", "export_line", "export_lines", "header_line",
    "read_export", "rebuild_budgets", "seal_line", "verify_export",
]  # fmt: skip

FORMAT = 1


def _line(item: dict[str, Any]) -> str:
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False)


#: How ``leeway export`` writes personal fields' readable view: their text ("clear") or only what was erased.
PERSONAL_MODES = ("clear", "sealed")

#: (topic, stored state) -> the readable view of its sealed fields, or None (``adapters/pii.Sealer.view``).
View = Callable[[str, dict[str, Any]], "dict[str, Any] | None"]


@dataclass
class ExportStats:
    """What an export found on the way: events whose personal fields are stored in clear (before encryption)."""

    legacy: int = 0

    def note(self, topic: str, state: dict[str, Any]) -> None:
        if legacy_paths(topic, state):
            self.legacy += 1


def export_line(notification: Any, view: View | None = None) -> str:
    """One event of ``leeway export``, as it is stored (state with its hash chain fields), with the readable view of
    its sealed fields when ``view`` is given."""
    state = parse_state(notification.state)
    return _record_line(notification, state, view(notification.topic, state) if view is not None else None)


def _record_line(notification: Any, state: dict[str, Any], personal: dict[str, Any] | None = None) -> str:
    item = {
        "position": notification.id,
        "aggregate_id": str(notification.originator_id),
        "version": notification.originator_version,
        "topic": notification.topic,
        "state": state,
    }
    if personal is not None:
        item["personal"] = personal
    return _line(item)


def header_fields(start: Checkpoint, personal: str = "") -> dict[str, Any]:
    header: dict[str, Any] = {"format": FORMAT, "after": start.position, "after_hash": start.log_hash}
    if personal:
        header["personal"] = personal
    return header


def header_line(start: Checkpoint, personal: str = "") -> str:
    return _line({"header": header_fields(start, personal)})


def seal_line(head: Checkpoint, events: int) -> str:
    return _line({"seal": {"position": head.position, "events": events, "log_hash": head.log_hash}})


def _hash_of(state: dict[str, Any]) -> str:
    stored = state.get(HASH)
    return stored if isinstance(stored, str) else ""


def export_lines(
    notifications: Iterable[Any], after: int = 0, start: Checkpoint = START, *, view: View | None = None,
    personal: str = "", stats: ExportStats | None = None,
) -> Iterator[str]:
    """The lines of an export of the events after position ``after``, from every stored event after ``start``
    (a checkpoint at or before ``after`` whose log hash is known: the genesis, or a verified checkpoint) in
    position order (those up to ``after`` are read for the log hash of the header, not written); the last line is
    the seal. ``view``: the readable view of each event's sealed fields (``personal`` names its mode in the
    header)."""
    head, count, started = start, 0, False
    for n in notifications:
        try:
            state = parse_state(n.state)
        except ValueError:
            state = {}
        if n.id <= after:
            head = Checkpoint(n.id, log_link(head.log_hash, n.id, _hash_of(state)))
            continue
        if not started:
            yield header_line(Checkpoint(after, head.log_hash), personal)
            started = True
        if stats is not None:
            stats.note(n.topic, state)
        yield _record_line(n, state, view(n.topic, state) if view is not None else None)
        head = Checkpoint(n.id, log_link(head.log_hash, n.id, _hash_of(state)))
        count += 1
    if not started:
        yield header_line(Checkpoint(after, head.log_hash), personal)
    yield seal_line(Checkpoint(max(after, head.position), head.log_hash), count)


# ---------------------------------------------------------------------------- reading a file


def _parse(number: int, line: str) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except ValueError as error:
        raise ValueError(f"line {number} is not an exported event: {error}") from None
    if not isinstance(item, dict):
        raise ValueError(f"line {number} is not an exported event: not a JSON object")
    return item


def _record(number: int, item: dict[str, Any]) -> Record:
    if not isinstance(item.get("personal", {}), dict):
        raise ValueError(f"line {number} is not an exported event: its personal view is not a JSON object")
    try:
        return Record(int(item["position"]), str(item["aggregate_id"]), int(item["version"]), str(item["topic"]),
                      dict(item["state"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"line {number} is not an exported event: {error}") from None


def _mark(item: dict[str, Any], key: str, fields: tuple[str, ...], number: int) -> dict[str, Any] | None:
    """The header or seal of a line, if it is one (ValueError if it is malformed)."""
    if key not in item:
        return None
    body = item[key]
    if not isinstance(body, dict) or any(not isinstance(body.get(f), int if f != fields[-1] else str) for f in fields):
        raise ValueError(f"line {number} is a malformed export {key}")
    return body


class ExportFile:
    """What an export's header says (JSON lines here, Parquet in ``export_parquet``): where its records start."""

    header: dict[str, Any] | None

    @property
    def start(self) -> Checkpoint:
        """Where the records continue the log: the header's checkpoint (an unsealed file: the beginning)."""
        if self.header is None:
            return START
        return Checkpoint(self.header["after"], self.header["after_hash"])

    @property
    def partial(self) -> bool:
        """Whether the file starts after the log's beginning (then chains start at their first record in it)."""
        if self.header is not None:
            return bool(self.header["after"])
        return self._starts_late()

    def _starts_late(self) -> bool:
        """Without a header: whether the file starts after the log's beginning (where it starts is unknown: yes)."""
        return True


class Export(ExportFile):
    """An export file read line by line: its header (read at once), its records (``records()``), then its seal and
    what follows the seal. A line that is not JSON, or not an event, a header or a seal, is a ValueError: the file
    is not an export (a usage error, not a verdict)."""

    def __init__(self, lines: Iterable[str]):
        self._lines = ((n, line) for n, line in enumerate(lines, 1) if line.strip())
        self.header: dict[str, Any] | None = None
        self.seal: dict[str, Any] | None = None
        #: Lines after the seal.
        self.after_seal = 0
        #: Records that carry a readable view of their personal fields (not verified: it needs the keys).
        self.views = 0
        self._first: Record | None = None
        first = next(self._lines, None)
        if first is not None:
            item = _parse(*first)
            self.header = _mark(item, "header", ("format", "after", "after_hash"), first[0])
            if self.header is None:
                self._first = self._item(first[0], item)  # no header: a cut file, or one written before headers

    def _starts_late(self) -> bool:
        return self._first is not None and self._first.position > 1

    def _item(self, number: int, item: dict[str, Any]) -> Record | None:
        if self.seal is not None:
            self.after_seal += 1
            return None
        seal = _mark(item, "seal", ("position", "events", "log_hash"), number)
        if seal is not None:
            self.seal = seal
            return None
        if "header" in item:
            raise ValueError(f"line {number}: a second export header")
        if "personal" in item:
            self.views += 1
        return _record(number, item)

    def records(self) -> Iterator[Record]:
        if self._first is not None:
            yield self._first
        for number, line in self._lines:
            record = self._item(number, _parse(number, line))
            if record is not None:
                yield record


def read_export(lines: Iterable[str]) -> Iterator[Record]:
    """The events of an export (header and seal left out)."""
    return Export(lines).records()


def verify_export(
    lines: Iterable[str] | Any,
    *,
    checkpoints: Sequence[Checkpoint] = (),
    on_record: Callable[[Record], None] | None = None,
    partitions: int = 1,
    on_part_done: Callable[[], None] | None = None,
    directory: str | None = None,
) -> Verification:
    """Checks an export in one pass: every chain and reference (``integrity.Verifier``), that the file is whole
    (header, seal, nothing after it, records that add up to the seal) and holds ``checkpoints``. ``on_record`` sees
    every record on the way. ``lines``: the lines of a JSON lines export, or an export already opened (``Export``,
    ``export_parquet.ParquetExport``: ``header``, ``seal``, ``after_seal``, ``start``, ``partial``,
    ``records()``, and optionally ``attach(verifier)`` to report what is wrong with the file itself). ValueError
    if the file is not an export, or a checkpoint is before its start.

    ``partitions`` > 1: in bounded memory, through that many temporary files (in ``directory``): see
    ``export_spill.py``; ``on_record`` then sees each partition's records in turn, and ``on_part_done`` is called
    after each."""
    export = lines if hasattr(lines, "records") else Export(lines)
    start = export.start
    for checkpoint in checkpoints:
        if checkpoint.position < start.position:
            raise ValueError(f"checkpoint {checkpoint} is before this export, which starts after position "
                             f"{start.position}")
    mismatch = [c for c in checkpoints if c.position == start.position and c.log_hash != start.log_hash]
    if partitions > 1:
        from .export_spill import verify_partitioned

        _, verifier, count = verify_partitioned(export, checkpoints=checkpoints, partitions=partitions,
                                                on_record=on_record, on_part_done=on_part_done, directory=directory)
    else:
        verifier = Verifier(partial=export.partial, start=start,
                            checkpoints=[c for c in checkpoints if c.position > start.position])
        if hasattr(export, "attach"):
            export.attach(verifier)
        count = 0
        for record in export.records():
            verifier.add(record)
            count += 1
            if on_record is not None:
                on_record(record)
    if mismatch:
        verifier.violations.insert(0, Violation(start.position, "", 0, "CHECKPOINT_MISMATCH", (
            f"the export continues the log after position {start.position}, but not the log of the checkpoint "
            "there")))
    _check_whole(export, verifier, count)
    return verifier.finish()


def _check_whole(export: Export, verifier: Verifier, count: int) -> None:
    head = verifier.head
    if export.header is None:
        verifier.fail(None, "EXPORT_TRUNCATED", "the file does not start with an export header: it is empty, its "
                      "beginning was cut, or it was written before exports were sealed (export it again)")
    seal = export.seal
    if seal is None:
        where = f"after position {head.position}" if count else "before its first event"
        verifier.fail(None, "EXPORT_TRUNCATED", f"the file ends without the export's seal: it was cut {where}")
        return
    found = (head.position, count, head.log_hash)
    sealed = (seal["position"], seal["events"], seal["log_hash"])
    if found != sealed:
        verifier.fail(None, "SEAL_MISMATCH", f"the records do not add up to the seal ({count} events up to position "
                      f"{head.position}, log hash {head.log_hash[:12]}...; sealed: {seal['events']} up to position "
                      f"{seal['position']}, log hash {str(seal['log_hash'])[:12]}...): lines were removed, added, "
                      "changed or reordered")
    if export.after_seal:
        verifier.fail(None, "SEAL_MISMATCH", f"{export.after_seal} lines follow the seal")


# ---------------------------------------------------------------------------- budgets from a file alone


class BudgetRebuilder:
    """Rebuilds every Budget aggregate from exported records alone, fed one record at a time."""

    def __init__(self, mapper: Mapper) -> None:  # type: ignore[type-arg]
        from ..domain.budget import Budget

        self.mapper = mapper
        self.prefix = f"{Budget.__module__}:{Budget.__qualname__}."
        self.budgets: dict[str, Any] = {}
        self.incomplete: set[str] = set()
        #: Budgets with an event missing or beyond replay in the file (not rebuilt; the verdict names the event).
        self.damaged: set[str] = set()

    def add(self, record: Record) -> None:
        if not record.topic.startswith(self.prefix) or record.aggregate_id in self.incomplete:
            return
        current = self.budgets.get(record.aggregate_id)
        if current is None and record.version != 1:
            if record.aggregate_id not in self.damaged:
                self.incomplete.add(record.aggregate_id)  # its first events are not in the file
            return
        if current is not None and record.version != current.version + 1:
            self._damaged(record.aggregate_id)  # an event of it is missing (the verdict names it)
            return
        state = {k: v for k, v in record.state.items() if k not in (PREV, HASH)}
        stored = StoredEvent(
            originator_id=UUID(record.aggregate_id),
            originator_version=record.version,
            topic=record.topic,
            state=json.dumps(state).encode(),
        )
        try:
            event = self.mapper.to_domain_event(stored)
            self.budgets[record.aggregate_id] = event.mutate(current)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - an event altered beyond replay (the verdict names it): not rebuilt
            self._damaged(record.aggregate_id)

    def _damaged(self, aggregate_id: str) -> None:
        self.budgets.pop(aggregate_id, None)
        self.damaged.add(aggregate_id)

    def result(self) -> tuple[list[Any], list[str]]:
        """(budgets, ids it could not rebuild because their first events are not in the file); see ``damaged``
        for those it could not rebuild because an event of theirs is missing or cannot be replayed."""
        return list(self.budgets.values()), sorted(self.incomplete)


def rebuild_budgets(records: Iterable[Record], mapper: Mapper) -> tuple[list[Any], list[str]]:  # type: ignore[type-arg]
    """Every Budget rebuilt from ``records`` alone; see ``BudgetRebuilder``."""
    rebuilder = BudgetRebuilder(mapper)
    for record in records:
        rebuilder.add(record)
    return rebuilder.result()
