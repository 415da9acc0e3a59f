"""Idempotent retries (also across a server restart) and concurrent spending on one budget."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from leeway.auth import hash_api_key, new_api_key
from leeway_client import (
    AlreadyExistsError,
    FailedPreconditionError,
    GiftDetails,
    LeewayClient,
    LeewayError,
    RefundDetails,
)

from .helpers import amount, policy


def test_same_request_id_returns_identical_response(client, uid):
    emp, cust, rid = uid("emp"), uid("cust"), uid("req")
    client.open_budget(emp, uid("team"), policy())
    first = client.record_action(emp, cust, "10", "EUR", RefundDetails(order_id="o-1"), reason="r", request_id=rid)
    second = client.record_action(emp, cust, "10", "EUR", RefundDetails(order_id="o-1"), reason="r", request_id=rid)
    assert second.action.action_id == first.action.action_id
    assert second.budget.version == first.budget.version
    assert second == first, "a replay returns the original response"
    budget = client.get_budget(emp)
    assert budget.version == first.budget.version and amount(budget.spent) == 10
    assert len(client.list_actions(employee_id=emp).actions) == 1

    # Later changes do not alter what a replay returns.
    client.record_action(emp, cust, "5", "EUR", GiftDetails(gift_type="tea"), reason="r")
    third = client.record_action(emp, cust, "10", "EUR", RefundDetails(order_id="o-1"), reason="r", request_id=rid)
    assert third == first
    assert client.get_budget(emp).version == first.budget.version + 1


def test_idempotent_budget_calls(client, uid):
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy())
    rid = uid("req")
    first = client.update_policy(emp, policy("200"), request_id=rid)
    again = client.update_policy(emp, policy("200"), request_id=rid)
    assert again == first and client.get_budget(emp).version == first.version
    rid = uid("close")
    closed = client.close_budget(emp, "done", request_id=rid)
    assert client.close_budget(emp, "done", request_id=rid) == closed
    assert client.get_budget(emp).version == closed.version


def test_replay_after_server_restart(make_server, database_url, uid):
    emp, cust, rid = uid("emp"), uid("cust"), uid("req")
    server = make_server(database_url)
    server.start()
    with LeewayClient(server.target) as c:
        c.open_budget(emp, uid("team"), policy())
        first = c.record_action(emp, cust, "10", "EUR", RefundDetails(order_id="o-1"), reason="r", request_id=rid)
    server.stop_cleanly()

    server.start()
    with LeewayClient(server.target) as c:
        replay = c.record_action(emp, cust, "10", "EUR", RefundDetails(order_id="o-1"), reason="r", request_id=rid)
        assert replay.action.action_id == first.action.action_id
        assert replay == first
        budget = c.get_budget(emp)
        assert budget.version == first.budget.version and amount(budget.spent) == 10
        assert c.get_action(first.action.action_id) == first.action
    server.stop_cleanly()


def test_concurrent_spending_never_overspends(server, client, uid):
    emp = uid("emp")
    client.open_budget(emp, uid("team"), policy("100"))
    threads, attempts_per_thread = 16, 3
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def spend(worker: int) -> None:
        with LeewayClient(server.target, timeout=30) as own:
            barrier.wait()
            for attempt in range(attempts_per_thread):
                try:
                    own.record_action(
                        emp, f"cust-{worker}", "10", "EUR", RefundDetails(order_id=f"o-{worker}-{attempt}"), reason="r"
                    )
                    result = "OK"
                except FailedPreconditionError as error:
                    result = error.reason
                except LeewayError as error:
                    result = f"{error.code.name}:{error.reason}"
                except Exception as error:  # noqa: BLE001 - reported below
                    result = f"{type(error).__name__}:{error}"
                with lock:
                    outcomes.append(result)

    workers = [threading.Thread(target=spend, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    counts = Counter(outcomes)
    assert sum(counts.values()) == threads * attempts_per_thread, counts
    assert counts == Counter({"OK": 10, "BUDGET_EXHAUSTED": threads * attempts_per_thread - 10}), counts
    budget = client.get_budget(emp)
    assert amount(budget.remaining) == 0 and amount(budget.spent) == 100
    assert budget.period_action_count == 10
    assert len(list(client.iter_actions(employee_id=emp, page_size=4))) == 10


def test_a_request_id_is_scoped_to_the_caller(make_server, database_url, uid):
    """The review's case over gRPC, with authentication: an agent uses a CRM's predictable request_id first. The
    CRM's real call is still recorded, nobody is told about the other's use, and each retry gets its own answer."""
    admin_key, crm_key, agent_key = new_api_key(), new_api_key(), new_api_key()
    emp, cust = uid("ann"), uid("cust")
    keys = f"root:admin:{hash_api_key(admin_key)},crm-main:crm:{hash_api_key(crm_key)},{emp}:agent:{hash_api_key(agent_key)}"
    server = make_server(database_url, {"LEEWAY_AUTH": "required", "LEEWAY_API_KEYS": keys})
    server.start()
    rid = f"crm-case-{uid('case')}-gift"
    flowers = GiftDetails(gift_type="flowers")
    with (
        LeewayClient(server.target, api_key=admin_key) as admin,
        LeewayClient(server.target, api_key=crm_key, retries=0) as crm,
        LeewayClient(server.target, api_key=agent_key, retries=0) as agent,
    ):
        admin.open_budget(emp, uid("team"), policy())
        agents = agent.record_action(emp, cust, "10", "EUR", flowers, reason="mine", request_id=rid)
        crms = crm.record_action(emp, cust, "20", "EUR", flowers, reason="late dinner", request_id=rid)
        assert crms.action.action_id != agents.action.action_id and amount(crms.budget.spent) == 30
        assert crm.record_action(emp, cust, "20", "EUR", flowers, reason="late dinner", request_id=rid) == crms
        assert agent.record_action(emp, cust, "10", "EUR", flowers, reason="mine", request_id=rid) == agents
        with pytest.raises(AlreadyExistsError) as reused:
            agent.record_action(emp, cust, "11", "EUR", flowers, reason="mine", request_id=rid)
        assert reused.value.reason == "REQUEST_ID_REUSED"
        assert reused.value.metadata == {"request_id": rid, "original_method": "leeway.v1.ActionService/RecordAction"}
        assert len(admin.list_actions(employee_id=emp).actions) == 2
    server.stop_cleanly()
