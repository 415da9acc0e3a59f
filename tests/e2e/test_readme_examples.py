"""The README's Python examples run as written against a real server (only the address is changed)."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

from leeway.v1 import action_pb2
from leeway_client import LeewayClient, from_money

README = Path(__file__).resolve().parents[2] / "README.md"


def python_block(heading: str) -> str:
    section = README.read_text().split(heading, 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, f"README lost the Python example under {heading!r}"
    return block.group(1)


def run(code: str, target: str) -> dict:
    assert "127.0.0.1:50051" in code
    namespace: dict = {}
    exec(compile(code.replace("127.0.0.1:50051", target), str(README), "exec"), namespace)  # noqa: S102
    return namespace


def test_worked_boundaries_example(make_server, tmp_path) -> None:
    server = make_server(f"sqlite:///{tmp_path}/readme.sqlite")
    server.start()
    namespace = run(python_block("### Worked example"), server.target)
    with LeewayClient(server.target) as leeway:
        ann = leeway.get_budget("ann")
        assert from_money(ann.spent) == Decimal("395")  # $45 flowers + the approved $350 refund
        assert from_money(ann.held) == 0 and from_money(ann.remaining) == Decimal("2605")
        approved = leeway.get_action(namespace["pending"].action_id)
        assert approved.state == action_pb2.Action.STATE_APPROVED
        assert approved.decision.approver_id == "duty-manager-1"
        assert list(approved.escalation_reasons) == ["PER_ACTION_LIMIT_EXCEEDED"]
        team = leeway.get_team("front-desk")
        assert from_money(team.spent) == Decimal("395") and from_money(team.cap.amount) == 20000
        guest = leeway.get_customer_usage("guest-42")
        assert from_money(guest.spent) == Decimal("395") and from_money(guest.remaining) == Decimal("2105")
