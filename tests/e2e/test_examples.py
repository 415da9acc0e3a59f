"""clients/examples/python/crm_gift.py against a real server (the smoke test of the Python CRM example)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from leeway_client import LeewayClient

from .helpers import policy

EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "examples" / "python" / "crm_gift.py"


def run(server, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**server.env(), "LEEWAY_TARGET": server.target, **env},
    )


def open_budget(server, uid, allowance: str, **kwargs) -> str:
    """Opens a budget for a new employee (ann-...) and returns their id."""
    ann = uid("ann")
    with LeewayClient(server.target) as leeway:
        leeway.open_budget(ann, uid("desk"), policy(allowance, **kwargs))
    return ann


def test_crm_example_sends_once_per_case_and_explains_refusals(server, uid) -> None:
    ann = open_budget(server, uid, "60", per_action_limit=50, allowed_kinds=["GIFT"])
    sent = run(server, "send", ann, uid("guest"), "case-1", "45")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout.startswith("Sent flowers (45 EUR); 15 EUR left: act_")
    again = run(server, "send", ann, uid("guest"), "case-1", "45")
    assert again.stdout == sent.stdout, "pressing the button twice sends one gift"
    refused = run(server, "send", ann, uid("guest"), "case-2", "45")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert refused.stdout.startswith("Not sent: Your goodwill budget for this period is used up.")
    assert refused.stdout.rstrip().endswith("[BUDGET_EXHAUSTED]")
    action_id = sent.stdout.rstrip().rsplit(" ", 1)[-1]
    won = run(server, "win", action_id, "The guest came back for their anniversary", "Best hotel ever")
    assert won.returncode == 0, won.stdout + won.stderr
    assert won.stdout == f"Win documented for {ann}: The guest came back for their anniversary\n"
    with LeewayClient(server.target) as leeway:
        assert leeway.get_action(action_id).win.customer_quote == "Best hotel ever"
    twice = run(server, "win", action_id, "again")
    assert twice.returncode == 3 and "[WIN_ALREADY_DOCUMENTED]" in twice.stdout


def test_crm_example_waits_for_approval_above_the_limit(server, uid) -> None:
    ann = open_budget(server, uid, "100", per_action_limit=20, escalate_to=["sam"])
    pending = run(server, "send", ann, uid("guest"), "case-9", "30")
    assert pending.returncode == 0, pending.stdout + pending.stderr
    assert pending.stdout.startswith("Waiting for approval by sam: act_")


def test_crm_example_usage(server) -> None:
    usage = run(server)
    assert usage.returncode == 2 and "send EMPLOYEE CUSTOMER CASE AMOUNT" in usage.stderr
    assert run(server, "send", "too", "few").returncode == 2
