"""OpenTelemetry tracing with the SDK's in-memory exporter, on a real in-process server (create_server) and real
gRPC calls: the RPC span continues the caller's W3C ``traceparent``, the writer's batch span (its own trace) links
to the RPC spans of the commands it carried, and the database save is a child of the batch span. Also: which
``OTEL_*`` settings turn tracing on, and trace ids in log lines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import grpc
import pytest
from google.type import money_pb2
from leeway.v1 import action_pb2, action_pb2_grpc
from leeway_client import LeewayClient, make_policy
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from leeway import tracing
from leeway.server import create_server
from leeway.settings import Settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
RECORD = "leeway.v1.ActionService/RecordAction"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.install(provider)
    try:
        yield memory
    finally:
        tracing.install(None)
        provider.shutdown()


@pytest.fixture
def running(exporter: InMemorySpanExporter, tmp_path: Path) -> Iterator[Any]:
    settings = Settings(
        grpc_address="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path}/leeway.sqlite",
        metrics_address="off",
        projections="inprocess",
        projections_metrics_address="off",
        expiry_interval_seconds=0,
    )
    server, port = create_server(settings)
    server.start()
    server.target = f"127.0.0.1:{port}"
    try:
        yield server
    finally:
        server.stop(grace=1)


@pytest.fixture
def target(running: Any) -> str:
    return str(running.target)


def record_request(employee: str, amount: int = 5) -> action_pb2.RecordActionRequest:
    return action_pb2.RecordActionRequest(
        request_id=str(uuid4()),
        employee_id=employee,
        customer_id=f"cust-{uuid4().hex[:8]}",
        amount=money_pb2.Money(currency_code="EUR", units=amount),
        reason="late delivery",
        refund=action_pb2.RefundDetails(order_id="o-1"),
    )


def open_employee(target: str) -> str:
    employee = f"emp-{uuid4().hex[:8]}"
    with LeewayClient(target, timeout=10.0) as client:
        client.open_budget(employee, "team-1", make_policy(currency="EUR", period_allowance="1000"))
    return employee


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def settled(exporter: InMemorySpanExporter, ready: Any, timeout: float = 10.0) -> None:
    """Waits until ``ready()``: a caller has its answer a moment before its spans end (the server span closes as
    the handler returns, the batch span after the writer has woken every caller)."""
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_rpc_span_continues_the_callers_traceparent_and_the_batch_links_to_it(
    exporter: InMemorySpanExporter, target: str
) -> None:
    employee = open_employee(target)
    exporter.clear()
    with grpc.insecure_channel(target) as channel:
        stub = action_pb2_grpc.ActionServiceStub(channel)
        response, call = stub.RecordAction.with_call(
            record_request(employee), metadata=(("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"),), timeout=10
        )
    assert response.action.action_id
    settled(exporter, lambda: any(
        link.context.trace_id == int(TRACE_ID, 16) for b in spans_named(exporter, "leeway.writer.batch") for link in b.links
    ))
    (rpc,) = spans_named(exporter, RECORD)
    assert rpc.kind is SpanKind.SERVER
    assert format(rpc.context.trace_id, "032x") == TRACE_ID, "the caller's trace goes on"
    assert rpc.parent is not None and format(rpc.parent.span_id, "016x") == PARENT_SPAN_ID and rpc.parent.is_remote
    assert rpc.attributes["rpc.system"] == "grpc"
    assert rpc.attributes["rpc.service"] == "leeway.v1.ActionService"
    assert rpc.attributes["rpc.method"] == "RecordAction"
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    correlation = dict(call.trailing_metadata())["x-correlation-id"]
    assert rpc.attributes["leeway.correlation_id"] == correlation
    assert rpc.status.status_code is StatusCode.UNSET

    batches = [b for b in spans_named(exporter, "leeway.writer.batch") if any(
        link.context.span_id == rpc.context.span_id for link in b.links)]
    assert len(batches) == 1, "exactly one batch carried the command"
    (batch,) = batches
    assert batch.parent is None and batch.context.trace_id != rpc.context.trace_id, "a batch is a trace of its own"
    (link,) = [link for link in batch.links if link.context.span_id == rpc.context.span_id]
    assert link.context.trace_id == rpc.context.trace_id
    assert batch.attributes["leeway.batch.size"] >= 1 and batch.attributes["leeway.batch.failed"] == 0
    saves = [s for s in spans_named(exporter, "leeway.store.save") if s.parent and s.parent.span_id == batch.context.span_id]
    assert len(saves) == 1, "the batch saved once, in a child span"
    (save,) = saves
    assert save.context.trace_id == batch.context.trace_id
    assert save.attributes["leeway.save.events"] >= 2  # the action on the budget, and its request record
    assert save.start_time >= batch.start_time and save.end_time <= batch.end_time


def test_one_batch_links_every_rpc_it_carried(exporter: InMemorySpanExporter, running: Any) -> None:
    """RPCs queued while the writer is busy go in one batch: its span links to every one of them, and every RPC
    is linked from exactly one batch."""
    target = running.target
    employee = open_employee(target)
    exporter.clear()
    writer = running.app.writer
    enqueued: list[Any] = []
    enqueue = writer.enqueue

    def counting(*args: Any, **kwargs: Any) -> Any:
        enqueued.append(enqueue(*args, **kwargs))
        return enqueued[-1]

    def until(condition: Any) -> None:
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)

    writer.enqueue = counting  # type: ignore[method-assign]
    try:
        with grpc.insecure_channel(target) as channel:
            stub = action_pb2_grpc.ActionServiceStub(channel)
            with writer.lock:  # the writer thread takes the first call, then waits here: the other 11 queue up
                calls = [stub.RecordAction.future(record_request(employee, 1), timeout=60)]
                until(lambda: len(enqueued) == 1 and not writer.queue)
                calls += [stub.RecordAction.future(record_request(employee, 1), timeout=60) for _ in range(11)]
                until(lambda: len(writer.queue) == 11)
                queued = len(writer.queue)
            for future in calls:
                assert future.result().action.action_id
    finally:
        del writer.enqueue

    def all_linked() -> bool:
        linked = {link.context.span_id for b in spans_named(exporter, "leeway.writer.batch") for link in b.links}
        rpcs = spans_named(exporter, RECORD)
        return len(rpcs) == 12 and all(s.context.span_id in linked for s in rpcs)

    settled(exporter, all_linked)
    rpcs = spans_named(exporter, RECORD)
    assert len(rpcs) == 12 and len({s.context.trace_id for s in rpcs}) == 12, "no traceparent: a new trace each"
    assert all(s.parent is None for s in rpcs)
    linked: dict[int, int] = {}
    for batch in spans_named(exporter, "leeway.writer.batch"):
        for link in batch.links:
            linked[link.context.span_id] = linked.get(link.context.span_id, 0) + 1
    assert all(linked.get(s.context.span_id) == 1 for s in rpcs), "each RPC is in exactly one batch"
    sizes = sorted(len(b.links) for b in spans_named(exporter, "leeway.writer.batch"))
    assert queued == 11 and sizes == [1, 11], f"the first call alone, then the {queued} queued in one batch: {sizes}"


def test_a_refusal_is_not_a_server_error(exporter: InMemorySpanExporter, target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = action_pb2_grpc.ActionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.RecordAction(action_pb2.RecordActionRequest(request_id=str(uuid4())), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    settled(exporter, lambda: spans_named(exporter, RECORD))
    (rpc,) = spans_named(exporter, RECORD)
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert rpc.status.status_code is StatusCode.UNSET, "the caller's mistake, not the server's"
    assert not spans_named(exporter, "leeway.store.save"), "nothing was saved"


def test_log_lines_inside_a_span_carry_its_ids(exporter: InMemorySpanExporter) -> None:
    with tracing.span("outer") as current:
        event = tracing.add_trace_ids(None, "info", {"event": "x"})
    context = current.get_span_context()
    assert event["trace_id"] == format(context.trace_id, "032x")
    assert event["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in tracing.add_trace_ids(None, "info", {"event": "outside"})


def test_tracing_is_off_unless_the_standard_variables_turn_it_on() -> None:
    assert tracing.wanted_exporter({}) == "none"
    assert tracing.wanted_exporter({"OTEL_SERVICE_NAME": "leeway"}) == "none"
    assert tracing.wanted_exporter({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}) == "none"
    assert tracing.wanted_exporter({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}) == "otlp"
    assert tracing.wanted_exporter({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}) == "otlp"
    assert tracing.wanted_exporter({"OTEL_TRACES_EXPORTER": "otlp"}) == "otlp"
    assert tracing.wanted_exporter({"OTEL_TRACES_EXPORTER": " Console "}) == "console"
    assert tracing.wanted_exporter({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) == "none"
    for bad in ("jaeger", "otlp,console"):
        with pytest.raises(tracing.TracingError, match="OTEL_TRACES_EXPORTER"):
            tracing.wanted_exporter({"OTEL_TRACES_EXPORTER": bad})
    assert tracing.configure_from_env({}) is False and tracing.tracer is None
    with pytest.raises(tracing.TracingError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert tracing.tracer is None


def test_off_costs_no_span_and_no_context() -> None:
    """With tracing off the hooks do nothing: no span object, no captured context."""
    assert tracing.tracer is None
    assert tracing.current_context() is None
    with tracing.span("anything") as current:
        assert current is None
