"""AuditService against a real server (SQLite and PostgreSQL): StreamEvents (with and without follow, resumed,
filtered, under 8 concurrent writers, across a shutdown) and VerifyIntegrity."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import grpc
from google.protobuf.json_format import MessageToDict
from leeway.v1 import audit_pb2, audit_pb2_grpc
from leeway_client import CreditDetails, GiftDetails, LeewayClient, RefundDetails

from builders import run_threads

from .helpers import expect_raw_error, policy

HEX64 = re.compile(r"[0-9a-f]{64}")
GENESIS = "0" * 64
WRITERS = 8
ACTIONS_PER_WRITER = 15


def stream(
    channel: grpc.Channel,
    after: int = 0,
    *,
    event_types: tuple[str, ...] = (),
    employee_id: str = "",
    take: int | None = None,
) -> list[audit_pb2.Event]:
    """A non-following StreamEvents call, read to its end (or only its first ``take`` events, then cancelled)."""
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    call = stub.StreamEvents(
        audit_pb2.StreamEventsRequest(after_position=after, event_types=list(event_types), employee_id=employee_id),
        timeout=60,
    )
    events: list[audit_pb2.Event] = []
    for response in call:
        events.append(response.event)
        if take is not None and len(events) == take:
            call.cancel()
            break
    return events


def last_position(channel: grpc.Channel) -> int:
    events = stream(channel)
    return events[-1].position if events else 0


def action_key(event: audit_pb2.Event) -> str:
    """The action id of a Budget.ActionRecorded event: act_<budget hex>_<version>."""
    return f"act_{UUID(event.aggregate_id).hex}_{event.aggregate_version}"


def budget_id_of(action_id: str) -> str:
    return str(UUID(hex=action_id.split("_")[1]))


def assert_strictly_increasing(events: list[audit_pb2.Event]) -> None:
    positions = [e.position for e in events]
    assert all(a < b for a, b in zip(positions, positions[1:])), positions


def assert_chains_link(events: list[audit_pb2.Event]) -> None:
    """Within a contiguous stretch of the log, each event links to the previous one of its aggregate."""
    last: dict[str, audit_pb2.Event] = {}
    for e in events:
        previous = last.get(e.aggregate_id)
        if e.aggregate_version == 1:
            assert e.prev_hash == GENESIS, e
        elif previous is not None:
            assert previous.aggregate_version == e.aggregate_version - 1, (previous, e)
            assert e.prev_hash == previous.hash, e
        last[e.aggregate_id] = e


# ============================================================================ without follow


def test_stream_returns_the_events_after_a_position(channel, client, uid):
    start = last_position(channel)
    emp, team, cust = uid("emp"), uid("team"), uid("cust")
    client.open_budget(emp, team, policy("500"), display_name="Zoë")
    responses = [
        client.record_action(emp, cust, "12.50", "EUR", RefundDetails(order_id="o-1"), reason="Café ☕ late"),
        client.record_action(emp, cust, "3", "EUR", GiftDetails(gift_type="flowers"), reason="birthday"),
        client.record_action(emp, cust, "0.99", "EUR", CreditDetails(account_ref="acc-1"), reason="goodwill"),
    ]
    action_ids = [r.action.action_id for r in responses]
    budget_id = budget_id_of(action_ids[0])

    events = stream(channel, start)
    assert events, "the writes above are in the log"
    assert_strictly_increasing(events)
    assert all(e.position > start for e in events)
    # Exactly what a read from the start shows after that position.
    assert stream(channel)[-len(events) :] == events
    assert [e for e in stream(channel) if e.position > start] == events

    mine = [e for e in events if e.aggregate_id == budget_id]
    assert [(e.event_type, e.aggregate_version) for e in mine] == [
        ("Budget.Opened", 1),
        ("Budget.ActionRecorded", 2),
        ("Budget.ActionRecorded", 3),
        ("Budget.ActionRecorded", 4),
    ]
    assert [action_key(e) for e in mine[1:]] == action_ids
    assert_chains_link(events)
    # Other aggregates' events (indexes, ledgers, request records) are in the log too, without an employee.
    others = [e for e in events if e.aggregate_id != budget_id]
    assert others and all(e.employee_id == "" for e in others)
    # Nothing after the end.
    assert stream(channel, events[-1].position) == []
    assert stream(channel, events[-1].position + 1000) == []


def test_event_fields(channel, client, uid):
    start = last_position(channel)
    emp, cust = uid("emp"), uid("cust")
    before = datetime.now(UTC)
    client.open_budget(emp, uid("team"), policy("500"))
    response = client.record_action(emp, cust, "12.50", "EUR", RefundDetails(order_id="o-7"), reason="naïve 🎁")
    mine = stream(channel, start, employee_id=emp)
    assert [e.event_type for e in mine] == ["Budget.Opened", "Budget.ActionRecorded"]
    opened, recorded = mine

    for e in mine:
        assert e.event_id == f"{e.aggregate_id}/{e.aggregate_version}"
        assert UUID(e.aggregate_id) == UUID(hex=response.action.action_id.split("_")[1])
        assert e.employee_id == emp
        assert HEX64.fullmatch(e.hash), e.hash
        assert HEX64.fullmatch(e.prev_hash), e.prev_hash
        assert e.HasField("record_time")
        when = e.record_time.ToDatetime(tzinfo=UTC)
        assert before - timedelta(minutes=1) <= when <= datetime.now(UTC) + timedelta(minutes=1)
    assert opened.aggregate_version == 1 and opened.prev_hash == GENESIS
    assert recorded.prev_hash == opened.hash
    assert recorded.hash != opened.hash
    assert action_key(recorded) == response.action.action_id

    payload = MessageToDict(recorded.payload)
    assert isinstance(payload["amount"], str), payload
    assert Decimal(payload["amount"]) == Decimal("12.50")
    assert payload["currency"] == "EUR"
    assert payload["customer_id"] == cust
    assert payload["employee_id"] == emp
    assert payload["reason"] == "naïve 🎁"
    assert payload["details"] == {"order_id": "o-7"}
    assert "__hash__" not in payload and "__prev__" not in payload
    opened_payload = MessageToDict(opened.payload)
    assert opened_payload["employee_id"] == emp
    assert isinstance(opened_payload["policy"]["period_allowance"]["amount"], str)


def filters_after(client, uid, actions: int) -> list[dict]:
    """Records ``actions`` refunds of a new employee; the filters a stream is then read under, whole and in parts:
    none, by event type, by that employee."""
    emp, cust = uid("emp"), uid("cust")
    client.open_budget(emp, uid("team"), policy("500"))
    for n in range(actions):
        client.record_action(emp, cust, f"{n + 1}", "EUR", RefundDetails(order_id=f"o-{n}"), reason="r")
    return [{}, {"event_types": ("Budget.ActionRecorded",)}, {"employee_id": emp}]


def test_resume_in_two_halves_gives_the_same_sequence(channel, client, uid):
    for filters in filters_after(client, uid, 5):
        whole = stream(channel, **filters)
        assert len(whole) >= 5
        for cut in (1, len(whole) // 2, len(whole) - 1):
            first = stream(channel, take=cut, **filters)
            assert first == whole[:cut]
            rest = stream(channel, first[-1].position, **filters)
            assert first + rest == whole, (filters, cut)


def test_stream_filters(channel, client, uid):
    start = last_position(channel)
    one, two, cust = uid("emp1"), uid("emp2"), uid("cust")
    team = uid("team")
    client.open_budget(one, team, policy("500"))
    client.open_budget(two, team, policy("500"))
    a1 = client.record_action(one, cust, "1", "EUR", RefundDetails(order_id="o-1"), reason="r").action.action_id
    b1 = client.record_action(two, cust, "2", "EUR", RefundDetails(order_id="o-2"), reason="r").action.action_id
    a2 = client.record_action(one, cust, "3", "EUR", GiftDetails(gift_type="tea"), reason="r").action.action_id
    everything = stream(channel, start)

    recorded = stream(channel, start, event_types=("Budget.ActionRecorded",))
    assert recorded == [e for e in everything if e.event_type == "Budget.ActionRecorded"]
    assert [action_key(e) for e in recorded] == [a1, b1, a2]

    two_types = stream(channel, start, event_types=("Budget.Opened", "TeamRoster.MemberAdded"))
    assert two_types == [e for e in everything if e.event_type in ("Budget.Opened", "TeamRoster.MemberAdded")]
    assert [e.event_type for e in two_types].count("Budget.Opened") == 2

    of_one = stream(channel, start, employee_id=one)
    assert of_one == [e for e in everything if e.aggregate_id == budget_id_of(a1)]
    assert [e.aggregate_version for e in of_one] == [1, 2, 3]
    assert all(e.employee_id == one for e in of_one)
    # From the beginning of the log, too: the employee's whole budget history.
    assert stream(channel, employee_id=one) == of_one

    both = stream(channel, start, employee_id=two, event_types=("Budget.ActionRecorded",))
    assert [action_key(e) for e in both] == [b1]
    assert stream(channel, employee_id=uid("nobody")) == []


def test_stream_argument_errors(channel):
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    expect_raw_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        lambda: list(stub.StreamEvents(audit_pb2.StreamEventsRequest(employee_id="bad id!"), timeout=10)),
    )
    expect_raw_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        lambda: list(stub.StreamEvents(audit_pb2.StreamEventsRequest(after_position=-1), timeout=10)),
    )
    # An unknown event type is refused by name, not answered with an empty stream that looks like a quiet log;
    # a following stream too.
    for follow in (False, True):
        request = audit_pb2.StreamEventsRequest(event_types=["Budget.ActionRecorded", "No.Such"], follow=follow)
        error = expect_raw_error(
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", lambda: list(stub.StreamEvents(request, timeout=10))
        )
        assert [field for field, _ in error.field_violations] == ["event_types[1]"]


def batched(
    channel: grpc.Channel, after: int = 0, *, batch: int, event_types: tuple[str, ...] = (), employee_id: str = ""
) -> list[audit_pb2.StreamEventsResponse]:
    """The messages of a non-following StreamEvents call with max_events_per_message = ``batch``."""
    request = audit_pb2.StreamEventsRequest(
        after_position=after, event_types=list(event_types), employee_id=employee_id, max_events_per_message=batch
    )
    return list(audit_pb2_grpc.AuditServiceStub(channel).StreamEvents(request, timeout=60))


def test_a_batched_stream_is_the_same_log_in_fewer_messages(channel, client, uid):
    for filters in filters_after(client, uid, 7):
        whole = stream(channel, **filters)
        assert len(whole) >= 7
        for batch in (2, 3, 500, 100_000):
            responses = batched(channel, batch=batch, **filters)
            # `event` is unset in a batched stream: every event is in `events`, in order, none twice.
            assert all(not r.HasField("event") and 1 <= len(r.events) <= min(batch, 500) for r in responses)
            assert [e for r in responses for e in r.events] == whole, (filters, batch)
            if batch < len(whole):
                assert len(responses) < len(whole)
            # Resuming from the last position of any message continues exactly where it stopped.
            cut = responses[len(responses) // 2].events[-1].position
            rest = batched(channel, cut, batch=batch, **filters)
            assert [e for e in whole if e.position <= cut] + [e for r in rest for e in r.events] == whole
        for batch in (0, 1):  # one event per message, in `event`, as before the field existed
            responses = batched(channel, batch=batch, **filters)
            assert all(r.HasField("event") and not r.events for r in responses)
            assert [r.event for r in responses] == whole
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    error = expect_raw_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        lambda: list(stub.StreamEvents(audit_pb2.StreamEventsRequest(max_events_per_message=-1), timeout=10)),
    )
    assert [field for field, _ in error.field_violations] == ["max_events_per_message"]


def test_a_batched_follower_gets_every_new_event_in_order(channel, client, uid):
    emp, cust = uid("emp"), uid("cust")
    client.open_budget(emp, uid("team"), policy("100000"))
    start = last_position(channel)
    follower = Follower(
        channel,
        audit_pb2.StreamEventsRequest(after_position=start, follow=True, max_events_per_message=50),
        lambda events: sum(e.event_type == "Budget.ActionRecorded" and e.employee_id == emp for e in events) >= 12,
    )
    follower.start()
    time.sleep(0.3)

    def write(n: int) -> None:
        for k in range(3):
            client.record_action(emp, cust, "1", "EUR", RefundDetails(order_id=f"o-{n}-{k}"), reason="r")

    run_threads(write, 4)
    assert follower.done.wait(30)
    follower.join(5)
    assert follower.error is None, follower.error
    got = follower.snapshot()
    assert_strictly_increasing(got)
    assert got == stream(channel, start)[: len(got)]  # no gap, no repeat: the log as it is


# ============================================================================ follow


class Follower(threading.Thread):
    """Follows the log from a position until ``want`` matching events arrived (or the stream ends)."""

    def __init__(self, channel: grpc.Channel, request: audit_pb2.StreamEventsRequest, want: Any) -> None:
        super().__init__(daemon=True)
        self.call = audit_pb2_grpc.AuditServiceStub(channel).StreamEvents(request, timeout=120)
        self.want = want
        self.events: list[audit_pb2.Event] = []
        self.error: BaseException | None = None
        self.ended = False
        self.done = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            for response in self.call:
                with self.lock:
                    # A batched stream (max_events_per_message > 1) carries its events in `events`.
                    self.events.extend(response.events) if len(response.events) else self.events.append(response.event)
                    enough = self.want(self.events)
                if enough:
                    self.done.set()
                    self.call.cancel()
                    return
            self.ended = True
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED or not self.done.is_set():
                self.error = error
        except BaseException as error:  # noqa: BLE001
            self.error = error
        finally:
            self.done.set()

    def snapshot(self) -> list[audit_pb2.Event]:
        with self.lock:
            return list(self.events)


def test_follow_delivers_concurrent_writes_in_order_without_gaps(server, channel, client, uid):
    team = uid("team")
    employees = [uid(f"emp{i}") for i in range(WRITERS)]
    for emp in employees:
        client.open_budget(emp, team, policy("100000"))
    budget_ids = {}
    start = last_position(channel)
    total = WRITERS * ACTIONS_PER_WRITER

    def recorded_of(events: list[audit_pb2.Event], ids: set[str]) -> list[audit_pb2.Event]:
        return [e for e in events if e.event_type == "Budget.ActionRecorded" and e.employee_id in ids]

    everyone = set(employees)
    follower = Follower(
        channel,
        audit_pb2.StreamEventsRequest(after_position=start, follow=True),
        lambda events: len(recorded_of(events, everyone)) >= total,
    )
    watched = employees[3]
    filtered = Follower(
        channel,
        audit_pb2.StreamEventsRequest(
            after_position=start, follow=True, employee_id=watched, event_types=["Budget.ActionRecorded"]
        ),
        lambda events: len(events) >= ACTIONS_PER_WRITER,
    )
    follower.start()
    filtered.start()
    time.sleep(0.5)  # both streams are following (nothing new yet)
    assert not follower.done.is_set() and not filtered.done.is_set()

    action_ids: dict[str, list[str]] = {emp: [] for emp in employees}
    errors: list[BaseException] = []
    barrier = threading.Barrier(WRITERS)

    def write(worker: int) -> None:
        emp = employees[worker]
        try:
            with LeewayClient(server.target, timeout=30) as own:
                barrier.wait()
                for n in range(ACTIONS_PER_WRITER):
                    response = own.record_action(
                        emp, f"cust-{worker}-{n % 3}", f"{n + 1}.25", "EUR", RefundDetails(order_id=f"o-{n}"),
                        reason="r", request_id=f"{emp}-{n}",
                    )
                    action_ids[emp].append(response.action.action_id)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    run_threads(write, WRITERS)
    assert errors == []
    expected = {a for ids in action_ids.values() for a in ids}
    assert len(expected) == total
    for emp in employees:
        budget_ids[emp] = budget_id_of(action_ids[emp][0])

    assert follower.done.wait(30), (
        f"the follow stream delivered {len(recorded_of(follower.snapshot(), everyone))} of {total} actions"
    )
    assert filtered.done.wait(30), f"the filtered follow stream delivered {len(filtered.snapshot())}"
    follower.join(10)
    filtered.join(10)
    assert follower.error is None, follower.error
    assert filtered.error is None, filtered.error

    followed = follower.snapshot()
    assert_strictly_increasing(followed)
    assert all(e.position > start for e in followed)
    assert len({e.position for e in followed}) == len(followed), "no repeats"
    delivered = [action_key(e) for e in recorded_of(followed, everyone)]
    assert len(delivered) == len(set(delivered)) == total
    assert set(delivered) == expected, "no missing action"
    # Each writer's actions arrive in the order they were recorded, as versions 2, 3, ... of its budget.
    for emp in employees:
        mine = [e for e in recorded_of(followed, {emp})]
        assert [action_key(e) for e in mine] == action_ids[emp]
        assert [e.aggregate_version for e in mine] == list(range(2, 2 + ACTIONS_PER_WRITER))
        assert all(e.aggregate_id == budget_ids[emp] for e in mine)
    assert_chains_link(followed)

    # Read again without follow: the same positions, the same events (the follower skipped nothing).
    again = stream(channel, start)
    assert again[: len(followed)] == followed
    assert [e.position for e in again[: len(followed)]] == [e.position for e in followed]

    watched_events = filtered.snapshot()
    assert [action_key(e) for e in watched_events] == action_ids[watched]
    assert watched_events == [e for e in followed if e.employee_id == watched and e.event_type == "Budget.ActionRecorded"]

    # The log these writers left behind verifies.
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    reply = stub.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(), timeout=60)
    assert reply.ok, reply.violations
    for emp in employees[:2]:
        mine = stub.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(employee_id=emp), timeout=60)
        assert mine.ok and mine.events_checked == 1 + ACTIONS_PER_WRITER


def test_follow_resumes_from_the_last_position(channel, client, uid):
    """After a disconnect, following again from the last position received continues without repeats."""
    emp, cust = uid("emp"), uid("cust")
    client.open_budget(emp, uid("team"), policy("500"))
    start = last_position(channel)
    request = lambda after: audit_pb2.StreamEventsRequest(
        after_position=after, follow=True, employee_id=emp, event_types=["Budget.ActionRecorded"]
    )
    first = Follower(channel, request(start), lambda events: len(events) >= 2)
    first.start()
    ids = [client.record_action(emp, cust, "1", "EUR", RefundDetails(order_id="o"), reason="r").action.action_id]
    ids.append(client.record_action(emp, cust, "2", "EUR", RefundDetails(order_id="o"), reason="r").action.action_id)
    assert first.done.wait(20)
    first.join(5)
    assert first.error is None, first.error
    got = first.snapshot()
    assert [action_key(e) for e in got] == ids
    # Disconnected; more happens meanwhile.
    ids.append(client.record_action(emp, cust, "3", "EUR", RefundDetails(order_id="o"), reason="r").action.action_id)
    second = Follower(channel, request(got[-1].position), lambda events: len(events) >= 2)
    second.start()
    ids.append(client.record_action(emp, cust, "4", "EUR", RefundDetails(order_id="o"), reason="r").action.action_id)
    assert second.done.wait(20)
    second.join(5)
    assert second.error is None, second.error
    assert [action_key(e) for e in got + second.snapshot()] == ids


# ============================================================================ VerifyIntegrity


def test_verify_integrity(channel, client, uid):
    emp, cust = uid("emp"), uid("cust")
    client.open_budget(emp, uid("team"), policy("500"))
    for n in range(3):
        client.record_action(emp, cust, f"{n + 1}", "EUR", RefundDetails(order_id=f"o-{n}"), reason="r")
    stub = audit_pb2_grpc.AuditServiceStub(channel)

    whole = stub.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(full=True), timeout=60)
    assert whole.ok
    assert list(whole.violations) == []
    assert whole.events_checked == len(stream(channel))
    assert not whole.HasField("verified_from")

    # Again: from the verified checkpoint the full verify stored, only what is new is read.
    again = stub.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(), timeout=60)
    assert again.ok and again.events_checked == 0
    assert again.verified_from == whole.head and again.head == whole.head
    client.record_action(emp, cust, "4", "EUR", RefundDetails(order_id="o-4"), reason="r")
    new = stream(channel, whole.head.position)
    later = stub.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(), timeout=60)
    assert later.ok and later.verified_from == whole.head and later.events_checked == len(new)
    assert later.head.position == new[-1].position
    assert later.head == stub.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(full=True), timeout=60).head

    mine = stub.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(employee_id=emp), timeout=60)
    assert mine.ok and list(mine.violations) == []
    assert mine.events_checked == client.get_budget(emp).version == 5

    expect_raw_error(
        grpc.StatusCode.NOT_FOUND,
        "BUDGET_NOT_FOUND",
        lambda: stub.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(employee_id=uid("nobody")), timeout=10),
    )
    expect_raw_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        lambda: stub.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(employee_id="bad id!"), timeout=10),
    )


# ============================================================================ shutdown


def test_following_stream_ends_cleanly_when_the_server_stops(make_server, database_url, uid):
    server = make_server(database_url)
    server.start()
    emp = uid("emp")
    with LeewayClient(server.target) as c:
        c.open_budget(emp, uid("team"), policy("500"))
        c.record_action(emp, uid("cust"), "5", "EUR", RefundDetails(order_id="o-1"), reason="r")
    with grpc.insecure_channel(server.target) as ch:
        existing = len(stream(ch))
        assert existing > 0
        follower = Follower(
            ch, audit_pb2.StreamEventsRequest(after_position=0, follow=True), lambda events: False
        )
        follower.start()
        deadline = time.monotonic() + 20
        while len(follower.snapshot()) < existing and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(follower.snapshot()) == existing
        time.sleep(0.5)  # now idle, following
        assert follower.is_alive()

        stopped_at = time.monotonic()
        server.stop_cleanly()  # SIGTERM with a follow stream open: exit code 0
        follower.join(10)
        assert not follower.is_alive(), "the follow stream did not end when the server stopped"
        assert time.monotonic() - stopped_at < 10
        assert follower.error is None, f"the follow stream ended with an error: {follower.error}"
        assert follower.ended
        assert follower.call.code() == grpc.StatusCode.OK
        assert len(follower.snapshot()) == existing
