"""Both Python clients (LeewayClient and leeway_client.aio.AsyncLeewayClient) against a real `leeway serve`
(SQLite) with authentication and a tight rate limit: every call of the API, the audit calls (StreamEvents with
follow, GetAuditTrail, VerifyIntegrity), and rate-limited bursts that succeed by waiting what RetryInfo says,
without recording anything twice."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from e2e.conftest import ServerProcess
from leeway.auth import hash_api_key, new_api_key

from leeway_client import (
    GiftDetails,
    LeewayClient,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    make_policy,
)
from leeway_client.aio import AsyncLeewayClient

ADMIN_KEY = new_api_key()
AUDITOR_KEY = new_api_key()
RATE = 4.0  # calls per second per principal
BURST = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess.on_sqlite(
        tmp_path_factory.mktemp("live-clients"),
        {
            "LEEWAY_AUTH": "required",
            "LEEWAY_API_KEYS": f"ops:admin+crm:{hash_api_key(ADMIN_KEY)},audit:auditor:{hash_api_key(AUDITOR_KEY)}",
            "LEEWAY_RATE_LIMIT_PER_SECOND": str(RATE),
            "LEEWAY_RATE_LIMIT_BURST": str(BURST),
            "LEEWAY_METRICS_ADDRESS": "off",
        },
    )
    with process.running():
        yield process


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_sync_client_covers_the_api_and_the_audit_calls(server: ServerProcess) -> None:
    ann, team = uid("ann"), uid("desk")
    # Generous retries: the tight rate limit makes this test wait, not fail.
    with LeewayClient(server.target, api_key=ADMIN_KEY, retries=20) as leeway:
        budget = leeway.open_budget(ann, team, make_policy(currency="EUR", period_allowance="100"), display_name="Ann")
        assert budget.employee_id == ann
        recorded = leeway.record_action(ann, "guest-1", "30", "EUR", GiftDetails(gift_type="flowers"), reason="late")
        action_id = recorded.action.action_id
        assert leeway.get_action(action_id).action_id == action_id
        assert [a.action_id for a in leeway.iter_actions(employee_id=ann)] == [action_id]
        assert leeway.document_win(action_id, "came back").win.story == "came back"
        trail = list(leeway.iter_audit_trail(employee_id=ann, page_size=1))
        assert len(trail) >= 3 and all(e.employee_id == ann for e in trail)
        report = leeway.verify_integrity(employee_id=ann)
        assert report.ok and report.events_checked >= 3
        events = list(leeway.stream_events(employee_id=ann))
        assert len(events) >= 3 and [e.position for e in events] == sorted(e.position for e in events)
        # Resuming after a position gives exactly the rest.
        rest = list(leeway.stream_events(employee_id=ann, after_position=events[0].position))
        assert [e.event_id for e in rest] == [e.event_id for e in events[1:]]
        # Following: the stream delivers a new event, then is closed by the caller.
        follow = leeway.stream_events(employee_id=ann, after_position=events[-1].position, follow=True, timeout=20)
        leeway.record_action(ann, "guest-2", "5", "EUR", GiftDetails(gift_type="card"), reason="sorry")
        first = next(follow)
        assert first.position > events[-1].position and first.employee_id == ann
        follow.close()
    with LeewayClient(server.target, api_key=AUDITOR_KEY, retries=20) as auditor:
        assert auditor.verify_integrity().ok
        with pytest.raises(PermissionDeniedError):
            auditor.record_action(ann, "guest-1", "1", "EUR", GiftDetails(gift_type="x"), reason="r")
    with LeewayClient(server.target, api_key="lwk_not-a-key", retries=0) as stranger:
        with pytest.raises(UnauthenticatedError) as info:
            stranger.get_budget(ann)
        assert info.value.reason


def test_async_client_covers_the_api_and_the_audit_calls(server: ServerProcess) -> None:
    async def run() -> None:
        ann, team = uid("ann"), uid("desk")
        async with AsyncLeewayClient(server.target, api_key=ADMIN_KEY, retries=20) as leeway:
            await leeway.open_budget(ann, team, make_policy(currency="EUR", period_allowance="100"))
            recorded = await leeway.record_action(
                ann, "guest-1", Decimal("12.50"), "EUR", GiftDetails(gift_type="flowers"), reason="late"
            )
            assert (await leeway.get_budget(ann)).remaining.units == 87
            assert [b.employee_id async for b in leeway.iter_budgets(team)] == [ann]
            assert [a.action_id async for a in leeway.iter_actions(employee_id=ann)] == [recorded.action.action_id]
            trail = [e async for e in leeway.iter_audit_trail(employee_id=ann)]
            assert len(trail) >= 2
            assert (await leeway.verify_integrity(employee_id=ann)).ok
            events = [e async for e in leeway.stream_events(employee_id=ann)]
            assert len(events) >= 2
            follow = leeway.stream_events(employee_id=ann, after_position=events[-1].position, follow=True, timeout=20)
            waiting = asyncio.ensure_future(follow.__anext__())
            await leeway.record_action(ann, "guest-2", "1", "EUR", GiftDetails(gift_type="card"), reason="sorry")
            fresh = await asyncio.wait_for(waiting, 15)
            assert fresh.position > events[-1].position
            await follow.aclose()
            kpis = await leeway.get_kpis(team_id=team)
            assert kpis is not None

    asyncio.run(run())


def test_both_clients_erase_and_export_personal_data(server: ServerProcess) -> None:
    """PrivacyService through the clients: an access request (export), then an erasure, retried with the same
    request id; the customer's text reads [erased] afterwards and the spend stays."""
    ann, team, guest = uid("ann"), uid("desk"), uid("guest")
    with LeewayClient(server.target, api_key=ADMIN_KEY, retries=20) as leeway:
        leeway.open_budget(ann, team, make_policy(currency="EUR", period_allowance="100"))
        action = leeway.record_action(ann, guest, "30", "EUR", GiftDetails(gift_type="flowers"), reason="Jane's anniversary").action

        async def access() -> str:
            async with AsyncLeewayClient(server.target, api_key=ADMIN_KEY, retries=20) as aio:
                return (await aio.export_customer_data(guest)).document

        assert "Jane's anniversary" in asyncio.run(access())
        first = leeway.erase_customer(guest, "GDPR art. 17, ticket 1", request_id=f"erase-{guest}")
        again = leeway.erase_customer(guest, "GDPR art. 17, ticket 1", request_id=f"erase-{guest}")
        assert first == again
        erased = leeway.get_action(action.action_id)
        assert erased.reason == "[erased]" and erased.customer_id.startswith("[erased")
        assert leeway.get_budget(ann).spent.units == 30
        with LeewayClient(server.target, api_key=AUDITOR_KEY, retries=0) as auditor:
            with pytest.raises(PermissionDeniedError):
                auditor.erase_customer(guest, "not mine to erase")
            with pytest.raises(PermissionDeniedError):  # admins only, like every PrivacyService call
                auditor.redact_legacy_data("not mine to redact", customer_id=guest)

        async def redact() -> int:
            async with AsyncLeewayClient(server.target, api_key=ADMIN_KEY, retries=20) as aio:
                redaction = await aio.redact_legacy_data("GDPR art. 17, ticket 1", customer_id=guest,
                                                         request_id=f"redact-{guest}")
                return int(redaction.redacted_event_count)

        assert asyncio.run(redact()) == 0  # a log written with encryption holds nothing of theirs in clear


def test_a_burst_over_the_rate_limit_succeeds_by_waiting_what_retry_info_says(server: ServerProcess) -> None:
    ann, team = uid("ann"), uid("desk")
    with LeewayClient(server.target, api_key=ADMIN_KEY, retries=30) as leeway:
        leeway.open_budget(ann, team, make_policy(currency="EUR", period_allowance="1000"))
    # Without retries the limit shows: RESOURCE_EXHAUSTED / RATE_LIMITED with the wait in RetryInfo.
    with LeewayClient(server.target, api_key=ADMIN_KEY, retries=0) as impatient:
        with pytest.raises(ResourceExhaustedError) as info:
            for _ in range(BURST + 5):
                impatient.get_budget(ann)
    assert info.value.reason == "RATE_LIMITED" and info.value.retry_delay is not None
    assert 0 < info.value.retry_delay <= 1 / RATE + 0.01
    time.sleep(BURST / RATE)  # the bucket refills

    calls = 12
    started = time.monotonic()

    async def burst() -> list[str]:
        async with AsyncLeewayClient(server.target, api_key=ADMIN_KEY, retries=30, backoff=0.001) as leeway:
            results = await asyncio.gather(
                *(
                    leeway.record_action(
                        ann, f"guest-{i}", "1", "EUR", GiftDetails(gift_type="card"), reason="burst",
                        request_id=f"burst-{ann}-{i}",
                    )
                    for i in range(calls)
                )
            )
            return [r.action.action_id for r in results]

    ids = asyncio.run(burst())
    elapsed = time.monotonic() - started
    assert len(set(ids)) == calls
    # The bucket lets BURST through at once and then RATE a second: the clients waited for the rest.
    assert elapsed >= (calls - BURST) / RATE * 0.8, elapsed
    with LeewayClient(server.target, api_key=ADMIN_KEY, retries=30) as leeway:
        budget = leeway.get_budget(ann)
        assert leeway.list_actions(employee_id=ann, page_size=100).actions.__len__() == calls
        # Each call recorded once: 12 x 1 EUR spent.
        assert budget.remaining.units == 1000 - calls
        # Sending one again with its request_id answers from the record, records nothing.
        again = leeway.record_action(
            ann, "guest-0", "1", "EUR", GiftDetails(gift_type="card"), reason="burst", request_id=f"burst-{ann}-0"
        )
        assert again.action.action_id in ids
        assert leeway.get_budget(ann).remaining.units == 1000 - calls


def test_the_client_and_its_example_scripts_are_mypy_strict_clean(tmp_path: Path) -> None:
    import subprocess
    import sys

    examples = Path(__file__).resolve().parents[2] / "clients" / "examples" / "python"
    scripts = sorted(str(p) for p in examples.glob("*.py"))
    assert len(scripts) >= 2, scripts
    for target in (scripts, ["-p", "leeway_client"]):  # the scripts, and the package itself
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), *target],
            cwd=tmp_path,  # as a user would: the installed client package, not the repository's source tree
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Success: no issues found" in result.stdout


def test_the_audit_example_verifies_then_follows(server: ServerProcess) -> None:
    import json
    import os
    import subprocess
    import sys

    ann = uid("ann")
    with LeewayClient(server.target, api_key=ADMIN_KEY, retries=20) as leeway:
        leeway.open_budget(ann, uid("desk"), make_policy(currency="EUR", period_allowance="10"))
        leeway.record_action(ann, "guest-1", "2", "EUR", GiftDetails(gift_type="card"), reason="r")
    script = Path(__file__).resolve().parents[2] / "clients" / "examples" / "python" / "audit_follow.py"
    env = {**os.environ, "LEEWAY_TARGET": server.target, "LEEWAY_API_KEY": AUDITOR_KEY}
    result = subprocess.run(
        [sys.executable, str(script), "--employee", ann, "--seconds", "2"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) >= 2 and {line["employee"] for line in lines} == {ann}
    assert [line["position"] for line in lines] == sorted(line["position"] for line in lines)
    assert "ok" in result.stderr
