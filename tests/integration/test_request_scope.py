"""request_id is scoped to the caller (AIP-155): a request is (principal, method, request_id). Two callers may use
the same request_id without seeing or blocking each other; the same caller's retry gets its first answer, across
restarts and replicas; and request records saved before the change (the legacy id ``request:<request_id>``, one
namespace for every caller) keep answering their own caller's retries, and nobody else's. On SQLite and
PostgreSQL; the legacy records are written here directly, as the code before the change wrote them."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from leeway.application import LeewayApplication
from leeway.application.commands import ExpireAction, RecordAction, ReverseAction
from leeway.application.idempotency import (
    LEGACY_ID_VERSION,
    SCOPED_ID_VERSION,
    UNAUTHENTICATED_ACTOR,
    RequestRecord,
    fingerprint,
    legacy_request_id,
    request_key,
)
from leeway.application.writer import Pending
from leeway.auth import ANONYMOUS
from leeway.domain.budget import Budget
from leeway.domain.errors import AlreadyExists
from leeway.domain.ids import budget_id_for

from builders import action_cmd, make_policy, open_cmd, usd

CRM, AGENT = "crm-main", "ann"
RID = "crm-case-6000-gift"


def spend(amount: int = 10, *, request_id: str = RID, employee: str = "ann") -> RecordAction:
    return action_cmd(employee, amount, request_id=request_id)


def recorded(app: LeewayApplication, employee: str = "ann") -> list[Any]:
    return [e for e in app.events.get(budget_id_for(employee)) if isinstance(e, Budget.ActionRecorded)]


def request_records(app: LeewayApplication) -> list[tuple[uuid.UUID, RequestRecord]]:
    found = []
    for n in app.all_notifications(topics=(RequestRecord.Recorded.TOPIC,)):  # type: ignore[attr-defined]
        found.append((n.originator_id, app.mapper.to_domain_event(n).mutate(None)))
    return found


def write_legacy(app: LeewayApplication, command: Any, actor: str) -> Any:
    """Decides ``command`` for ``actor`` and stores its request record as the code before the change did: under
    ``request:<request_id>``. (The command runs under a request_id of its own first, for its effect and result;
    the fingerprint does not depend on the request_id.) Returns the response the caller got then."""
    seed = dataclasses.replace(command, request_id=f"seed-{uuid.uuid4()}")
    response = app.execute(seed, actor=actor)
    stored = app.get_or_none(RequestRecord.create_id(seed.request_id, seed.method, actor))
    legacy = RequestRecord._create(  # the constructor, with the id the code before the change derived
        RequestRecord.Recorded,
        id=legacy_request_id(command.request_id),
        request_id=command.request_id,
        method=command.method,
        fingerprint=fingerprint(command),
        result=stored.result,
        at=stored.at,
        actor=actor,
    )
    app.save(legacy)
    return response


def run_as(app: LeewayApplication, *calls: tuple[Any, str]) -> list[Any]:
    """Runs (command, actor) pairs as ONE batch; each one's response or error."""
    items = [Pending(command, actor, float("inf")) for command, actor in calls]
    app.writer.run_now(items)
    answers = []
    for item in items:
        try:
            answers.append(app.writer.answer(item))
        except Exception as error:  # noqa: BLE001 - handed back to the test
            answers.append(error)
    return answers


@pytest.fixture
def app(app_factory) -> LeewayApplication:
    made = app_factory()
    made.execute(open_cmd("ann", policy=None))
    return made


# ---------------------------------------------------------------------------- the key


def test_the_key_is_deterministic_and_scoped() -> None:
    key = request_key(CRM, RecordAction.method, RID)
    assert key == request_key(CRM, RecordAction.method, RID) and key.version == SCOPED_ID_VERSION
    assert legacy_request_id(RID).version == LEGACY_ID_VERSION
    others = {
        request_key(AGENT, RecordAction.method, RID),
        request_key(CRM, ReverseAction.method, RID),
        request_key(CRM, RecordAction.method, RID + "x"),
        request_key("", RecordAction.method, RID),
        # No separator to slide: "a:b" + "c" is not "a" + "b:c".
        request_key(CRM + ":" + RecordAction.method, "", RID),
        legacy_request_id(RID),
    }
    assert key not in others and len(others) == 6


def test_the_unauthenticated_actor_is_the_anonymous_principal() -> None:
    assert UNAUTHENTICATED_ACTOR == ANONYMOUS.id


# ---------------------------------------------------------------------------- two callers, one request_id


def test_two_callers_may_use_the_same_request_id(app) -> None:
    """The review's case: an agent claims a CRM's predictable id first; the CRM's real call is still recorded."""
    agents = app.execute(spend(10), actor=AGENT)
    crms = app.execute(spend(20), actor=CRM)  # other content: not a reuse, nothing about the agent's call
    assert crms[0].action_id != agents[0].action_id and crms[1].spent == usd(30)
    # Each one's retry gets its own first answer.
    assert app.execute(spend(20), actor=CRM) == crms
    assert app.execute(spend(10), actor=AGENT) == agents
    # The same content from a third caller is a third request.
    third = app.execute(spend(10), actor="bob")
    assert third[0].action_id not in (agents[0].action_id, crms[0].action_id)
    # A reuse is refused only within one caller's own requests, naming only its own method.
    with pytest.raises(AlreadyExists) as info:
        app.execute(spend(11), actor=AGENT)
    assert info.value.reason == "REQUEST_ID_REUSED"
    assert info.value.metadata == {"request_id": RID, "original_method": RecordAction.method}
    assert len(recorded(app)) == 3
    records = [r for _, r in request_records(app) if r.request_id == RID]
    assert sorted(r.actor for r in records) == sorted([AGENT, CRM, "bob"])
    assert all(i == request_key(r.actor, r.method, r.request_id) for i, r in request_records(app))


def test_two_callers_with_one_request_id_in_one_batch(app) -> None:
    answers = run_as(app, (spend(10), AGENT), (spend(20), CRM), (spend(10), AGENT), (spend(30), CRM))
    assert answers[0] == answers[2]
    assert answers[1][0].action_id != answers[0][0].action_id
    assert isinstance(answers[3], AlreadyExists) and answers[3].metadata["original_method"] == RecordAction.method
    assert answers[1][1].spent == usd(30) and len(recorded(app)) == 2


def test_one_request_across_restarts_and_replicas(app_factory, app) -> None:
    agents = app.execute(spend(10), actor=AGENT)
    crms = app.execute(spend(20), actor=CRM)
    replica = app_factory()
    assert replica.execute(spend(20), actor=CRM) == crms
    assert replica.execute(spend(10), actor=AGENT) == agents
    # A replica that has never seen the request decides it again in a batch: its save fails on the record's unique
    # key, and the batch, decided again, finds the record. One record, one action.
    original = app.execute(spend(5, request_id="race"), actor=CRM)
    third = app_factory()
    answers = run_as(third, (spend(1, request_id="x"), CRM), (spend(5, request_id="race"), CRM), (spend(2, request_id="y"), CRM))
    assert answers[1] == original and answers[2][1].spent == usd(38)
    keys = Counter(i for i, _ in request_records(third))
    assert keys[request_key(CRM, RecordAction.method, "race")] == 1
    assert Counter(e.request_id for e in recorded(third))["race"] == 1


def test_expiry_is_one_request_on_every_replica(app_factory, clock) -> None:
    first, second = app_factory(), app_factory()
    first.execute(open_cmd("bob", policy=make_policy(100, limit=10, approvers=("boss",))))
    hold, _ = first.execute(action_cmd("bob", 50), actor=CRM)
    clock.advance(timedelta(days=2))
    assert first.expire_due() == 1
    # Another replica's expiry task, a moment later: the same request (the same key), answered from its record.
    again = second.execute(ExpireAction(request_id=f"expire:{hold.action_id}", action_id=hold.action_id))
    assert again[0].action_id == hold.action_id and again[0].state == "EXPIRED"
    records = [r for _, r in request_records(second) if r.request_id == f"expire:{hold.action_id}"]
    assert len(records) == 1 and records[0].actor == ""
    assert len([e for e in second.events.get(budget_id_for("bob")) if isinstance(e, Budget.ActionExpired)]) == 1


# ---------------------------------------------------------------------------- legacy records


def test_legacy_records_answer_their_own_callers_retries_only(app_factory, app) -> None:
    original = write_legacy(app, spend(10), CRM)
    anonymous = write_legacy(app, spend(7, request_id="old-anonymous"), "")  # saved before callers were recorded
    app.close()
    restarted = app_factory()  # the index of legacy records is built from the log
    before = len(recorded(restarted))

    # The same caller's retry: the stored answer, nothing recorded.
    assert restarted.execute(spend(10), actor=CRM) == original
    assert len(recorded(restarted)) == before
    # The same caller, other content: a reuse, naming its own method.
    with pytest.raises(AlreadyExists) as info:
        restarted.execute(spend(11), actor=CRM)
    assert info.value.metadata == {"request_id": RID, "original_method": RecordAction.method}
    # Another caller, with the same content or not: a new request, told nothing.
    mine = restarted.execute(spend(10), actor=AGENT)
    assert mine[0].action_id != original[0].action_id
    other = restarted.execute(spend(3), actor="bob")
    assert other[0].action_id != original[0].action_id
    assert len(recorded(restarted)) == before + 2
    # The same caller on another method: a new request.
    reversal = restarted.execute(
        ReverseAction(request_id=RID, action_id=original[0].action_id, reason="twice", actor_id="boss"), actor=CRM
    )
    assert reversal.action.action_id == original[0].action_id and reversal.action.reversal.request_id == RID

    # A record without an actor answers the unauthenticated caller (and the expiry task), no one authenticated.
    assert restarted.execute(spend(7, request_id="old-anonymous"), actor=ANONYMOUS.id) == anonymous
    assert restarted.execute(spend(7, request_id="old-anonymous")) == anonymous
    fresh = restarted.execute(spend(7, request_id="old-anonymous"), actor=CRM)
    assert fresh[0].action_id != anonymous[0].action_id
    with pytest.raises(AlreadyExists):
        restarted.execute(spend(8, request_id="old-anonymous"), actor=ANONYMOUS.id)
    restarted.execute(spend(8, request_id="old-anonymous"), actor=AGENT)  # not blocked

    # Both kinds of record exist; the index holds the legacy ones only.
    kinds = Counter(i.version for i, _ in request_records(restarted))
    assert kinds[LEGACY_ID_VERSION] == 2 and kinds[SCOPED_ID_VERSION] > 2
    assert restarted.writer.memory.legacy.count == 2


def test_a_legacy_record_is_replayed_in_a_batch_and_through_the_writer_thread(app_factory, app) -> None:
    original = write_legacy(app, spend(10), CRM)
    app.close()
    restarted = app_factory()
    answers = run_as(restarted, (spend(1, request_id="a"), CRM), (spend(10), CRM), (spend(10), AGENT), (spend(10), CRM))
    assert answers[1] == original == answers[3]
    assert answers[2][0].action_id != original[0].action_id
    assert restarted.execute(spend(10), actor=CRM) == original
    # Two actions: the CRM's (recorded once, before the change) and the agent's.
    ids = [e.request_id for e in recorded(restarted)]
    assert len(ids) == 3 and ids[0].startswith("seed-") and ids[1:] == ["a", RID]


def test_a_legacy_record_stored_by_an_old_replica_while_running_is_found(app_factory, app) -> None:
    """A rolling upgrade: an old replica still saves legacy records after this one started and indexed the log."""
    for n in range(3):
        app.execute(spend(1, request_id=f"warm-{n}"), actor=CRM)
    old_replica = app_factory()
    original = write_legacy(old_replica, spend(10, request_id="during-upgrade"), CRM)
    # Then this replica carries on alone for a while (on PostgreSQL it is back on its fast path).
    for n in range(3):
        app.execute(spend(1, request_id=f"after-{n}"), actor=CRM)
    before = len(recorded(app))
    assert app.execute(spend(10, request_id="during-upgrade"), actor=CRM) == original
    assert run_as(app, (spend(10, request_id="during-upgrade"), CRM))[0] == original
    assert len(recorded(app)) == before
    mine = app.execute(spend(10, request_id="during-upgrade"), actor=AGENT)
    assert mine[0].action_id != original[0].action_id
    assert app.writer.memory.legacy.count == 1  # indexed from what the old replica stored since


@pytest.mark.postgres
def test_on_the_fast_path_a_legacy_retry_is_read_ahead(app_factory, app) -> None:
    if app.bulk_reads is None:
        pytest.skip("PostgreSQL's read-ahead")
    original = write_legacy(app, spend(10), CRM)
    app.close()
    restarted = app_factory()
    for n in range(3):
        restarted.execute(spend(1, request_id=f"warm-{n}"), actor=CRM)
    skipped = restarted.writer.read_aheads_skipped
    assert restarted.execute(spend(1, request_id="new"), actor=CRM)[1].spent.amount > 0
    assert restarted.writer.read_aheads_skipped == skipped + 1  # the index covers the log: no legacy record
    assert restarted.execute(spend(10), actor=CRM) == original
    assert restarted.writer.read_aheads_skipped == skipped + 1  # its legacy id is in the index: read ahead
    assert restarted.execute(spend(1, request_id="newer"), actor=CRM)
    assert restarted.writer.read_aheads_skipped == skipped + 2
