"""What VerifyIntegrity and ``leeway verify`` check, in one streaming pass over the log in position order
(``Verifier``; memory grows with the number of aggregates, never with the number of events):

1. **Each aggregate's hash chain** (``adapters/hash_chain.py``): an event's content matches its hash
   (HASH_MISMATCH), links to its predecessor (PREV_HASH_MISMATCH), follows it without a gap (VERSION_GAP); an event
   without the chain fields is MISSING_HASH. The first broken link of each aggregate is reported.
2. **What the log points at exists** (REFERENCE_MISSING): the ledgers and the hold book name actions, a request
   record names the budget version (or team ledger version) its command left, a roster or the directory names a
   budget, a team change names its roster entry. A chain cannot tell that the newest events of an aggregate were
   removed; whoever points at them can.
3. **Checkpoints** (``Checkpoint``): the log hash chains every event's hash in position order,
   ``h = SHA-256(previous h "\\n" position "\\n" event hash)`` from 64 zeros. A checkpoint (a position and the log
   hash up to it) kept outside the database pins everything up to its position: any event at or before it changed,
   removed, added or reordered is CHECKPOINT_MISMATCH, and a log that ends before it CHECKPOINT_NOT_REACHED.
   Computed from the events' ``hash`` and ``position`` alone (what StreamEvents delivers), so anyone can check it.

**Legacy redactions** (issue 22): an event stored before encryption whose personal fields were overwritten by
``RedactLegacyData`` no longer matches its hash. It is accepted (counted in ``Verification.redactions``) when a
``LegacyRedacted`` record anywhere in the log lists it with its stored hash and the hash of its redacted content
(which must match exactly: any other change, or a later one, is HASH_MISMATCH); its stored hash stays, so the
next event's link and every checkpoint still hold. A mismatch seen before the record that explains it waits for
it; one no record explains is reported where it was found.

A record at or before the position of the one before it is OUT_OF_ORDER (only a file can be: the store hands the
log out in order). Exports add their own checks (``export.py``): EXPORT_TRUNCATED, SEAL_MISMATCH.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ..adapters.hash_chain import GENESIS, HASH, PREV, event_hash, parse_state
from ..domain.directory import TeamRoster
from ..domain.ids import budget_id_for, parse_action_id
from ..domain.ledgers import TeamLedger

__all__ = [
    "GENESIS", "REDACTION_TOPIC", "Checkpoint", "Record", "Redactions", "Verification", "Verifier", "Violation",
    "log_link", "records_from_notifications", "redactions_in", "references", "verify",
]  # fmt: skip


@dataclass(frozen=True)
class Violation:
    position: int
    aggregate_id: str
    version: int
    kind: str
    description: str


@dataclass(frozen=True)
class Record:
    """One stored event as verification sees it (from the database or an export)."""

    position: int
    aggregate_id: str
    version: int
    topic: str
    state: dict[str, Any]


_CHECKPOINT = re.compile(r"([0-9]{1,19}):([0-9a-f]{64})")


@dataclass(frozen=True)
class Checkpoint:
    """A position in the log and the log hash up to it; written ``position:log_hash``."""

    position: int
    log_hash: str

    def __str__(self) -> str:
        return f"{self.position}:{self.log_hash}"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """``position:log_hash`` (as ``leeway checkpoint`` prints it); ValueError otherwise."""
        match = _CHECKPOINT.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not a checkpoint (position:log_hash, 64 hex digits)")
        return cls(int(match.group(1)), match.group(2))


#: The checkpoint of an empty log.
START = Checkpoint(0, GENESIS)

#: The event that records a redaction of events stored before encryption (``domain/privacy.Erasures``).
REDACTION_TOPIC = "leeway.domain.privacy:Erasures.LegacyRedacted"

#: (aggregate id, version) -> (its stored hash, the hash of its redacted content).
Redactions = dict[tuple[str, int], tuple[str, str]]


def redactions_in(state: dict[str, Any]) -> Redactions:
    """What a ``LegacyRedacted`` event's stored state lists (entries that are not well formed are left out: they
    explain nothing)."""
    found: Redactions = {}
    items = state.get("redactions")
    for item in items if isinstance(items, list) else ():
        try:
            found[(str(item["aggregate_id"]), int(item["version"]))] = (str(item["hash"]), str(item["redacted_hash"]))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def log_link(previous: str, position: int, hash_: str) -> str:
    """The log hash after the event at ``position`` whose hash is ``hash_``."""
    return hashlib.sha256(f"{previous}\n{position}\n{hash_}".encode()).hexdigest()


@dataclass
class Verification:
    events_checked: int = 0
    violations: list[Violation] | None = None
    #: The checkpoint of the last event checked (None when only part of the log was read, e.g. one employee's).
    head: Checkpoint | None = None
    #: The verified checkpoint an incremental verify continued from (None: it read the log from its start).
    verified_from: Checkpoint | None = None
    #: Events whose content differs from their hash only as a recorded legacy redaction says (``redaction.py``).
    redactions: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


# ---------------------------------------------------------------------------- what events point at

#: Events that name an action (``action_id``): it must be in the log.
_NAME_AN_ACTION = {
    f"{aggregate}.{event}"
    for aggregate in ("TeamLedger", "CustomerLedger")
    for event in ("ActionCounted", "ActionNoted", "HoldSettled", "HoldReleased", "ActionReversed")
} | {"HoldBook.HoldOpened", "HoldBook.HoldClosed"}
#: Events that name a budget by its employee: it must have been opened.
_NAME_A_BUDGET = {"TeamRoster.MemberAdded", "TeamRoster.MemberRemoved", "Directory.BudgetListed"}


def references(record: Record) -> list[tuple[str, int, str]]:
    """(aggregate id, version, what) of each event ``record`` points at (at least that version must exist)."""
    kind = record.topic.rpartition(":")[2]
    state = record.state
    if kind in _NAME_AN_ACTION:
        action_id = state.get("action_id")
        parsed = parse_action_id(action_id) if isinstance(action_id, str) else None
        return [] if parsed is None else [(str(parsed[0]), parsed[1], f"action {action_id}")]
    if kind in _NAME_A_BUDGET:
        employee = state.get("employee_id")
        return [(str(budget_id_for(employee)), 1, f"the budget of {employee}")] if isinstance(employee, str) else []
    if kind == "RequestRecord.Recorded":
        return _result_references(state.get("result"), state.get("request_id"))
    if kind == "Budget.TeamChanged":
        team, version = state.get("team_id"), state.get("roster_version")
        if isinstance(team, str) and isinstance(version, int):
            return [(str(TeamRoster.create_id(team)), version, f"team {team}'s roster entry")]
    return []


def _result_references(result: Any, request_id: Any) -> list[tuple[str, int, str]]:
    """What a request record's stored result names: the budget version (or team ledger version) its command left."""
    if not isinstance(result, dict) or not isinstance(result.get("version"), int):
        return []
    what = f"the result of request_id {request_id!r}"
    budget, team = result.get("budget_id"), result.get("team_id")
    try:
        if isinstance(budget, str):
            return [(str(UUID(hex=budget)), result["version"], what)]
    except ValueError:
        return []
    if isinstance(team, str):
        return [(str(TeamLedger.create_id(team)), result["version"], what)]
    return []


# ---------------------------------------------------------------------------- the pass

#: Aggregates with exactly one event (a request record): checked, but not remembered (the most numerous kind).
_SINGLE_EVENT = "RequestRecord"


class Marks:
    """The log's checkpoint at the first event at or past each multiple of ``every`` positions (0: none) after
    ``start``: where a later export after a position may start (``verified.py``'s marks)."""

    def __init__(self, every: int, start: Checkpoint):
        self.every = every
        self.found: list[Checkpoint] = []
        self._next = (start.position // every + 1) * every if every else 0

    def passed(self, head: Checkpoint) -> None:
        if self.every and head.position >= self._next:
            self.found.append(head)
            self._next = (head.position // self.every + 1) * self.every


class Verifier:
    """Checks records fed in position order (``add``), then ``finish``.

    ``partial``: the records may start after an aggregate's first event (an export from a position): the first
    record seen of such an aggregate is trusted as the start of its chain, and what points at an aggregate none of
    whose records were seen is not judged. ``start``: the checkpoint the records continue (an export after a
    position). ``checkpoints``: to check on the way. ``whole``: False when the records are a selection (one
    aggregate's), where what they point at is elsewhere and not judged.
    """

    def __init__(
        self,
        *,
        partial: bool = False,
        start: Checkpoint = START,
        checkpoints: Sequence[Checkpoint] = (),
        whole: bool = True,
        log: bool = True,
        chains: bool = True,
        redacted: Redactions | None = None,
        mark_every: int = 0,
    ):
        self.partial = partial
        self.whole = whole
        #: What this verifier checks: the log as a whole (order, log hash, checkpoints) and / or each aggregate's
        #: chain and what points at it. A partitioned verify (``export_spill.py``) splits them.
        self.log = log
        self.chains = chains
        self.head = start
        self.marks = Marks(mark_every, start)
        self.result = Verification(0, [])
        #: Each aggregate's last (version, hash) so far (not the single-event request records); an incremental
        #: verify fills in the ones it continues from (``known``) before feeding their new records.
        self.last: dict[str, tuple[int, str]] = {}
        #: The aggregates whose ``last`` a record of this pass moved (what a verified checkpoint must store).
        self.touched: set[str] = set()
        self.broken: set[str] = set()
        #: References not yet satisfied when read (the target's version was not in the log yet): the highest
        #: version of each such aggregate something points at, with where and what pointed at it. A reference
        #: already satisfied is settled at once, so this stays small however long the log.
        self.referenced: dict[str, tuple[int, str, int, str, int]] = {}
        self.checkpoints = sorted(checkpoints, key=lambda c: c.position)
        #: Recorded legacy redactions seen (or given: ``redacted``), and mismatches waiting for one: (aggregate,
        #: version) -> (where in ``violations`` it would go, the record without its state, its stored hash, the
        #: hash its content has).
        self.redacted: Redactions = dict(redacted or {})
        self.unexplained: dict[tuple[str, int], tuple[int, Record, str, str]] = {}

    def known(self, heads: dict[str, tuple[int, str]]) -> None:
        """Continue the chains of ``heads`` (aggregate -> (version, hash) verified earlier) with the records fed
        from now on; aggregates already seen in this pass are left as they are."""
        for aggregate, head in heads.items():
            self.last.setdefault(aggregate, head)

    @property
    def violations(self) -> list[Violation]:
        assert self.result.violations is not None
        return self.result.violations

    def fail(self, record: Record | None, kind: str, description: str) -> None:
        if record is None:
            self.violations.append(Violation(self.head.position, "", 0, kind, description))
        else:
            self.violations.append(Violation(record.position, record.aggregate_id, record.version, kind, description))

    def note_redactions(self, found: Redactions) -> None:
        """Legacy redactions recorded (a ``LegacyRedacted`` event): the mismatches they explain are settled."""
        self.redacted.update(found)
        for key in [k for k in self.unexplained if k in found]:
            _, _, stored, content = self.unexplained[key]
            if found[key] == (stored, content):
                del self.unexplained[key]
                self.result.redactions += 1

    def add(self, record: Record) -> None:
        if record.topic == REDACTION_TOPIC:
            self.note_redactions(redactions_in(record.state))
        if self.log:
            self.result.events_checked += 1
            if record.position <= self.head.position:  # only in a file: the store hands them out in order
                self.fail(record, "OUT_OF_ORDER", f"position {record.position} follows position "
                          f"{self.head.position}: the records were reordered")
            self._settle_checkpoints(before=record.position)
            stored = record.state.get(HASH)
            self.head = Checkpoint(
                record.position, log_link(self.head.log_hash, record.position, stored if isinstance(stored, str) else "")
            )
            self._settle_checkpoints(before=record.position + 1)
            self.marks.passed(self.head)
        if self.chains:
            self._check_chain(record)
            for target, version, what in references(record) if self.whole else ():
                self.refer(target, version, what, record)

    def refer(self, target: str, version: int, what: str, record: Record) -> None:
        """``record`` points at version ``version`` of aggregate ``target`` (``what`` for people)."""
        have = self.last.get(target)
        if have is not None and have[0] >= version:
            return  # satisfied now, so at the end too (a chain only grows; a broken one is not judged)
        pending = self.referenced.get(target)
        if pending is None or version > pending[0]:
            self.referenced[target] = (version, what, record.position, record.aggregate_id, record.version)

    def _check_chain(self, record: Record) -> None:
        aggregate = record.aggregate_id
        if aggregate in self.broken:
            return

        def fail(kind: str, description: str) -> None:
            if self.unexplained.pop((aggregate, record.version), None) is not None:  # its content was changed too
                kind, description = "HASH_MISMATCH", "the event's content does not match its hash: it was altered"
            self.fail(record, kind, description)
            self.broken.add(aggregate)

        stored_hash, stored_prev = record.state.get(HASH), record.state.get(PREV)
        if not isinstance(stored_hash, str) or not isinstance(stored_prev, str):
            return fail("MISSING_HASH", "the event has no hash chain fields")
        content = event_hash(stored_prev, aggregate, record.version, record.topic, record.state)
        if content != stored_hash:
            recorded = self.redacted.get((aggregate, record.version))
            if recorded is None:  # a redaction recorded later may explain it (``finish`` reports it otherwise)
                self.unexplained[(aggregate, record.version)] = (
                    len(self.violations), Record(record.position, aggregate, record.version, record.topic, {}),
                    stored_hash, content)
            elif recorded == (stored_hash, content):
                self.result.redactions += 1
            else:
                return fail("HASH_MISMATCH", "the event's content does not match its hash, nor the content its "
                            "recorded legacy redaction left: it was altered")
        previous = self.last.get(aggregate)
        if previous is None:
            if record.version == 1 and stored_prev != GENESIS:
                return fail("PREV_HASH_MISMATCH", "the first event of the aggregate does not start the chain")
            if record.version != 1 and not self.partial:
                return fail("VERSION_GAP", f"the aggregate's events before version {record.version} are missing")
        else:
            previous_version, previous_hash = previous
            if record.version != previous_version + 1:
                return fail("VERSION_GAP", f"version {previous_version} is followed by {record.version}")
            if stored_prev != previous_hash:
                return fail("PREV_HASH_MISMATCH", "the previous event was altered, removed or replaced")
        if _is_single_event(record) and record.version == 1:
            return  # nothing follows it: not remembered
        self.last[aggregate] = (record.version, stored_hash)
        self.touched.add(aggregate)

    def _settle_checkpoints(self, *, before: int) -> None:
        """Checks the checkpoints at positions before ``before``: the log hash so far covers exactly them."""
        while self.checkpoints and self.checkpoints[0].position < before:
            checkpoint = self.checkpoints.pop(0)
            if self.head.log_hash != checkpoint.log_hash:
                self.fail(None, "CHECKPOINT_MISMATCH", f"the log up to position {checkpoint.position} is not the log "
                          "of the checkpoint: an event at or before it was changed, removed, added or reordered")

    def _report_unexplained(self) -> None:
        """Mismatches no redaction record explains: HASH_MISMATCH where each was found (their aggregate's later
        findings left out, as for any first broken link)."""
        first: dict[str, tuple[int, Record]] = {}
        for index, record, _, _ in self.unexplained.values():
            if record.aggregate_id not in first or record.position < first[record.aggregate_id][1].position:
                first[record.aggregate_id] = (index, record)
        for index, record in sorted(first.values(), key=lambda u: u[0], reverse=True):
            aggregate = record.aggregate_id
            if any(v.aggregate_id == aggregate and v.position <= record.position for v in self.violations):
                continue  # its chain broke before (or at) it: that is the first broken link
            self.violations[index:] = [v for v in self.violations[index:]
                                       if v.aggregate_id != aggregate or v.position <= record.position]
            self.violations.insert(index, Violation(record.position, aggregate, record.version, "HASH_MISMATCH",
                                                    "the event's content does not match its hash: it was altered"))
            self.broken.add(aggregate)  # (its ``last`` stays: a broken verdict stores no heads)
        self.unexplained = {}

    def finish(self) -> Verification:
        """The verdict: the checkpoints the records did not reach, and what they point at that is not there."""
        self._report_unexplained()
        for checkpoint in self.checkpoints:
            if checkpoint.position <= self.head.position:
                self._settle_checkpoints(before=checkpoint.position + 1)
            else:
                self.fail(None, "CHECKPOINT_NOT_REACHED", f"the log ends at position {self.head.position}, before "
                          f"the checkpoint's position {checkpoint.position}: its last events were removed")
        self.checkpoints = []
        for target, (version, what, position, aggregate, aggregate_version) in self.referenced.items():
            if target in self.broken:
                continue  # reported already
            have = self.last.get(target)
            if have is None and self.partial:
                continue  # nothing of it in this part of the log: not judged
            if have is None or have[0] < version:
                held = f"holds it up to version {have[0]}" if have else "holds none of it"
                self.violations.append(Violation(
                    position, aggregate, aggregate_version, "REFERENCE_MISSING",
                    f"points at {what} (version {version} of aggregate {target}); the log {held}: its newest events "
                    "were removed",
                ))
        self.referenced = {}
        self.result.head = self.head
        return self.result


def _is_single_event(record: Record) -> bool:
    return record.topic.rpartition(":")[2].startswith(_SINGLE_EVENT + ".")


def verify(
    records: Iterable[Record], *, partial: bool = False, checkpoints: Sequence[Checkpoint] = (), whole: bool = True,
    redacted: Redactions | None = None,
) -> Verification:
    """Checks ``records`` (in position order) in one pass; see ``Verifier``."""
    verifier = Verifier(partial=partial, checkpoints=checkpoints, whole=whole, redacted=redacted)
    for record in records:
        verifier.add(record)
    return verifier.finish()


def records_from_notifications(notifications: Iterable[Any]) -> Iterator[Record]:
    for n in notifications:
        try:
            state = parse_state(n.state)
        except ValueError:
            state = {}
        yield Record(n.id, str(n.originator_id), n.originator_version, n.topic, state)
