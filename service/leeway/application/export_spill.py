"""``leeway verify`` of a large export in bounded memory: the same checks as ``export.verify_export``, in two passes.

A single pass keeps each aggregate's last hash (``integrity.Verifier``) and every budget being rebuilt in memory,
so its memory grows with the number of aggregates and with what budgets remember. This verify splits the work by
aggregate:

1. One pass over the file, in its order, checks what concerns the log as a whole (order, the log hash, the
   checkpoints, the header and the seal, with ``Verifier(chains=False)``) and writes each record, and each
   reference a record makes, to one of ``partitions`` temporary files chosen by the aggregate (the one pointed
   at, for a reference), in file order.
2. Each temporary file in turn is checked like the whole file would be (``Verifier(log=False)``: chains, and what
   the references point at), and its budgets are rebuilt (``on_record``), then handed over and forgotten
   (``on_part_done``).

Every aggregate's records and the references to it are in one partition, in the file's order, so each chain and
each reference is judged exactly as in a single pass; the verdict is the same violations (in position order).
Memory is that of one partition's aggregates; the temporary files take about the export's size on disk.
"""

from __future__ import annotations

import json
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from .integrity import Checkpoint, Record, Verification, Verifier, references

__all__ = ["verify_partitioned"]


def _part(aggregate: str, partitions: int) -> int:
    return zlib.crc32(aggregate.encode()) % partitions


def verify_partitioned(
    export: Any,
    *,
    checkpoints: Sequence[Checkpoint],
    partitions: int,
    on_record: Callable[[Record], None] | None = None,
    on_part_done: Callable[[], None] | None = None,
    directory: str | Path | None = None,
) -> tuple[Verification, Verifier, int]:
    """Pass 1 and 2 over ``export`` (an ``export.Export`` or ``export_parquet.ParquetExport``); returns (the
    verdict so far, the log verifier whose head and violations the file checks add to, records counted)."""
    start = export.start
    log = Verifier(partial=export.partial, start=start, chains=False,
                   checkpoints=[c for c in checkpoints if c.position > start.position])
    if hasattr(export, "attach"):
        export.attach(log)
    count = 0
    violations = []
    with tempfile.TemporaryDirectory(prefix="leeway-verify-", dir=directory) as tmp:
        paths = [Path(tmp) / f"part-{n:03d}.jsonl" for n in range(partitions)]
        files: list[IO[str]] = [path.open("w", encoding="utf-8") for path in paths]
        try:
            for record in export.records():
                log.add(record)
                count += 1
                line = [record.position, record.aggregate_id, record.version, record.topic, record.state]
                files[_part(record.aggregate_id, partitions)].write(_dump(line))
                for target, version, what in references(record):
                    reference = [target, version, what, record.position, record.aggregate_id, record.version]
                    files[_part(target, partitions)].write(_dump(reference))
        finally:
            for file in files:
                file.close()
        for path in paths:
            # The legacy redactions recorded anywhere in the file (pass 1 saw them all) explain this part's events.
            chains = Verifier(partial=export.partial, log=False, whole=False, redacted=log.redacted)
            with path.open(encoding="utf-8") as file:
                for line in file:
                    item = json.loads(line)
                    if len(item) == 5:
                        record = Record(*item)
                        chains.add(record)
                        if on_record is not None:
                            on_record(record)
                    else:
                        target, version, what, position, aggregate, aggregate_version = item
                        chains.refer(target, version, what, Record(position, aggregate, aggregate_version, "", {}))
            verdict = chains.finish()
            violations += verdict.violations or []
            log.result.redactions += verdict.redactions
            path.unlink()
            if on_part_done is not None:
                on_part_done()
    log.violations.extend(violations)
    log.violations.sort(key=lambda v: v.position)
    return log.result, log, count


def _dump(item: list[Any]) -> str:
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False) + "\n"
