"""Slow-loris (issue 8): many idle streams and huge messages must not starve ordinary callers.

- Calls beyond LEEWAY_GRPC_MAX_CONCURRENT_RPCS (every open call counts) are answered RESOURCE_EXHAUSTED at once
  rather than queue.
- Huge messages: requests over LEEWAY_GRPC_MAX_MESSAGE_BYTES are answered RESOURCE_EXHAUSTED, and ordinary
  calls made meanwhile keep succeeding.

- The siege (siege.py): hundreds of idle Watch / follow / reflection streams and unary calls whose message never
  arrives, authenticated or not, starve nobody (the asyncio front holds no thread for them).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from decimal import Decimal

import grpc
from leeway.v1 import action_pb2, action_pb2_grpc, audit_pb2, audit_pb2_grpc
from leeway_client import LeewayClient, LeewayError, RefundDetails, make_policy, to_money

from .harness import CURRENCY, Cluster
from .siege import siege

#: The deadline of an ordinary call; an unloaded server answers in a few milliseconds.
ORDINARY_DEADLINE = 5.0


def ordinary_calls(target: str, employee: str, n: int = 8) -> list[tuple[str, str, float]]:
    """``n`` GetBudget and ``n`` RecordAction calls at once, each on its own channel and with a deadline of
    ORDINARY_DEADLINE; returns (method, status code, seconds) for each."""
    results: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def call(method: str, i: int) -> None:
        with LeewayClient(target, timeout=ORDINARY_DEADLINE, retries=0) as client:
            started = time.monotonic()
            try:
                if method == "GetBudget":
                    client.get_budget(employee)
                else:
                    client.record_action(employee, "cust", Decimal("0.01"), CURRENCY, RefundDetails(order_id=str(i)),
                                         reason="ordinary caller")
                code = "OK"
            except LeewayError as error:
                code = error.code.name
            with lock:
                results.append((method, code, time.monotonic() - started))

    threads = [threading.Thread(target=call, args=(m, i)) for i in range(n) for m in ("GetBudget", "RecordAction")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=ORDINARY_DEADLINE + 30)
    return results


class IdleStreams:
    """Following StreamEvents calls that are never read; ``codes`` counts how those that ended, ended."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.calls: list[grpc.Future] = []
        self.codes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def open(self, n: int) -> None:
        for _ in range(n):
            call = self.stub.StreamEvents(audit_pb2.StreamEventsRequest(follow=True), timeout=300)
            call.add_done_callback(self._done)
            self.calls.append(call)

    def _done(self, call: grpc.Future) -> None:
        with self._lock:
            self.codes[call.code().name] += 1

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        self.channel.close()


def test_idle_streams_and_silent_calls_starve_nobody(postgres_url, tmp_path):
    """The siege at CI size (make chaos runs it with 2,000 idle streams and 200 silent calls): while hundreds of
    idle Watch, follow and reflection streams and calls whose message never arrives are open, authenticated or
    not, Health/Check and ordinary calls keep answering within a normal deadline (on the threaded server of
    before, 33 idle Watch streams were enough to make every call fail DEADLINE_EXCEEDED)."""
    streams, silent = 300, 60
    result = siege(
        lambda extra: Cluster(postgres_url, tmp_path, extra_env=extra),
        make_policy(currency=CURRENCY, period_allowance=100_000),
        idle_streams=streams, silent_calls=silent, rounds=40, workdir=tmp_path,
    )
    print("\n" + result.table())
    assert result.opened == {"watch": streams // 3, "follow": streams // 3, "reflection": streams - 2 * (streams // 3),
                             "silent": silent}, result.opened
    assert result.idle.all_ok(), result.table()
    assert result.besieged.all_ok(), "calls failed while idle streams were open:\n" + result.table()
    for method, seconds in result.besieged.seconds.items():
        assert max(seconds) < ORDINARY_DEADLINE, f"{method} took {max(seconds):.1f} s under siege"


def test_calls_beyond_the_open_call_limit_are_refused_at_once(postgres_url, tmp_path):
    """LEEWAY_GRPC_MAX_CONCURRENT_RPCS counts every open call, idle streams included (on the asyncio server they
    hold no thread, so its default is high: 10,000); beyond it calls are refused RESOURCE_EXHAUSTED at once, and
    the server is itself again once they close."""
    limit = 64
    cluster = Cluster(postgres_url, tmp_path, extra_env={"LEEWAY_GRPC_MAX_CONCURRENT_RPCS": str(limit)}).start()
    target = cluster.target()
    assert target is not None
    streams = IdleStreams(target)
    try:
        with LeewayClient(target) as client:
            client.open_budget("busy", "t", make_policy(currency=CURRENCY, period_allowance=1000), request_id="open")
        streams.open(limit + 16)
        time.sleep(1.0)
        refused = streams.codes.get("RESOURCE_EXHAUSTED", 0)
        streams.close()
        time.sleep(0.5)
        after = ordinary_calls(target, "busy")
    finally:
        streams.close()
        cluster.stop()
    summary = f"idle streams beyond the limit of {limit}: {dict(streams.codes)}; after: {Counter(c for _, c, _ in after)}"
    print("\n" + summary)
    assert refused >= 16, "streams beyond LEEWAY_GRPC_MAX_CONCURRENT_RPCS were not refused RESOURCE_EXHAUSTED: " + summary
    assert all(code == "OK" for _, code, _ in after), "the server did not recover after the streams closed: " + summary


def test_huge_messages_are_refused_and_do_not_starve_ordinary_callers(postgres_url, tmp_path):
    max_bytes = 256 * 1024
    cluster = Cluster(postgres_url, tmp_path, extra_env={"LEEWAY_GRPC_MAX_MESSAGE_BYTES": str(max_bytes)}).start()
    target = cluster.target()
    assert target is not None
    stop = threading.Event()
    huge: Counter[str] = Counter()
    lock = threading.Lock()

    def flood() -> None:
        request = action_pb2.RecordActionRequest(
            request_id="huge", employee_id="busy", customer_id="c", amount=to_money("1", CURRENCY),
            reason="x" * (4 * max_bytes), refund=action_pb2.RefundDetails(order_id="o"),
        )
        with grpc.insecure_channel(target) as channel:
            stub = action_pb2_grpc.ActionServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.RecordAction(request, timeout=10)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                with lock:
                    huge[code] += 1

    try:
        with LeewayClient(target) as client:
            client.open_budget("busy", "t", make_policy(currency=CURRENCY, period_allowance=1000), request_id="open")
        flooders = [threading.Thread(target=flood) for _ in range(8)]
        for thread in flooders:
            thread.start()
        time.sleep(1.0)
        during = ordinary_calls(target, "busy")
        stop.set()
        for thread in flooders:
            thread.join(timeout=30)
    finally:
        stop.set()
        cluster.stop()
    summary = f"huge requests: {dict(huge)}; ordinary calls meanwhile: {Counter(c for _, c, _ in during)}"
    print("\n" + summary)
    assert huge and set(huge) == {"RESOURCE_EXHAUSTED"}, summary
    assert all(code == "OK" and seconds < ORDINARY_DEADLINE for _, code, seconds in during), summary
