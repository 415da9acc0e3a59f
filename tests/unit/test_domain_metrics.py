"""The committed commands' counters (``server._domain_metrics``): RecordAction counts into labelled children that
are looked up once per label set; every action still lands in its own kind, outcome and currency."""

from __future__ import annotations

from uuid import uuid4

from leeway.application.commands.base import RecordResult
from leeway.domain.policy import ActionKind
from leeway.observability import Metrics
from leeway.server import _domain_metrics

from builders import action_cmd, money


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_recorded_actions_are_counted_by_kind_outcome_and_currency() -> None:
    metrics = Metrics()
    observe = _domain_metrics(metrics)

    def record(kind: ActionKind, amount: str, currency: str, *, pending: bool) -> None:
        command = action_cmd("ann", money(amount, currency), kind=kind)
        observe(command, RecordResult(budget_id=uuid4(), version=2, action_id="act_x_2", pending=pending))

    for _ in range(3):
        record(ActionKind.GIFT, "2.5", "EUR", pending=False)
    record(ActionKind.GIFT, "10", "EUR", pending=True)
    record(ActionKind.GIFT, "4", "USD", pending=False)
    record(ActionKind.REFUND, "7", "EUR", pending=True)
    record(ActionKind.REFUND, "1", "EUR", pending=True)

    assert value(metrics, "leeway_actions_total", kind="GIFT", outcome="recorded") == 4
    assert value(metrics, "leeway_actions_total", kind="GIFT", outcome="pending_approval") == 1
    assert value(metrics, "leeway_actions_total", kind="REFUND", outcome="pending_approval") == 2
    assert value(metrics, "leeway_actions_total", kind="REFUND", outcome="recorded") == 0
    assert value(metrics, "leeway_action_amount_total", kind="GIFT", currency="EUR") == 17.5
    assert value(metrics, "leeway_action_amount_total", kind="GIFT", currency="USD") == 4
    assert value(metrics, "leeway_action_amount_total", kind="REFUND", currency="EUR") == 8


def test_two_servers_count_apart() -> None:
    """Each server's observer counts into its own metrics (the cache of children is per observer)."""
    first, second = Metrics(), Metrics()
    command = action_cmd("ann", 3, kind=ActionKind.GIFT)
    result = RecordResult(budget_id=uuid4(), version=2, action_id="act_x_2")
    _domain_metrics(first)(command, result)
    observe = _domain_metrics(second)
    observe(command, result)
    observe(command, result)
    assert value(first, "leeway_actions_total", kind="GIFT", outcome="recorded") == 1
    assert value(second, "leeway_actions_total", kind="GIFT", outcome="recorded") == 2
