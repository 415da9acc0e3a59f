"""Responses filled in place (``convert.budget_into`` / ``action_into``, the servicers' response builders) and the
policy converted once per Policy object must give exactly what the constructor-built messages gave before: the
same message and the same bytes on the wire, for every shape of budget and action view."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from leeway.grpc_api import convert, convert_policy, servicers
from leeway.grpc_api.convert import ACTION_STATE_TO_PROTO, BUDGET_STATE_TO_PROTO, ONEOF_OF_KIND
from leeway.grpc_api.convert_values import KIND_TO_PROTO, NANOS
from leeway.domain import views as v
from leeway.domain.money import Money
from leeway.domain.policy import ActionKind
from leeway.v1 import action_pb2, budget_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import money_pb2

from builders import DETAILS, make_policy, usd

# ---------------------------------------------------------------- the constructor-built conversions, as they were


def ref_money(value: Money) -> money_pb2.Money:
    units = int(value.amount)
    return money_pb2.Money(currency_code=value.currency, units=units, nanos=int((value.amount - units) * NANOS))


def ref_time(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def ref_budget(view: v.BudgetView) -> budget_pb2.Budget:
    message = budget_pb2.Budget(
        **{name: getattr(view, name) for name in (
            "employee_id", "team_id", "display_name", "policy_version", "version", "close_reason",
            "period_action_count",
        )},
        policy=convert.policy_to_proto(view.policy),
        period_start=ref_time(view.period_start), period_end=ref_time(view.period_end),
        allowance=ref_money(view.allowance), spent=ref_money(view.spent), remaining=ref_money(view.remaining),
        state=BUDGET_STATE_TO_PROTO[view.state],
        create_time=ref_time(view.create_time), update_time=ref_time(view.update_time),
    )  # fmt: skip
    if view.close_time is not None:
        message.close_time.CopyFrom(ref_time(view.close_time))
    if view.held is not None:
        message.held.CopyFrom(ref_money(view.held))
    if view.held_in_ended_periods is not None:
        message.held_in_ended_periods.CopyFrom(ref_money(view.held_in_ended_periods))
    message.pending_action_count = view.pending_action_count
    return message


def ref_action(view: v.ActionView) -> action_pb2.Action:
    message = action_pb2.Action(
        **{name: getattr(view, name) for name in (
            "action_id", "employee_id", "customer_id", "case_id", "reason", "policy_version", "team_id",
            "request_id", "budget_version", "recorded_by",
        )},
        kind=KIND_TO_PROTO[view.kind], amount=ref_money(view.amount), state=ACTION_STATE_TO_PROTO[view.state],
        occur_time=ref_time(view.occur_time), record_time=ref_time(view.record_time),
    )  # fmt: skip
    getattr(message, ONEOF_OF_KIND[view.kind]).SetInParent()
    for key, value in view.details.items():
        setattr(getattr(message, ONEOF_OF_KIND[view.kind]), key, value)
    message.escalation_reasons.extend(view.escalation_reasons)
    if view.expire_time is not None:
        message.expire_time.CopyFrom(ref_time(view.expire_time))
    message.approver_ids.extend(view.approver_ids)
    message.approver_role = view.approver_role
    if view.decision is not None:
        d = view.decision
        message.decision.CopyFrom(action_pb2.ActionDecision(
            outcome=ACTION_STATE_TO_PROTO[d.outcome], approver_id=d.approver_id, note=d.note,
            decide_time=ref_time(d.at), request_id=d.request_id,
        ))  # fmt: skip
    if view.win is not None:
        w = view.win
        message.win.CopyFrom(action_pb2.Win(
            story=w.story, customer_quote=w.customer_quote, outcome=w.outcome, documented_by=w.documented_by,
            document_time=ref_time(w.at),
        ))  # fmt: skip
    if view.reversal is not None:
        r = view.reversal
        message.reversal.CopyFrom(action_pb2.ActionReversal(
            actor_id=r.actor_id, reason=r.reason, reverse_time=ref_time(r.at),
            restored_to_current_period=r.restored_to_current_period, request_id=r.request_id,
        ))  # fmt: skip
    return message


# ---------------------------------------------------------------- views of every shape

T0 = datetime(2026, 12, 7, 18, 35, 1, 123456, tzinfo=timezone.utc)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def budget_view(**changes: Any) -> v.BudgetView:
    base = v.BudgetView(
        employee_id="ann", team_id="team-a", display_name="Ann", policy=make_policy(1000), policy_version=3,
        period_start=datetime(2026, 12, 1, tzinfo=timezone.utc), period_end=datetime(2027, 1, 1, tzinfo=timezone.utc),
        allowance=usd(1000), spent=usd("12.5"), remaining=usd("987.5"), version=7, state=v.OPEN, create_time=T0,
        update_time=T0 + timedelta(seconds=3), close_time=None, close_reason="", period_action_count=2,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def action_view(**changes: Any) -> v.ActionView:
    base = v.ActionView(
        action_id="act_00_2", employee_id="ann", team_id="team-a", customer_id="cust-1", case_id="case-9",
        kind=ActionKind.REFUND, amount=usd("12.5"), reason="late", details=dict(DETAILS[ActionKind.REFUND]),
        state=v.RECORDED, policy_version=3, occur_time=T0, record_time=T0, request_id="req-1", budget_version=2,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


DECISION = v.Decision(v.APPROVED, "mgr-1", "fine", T0 + timedelta(hours=1), "req-2")
REVERSAL = v.Reversal("sup-1", "mistake", T0 + timedelta(days=1), False, "req-3")
WIN = v.WinView("saved the account", "thanks!", "RETAINED", "ann", T0 + timedelta(days=2))

BUDGETS = [
    budget_view(),
    budget_view(held=usd(0), held_in_ended_periods=usd(0), pending_action_count=0),
    budget_view(held=usd("0.000000001"), held_in_ended_periods=usd("-3.25"), pending_action_count=4),
    budget_view(state=v.CLOSED, close_time=T0 + timedelta(days=1), close_reason="left"),
    budget_view(spent=usd(0), remaining=Money(Decimal("-0.5"), "EUR"), allowance=Money(Decimal(0), "EUR")),
    budget_view(create_time=EPOCH, update_time=EPOCH, period_start=EPOCH, display_name="", version=0),
    budget_view(policy=make_policy(50, limit=None, approvers=("mgr-1", "mgr-2"))),
    budget_view(display_name=None, close_reason=None),  # None: left unset, as a constructor leaves it
]
ACTIONS = [
    action_view(),
    *(action_view(kind=kind, details=dict(DETAILS[kind])) for kind in ActionKind),
    action_view(state=v.PENDING_APPROVAL, expire_time=T0 + timedelta(hours=1), approver_ids=("mgr-1",),
                approver_role="supervisor", escalation_reasons=("PER_ACTION_LIMIT", "PERIOD_ALLOWANCE")),
    action_view(state=v.APPROVED, decision=DECISION, win=WIN),
    action_view(state=v.DENIED, decision=dataclasses.replace(DECISION, outcome=v.DENIED, note="")),
    action_view(state=v.REVERSED, decision=DECISION, reversal=REVERSAL),
    action_view(amount=usd(0), case_id="", reason="", details={}, occur_time=EPOCH, budget_version=0),
    action_view(case_id=None, recorded_by=None),
]


def same(built: Any, reference: Any) -> None:
    assert built == reference
    assert built.SerializeToString(deterministic=True) == reference.SerializeToString(deterministic=True)
    assert built.SerializeToString() == reference.SerializeToString()


@pytest.mark.parametrize("view", BUDGETS)
def test_budget_into_gives_the_constructor_built_budget(view: v.BudgetView) -> None:
    same(convert.budget_to_proto(view), ref_budget(view))
    same(convert.budget_to_proto(view), ref_budget(view))  # the policy now from the cache


@pytest.mark.parametrize("view", ACTIONS)
def test_action_into_gives_the_constructor_built_action(view: v.ActionView) -> None:
    same(convert.action_to_proto(view), ref_action(view))


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("budget", BUDGETS[:4])
def test_responses_filled_in_place_are_the_ones_built_before(action: v.ActionView, budget: v.BudgetView) -> None:
    same(
        servicers._action_response(action_pb2.RecordActionResponse)((action, budget)),
        action_pb2.RecordActionResponse(action=ref_action(action), budget=ref_budget(budget)),
    )
    same(servicers._budget_response(budget_pb2.OpenBudgetResponse)(budget), budget_pb2.OpenBudgetResponse(budget=ref_budget(budget)))
    result = SimpleNamespace(action=action, budget=budget, restored_to_current_period=True, explanation="why")
    same(
        servicers._decided_response(action_pb2.ReverseActionResponse, "restored_to_current_period", "explanation")(result),
        action_pb2.ReverseActionResponse(
            action=ref_action(action), budget=ref_budget(budget), restored_to_current_period=True, explanation="why"
        ),
    )
    same(
        servicers._decided_response(action_pb2.DenyActionResponse)(result),
        action_pb2.DenyActionResponse(action=ref_action(action), budget=ref_budget(budget)),
    )


@settings(max_examples=200, deadline=None)
@given(
    amount=st.decimals(min_value=Decimal("-1e12"), max_value=Decimal("1e12"), places=9, allow_nan=False),
    at=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(timezone.utc)),
)
def test_money_and_times_in_place_match_everywhere(amount: Decimal, at: datetime) -> None:
    view = budget_view(spent=usd(amount), remaining=usd(-amount), held=usd(amount), update_time=at, close_time=at)
    same(convert.budget_to_proto(view), ref_budget(view))
    action = action_view(amount=Money(amount, "EUR"), occur_time=at, expire_time=at)
    same(convert.action_to_proto(action), ref_action(action))


def test_the_policy_cache_answers_only_for_the_same_policy_object() -> None:
    policy, other = make_policy(1000), make_policy(5)
    # An entry under this policy's id that belongs to another object (an id reused after garbage collection).
    convert_policy._CONVERTED[id(policy)] = (other, convert.policy_to_proto(other))
    try:
        same(convert.budget_to_proto(budget_view(policy=policy)), ref_budget(budget_view(policy=policy)))
    finally:
        convert_policy._CONVERTED.pop(id(policy), None)


def test_a_response_changed_after_it_was_built_does_not_change_the_next_one() -> None:
    view = budget_view(policy=make_policy(1000))
    first = convert.budget_to_proto(view)
    first.policy.period_allowance.units = 1  # a caller changing its response (the cached policy must not move)
    first.policy.ClearField("allowed_kinds")
    same(convert.budget_to_proto(view), ref_budget(view))


def test_the_policy_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_policy, "_CONVERTED_MAX", 5)
    monkeypatch.setattr(convert_policy, "_CONVERTED", {})
    for allowance in range(1, 30):
        view = budget_view(policy=make_policy(allowance))
        same(convert.budget_to_proto(view), ref_budget(view))
        assert len(convert_policy._CONVERTED) <= 5
