"""The one declaration of what is personal (domain/personal.py) covers every string field of every stored event:
a new field that is neither declared personal nor declared not personal fails here, as does a declaration of a
field that does not exist."""

from __future__ import annotations

import dataclasses

import pytest
from eventsourcing.utils import get_topic
from leeway.application.idempotency import RequestRecord
from leeway.domain.approvals import HoldBook
from leeway.domain.budget import Budget
from leeway.domain.directory import Directory, TeamRoster
from leeway.domain.ledgers import CustomerLedger, OrgLimits, TeamLedger
from leeway.domain.personal import NOT_PERSONAL, PERSONAL, Form, Source, Subject
from leeway.domain.privacy import Erasures

AGGREGATES = (Budget, CustomerLedger, Directory, TeamRoster, HoldBook, OrgLimits, TeamLedger, RequestRecord, Erasures)
LIBRARY = {"originator_id", "originator_version", "timestamp"}
STRINGY = ("str", "dict", "list", "Any", "tuple", "Mapping", "Sequence")


def stored_event_classes() -> list[type]:
    found = []
    for aggregate in AGGREGATES:
        for value in vars(aggregate).values():
            if (
                isinstance(value, type)
                and value.__qualname__.startswith(aggregate.__qualname__ + ".")
                and dataclasses.is_dataclass(value)
                and value.__name__ != "Event"
            ):
                found.append(value)
    return found


def own_fields(klass: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(klass) if f.name not in LIBRARY}


CLASSES = stored_event_classes()


def test_the_walk_finds_every_kind_of_event() -> None:
    topics = {get_topic(k) for k in CLASSES}
    assert "leeway.domain.budget:Budget.ActionRecorded" in topics
    assert "leeway.domain.indexes:RequestRecord.Recorded" in topics
    assert "leeway.domain.privacy:Erasures.DataSubjectErased" in topics
    assert len(CLASSES) >= 40


@pytest.mark.parametrize("klass", CLASSES, ids=[get_topic(k) for k in CLASSES])
def test_every_string_field_is_declared(klass: type) -> None:
    topic = get_topic(klass)
    personal, not_personal = PERSONAL.get(topic, {}), NOT_PERSONAL.get(topic)
    assert not_personal is not None, f"{topic}: not declared in domain/personal.py"
    assert not set(personal) & set(not_personal), f"{topic}: declared both personal and not personal"
    undeclared = [
        name
        for name, annotation in own_fields(klass).items()
        if any(word in annotation for word in STRINGY) and name not in personal and name not in not_personal
    ]
    assert not undeclared, f"{topic}: string fields neither personal nor not personal: {undeclared}"


def test_every_declaration_names_a_real_field() -> None:
    by_topic = {get_topic(k): own_fields(k) for k in CLASSES}
    for table in (PERSONAL, NOT_PERSONAL):
        for topic, fields in table.items():
            assert topic in by_topic, f"no stored event class has the topic {topic}"
            stale = set(fields) - set(by_topic[topic])
            assert not stale, f"{topic}: declared fields that do not exist: {stale}"


def test_the_issue_s_fields_are_personal() -> None:
    recorded = PERSONAL["leeway.domain.budget:Budget.ActionRecorded"]
    assert {"customer_id", "case_id", "reason", "details"} <= set(recorded)
    assert recorded["customer_id"].form is Form.IDENTIFIER and recorded["customer_id"].subject is Subject.CUSTOMER
    win = PERSONAL["leeway.domain.budget:Budget.WinDocumented"]
    assert win["story"].source is Source.ACTION and win["customer_quote"].form is Form.TEXT
    assert PERSONAL["leeway.domain.budget:Budget.Opened"]["display_name"].subject is Subject.EMPLOYEE


def test_a_new_string_field_would_fail() -> None:
    """The check itself: an event class with an undeclared string field is reported."""

    @dataclasses.dataclass(frozen=True)
    class Fake:
        customer_id: str
        new_free_text: str
        amount: int

    declared = {"customer_id"}
    undeclared = [n for n, a in own_fields(Fake).items() if any(w in a for w in STRINGY) and n not in declared]
    assert undeclared == ["new_free_text"]
