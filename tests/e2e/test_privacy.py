"""PrivacyService through a real `leeway serve` (SQLite and PostgreSQL, with a master key file): after
EraseCustomer every RPC, StreamEvents, GetAuditTrail and ListWins show `[erased]`, the figures and KPIs do not
change, VerifyIntegrity is ok, `leeway export` holds no plain text and `leeway verify` passes on it; on SQLite no
database file holds the text any more. ExportCustomerData gives everything held about one customer as JSON."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from leeway.v1 import audit_pb2, audit_pb2_grpc, privacy_pb2, privacy_pb2_grpc
from leeway_client import GiftDetails, InvalidArgumentError, LeewayClient

from .conftest import ServerProcess
from .helpers import policy

SECRET = "Jane Doe +1-555-0100 jane@example.com"


@pytest.fixture(scope="module")
def private_server(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    keys = tmp_path_factory.mktemp("e2e-keys") / "master.key"
    keys.write_text(secrets.token_hex(32))
    keys.chmod(0o600)
    process = ServerProcess(
        engine_url, tmp_path_factory.mktemp("e2e-privacy"),
        {"LEEWAY_MASTER_KEY_FILE": str(keys), "LEEWAY_PROJECTIONS": "subprocess"},
    )
    with process.running():
        yield process


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leeway.cli", *args], env=server.env(), capture_output=True,
                          text=True, timeout=120)


def stream_text(channel: grpc.Channel) -> str:
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    return "\n".join(str(r) for r in stub.StreamEvents(audit_pb2.StreamEventsRequest(), timeout=30))


def test_erase_customer_everywhere(private_server: ServerProcess, uid: Any, tmp_path: Path) -> None:
    ann, customer, team = uid("ann"), uid("Jane"), uid("desk")
    with LeewayClient(private_server.target, timeout=15.0) as client, grpc.insecure_channel(
        private_server.target
    ) as channel:
        client.open_budget(ann, team, policy("100"))
        action = client.record_action(ann, customer, "20", "EUR", GiftDetails(gift_type="flowers", note=SECRET),
                                      reason=SECRET, case_id=uid("case")).action
        client.document_win(action.action_id, "kept " + SECRET, customer_quote=SECRET, outcome="stayed")
        assert any(SECRET in e.reason for e in client.iter_audit_trail(customer_id=customer))
        assert SECRET in stream_text(channel)
        if private_server.database_url.startswith("sqlite"):  # the read models held it in clear (not vacuous)
            assert holding_files(private_server, SECRET)
        budget_before = client.get_budget(ann)
        kpis_before = client.get_kpis(team_id=team)

        privacy = privacy_pb2_grpc.PrivacyServiceStub(channel)
        request = privacy_pb2.EraseCustomerRequest(request_id=uid("erase"), customer_id=customer.upper(),
                                                    reason="GDPR art. 17, ticket 4711")
        erased = privacy.EraseCustomer(request, timeout=60).erasure
        assert erased.subject == "customer" and len(erased.pseudonym) == 32
        assert privacy.EraseCustomer(request, timeout=60).erasure == erased  # idempotent

        view = client.get_action(action.action_id)
        assert view.customer_id == f"[erased:{erased.pseudonym}]" and view.case_id.startswith("[erased:")
        assert (view.reason, view.gift.note, view.win.story, view.win.customer_quote) == ("[erased]",) * 4
        listed = list(client.iter_actions(employee_id=ann))
        assert [a.reason for a in listed] == ["[erased]"]
        assert SECRET not in stream_text(channel)
        trail = list(client.iter_audit_trail(employee_id=ann))
        assert trail and not any(SECRET in e.reason or SECRET in e.summary or customer.lower() in e.summary
                                 for e in trail)
        wins = [w for w in client.iter_wins(team_id=team) if w.action_id == action.action_id]
        assert [(w.win.story, w.win.customer_quote, w.reason) for w in wins] == [("[erased]",) * 3]
        budget_after = client.get_budget(ann)
        assert (budget_after.spent, budget_after.remaining) == (budget_before.spent, budget_before.remaining)
        kpis_after = client.get_kpis(team_id=team)
        kpis_after.ClearField("position")  # the log grew by the erasure's record; nothing else may change
        kpis_before.ClearField("position")
        assert kpis_after == kpis_before
        verified = audit_pb2_grpc.AuditServiceStub(channel).VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
        assert verified.ok, verified.violations

        # The export taken after the erasure verifies, and holds no plain text (the ciphertext has no key).
        out = tmp_path / "log.jsonl"
        exported = cli(private_server, "export", "--output", str(out))
        assert exported.returncode == 0, exported.stderr
        text = out.read_text()
        assert SECRET not in text and customer.lower() not in text
        checked = cli(private_server, "verify", str(out))
        assert checked.returncode == 0, checked.stdout + checked.stderr

        # Article 15: everything held, as JSON (the erased action, as it now reads).
        page = privacy.ExportCustomerData(privacy_pb2.ExportCustomerDataRequest(customer_id=customer), timeout=30)
        document = json.loads(page.document)
        assert [a["action_id"] for a in document["actions"]] == [action.action_id]
        assert document["actions"][0]["reason"] == "[erased]" and document["erased"] is True

    if private_server.database_url.startswith("sqlite"):
        assert holding_files(private_server, SECRET) == [], "files still hold the erased text"


def holding_files(server: ServerProcess, text: str) -> list[str]:
    directory = Path(server.database_url[len("sqlite:///"):]).parent
    return [p.name for p in directory.iterdir() if p.is_file() and text.encode() in p.read_bytes()]


def test_export_customer_data_pages_and_erase_employee(private_server: ServerProcess, uid: Any) -> None:
    eve, customer = uid("eve"), uid("cust")
    with LeewayClient(private_server.target, timeout=15.0) as client, grpc.insecure_channel(
        private_server.target
    ) as channel:
        client.open_budget(eve, uid("desk"), policy("100"), display_name="Eve " + SECRET)
        ids = [client.record_action(eve, customer, "1", "EUR", GiftDetails(gift_type="tea"), reason=f"r{i}")
               .action.action_id for i in range(3)]
        privacy = privacy_pb2_grpc.PrivacyServiceStub(channel)
        seen, token = [], ""
        while True:
            page = privacy.ExportCustomerData(
                privacy_pb2.ExportCustomerDataRequest(customer_id=customer, page_size=2, page_token=token)
            )
            seen += [a["action_id"] for a in json.loads(page.document)["actions"]]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(ids)
        privacy.EraseEmployee(privacy_pb2.EraseEmployeeRequest(request_id=uid("e"), employee_id=eve, reason="art. 17"))
        budget = client.get_budget(eve)
        assert budget.display_name == "[erased]" and budget.employee_id == eve
        with pytest.raises(grpc.RpcError) as bad:
            privacy.EraseCustomer(privacy_pb2.EraseCustomerRequest(request_id=uid("x"), customer_id="not valid!",
                                                                   reason="r"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_redact_legacy_data_through_the_server(private_server: ServerProcess, uid: Any) -> None:
    """RedactLegacyData over the wire (the redaction itself is tested on legacy logs in
    tests/integration/test_privacy_legacy.py): a log written with encryption has nothing to redact, and the
    redaction is recorded all the same; a request naming both or neither subject is INVALID_ARGUMENT."""
    customer = uid("cust")
    with LeewayClient(private_server.target, timeout=30.0) as client:
        client.open_budget(uid("ann"), uid("desk"), policy("100"))
        redaction = client.redact_legacy_data("GDPR art. 17, ticket 9", customer_id=customer, request_id=uid("r"))
        assert (redaction.subject, redaction.redacted_event_count, len(redaction.pseudonym)) == ("customer", 0, 32)
        for subject in ({}, {"customer_id": customer, "employee_id": "eve"}):
            with pytest.raises(InvalidArgumentError):
                client.redact_legacy_data("art. 17", **subject)
        recorded = [e for e in client.stream_events(event_types=["Erasures.LegacyRedacted"])
                    if e.payload["pseudonym"] == redaction.pseudonym]
        assert len(recorded) == 1 and recorded[0].payload["reason"] == "GDPR art. 17, ticket 9"
        assert list(recorded[0].payload["redactions"]) == []


def test_master_key_file_is_required_to_read(private_server: ServerProcess) -> None:
    """The server refuses to start with another master key (the data keys would not unwrap)."""
    env_key = private_server.extra_env["LEEWAY_MASTER_KEY_FILE"]
    other = Path(env_key).with_name("other.key")
    other.write_text(secrets.token_hex(32))
    result = subprocess.run(
        [sys.executable, "-m", "leeway.cli", "keys", "check"],
        env={**private_server.env(), "LEEWAY_MASTER_KEY_FILE": str(other)}, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "master key" in (result.stdout + result.stderr)
    assert os.path.exists(env_key)


def test_an_erasure_racing_actions_through_the_server(private_server: ServerProcess, uid: Any) -> None:
    """Four clients record actions for one customer while an admin erases that customer, all through the real
    server: every accepted action is in the log once, no limit is broken (each employee's per-customer limit of 60
    and the organisation's per-customer cap of 150 hold across the erasure, because the erased actions count by
    pseudonym), and every action afterwards reads `[erased]`, or was recorded after the erasure under a new key
    (readable: data recorded after an erasure is new data, README "Personal data")."""
    import threading
    from decimal import Decimal

    from leeway_client import FailedPreconditionError, from_money, make_cap

    customer, team = uid("racer"), uid("desk")
    employees = [uid(f"emp{i}") for i in range(4)]
    with LeewayClient(private_server.target, timeout=30.0) as admin:
        for employee in employees:
            admin.open_budget(employee, team, policy("1000", per_action_limit="100", per_customer_limit="60"))
        admin.set_customer_cap(make_cap("150", "EUR"))
    accepted: list[tuple[str, str]] = []
    refused: list[str] = []
    lock = threading.Lock()
    started = threading.Barrier(len(employees) + 1)

    def worker(employee: str) -> None:
        with LeewayClient(private_server.target, timeout=60.0) as client:
            for n in range(12):
                if n == 2:
                    started.wait()  # two actions each before the erasure starts, ten racing it
                try:
                    action = client.record_action(employee, customer, "5", "EUR", GiftDetails(gift_type="tea"),
                                                  reason=f"{SECRET} #{n}", request_id=f"{employee}-{n}").action
                except FailedPreconditionError as error:
                    with lock:
                        refused.append(error.reason)
                    continue
                with lock:
                    accepted.append((employee, action.action_id))

    threads = [threading.Thread(target=worker, args=(e,)) for e in employees]
    for thread in threads:
        thread.start()
    with grpc.insecure_channel(private_server.target) as channel:
        started.wait()
        privacy = privacy_pb2_grpc.PrivacyServiceStub(channel)
        erasure = privacy.EraseCustomer(privacy_pb2.EraseCustomerRequest(
            request_id=uid("erase-race"), customer_id=customer, reason="art. 17, race"), timeout=60).erasure
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        verified = audit_pb2_grpc.AuditServiceStub(channel).VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
        assert verified.ok, verified.violations
    assert set(refused) <= {"PER_CUSTOMER_LIMIT_EXCEEDED", "CUSTOMER_CAP_EXCEEDED"}
    assert len(accepted) + len(refused) == 48 and len({a for _, a in accepted}) == len(accepted)
    erased_at = erasure.erase_time.ToDatetime().replace(tzinfo=None)
    total, erased = Decimal(0), 0
    with LeewayClient(private_server.target, timeout=30.0) as client:
        for employee in employees:
            mine = [a for e, a in accepted if e == employee]
            listed = list(client.iter_actions(employee_id=employee))
            assert sorted(a.action_id for a in listed) == sorted(mine)  # none lost, none twice
            budget = client.get_budget(employee)
            spent = from_money(budget.spent)
            assert spent == Decimal(5) * len(mine) <= Decimal(60)
            total += spent
            for action in listed:
                if action.customer_id.startswith("[erased:"):
                    assert action.customer_id == f"[erased:{erasure.pseudonym}]" and action.reason == "[erased]"
                    erased += 1
                else:  # recorded after the erasure, under a new key
                    assert action.customer_id == customer.lower() and SECRET in action.reason
                    assert action.record_time.ToDatetime() >= erased_at
    assert total <= Decimal(150) and erased >= 8
    print(f"racing the erasure: {erased} actions erased, {len(accepted) - erased} recorded after it, "
          f"{len(refused)} refused by a limit")
