"""Calls a running Leeway container through its published ports (used by scripts/container-test.sh).

    container_smoke.py record HOST:PORT METRICS_URL STATE_FILE   opens a budget, records and reads an action
    container_smoke.py check  HOST:PORT METRICS_URL STATE_FILE   the action recorded before is still there

With LEEWAY_SMOKE_HTTP_URL (the published HTTP/JSON port), ``record`` also reads the action with one plain JSON
POST (the Connect protocol, as a CRM's HTTP callout would).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path

from leeway_client import GiftDetails, LeewayClient, LeewayError, from_money, make_policy


def metric(url: str, prefix: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(prefix))


def http_json(base: str, procedure: str, body: dict[str, str], api_key: str) -> dict[str, object]:
    """One POST of JSON to the HTTP/JSON (Connect) front, as any HTTP client would send it."""
    request = urllib.request.Request(
        f"{base}/{procedure}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"ApiKey {api_key}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200 and reply.headers["content-type"] == "application/json"
        return json.loads(reply.read())


def main(mode: str, target: str, metrics_url: str, state_file: str) -> None:
    state = Path(state_file)
    with LeewayClient(target, timeout=10, api_key=os.environ["LEEWAY_SMOKE_API_KEY"]) as leeway:
        if mode == "record":
            employee = f"container-{uuid.uuid4().hex[:8]}"
            leeway.open_budget(employee, "ops", make_policy(currency="EUR", period_allowance=100))
            recorded = leeway.record_action(
                employee, "guest-1", Decimal("12.50"), "EUR", GiftDetails(gift_type="flowers"), reason="container test"
            )
            action = leeway.get_action(recorded.action.action_id)
            assert action == recorded.action and from_money(action.amount) == Decimal("12.50")
            assert action.recorded_by == "container-ci"  # the authenticated principal, not the employee
            try:
                LeewayClient(target, timeout=5, retries=0).get_budget(employee)
            except LeewayError as refused:
                assert refused.code.name == "UNAUTHENTICATED", refused
            else:
                raise AssertionError("a call without credentials was answered")
            http = os.environ.get("LEEWAY_SMOKE_HTTP_URL")
            if http:
                answer = http_json(http, "leeway.v1.ActionService/GetAction", {"actionId": action.action_id},
                                   os.environ["LEEWAY_SMOKE_API_KEY"])  # fmt: skip
                assert answer["action"]["amount"] == {"currencyCode": "EUR", "units": "12", "nanos": 500000000}, answer
                print(f"read {action.action_id} with a JSON POST through the HTTP port")
            state.write_text(f"{employee} {action.action_id}\n")
            recorded_total = metric(metrics_url, 'leeway_actions_total{kind="GIFT",outcome="recorded"}')
            assert recorded_total == 1, recorded_total
            print(f"recorded {action.action_id} for {employee}; /metrics counted it")
        else:
            employee, action_id = state.read_text().split()
            action = leeway.get_action(action_id)
            assert from_money(action.amount) == Decimal("12.50")
            assert from_money(leeway.get_budget(employee).spent) == Decimal("12.50")
            assert metric(metrics_url, "leeway_event_store_up") == 1
            print(f"after a restart {action_id} is still there")


if __name__ == "__main__":
    main(*sys.argv[1:])
