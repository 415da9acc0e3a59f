"""The invariants every fault scenario ends with, checked against the log the service itself serves.

What the clients saw (``ClientView``: which request_ids were acknowledged with which action id, which were
refused, which never got an answer) is compared with the event log read back through AuditService.StreamEvents,
with ListActions and with GetBudget:

- every acknowledged action is in the log exactly once, under the acknowledged action id, with the amount sent;
- no request_id produced two ``Budget.ActionRecorded`` events (nor two request records for one request: one
  caller, one method, one request_id);
- a refused request (FAILED_PRECONDITION) left no ``ActionRecorded`` event;
- replaying each budget's events in order, no action was recorded without approval while it did not fit:
  ``spent + held (unexpired) + amount <= allowance`` at that moment (so a pending hold counts against what
  remains, and two replicas cannot spend the same money twice); and no action was put on hold past the hold
  ceiling: ``held (unexpired) + amount <= max_held`` (issue 19);
- every budget as GetBudget reports it agrees with its events: ``spent`` and ``held`` are the sums of its
  recorded / pending actions and ``remaining = allowance - spent - held``; a budget that refuses (no
  escalation) is never below zero;
- ListActions shows exactly the actions in the log; VerifyIntegrity finds the hash chains intact.

Used by the tests in tests/faults and by scripts/chaos.py.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import grpc
from google.protobuf.json_format import MessageToDict
from leeway.v1 import audit_pb2, audit_pb2_grpc
from leeway_client import LeewayClient, from_money

ACTION_RECORDED = "Budget.ActionRecorded"


@dataclass
class ClientView:
    """What the clients saw, filled in concurrently by the load threads."""

    sent: dict[str, tuple[str, Decimal]] = field(default_factory=dict)  # request_id -> (employee, amount)
    acked: dict[str, str] = field(default_factory=dict)  # request_id -> action_id
    acked_state: dict[str, int] = field(default_factory=dict)  # request_id -> Action.State
    refused: dict[str, str] = field(default_factory=dict)  # request_id -> ErrorInfo reason
    unknown: set[str] = field(default_factory=set)  # never answered before the phase ended
    failed: dict[str, str] = field(default_factory=dict)  # answered with a non-retryable, unexpected status
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def merge(self, other: ClientView) -> None:
        with self.lock:
            self.sent.update(other.sent)
            self.acked.update(other.acked)
            self.acked_state.update(other.acked_state)
            self.refused.update(other.refused)
            self.unknown |= other.unknown
            self.failed.update(other.failed)


@dataclass
class Report:
    acknowledged: int = 0
    refused: int = 0
    unanswered: int = 0
    events: int = 0
    recorded_events: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    refused_but_recorded: list[str] = field(default_factory=list)
    overspent: list[str] = field(default_factory=list)  # employee ids
    below_zero: list[str] = field(default_factory=list)  # employee ids
    problems: list[str] = field(default_factory=list)  # everything else, in words

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.refused_but_recorded or self.overspent or self.below_zero
                    or self.problems)

    def describe(self) -> str:
        lines = [
            f"acknowledged={self.acknowledged} refused={self.refused} unanswered={self.unanswered} "
            f"events={self.events} ActionRecorded={self.recorded_events}",
            f"lost={len(self.lost)} duplicated={len(self.duplicated)} refused_but_recorded={len(self.refused_but_recorded)} "
            f"overspent={len(self.overspent)} below_zero={len(self.below_zero)}",
        ]
        for name in ("lost", "duplicated", "refused_but_recorded", "overspent", "below_zero"):
            items = getattr(self, name)
            if items:
                lines.append(f"  {name}: {items[:10]}{' ...' if len(items) > 10 else ''}")
        lines += [f"  problem: {p}" for p in self.problems[:30]]
        if len(self.problems) > 30:
            lines.append(f"  ... and {len(self.problems) - 30} more problems")
        return "\n".join(lines)


def read_log(channel: grpc.Channel, *, timeout: float = 120.0) -> list[audit_pb2.Event]:
    """Every event in the log, in position order (one non-following StreamEvents call)."""
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    return [r.event for r in stub.StreamEvents(audit_pb2.StreamEventsRequest(), timeout=timeout)]


def action_id_of(event: audit_pb2.Event) -> str:
    return f"act_{UUID(event.aggregate_id).hex}_{event.aggregate_version}"


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass
class _Replay:
    employee_id: str
    allowance: Decimal = Decimal(0)
    max_held: Decimal = Decimal(0)  # escalation.max_held, by default one allowance
    refuses: bool = True  # escalation mode REFUSE: the budget may never go below zero
    spent: Decimal = Decimal(0)
    holds: dict[int, tuple[Decimal, datetime | None]] = field(default_factory=dict)  # version -> (amount, expires)
    recorded: dict[int, Decimal] = field(default_factory=dict)  # spent actions by version (not reversed)
    overspent: bool = False

    def held_at(self, moment: datetime) -> Decimal:
        return sum((a for a, expires in self.holds.values() if expires is None or expires > moment), Decimal(0))

    def policy(self, policy: dict[str, Any]) -> None:
        self.allowance = Decimal(policy["period_allowance"]["amount"])
        max_held = (policy.get("escalation") or {}).get("max_held")
        self.max_held = self.allowance if max_held is None else Decimal(max_held["amount"])
        self.refuses = (policy.get("escalation") or {}).get("mode", "REFUSE") != "APPROVAL"


def replay_budgets(events: list[audit_pb2.Event], problems: list[str]) -> dict[str, _Replay]:
    """Per employee, the budget rebuilt from its events; flags every action recorded without approval that did
    not fit (spent + unexpired holds + amount > allowance at its record time)."""
    budgets: dict[str, _Replay] = {}
    for event in events:
        kind = event.event_type
        if not kind.startswith("Budget."):
            continue
        payload = MessageToDict(event.payload)
        if kind == "Budget.Opened":
            replay = budgets[event.aggregate_id] = _Replay(event.employee_id)
            replay.policy(payload["policy"])
            continue
        replay = budgets.get(event.aggregate_id)
        if replay is None:
            problems.append(f"{kind} at position {event.position} for a budget never opened")
            continue
        version = event.aggregate_version
        if kind == "Budget.PolicyUpdated":
            replay.policy(payload["policy"])
        elif kind == "Budget.PeriodRolledOver":
            replay.spent = Decimal(0)
            replay.recorded.clear()
        elif kind == ACTION_RECORDED:
            amount = Decimal(payload["amount"])
            at = _when(payload["at"])
            assert at is not None
            if payload.get("pending"):
                if replay.held_at(at) + amount > replay.max_held:
                    problems.append(
                        f"hold past the ceiling: {replay.employee_id} held {amount} at version {version} with "
                        f"{replay.held_at(at)} held of max_held {replay.max_held}"
                    )
                replay.holds[version] = (amount, _when(payload.get("expires_at")))
            else:
                before = replay.spent + replay.held_at(at)
                if before + amount > replay.allowance:
                    replay.overspent = True
                    problems.append(
                        f"overspend: {replay.employee_id} recorded {amount} at version {version} without approval "
                        f"with spent+held {before} of allowance {replay.allowance}"
                    )
                replay.spent += amount
                replay.recorded[version] = amount
        elif kind == "Budget.ActionApproved":
            hold = replay.holds.pop(int(payload["action_version"]), None)
            if hold is None:
                problems.append(f"{replay.employee_id}: approval of a non-pending action at position {event.position}")
            else:
                replay.spent += hold[0]
                replay.recorded[int(payload["action_version"])] = hold[0]
        elif kind in ("Budget.ActionDenied", "Budget.ActionExpired"):
            if replay.holds.pop(int(payload["action_version"]), None) is None:
                problems.append(f"{replay.employee_id}: {kind} of a non-pending action at position {event.position}")
        elif kind == "Budget.ActionReversed":
            amount = replay.recorded.pop(int(payload["action_version"]), None)
            if amount is not None:
                replay.spent -= amount
    return {r.employee_id: r for r in budgets.values()}


def check(
    target: str,
    view: ClientView,
    employees: list[str] | None = None,
    *,
    now: datetime | None = None,
    timeout: float = 30.0,
) -> Report:
    """Checks every invariant on the server at ``target`` (one replica is enough: they share the log)."""
    report = Report(
        acknowledged=len(view.acked), refused=len(view.refused), unanswered=len(view.unknown)
    )
    problems = report.problems
    with grpc.insecure_channel(target) as channel:
        events = read_log(channel, timeout=max(timeout, 120.0))
        report.events = len(events)
        recorded = [e for e in events if e.event_type == ACTION_RECORDED]
        report.recorded_events = len(recorded)

        # Exactly once per request_id.
        by_request: dict[str, list[audit_pb2.Event]] = defaultdict(list)
        for event in recorded:
            by_request[MessageToDict(event.payload).get("request_id", "")].append(event)
        report.duplicated = sorted(rid for rid, found in by_request.items() if len(found) > 1)
        records = Counter(
            (payload.get("actor", ""), payload.get("method", ""), payload.get("request_id", ""))
            for payload in (MessageToDict(e.payload) for e in events if e.event_type == "RequestRecord.Recorded")
        )
        problems += [
            f"request_id {rid} ({method}, by {actor!r}) has {n} request records"
            for (actor, method, rid), n in records.items()
            if n > 1
        ]

        for rid, action_id in view.acked.items():
            found = by_request.get(rid, [])
            if not found:
                report.lost.append(rid)
                continue
            if action_id_of(found[0]) != action_id:
                problems.append(f"{rid}: acknowledged as {action_id}, logged as {action_id_of(found[0])}")
            employee, amount = view.sent.get(rid, ("", None))
            payload = MessageToDict(found[0].payload)
            if amount is not None and (Decimal(payload["amount"]) != amount or payload["employee_id"] != employee):
                problems.append(f"{rid}: sent {employee} {amount}, logged {payload['employee_id']} {payload['amount']}")
        report.refused_but_recorded = sorted(rid for rid in view.refused if rid in by_request)
        problems += [f"{rid}: unexpected answer {answer}" for rid, answer in sorted(view.failed.items())]

        # Budgets: no recording beyond the allowance, and each budget agrees with its events.
        replays = replay_budgets(events, problems)
        report.overspent = sorted(e for e, r in replays.items() if r.overspent)
        wanted = employees if employees is not None else sorted(replays)
        moment = now or datetime.now(timezone.utc)
        with LeewayClient(target, timeout=timeout) as client:
            for employee in wanted:
                replay = replays.get(employee)
                if replay is None:
                    problems.append(f"{employee}: no Budget.Opened in the log")
                    continue
                budget = client.get_budget(employee)
                allowance, spent = from_money(budget.allowance), from_money(budget.spent)
                held, remaining = from_money(budget.held), from_money(budget.remaining)
                if spent != replay.spent:
                    problems.append(f"{employee}: GetBudget spent {spent}, its events sum to {replay.spent}")
                if held != replay.held_at(moment):
                    problems.append(f"{employee}: GetBudget held {held}, its pending actions sum to {replay.held_at(moment)}")
                if allowance != replay.allowance:
                    problems.append(f"{employee}: GetBudget allowance {allowance}, its policy says {replay.allowance}")
                if remaining != allowance - spent - held:
                    problems.append(f"{employee}: remaining {remaining} != allowance {allowance} - spent {spent} - held {held}")
                if replay.refuses and (remaining < 0 or spent > allowance):
                    report.below_zero.append(employee)
                listed = {a.action_id for a in client.iter_actions(employee_id=employee, page_size=500)}
                logged = {action_id_of(e) for e in recorded if e.employee_id == employee}
                if listed != logged:
                    problems.append(
                        f"{employee}: ListActions shows {len(listed)} actions, the log {len(logged)} "
                        f"(only listed: {sorted(listed - logged)[:3]}, only logged: {sorted(logged - listed)[:3]})"
                    )
        integrity = audit_pb2_grpc.AuditServiceStub(channel).VerifyIntegrity(
            audit_pb2.VerifyIntegrityRequest(full=True), timeout=max(timeout, 120.0)
        )
        if not integrity.ok:
            problems.append(f"VerifyIntegrity: {len(integrity.violations)} violations, e.g. {integrity.violations[:2]}")
    return report
