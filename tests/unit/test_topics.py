"""Stored topics never change: every aggregate and event class of the domain keeps the topic its events were first
stored under (``module:qualname`` of its first home), and that topic resolves to it.

Listed literally: a moved or renamed class must fail here, not in production when old events are read.
(RequestRecord moved to leeway.application.idempotency; it pins its topics too.)
"""

from __future__ import annotations

import dataclasses

import pytest
from eventsourcing.utils import get_topic, resolve_topic
from leeway.application.idempotency import RequestRecord
from leeway.domain.approvals import HoldBook
from leeway.domain.budget import Budget
from leeway.domain.directory import Directory, TeamRoster
from leeway.domain.ledgers import CustomerLedger, OrgLimits, TeamLedger
from leeway.domain.privacy import Erasures

LEGACY = [
    (Budget, "leeway.domain.budget:Budget"),
    (Budget.ActionApproved, "leeway.domain.budget:Budget.ActionApproved"),
    (Budget.ActionDenied, "leeway.domain.budget:Budget.ActionDenied"),
    (Budget.ActionExpired, "leeway.domain.budget:Budget.ActionExpired"),
    (Budget.ActionRecorded, "leeway.domain.budget:Budget.ActionRecorded"),
    (Budget.ActionReversed, "leeway.domain.budget:Budget.ActionReversed"),
    (Budget.ApprovalGiven, "leeway.domain.budget:Budget.ApprovalGiven"),
    (Budget.Closed, "leeway.domain.budget:Budget.Closed"),
    (Budget.Created, "leeway.domain.budget:Budget.Created"),
    (Budget.Event, "leeway.domain.budget:Budget.Event"),
    (Budget.Opened, "leeway.domain.budget:Budget.Opened"),
    (Budget.PeriodRolledOver, "leeway.domain.budget:Budget.PeriodRolledOver"),
    (Budget.PolicyUpdated, "leeway.domain.budget:Budget.PolicyUpdated"),
    (Budget.Reopened, "leeway.domain.budget:Budget.Reopened"),
    (Budget.TeamChanged, "leeway.domain.budget:Budget.TeamChanged"),
    (Budget.WinDocumented, "leeway.domain.budget:Budget.WinDocumented"),
    (CustomerLedger, "leeway.domain.indexes:CustomerLedger"),
    (CustomerLedger.ActionNoted, "leeway.domain.indexes:CustomerLedger.ActionNoted"),
    (CustomerLedger.ActionReversed, "leeway.domain.indexes:CustomerLedger.ActionReversed"),
    (CustomerLedger.Created, "leeway.domain.indexes:CustomerLedger.Created"),
    (CustomerLedger.Event, "leeway.domain.indexes:CustomerLedger.Event"),
    (CustomerLedger.HoldReleased, "leeway.domain.indexes:CustomerLedger.HoldReleased"),
    (CustomerLedger.HoldSettled, "leeway.domain.indexes:CustomerLedger.HoldSettled"),
    (CustomerLedger.SpellingsNoted, "leeway.domain.indexes:CustomerLedger.SpellingsNoted"),
    (Directory, "leeway.domain.indexes:Directory"),
    (Directory.BudgetListed, "leeway.domain.indexes:Directory.BudgetListed"),
    (Directory.Created, "leeway.domain.indexes:Directory.Created"),
    (Directory.Event, "leeway.domain.indexes:Directory.Event"),
    (TeamRoster, "leeway.domain.indexes:TeamRoster"),
    (TeamRoster.Created, "leeway.domain.indexes:TeamRoster.Created"),
    (TeamRoster.Event, "leeway.domain.indexes:TeamRoster.Event"),
    (TeamRoster.MemberAdded, "leeway.domain.indexes:TeamRoster.MemberAdded"),
    (TeamRoster.MemberRemoved, "leeway.domain.indexes:TeamRoster.MemberRemoved"),
    (HoldBook, "leeway.domain.limits:HoldBook"),
    (HoldBook.Created, "leeway.domain.limits:HoldBook.Created"),
    (HoldBook.Event, "leeway.domain.limits:HoldBook.Event"),
    (HoldBook.HoldClosed, "leeway.domain.limits:HoldBook.HoldClosed"),
    (HoldBook.HoldOpened, "leeway.domain.limits:HoldBook.HoldOpened"),
    (OrgLimits, "leeway.domain.limits:OrgLimits"),
    (OrgLimits.Created, "leeway.domain.limits:OrgLimits.Created"),
    (OrgLimits.CustomerCapSet, "leeway.domain.limits:OrgLimits.CustomerCapSet"),
    (OrgLimits.CustomerCapChanged, "leeway.domain.limits:OrgLimits.CustomerCapChanged"),
    (OrgLimits.CustomerIdsScanned, "leeway.domain.limits:OrgLimits.CustomerIdsScanned"),
    (OrgLimits.Event, "leeway.domain.limits:OrgLimits.Event"),
    (TeamLedger, "leeway.domain.limits:TeamLedger"),
    (TeamLedger.ActionCounted, "leeway.domain.limits:TeamLedger.ActionCounted"),
    (TeamLedger.ActionReversed, "leeway.domain.limits:TeamLedger.ActionReversed"),
    (TeamLedger.CapSet, "leeway.domain.limits:TeamLedger.CapSet"),
    (TeamLedger.Created, "leeway.domain.limits:TeamLedger.Created"),
    (TeamLedger.Event, "leeway.domain.limits:TeamLedger.Event"),
    (TeamLedger.HoldReleased, "leeway.domain.limits:TeamLedger.HoldReleased"),
    (TeamLedger.HoldSettled, "leeway.domain.limits:TeamLedger.HoldSettled"),
    (RequestRecord, "leeway.domain.indexes:RequestRecord"),
    (RequestRecord.Created, "leeway.domain.indexes:RequestRecord.Created"),
    (RequestRecord.Event, "leeway.domain.indexes:RequestRecord.Event"),
    (RequestRecord.Recorded, "leeway.domain.indexes:RequestRecord.Recorded"),
    # Issue 22: new, stored under their own module.
    (Erasures, "leeway.domain.privacy:Erasures"),
    (Erasures.Created, "leeway.domain.privacy:Erasures.Created"),
    (Erasures.DataSubjectErased, "leeway.domain.privacy:Erasures.DataSubjectErased"),
    (Erasures.LegacyRedacted, "leeway.domain.privacy:Erasures.LegacyRedacted"),
    (Erasures.Event, "leeway.domain.privacy:Erasures.Event"),
]


@pytest.mark.parametrize(("klass", "topic"), LEGACY, ids=[topic for _, topic in LEGACY])
def test_every_class_keeps_its_legacy_topic(klass: type, topic: str) -> None:
    assert get_topic(klass) == topic
    assert resolve_topic(topic) is klass


def test_every_nested_class_is_listed() -> None:
    """A new event class must be added to LEGACY (with the topic it will be stored under)."""
    listed = {klass for klass, _ in LEGACY}
    for aggregate in (Budget, CustomerLedger, Directory, TeamRoster, HoldBook, OrgLimits, TeamLedger, RequestRecord,
                      Erasures):
        nested = {
            value
            for value in vars(aggregate).values()
            if isinstance(value, type) and value.__qualname__.startswith(aggregate.__qualname__ + ".")
        }
        assert nested <= listed, sorted(k.__qualname__ for k in nested - listed)


def test_moved_classes_pin_their_topic_on_themselves() -> None:
    """Each moved class has its own TOPIC: one inherited from a parent class would name the parent."""
    for klass, topic in LEGACY:
        if not topic.startswith(("leeway.domain.budget:", "leeway.domain.privacy:")):
            assert klass.__dict__["TOPIC"] == topic


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (TeamLedger.HoldSettled, CustomerLedger.HoldSettled),
        (TeamLedger.HoldReleased, CustomerLedger.HoldReleased),
        (TeamLedger.ActionReversed, CustomerLedger.ActionReversed),
    ],
)
def test_the_ledgers_shared_events_are_separate_classes_with_the_same_attributes(a: type, b: type) -> None:
    assert a is not b and get_topic(a) != get_topic(b)
    assert [(f.name, f.type) for f in dataclasses.fields(a)] == [(f.name, f.type) for f in dataclasses.fields(b)]


@pytest.mark.parametrize(
    ("klass", "attributes"),
    [
        (TeamLedger.HoldSettled, ["action_id", "at"]),
        (TeamLedger.HoldReleased, ["action_id", "outcome", "at"]),
        (TeamLedger.ActionReversed, ["action_id", "currency", "day", "amount", "at"]),
        (TeamLedger.ActionCounted, ["action_id", "employee_id", "amount", "currency", "pending", "expires_at", "at"]),
        (CustomerLedger.ActionNoted,
         ["action_id", "employee_id", "kind", "amount", "currency", "at", "pending", "expires_at"]),
    ],
)
def test_ledger_event_attributes_are_unchanged(klass: type, attributes: list[str]) -> None:
    own = [f.name for f in dataclasses.fields(klass) if f.name not in ("originator_id", "originator_version", "timestamp")]
    assert own == attributes
