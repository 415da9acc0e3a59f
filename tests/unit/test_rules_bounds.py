"""leeway.domain.rules, issue 19: split actions (``check_split_action``), the hold ceiling (``check_hold_ceiling``)
and approvers' authority (``check_approval_authority``), one table each, with what callers receive exactly; and
how the budget applies them (escalation, the approver's tally)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from builders import make_policy, money, reason, replay, usd, verdict
from leeway.domain.budget import Budget
from leeway.domain.errors import Breach, PreconditionFailed, PreconditionViolation
from leeway.domain.periods import PeriodKind
from leeway.domain.policy import ActionKind, SplitDetection
from leeway.domain.reasons import Reason
from leeway.domain.command_rules import Approver, check_approval_authority
from leeway.domain.rules import ActionRequest, check_hold_ceiling, check_split_action
from leeway.domain.views import ActionView, action_view

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=timezone.utc)  # a Friday in March
HOUR = timedelta(hours=1)
LATER = NOW + HOUR  # when the holds of an approval policy expire (builders.TIMEOUT)
APRIL = datetime(2025, 4, 1, 1, 0, tzinfo=timezone.utc)
END = "2025-04-01T00:00:00+00:00"


def refund(amount: str | int, *, case: str = "", customer: str = "cust-1") -> ActionRequest:
    return ActionRequest(customer, case, ActionKind.REFUND, usd(amount), "late delivery", {"order_id": "o-1"})


State = Callable[[], Budget]


def budget(*history: ActionRequest | str, approval: bool = False, **policy: object) -> State:
    """emp-1's budget (allowance 100, per action 50, make_policy overridden by ``policy``) after ``history``, each
    recorded at NOW; with ``approval`` over-limit actions wait for sup-1 until LATER. A history entry "approve" or
    "deny" decides the last action recorded, "reverse" reverses it."""

    def build() -> Budget:
        settings: dict[str, object] = {"approvers": ("sup-1",)} if approval else {}
        b = Budget.open(employee_id="emp-1", team_id="team-a", display_name="Ada",
                        policy=make_policy(**{**settings, **policy}), now=NOW)  # type: ignore[arg-type]
        for number, entry in enumerate(history):
            if isinstance(entry, ActionRequest):
                b.record_action(entry, request_id=f"r-{number}", now=NOW)
            elif entry == "reverse":
                b.reverse(last(b), actor_id="sup-1", reason="x", request_id=f"v-{number}", now=NOW)
            else:
                b.decide(entry == "approve", last(b), Approver("sup-1"), note="", request_id=f"d-{number}", now=NOW)
        return b

    return build


def last(b: Budget) -> ActionView:
    """The last action ``b`` recorded."""
    event = [e for e in b.pending_events if isinstance(e, Budget.ActionRecorded)][-1]
    return action_view(event, b.outcome(event.originator_version))


SPLIT = Reason.SPLIT_ACTION_LIMIT_EXCEEDED
WIDE = SplitDetection(timedelta(hours=48))
BY_CUSTOMER = SplitDetection(same_customer=True)


# ============================================================================ split actions


@pytest.mark.parametrize(
    ("state", "action", "now", "expected"),
    [
        pytest.param(budget(), refund(50, case="k1"), NOW, None, id="the first of a case"),
        pytest.param(budget(refund(30, case="k1")), refund(20, case="k1"), NOW, None, id="at the limit together"),
        pytest.param(budget(refund(30, case="k1")), refund("20.01", case="k1"), NOW, SPLIT, id="a cent over together"),
        pytest.param(budget(refund(10, case="k1"), refund(10, case="k1"), refund(10, case="k1")), refund(21, case="k1"),
                     NOW, SPLIT, id="many small ones"),
        pytest.param(budget(refund(30, case="k1")), refund(30, case="k2"), NOW, None, id="another case"),
        pytest.param(budget(refund(30, case="k1")), refund(30), NOW, None, id="no case: unaffected"),
        pytest.param(budget(refund(30)), refund(30), NOW, None, id="neither names a case"),
        pytest.param(budget(refund(30, case="k1")), refund(30, case="k1"), NOW + 24 * HOUR, None,
                     id="24 hours later: outside the window"),
        pytest.param(budget(refund(30, case="k1")), refund(30, case="k1"), NOW + 24 * HOUR - timedelta(seconds=1),
                     SPLIT, id="a second inside the window"),
        pytest.param(budget(refund(30, case="k1"), split=WIDE), refund(30, case="k1"), NOW + 25 * HOUR, SPLIT,
                     id="a 48-hour window"),
        pytest.param(budget(refund(30, case="k1"), period=PeriodKind.DAY), refund(30, case="k1"), NOW + 13 * HOUR,
                     SPLIT, id="a new period does not reset it"),
        pytest.param(budget(refund(30, case="k1")), refund(60, case="k1"), NOW, None,
                     id="over the limit alone: the per-action check's"),
        pytest.param(budget(refund(30, case="k1"), limit=None), refund(90, case="k1"), NOW, None, id="no per-action limit"),
        pytest.param(budget(refund(50, case="k1")), ActionRequest("cust-1", "k1", ActionKind.RULE_BEND, usd(0), "r",
                                                                  {"rule_code": "LATE_FEE"}), NOW, None,
                     id="nothing asked"),
        pytest.param(budget(refund(60, case="k1"), approval=True), refund(10, case="k1"), NOW, SPLIT,
                     id="a waiting action counts"),
        pytest.param(budget(refund(60, case="k1"), approval=True), refund(10, case="k1"), LATER, None,
                     id="an expired hold does not"),
        pytest.param(budget(refund(60, case="k1"), "approve", approval=True), refund(10, case="k1"), LATER, SPLIT,
                     id="an approved action counts"),
        pytest.param(budget(refund(60, case="k1"), "deny", approval=True), refund(50, case="k1"), NOW, None,
                     id="a denied one does not"),
        pytest.param(budget(refund(40, case="k1"), "reverse"), refund(50, case="k1"), NOW, None,
                     id="a reversed one does not"),
        pytest.param(budget(refund(30, case="k1")), refund(30, case="k2"), NOW, None, id="same customer, not asked"),
        pytest.param(budget(refund(30, case="k1"), split=BY_CUSTOMER), refund(30, case="k2"), NOW, SPLIT,
                     id="same customer, asked"),
        pytest.param(budget(refund(30), split=BY_CUSTOMER), refund(30), NOW, SPLIT, id="same customer, no case"),
        pytest.param(budget(refund(30), split=BY_CUSTOMER), refund(30, customer="cust-2"), NOW, None,
                     id="another customer"),
    ],
)
def test_check_split_action(state: State, action: ActionRequest, now: datetime, expected: str | None) -> None:
    assert verdict(check_split_action, state, action, now) == expected


def test_a_split_is_refused_or_escalated_like_any_limit() -> None:
    b = budget(refund(60, case="k1"), approval=True)()  # waits for sup-1
    b.record_action(refund(20, case="k1"), request_id="r-2", now=NOW)
    assert last(b).state == "PENDING_APPROVAL"
    assert last(b).escalation_reasons == (SPLIT,)
    refusing = budget(refund(40, case="k1"))()
    with pytest.raises(PreconditionFailed) as info:
        refusing.record_action(refund(11, case="k1"), request_id="r-2", now=NOW)
    assert info.value.reason == SPLIT and info.value.metadata["exceeded"] == SPLIT


def test_only_the_longest_window_is_kept_and_customers_only_while_asked() -> None:
    b = budget(refund(10, case="k1"), refund(10, case="k2"), split=BY_CUSTOMER)()
    assert sorted(b.recent) == ["case:k1", "case:k2", "customer:cust-1"]
    b.record_action(refund(5, case="k3"), request_id="r-3", now=NOW + timedelta(days=7, seconds=1))
    assert sorted(b.recent) == ["case:k3", "customer:cust-1"]  # older than 7 days: forgotten
    b.update_policy(make_policy(), now=NOW + timedelta(days=8))
    assert sorted(b.recent) == ["case:k3"]  # no longer asked: the customers are forgotten
    assert replay(list(b.pending_events)).recent == b.recent


# ============================================================================ the hold ceiling

MAX_HELD = Reason.MAX_HELD_EXCEEDED


@pytest.mark.parametrize(
    ("state", "action", "now", "expected"),
    [
        pytest.param(budget(approval=True), refund(100), NOW, None, id="one allowance"),
        pytest.param(budget(approval=True), refund("100.01"), NOW, MAX_HELD, id="a cent over one allowance"),
        pytest.param(budget(refund(60), approval=True), refund(40), NOW, None, id="exactly what the ceiling leaves"),
        pytest.param(budget(refund(60), approval=True), refund(41), NOW, MAX_HELD, id="what waits, a dollar over"),
        pytest.param(budget(refund(60), approval=True, max_held=250), refund(190), NOW, None, id="a manager chose more"),
        pytest.param(budget(refund(60), approval=True, max_held=250), refund(191), NOW, MAX_HELD,
                     id="beyond what the manager chose"),
        pytest.param(budget(approval=True, max_held=10), refund(10), NOW, None, id="or less"),
        pytest.param(budget(approval=True, max_held=10), refund(11), NOW, MAX_HELD, id="over less"),
        pytest.param(budget(refund(60), approval=True), refund(41), LATER, None, id="an expired hold does not count"),
        pytest.param(budget(refund(60), approval=True, timeout=timedelta(days=30)), refund(41), APRIL, MAX_HELD,
                     id="a hold of the last period still waits"),
        pytest.param(budget(refund(60), "approve", refund(40), refund(100), approval=True), refund(1), NOW, MAX_HELD,
                     id="what waits, after approvals"),
        pytest.param(budget(refund(60), "approve", refund(40), refund(100), "approve", approval=True), refund(1), NOW,
                     MAX_HELD, id="nothing waits, but spent past allowance + max_held"),
        pytest.param(budget(refund(60), "approve", refund(40), refund(99), "approve", approval=True), refund(1), NOW,
                     None, id="spent up to allowance + max_held"),
        pytest.param(budget(refund(60), "approve", refund(40), refund(100), "approve", approval=True), refund(1), APRIL,
                     None, id="the next period starts afresh"),
        pytest.param(budget(refund(50), refund(50), approval=True), refund(100), NOW, None,
                     id="spent in full, one allowance more may wait"),
    ],
)
def test_check_hold_ceiling(state: State, action: ActionRequest, now: datetime, expected: str | None) -> None:
    assert verdict(check_hold_ceiling, state, action, now) == expected


def test_beyond_the_ceiling_the_action_is_refused_with_the_limits_that_made_it_wait() -> None:
    b = budget(refund(60), approval=True)()
    before = (b.version, dict(b.holds))
    with pytest.raises(PreconditionFailed) as info:
        b.record_action(refund(41), request_id="r-x", now=NOW)
    refusal = info.value
    assert refusal.reason == MAX_HELD
    assert [v.type for v in refusal.violations] == ["MAX_HELD", "PERIOD_ALLOWANCE"]
    assert refusal.metadata["exceeded"] == "MAX_HELD_EXCEEDED,BUDGET_EXHAUSTED"
    assert (b.version, dict(b.holds)) == before
    b.record_action(refund(40), request_id="r-y", now=NOW)  # within every limit: no hold, no ceiling
    assert last(b).state == "RECORDED"


def test_the_ceiling_applies_only_to_what_would_wait() -> None:
    """Without escalation an over-limit action is refused for its limits, not the ceiling."""
    b = budget(max_held=10)()
    with pytest.raises(PreconditionFailed) as info:
        b.record_action(refund(60), request_id="r-x", now=NOW)
    assert info.value.reason == Reason.PER_ACTION_LIMIT_EXCEEDED


def test_spent_and_held_stay_within_twice_the_allowance_whatever_is_approved() -> None:
    """The reproduction of issue 19 in the domain: $7.33 at a time on a $100 budget in approval mode, every hold
    approved at once: a period never spends more than allowance + max_held."""
    b = budget(approval=True, limit=None)()
    refused = 0
    for number in range(100):
        try:
            b.record_action(refund("7.33"), request_id=f"r-{number}", now=NOW)
        except PreconditionFailed as error:
            assert error.reason == MAX_HELD
            refused += 1
            continue
        if last(b).state == "PENDING_APPROVAL":
            b.decide(True, last(b), Approver("sup-1"), note="", request_id=f"d-{number}", now=NOW)
        held, _ = b.held_in_period(NOW)
        assert b.spent + held <= Decimal(200)
    assert b.spent == Decimal("197.91")  # 13 recorded, 14 approved: the 28th would pass 200
    assert refused == 100 - 27


# ============================================================================ approvers' authority


def approver(*, per_action: int | None = None, per_period: int | None = None, currency: str = "USD",
             approved: tuple[int, ...] = (), closed: bool = False, period_now: datetime = NOW) -> Budget:
    """sup-1's own budget with approval limits, having approved ``approved`` (each counted at NOW)."""
    limits = None if per_action is None and per_period is None else (per_action, per_period)
    b = Budget.open(employee_id="sup-1", team_id="team-a", display_name="Sue", now=NOW,
                    policy=make_policy(1000, currency=currency, approval_limits=limits))
    for number, amount in enumerate(approved):
        b._approval_given(action_id=f"a-{number}", action_employee_id="emp-2", amount=Decimal(amount), currency=currency,
                          at=NOW)
    if closed:
        b.close("left", now=NOW)
    return b


def waiting(amount: str | int, currency: str = "USD") -> ActionView:
    return ActionView(
        action_id="act_1", employee_id="emp-1", team_id="team-a", customer_id="cust-1", case_id="",
        kind=ActionKind.REFUND, amount=money(amount, currency), reason="late", details={"order_id": "o-1"},
        state="PENDING_APPROVAL", policy_version=1, occur_time=NOW, record_time=NOW, request_id="r-1",
        budget_version=2, approver_ids=("sup-1",),
    )


APPROVAL_LIMIT = Reason.APPROVAL_LIMIT_EXCEEDED


@pytest.mark.parametrize(
    ("authority", "action", "now", "expected"),
    [
        pytest.param(lambda: None, waiting(10**6), NOW, None, id="no budget of their own: no limit"),
        pytest.param(lambda: approver(), waiting(10**6), NOW, None, id="no approval limits"),
        pytest.param(lambda: approver(per_action=500), waiting(500), NOW, None, id="per action, inclusive"),
        pytest.param(lambda: approver(per_action=500), waiting("500.01"), NOW, APPROVAL_LIMIT, id="per action, over"),
        pytest.param(lambda: approver(per_period=1000, approved=(600,)), waiting(400), NOW, None,
                     id="per period, exactly what remains"),
        pytest.param(lambda: approver(per_period=1000, approved=(600, 300)), waiting(101), NOW, APPROVAL_LIMIT,
                     id="per period, over"),
        pytest.param(lambda: approver(per_period=1000, approved=(600, 400)), waiting(1), APRIL, None,
                     id="per period: a new period of their own policy"),
        pytest.param(lambda: approver(per_action=0), waiting(1), NOW, APPROVAL_LIMIT, id="zero: approves nothing"),
        pytest.param(lambda: approver(per_action=0), waiting(1, "EUR"), NOW, APPROVAL_LIMIT, id="another currency"),
        pytest.param(lambda: approver(per_period=1000, currency="EUR"), waiting(1, "EUR"), NOW, None,
                     id="their own currency"),
        pytest.param(lambda: approver(per_action=500, closed=True), waiting(1), NOW, APPROVAL_LIMIT,
                     id="limits on a closed budget"),
        pytest.param(lambda: approver(closed=True), waiting(1), NOW, None, id="a closed budget without limits"),
    ],
)
def test_check_approval_authority(authority: Callable[[], Budget | None], action: ActionView, now: datetime,
                                  expected: str | None) -> None:
    refusal = check_approval_authority(authority(), action, now)
    assert (None if refusal is None else refusal.reason) == expected


def test_an_approval_beyond_authority_is_refused_exactly() -> None:
    refusal = check_approval_authority(approver(per_action=100, per_period=500, approved=(450,)), waiting(120), NOW)
    assert isinstance(refusal, PreconditionFailed)
    assert (refusal.message, refusal.reason, refusal.violations, refusal.metadata) == (
        "sup-1 may not approve this action: 120 USD is over their per-action approval limit of 100 USD; 120 USD and "
        "the 450 USD they approved this period are over their per-period approval limit of 500 USD (another of its "
        "approvers may)",
        "APPROVAL_LIMIT_EXCEEDED",
        [PreconditionViolation("APPROVAL_LIMITS", "budgets/sup-1", "approval_limits.per_action is 100 USD"),
         PreconditionViolation("APPROVAL_LIMITS", "budgets/sup-1",
                               f"approval_limits.per_period is 500 USD, approved 450 USD until {END}")],
        {"approver_id": "sup-1", "per_action": "100", "per_period": "500", "approved": "450", "requested": "120",
         "period_end": END},
    )


def test_an_approval_counts_on_the_approvers_budget_and_a_refused_one_changes_nothing() -> None:
    b = budget(refund(60), refund(70), approval=True, max_held=200)()
    first, second = [action_view(e, b.outcome(e.originator_version)) for e in b.pending_events
                      if isinstance(e, Budget.ActionRecorded)]
    sup = approver(per_period=100)
    b.decide(True, first, Approver("sup-1"), note="", request_id="d-1", now=NOW, authority=lambda: sup)
    assert isinstance(sup.pending_events[-1], Budget.ApprovalGiven)
    assert sup.approved_in_period(NOW) == Decimal(60) and sup.version == 2
    before = (b.version, sup.version)
    with pytest.raises(PreconditionFailed) as info:
        b.decide(True, second, Approver("sup-1"), note="", request_id="d-2", now=NOW, authority=lambda: sup)
    assert info.value.reason == APPROVAL_LIMIT
    assert (b.version, sup.version) == before
    b.decide(False, second, Approver("sup-1"), note="", request_id="d-3", now=NOW, authority=lambda: sup)  # a denial
    assert sup.version == 2 and b.outcome(second.budget_version)["decision"]["outcome"] == "DENIED"
    assert replay(list(sup.pending_events)).approved == sup.approved


def test_an_approver_without_limits_records_nothing_on_their_budget() -> None:
    b = budget(refund(60), approval=True)()
    sup = approver()
    b.decide(True, last(b), Approver("sup-1"), note="", request_id="d-1", now=NOW, authority=lambda: sup)
    assert sup.version == 1 and sup.approved == {}


# ============================================================================ what callers receive, exactly


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        pytest.param(
            lambda: check_split_action(budget(refund(30, case="k1"), refund(10, case="k1"))(), refund(20, case="k1"),
                                       NOW),
            Breach("SPLIT_ACTION_LIMIT_EXCEEDED",
                   "20 USD with 2 earlier action(s) on case k1 in the last 24 hours comes to 60 USD: a split of one "
                   "problem over the per-action limit of 50 USD",
                   PreconditionViolation("SPLIT_ACTION_LIMIT", "budgets/emp-1/cases/k1",
                                         "per_action_limit is 50 USD per case within 24 hours, asked 60 USD in all"),
                   {"employee_id": "emp-1", "case_id": "k1", "limit": "50", "earlier": "40", "earlier_count": "2",
                    "requested": "20", "window": "24 hours"}),
            id="SPLIT_ACTION_LIMIT_EXCEEDED",
        ),
        pytest.param(
            lambda: check_split_action(budget(refund(30), split=SplitDetection(timedelta(minutes=90), True))(),
                                       refund(30), NOW),
            Breach("SPLIT_ACTION_LIMIT_EXCEEDED",
                   "30 USD with 1 earlier action(s) on customer cust-1 in the last 90 minutes comes to 60 USD: a split "
                   "of one problem over the per-action limit of 50 USD",
                   PreconditionViolation("SPLIT_ACTION_LIMIT", "budgets/emp-1/customers/cust-1",
                                         "per_action_limit is 50 USD per customer within 90 minutes, asked 60 USD in all"),
                   {"employee_id": "emp-1", "customer_id": "cust-1", "limit": "50", "earlier": "30",
                    "earlier_count": "1", "requested": "30", "window": "90 minutes"}),
            id="SPLIT_ACTION_LIMIT_EXCEEDED by customer",
        ),
        pytest.param(
            lambda: check_hold_ceiling(budget(refund(20), refund(60), approval=True)(), refund(41), NOW),
            Breach("MAX_HELD_EXCEEDED",
                   "41 USD cannot wait for approval: 60 USD waits already and the period has spent 20 USD; at most "
                   "100 USD may wait (escalation.max_held), and at most 200 USD be spent and held in a period",
                   PreconditionViolation("MAX_HELD", "budgets/emp-1", f"max_held is 100 USD, room for 40 USD until {END}"),
                   {"employee_id": "emp-1", "max_held": "100", "held": "60", "spent": "20", "ceiling": "200",
                    "requested": "41"}),
            id="MAX_HELD_EXCEEDED",
        ),
    ],
)
def test_each_breach_is_exactly_what_callers_receive(check: Callable[[], Breach | None], expected: Breach) -> None:
    breach = check()
    assert breach == expected
    assert list(breach.metadata) == list(expected.metadata)  # the order, too


# ============================================================================ snapshots before and after issue 19


def _mapper():  # type: ignore[no-untyped-def]
    from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, Mapper, UUIDAsHex

    from leeway.adapters.transcodings import MoneyAsDict, PolicyAsDict

    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), PolicyAsDict(), MoneyAsDict()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


def test_a_snapshot_keeps_the_recent_actions_and_the_approvals() -> None:
    from eventsourcing.domain import Snapshot

    b = budget(refund(30, case="k1"), split=BY_CUSTOMER)()
    b._approval_given(action_id="a-1", action_employee_id="emp-2", amount=Decimal("12.5"), currency="USD", at=NOW)
    mapper = _mapper()
    restored = mapper.to_domain_event(mapper.to_stored_event(Snapshot.take(b))).mutate(None)
    assert (restored.recent, restored.approved) == (b.recent, b.approved)
    assert reason(check_split_action(restored, refund(30, case="k1"), NOW)) == SPLIT


def test_a_snapshot_taken_before_issue_19_is_upcast() -> None:
    """A version-1 snapshot has no ``recent`` nor ``approved``: they start empty, and the events after the snapshot
    are counted as they replay."""
    from eventsourcing.domain import Snapshot

    b = budget(refund(30, case="k1"))()
    mapper = _mapper()
    stored = mapper.to_stored_event(Snapshot.take(b))
    snapshot = mapper.to_domain_event(stored)
    old_state = {k: v for k, v in snapshot.state.items() if k not in ("recent", "approved", "class_version")}
    assert snapshot.state["class_version"] == 2
    old = Snapshot(originator_id=snapshot.originator_id, originator_version=snapshot.originator_version,
                   timestamp=snapshot.timestamp, topic=snapshot.topic, state=old_state)
    restored = old.mutate(None)
    assert (restored.recent, restored.approved) == ({}, {})
    assert reason(check_split_action(restored, refund(30, case="k1"), NOW)) is None  # what the snapshot forgot
    restored.record_action(refund(30, case="k1"), request_id="r-after", now=NOW)
    assert reason(check_split_action(restored, refund(30, case="k1"), NOW)) == SPLIT  # what came after it
