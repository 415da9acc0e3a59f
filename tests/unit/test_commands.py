"""Commands without a store: their shape checks, their fingerprints (stored in request records: they must never
change), their typed results in the dict shape stored since the first release, and decide/render against a write
set over an in-memory source (no I/O)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from builders import make_policy, usd
from leeway.application import commands as c
from leeway.application.idempotency import (
    LegacyRecords,
    RequestRecord,
    check_replay,
    fingerprint,
    legacy_answers,
    legacy_request_id,
    request_key,
)
from leeway.application.reader import BatchReader, NotInMemory
from leeway.application.unit_of_work import UnitOfWork, WriteSet
from leeway.domain.approvals import HoldBook
from leeway.domain.errors import AlreadyExists, NotFound
from leeway.domain.ids import budget_id_for, format_action_id
from leeway.domain.ledgers import CustomerLedger, OrgLimits, TeamLedger
from leeway.domain.money import Money
from leeway.domain.periods import PeriodKind
from leeway.domain.policy import ActionKind, BendableRule, Escalation, EscalationMode, Policy
from leeway.domain.tally import Cap

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
ACTION = "act_" + "0" * 32 + "_2"


# ---------------------------------------------------------------------------- fingerprints


def _fingerprint_policy() -> Policy:
    policy, problems = Policy.build(
        period_allowance=usd(500),
        period=PeriodKind.MONTH,
        per_action_limit=usd(100),
        allowed_kinds=[ActionKind.GIFT, ActionKind.RULE_BEND],
        per_customer_limit=usd("50.5"),
        bendable_rules=[BendableRule("LATE_CHECKOUT", "x", 2, usd(30))],
        escalation=Escalation(EscalationMode.APPROVAL, timedelta(hours=2), ("boss",), "sup"),
    )
    assert policy is not None and not problems
    return policy


#: Digests computed by the code before the issue-17 restructuring (468c048). A request record stores its
#: request's fingerprint: if one changes, every retry of a stored request is refused as REQUEST_ID_REUSED.
FINGERPRINTS = [
    (lambda p: c.OpenBudget("r1", "ann", "desk", "Ann", p), "169fea13b8c4a93750cef6acbf8be60e88f53af8986988543bb3a844e8621901"),
    (lambda p: c.UpdatePolicy("r2", "ann", p, 3), "73b03bc450fffcf00cfbdd0105c04c51a0d22aded9a77ec9578ae1a5cc8d9c8e"),
    (lambda p: c.CloseBudget("r3", "ann", "left"), "43252736b42d817fb1e6bb1d46abefc4640028c589ff0131ef99f41c72808e5a"),
    (
        lambda p: c.RecordAction("r4", "ann", "guest", "case", ActionKind.GIFT, usd("45.50"), "late",
                                 {"gift_type": "flowers"}, NOW),
        "6c354f9497eea407dd24202bfbb13db91d3611e6491d279cf79211766e4b090b",
    ),
    (
        lambda p: c.DecideAction("r5", ACTION, "boss", "ok", True, frozenset({"sup"})),
        "d0c250d08d59eb58905b04febdba65c9d205d0c36c2970f8b81b1b83ae1373f8",
    ),
    (lambda p: c.ExpireAction("r6", ACTION), "c721d5a761028c7b9a8153a95b3932e64103aec0f551a8ce5c781df06a92d0e1"),
    (lambda p: c.ReverseAction("r7", ACTION, "oops", "boss"), "987bb1eef49585b0a576ef0a5e91459dc1a02f8d385c8ab4551f6d2783fde51e"),
    (
        lambda p: c.SetTeamCap("r8", "desk", Cap(usd(1000), PeriodKind.WEEK)),
        "59f07fbd90b0ab58bd653188aa32a1e4d34f5bd9994589916e670a9ad29c0d84",
    ),
    (lambda p: c.SetCustomerCap("r9", None), "091b3d9e62379af14b72f4ce172d911aa462e2f5d02d45c243b8d5478e62ce98"),
    (
        lambda p: c.DocumentWin("r10", ACTION, "story", "quote", "kept"),
        "d70ec3693104be03427f8ae9e7b8d9fc459c647fee24c8521e68e49a855c17d5",
    ),
]


@pytest.mark.parametrize(("build", "digest"), FINGERPRINTS)
def test_fingerprints_never_change(build: Any, digest: str) -> None:
    assert fingerprint(build(_fingerprint_policy())) == digest


def test_a_fingerprint_tells_a_retry_from_a_reused_request_id() -> None:
    ask = c.CloseBudget("r", "ann", "left")
    record = RequestRecord(request_id="r", method=ask.method, fingerprint=fingerprint(ask), result={}, at=NOW)
    check_replay(record, fingerprint(ask))
    with pytest.raises(AlreadyExists) as refused:
        check_replay(record, fingerprint(c.CloseBudget("r", "ann", "another reason")))
    assert refused.value.reason == "REQUEST_ID_REUSED"
    assert refused.value.metadata == {"request_id": "r", "original_method": "leeway.v1.BudgetService/CloseBudget"}


def test_a_record_is_keyed_by_its_caller_method_and_request_id() -> None:
    record = RequestRecord(request_id="r", method="m", fingerprint="f", result={}, at=NOW, actor="crm")
    assert record.id == record.key == request_key("crm", "m", "r") != legacy_request_id("r")
    assert RequestRecord(request_id="r", method="m", fingerprint="f", result={}, at=NOW).id == request_key("", "m", "r")


#: (the legacy record's actor, its method, the caller, the caller's method) -> does the record answer the caller?
LEGACY_ANSWERS = [
    ("crm", "M", "crm", "M", True),
    ("crm", "M", "ann", "M", False),  # another caller: a new request
    ("crm", "M", "crm", "N", False),  # another method: a new request
    ("crm", "M", "anonymous", "M", False),
    ("crm", "M", "", "M", False),
    ("", "M", "anonymous", "M", True),  # saved before callers were recorded: the unauthenticated caller's
    ("", "M", "", "M", True),  # or the expiry task's
    ("", "M", "crm", "M", False),  # never an authenticated principal's
    ("", "M", "anonymous", "N", False),
]


@pytest.mark.parametrize(("owner", "method", "caller", "asked", "answers"), LEGACY_ANSWERS)
def test_whose_retries_a_legacy_record_answers(owner: str, method: str, caller: str, asked: str, answers: bool) -> None:
    record = RequestRecord(request_id="r", method=method, fingerprint="f", result={}, at=NOW, actor=owner)
    assert legacy_answers(record, caller, asked) is answers


def test_the_index_of_legacy_records() -> None:
    index = LegacyRecords()
    index.MERGE_AT = 3
    ids = [legacy_request_id(f"r{n}") for n in range(10)]
    index.add(ids[:2])
    index.add(ids[2:7])  # merged into the sorted array
    index.add(ids[:3])  # known already
    assert all(i in index for i in ids[:7]) and not any(i in index for i in ids[7:])
    assert index.count == 7 and request_key("", "m", "r1") not in index


# ---------------------------------------------------------------------------- results, as stored

BUDGET = UUID(int=7)

#: (result class, the dict a request record stores, as stored since the first release)
STORED = [
    (c.BudgetResult, {"budget_id": BUDGET.hex, "version": 3}),
    (c.RecordResult, {"budget_id": BUDGET.hex, "version": 4, "action_id": format_action_id(BUDGET, 4), "pending": True}),
    (c.ActionResult, {"budget_id": BUDGET.hex, "version": 5, "action_version": 4}),
    (c.ExpiryResult, {"budget_id": BUDGET.hex, "version": 5, "action_version": 4, "expired": True}),
    (c.ExpiryResult, {"budget_id": BUDGET.hex, "version": 5, "action_version": 4}),
    (c.ReversalResult, {"budget_id": BUDGET.hex, "version": 6, "action_version": 4, "restored": False}),
    (c.TeamCapResult, {"team_id": "desk", "version": 2, "at": "2026-01-02T03:04:05+00:00"}),
    (c.CustomerCapResult, {"cap": {"amount": {"amount": "100", "currency": "USD"}, "period": "MONTH"}}),
    (c.CustomerCapResult, {"cap": None}),
]


@pytest.mark.parametrize(("result_type", "stored"), STORED)
def test_results_read_and_write_the_stored_shape(result_type: Any, stored: dict[str, Any]) -> None:
    result = result_type.from_record(stored)
    assert result.to_record() == stored


def test_every_command_names_its_result_type() -> None:
    for command in (c.OpenBudget, c.UpdatePolicy, c.CloseBudget, c.RecordAction, c.DecideAction, c.ExpireAction,
                    c.ReverseAction, c.DocumentWin, c.SetTeamCap, c.SetCustomerCap):
        assert hasattr(command.result_type, "from_record"), command


# ---------------------------------------------------------------------------- shape checks

VALIDATION = [
    (c.CloseBudget("r", "ann", ""), ["reason"]),
    (c.CloseBudget(" r", "", "x"), ["request_id", "employee_id"]),
    (c.UpdatePolicy("r", "ann", None, -1), ["expected_version"]),
    (c.RecordAction("r", "ann", "guest", "", ActionKind.GIFT, None, "why", {"gift_type": "x"}), ["amount"]),
    (c.RecordAction("r", "ann", "guest", "", ActionKind.GIFT, usd(0), "why", {"gift_type": "x"}), ["amount"]),
    (c.RecordAction("r", "ann", "guest", "", ActionKind.RULE_BEND, usd(0), "why", {"rule_code": "LATE"}), []),
    (c.RecordAction("r", "ann", "guest", "", ActionKind.RULE_BEND, usd(1), "why", {}), ["rule_bend.rule_code"]),
    (c.RecordAction("r", "ann", "guest", "", ActionKind.REFUND, usd(1), "", {}), ["reason", "refund.order_id"]),
    (c.RecordAction("r", "ann", "guest", "", ActionKind.CREDIT, usd(1), "why", {"account_ref": "a"}), []),
    (c.DecideAction("r", "not-an-action", "boss", "", True), ["action_id"]),
    (c.DecideAction("r", ACTION, "", "", False), ["approver_id"]),
    (c.ExpireAction("r", ""), ["action_id"]),
    (c.ReverseAction("r", ACTION, "", "boss"), ["reason"]),
    (c.ReverseAction("r", ACTION, "", "no spaces"), ["reason", "actor_id"]),
    (c.DecideAction("bad\tid", "", "", "\x00", True), ["request_id", "action_id", "approver_id", "note"]),
    (c.DocumentWin("r", ACTION, "", "\x07", "x" * 201), ["story", "customer_quote", "outcome"]),
    (c.DocumentWin("r", ACTION, "", "", "x" * 201), ["story", "outcome"]),
    (c.SetTeamCap("r", "desk", Cap(Money(Decimal("-1"), "USD"), PeriodKind.MONTH)), ["cap.amount"]),
    (c.SetCustomerCap("r", None), []),
]


@pytest.mark.parametrize(("command", "fields"), VALIDATION)
def test_validate_names_every_bad_field(command: Any, fields: list[str]) -> None:
    assert [problem.field for problem in command.validate()] == fields


# ---------------------------------------------------------------------------- decide and render, in memory


class MemorySource:
    """An AggregateSource over a dict: what the writer's store would give a write set."""

    def __init__(self) -> None:
        self.aggregates: dict[UUID, Any] = {}
        self.events = self  # only ``get`` is used, for stored events of aggregates: there are none here

    def get(self, aggregate_id: UUID, **_: Any) -> list[Any]:
        return []

    def get_or_none(self, aggregate_id: UUID) -> Any:
        return self.aggregates.get(aggregate_id)

    load_for_write = get_or_none

    def forget_cached(self, aggregate_id: UUID) -> None:
        pass

    def request_record(self, record_id: UUID) -> Any:
        return None


def decide(writes: WriteSet, command: Any) -> tuple[Any, Any]:
    uow = UnitOfWork(writes, command.request_id, "crm")
    result = command.decide(uow, NOW)
    writes.checkpoint(uow.touched)
    return result, command.render(BatchReader(writes), result)


def test_record_action_counts_everywhere_and_renders_from_memory() -> None:
    writes = WriteSet(MemorySource())
    decide(writes, c.OpenBudget("o", "ann", "desk", "Ann", make_policy(500, limit=100)))
    result, (action, budget) = decide(
        writes, c.RecordAction("r", "ann", "guest", "", ActionKind.REFUND, usd(40), "late", {"order_id": "o-1"})
    )
    assert isinstance(result, c.RecordResult) and not result.pending
    assert result.budget_id == budget_id_for("ann") and result.version == budget.version == 2
    assert action.action_id == result.action_id and action.amount == usd(40) and budget.spent == usd(40)
    team = writes.loaded[TeamLedger.create_id("desk")]
    customer = writes.loaded[CustomerLedger.create_id("guest")]
    assert team is not None and customer is not None and customer.action_count == 1
    assert HoldBook.create_id(HoldBook.NAME) not in writes.loaded  # nothing waits for approval
    assert writes.loaded[OrgLimits.create_id(OrgLimits.NAME)] is None  # read, no customer cap set


def test_an_action_over_a_limit_waits_in_the_hold_book() -> None:
    writes = WriteSet(MemorySource())
    policy = make_policy(500, limit=100, approvers=("boss",))
    decide(writes, c.OpenBudget("o", "ann", "desk", "Ann", policy))
    result, (action, _) = decide(
        writes, c.RecordAction("r", "ann", "guest", "", ActionKind.REFUND, usd(140), "big", {"order_id": "o-1"})
    )
    assert result.pending and action.state == "PENDING_APPROVAL"
    book = writes.loaded[HoldBook.create_id(HoldBook.NAME)]
    assert book is not None and list(book.open) == [result.action_id]
    decided, response = decide(writes, c.DecideAction("d", result.action_id, "boss", "ok", True))
    assert isinstance(decided, c.ActionResult) and response.action.state == "APPROVED" and book.open == {}
    assert response.spent_in_current_period and "spent in the current period" in response.explanation


def test_a_missing_budget_is_not_found_before_anything_is_loaded() -> None:
    writes = WriteSet(MemorySource())
    with pytest.raises(NotFound) as missing:
        decide(writes, c.RecordAction("r", "nobody", "guest", "", ActionKind.GIFT, usd(1), "x", {"gift_type": "x"}))
    assert missing.value.reason == "BUDGET_NOT_FOUND"
    assert list(writes.loaded) == [budget_id_for("nobody")]


def test_the_batch_reader_answers_only_what_it_holds() -> None:
    writes = WriteSet(MemorySource())
    result, view = decide(writes, c.OpenBudget("o", "ann", "desk", "Ann", make_policy()))
    reader = BatchReader(writes)
    assert reader.budget_at(result.budget_id, 1) == view
    with pytest.raises(NotInMemory):
        reader.budget_at(result.budget_id, 2)  # not that version
    with pytest.raises(NotInMemory):
        reader.budget_at(budget_id_for("bob"), 1)  # not loaded
    with pytest.raises(NotInMemory):
        reader.get_team("desk", version=1, at=NOW)  # teams are read from the store
