"""Protobuf <-> the domain's Policy (a budget's boundaries, escalation, split detection, approval limits)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from leeway.v1 import policy_pb2

from ..domain.errors import FieldViolation
from ..domain.money import Money
from ..domain.policy import (
    DEFAULT_APPROVAL_TIMEOUT, ActionKind, ApprovalLimits, BendableRule, Escalation, EscalationMode, Policy,
    SplitDetection,
)  # fmt: skip
from .convert_values import (
    KIND_FROM_PROTO, KIND_TO_PROTO, MAX_DURATION_SECONDS, MAX_NANOS, PERIOD_FROM_PROTO, PERIOD_TO_PROTO,
    money_from_proto, money_to_proto,
)  # fmt: skip

ESCALATION_FROM_PROTO = {
    policy_pb2.Escalation.MODE_UNSPECIFIED: EscalationMode.REFUSE,
    policy_pb2.Escalation.MODE_REFUSE: EscalationMode.REFUSE,
    policy_pb2.Escalation.MODE_APPROVAL: EscalationMode.APPROVAL,
}

# ---------------------------------------------------------------------------- policy


def _optional_money(message: Any, name: str, field: str, problems: list[FieldViolation]) -> Money | None:
    """An optional Money field of ``message`` (None if unset or malformed; malformed adds to ``problems``)."""
    if not message.HasField(name):
        return None
    value, bad = money_from_proto(getattr(message, name), f"{field}.{name}")
    problems += bad
    return value


def _duration(value: Duration, field: str, default: timedelta, problems: list[FieldViolation]) -> timedelta:
    """A Duration within what timedelta can hold (the bounds of each setting are checked by the domain)."""
    if not (0 <= value.seconds <= MAX_DURATION_SECONDS and 0 <= value.nanos <= MAX_NANOS):
        problems.append(FieldViolation(field, "is out of range"))
        return default
    return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def policy_from_proto(request: object, field: str = "policy") -> tuple[Policy | None, tuple[FieldViolation, ...]]:
    """The ``policy`` field of a request -> Policy, or every problem with it."""
    if not request.HasField(field):  # type: ignore[attr-defined]
        return None, (FieldViolation(field, "is required"),)
    value: policy_pb2.Policy = getattr(request, field)
    problems: list[FieldViolation] = []
    allowance = limit = None
    if value.HasField("period_allowance"):
        allowance, bad = money_from_proto(value.period_allowance, f"{field}.period_allowance")
        problems += bad
    else:
        problems.append(FieldViolation(f"{field}.period_allowance", "is required"))
    if value.HasField("per_action_limit"):
        limit, bad = money_from_proto(value.per_action_limit, f"{field}.per_action_limit")
        problems += bad
    per_customer = None
    if value.HasField("per_customer_limit"):
        per_customer, bad = money_from_proto(value.per_customer_limit, f"{field}.per_customer_limit")
        problems += bad
    rules: list[BendableRule] = []
    for index, rule in enumerate(value.bendable_rules):
        max_value = None
        if rule.HasField("max_value"):
            max_value, bad = money_from_proto(rule.max_value, f"{field}.bendable_rules[{index}].max_value")
            problems += bad
        rules.append(BendableRule(rule.rule_code, rule.description, rule.max_per_period, max_value))
    escalation = Escalation()
    if value.HasField("escalation"):
        raw = value.escalation
        mode = ESCALATION_FROM_PROTO.get(raw.mode)
        if mode is None:
            problems.append(FieldViolation(f"{field}.escalation.mode", f"unknown mode {raw.mode}"))
            mode = EscalationMode.REFUSE
        timeout = DEFAULT_APPROVAL_TIMEOUT
        if raw.HasField("approval_timeout"):
            duration = raw.approval_timeout
            if not (0 <= duration.seconds <= MAX_DURATION_SECONDS and 0 <= duration.nanos <= MAX_NANOS):
                problems.append(
                    FieldViolation(f"{field}.escalation.approval_timeout", "must be between 1 second and 30 days")
                )
            else:
                timeout = timedelta(seconds=duration.seconds, microseconds=duration.nanos // 1000)
        max_held = _optional_money(raw, "max_held", f"{field}.escalation", problems)
        escalation = Escalation(mode, timeout, tuple(raw.approver_ids), raw.approver_role, max_held)
    split = SplitDetection()
    if value.HasField("split_detection"):
        raw_split = value.split_detection
        window = split.window
        if raw_split.HasField("window"):
            window = _duration(raw_split.window, f"{field}.split_detection.window", window, problems)
        split = SplitDetection(window, raw_split.same_customer)
    approval_limits = ApprovalLimits()
    if value.HasField("approval_limits"):
        raw_limits, path = value.approval_limits, f"{field}.approval_limits"
        approval_limits = ApprovalLimits(
            _optional_money(raw_limits, "per_action", path, problems),
            _optional_money(raw_limits, "per_period", path, problems),
        )
    period = PERIOD_FROM_PROTO.get(value.period)
    if period is None and value.period != policy_pb2.PERIOD_UNSPECIFIED:
        problems.append(FieldViolation(f"{field}.period", f"unknown period value {value.period}"))
    kinds: list[ActionKind] = []
    for index, raw in enumerate(value.allowed_kinds):
        kind = KIND_FROM_PROTO.get(raw)
        if kind is None:
            problems.append(
                FieldViolation(f"{field}.allowed_kinds[{index}]", f"must be a known action kind, not {raw}")
            )
        else:
            kinds.append(kind)
    policy, more = Policy.build(
        period_allowance=allowance,
        period=period,
        per_action_limit=limit,
        allowed_kinds=kinds,
        per_customer_limit=per_customer,
        bendable_rules=rules,
        escalation=escalation,
        split_detection=split,
        approval_limits=approval_limits,
        field=field,
    )
    # A field already reported as malformed on the wire is not reported again as missing.
    reported = {p.field.split(".currency_code")[0].split(".nanos")[0] for p in problems}
    problems += [p for p in more if p.field not in reported]
    return (None if problems else policy), tuple(problems)


#: Policies already converted, by identity (a budget keeps its Policy object until the policy changes, and every
#: response carrying the budget converts it): id -> (the policy, kept alive so the id stays its own; its message).
_CONVERTED: dict[int, tuple[Policy, policy_pb2.Policy]] = {}
#: Emptied when it holds this many (a few hundred live policies at most in practice).
_CONVERTED_MAX = 4096


def policy_into(message: policy_pb2.Policy, policy: Policy) -> None:
    """``policy_to_proto(policy)`` copied into ``message`` (a field of a message being built), converted once per
    Policy object: Policy is frozen, and the cached message is only ever copied from, never handed out."""
    entry = _CONVERTED.get(id(policy))
    if entry is None or entry[0] is not policy:
        if len(_CONVERTED) >= _CONVERTED_MAX:
            _CONVERTED.clear()
        entry = _CONVERTED[id(policy)] = (policy, policy_to_proto(policy))
    message.CopyFrom(entry[1])


def policy_to_proto(policy: Policy) -> policy_pb2.Policy:
    message = policy_pb2.Policy(
        period_allowance=money_to_proto(policy.period_allowance),
        period=PERIOD_TO_PROTO[policy.period],
        allowed_kinds=[KIND_TO_PROTO[k] for k in policy.allowed_kinds],
    )
    if policy.per_action_limit is not None:
        message.per_action_limit.CopyFrom(money_to_proto(policy.per_action_limit))
    if policy.per_customer_limit is not None:
        message.per_customer_limit.CopyFrom(money_to_proto(policy.per_customer_limit))
    for rule in policy.bendable_rules:
        entry = message.bendable_rules.add(
            rule_code=rule.rule_code, description=rule.description, max_per_period=rule.max_per_period
        )
        if rule.max_value is not None:
            entry.max_value.CopyFrom(money_to_proto(rule.max_value))
    escalation = policy.escalation
    if escalation != Escalation():
        message.escalation.CopyFrom(
            policy_pb2.Escalation(
                mode=policy_pb2.Escalation.MODE_APPROVAL
                if escalation.mode is EscalationMode.APPROVAL
                else policy_pb2.Escalation.MODE_REFUSE,
                approval_timeout=Duration(seconds=int(escalation.approval_timeout.total_seconds())),
                approver_ids=list(escalation.approver_ids),
                approver_role=escalation.approver_role,
            )
        )
        if escalation.max_held is not None:
            message.escalation.max_held.CopyFrom(money_to_proto(escalation.max_held))
    if policy.split_detection != SplitDetection():
        message.split_detection.window.CopyFrom(
            Duration(seconds=int(policy.split_detection.window.total_seconds()))
        )
        message.split_detection.same_customer = policy.split_detection.same_customer
    limits = policy.approval_limits
    if limits.per_action is not None:
        message.approval_limits.per_action.CopyFrom(money_to_proto(limits.per_action))
    if limits.per_period is not None:
        message.approval_limits.per_period.CopyFrom(money_to_proto(limits.per_period))
    return message
