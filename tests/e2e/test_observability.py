"""Observability end to end, on real `leeway serve` processes and their projections child:

- both serve /metrics with the process, Python and build collectors; the child also /livez and /readyz;
- every metric the Grafana dashboard and the alert rules (deploy/observability) name is really exposed by a
  running server + projections child (so neither can silently point at a missing metric);
- with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, spans reach an OTLP collector (a real gRPC one, in this test), the
  RPC span continuing the caller's ``traceparent``; without it, nothing is traced."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import urlopen

import grpc
import pytest
import yaml
from google.type import money_pb2
from leeway.v1 import action_pb2, action_pb2_grpc
from leeway_client import LeewayClient
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from promql_names import metric_names

from .helpers import policy
from builders import fake_service

REPO = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPO / "deploy" / "observability"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"


#: The series names a family of each type has (``# TYPE x counter`` is read as ``x_total``, ...).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum", ""),
            "gauge": ("",), "info": ("_info",), "untyped": ("",)}


def scrape(url: str) -> dict[str, list[Any]]:
    """Sample name -> its samples, as exposed now (a labelled family without samples yet, such as a counter of
    decisions nobody made, is declared by its ``# TYPE`` line: its names map to an empty list)."""
    text = urlopen(url, timeout=10).read().decode()
    found: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            found.setdefault(family.name + suffix, [])
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def child_metrics_address(server: Any, timeout: float = 20.0) -> str:
    """The projections child's /metrics address, from its start-up line in the server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.logs().splitlines():
            if '"projections.metrics_serving"' in line:
                return str(json.loads(line)["address"])
        time.sleep(0.1)
    pytest.fail(f"the projections child never said where its metrics are:\n{server.logs()}", pytrace=False)
    raise AssertionError  # unreachable


def exercise(target: str, employee: str) -> None:
    """A few calls, so that labelled series (by method, code, reason, kind) have samples: an action, a refusal,
    one that waits for approval."""
    with LeewayClient(target, timeout=10.0) as client:
        client.open_budget(employee, "team-obs", policy("100", per_action_limit="40"))
    with grpc.insecure_channel(target) as channel:
        stub = action_pb2_grpc.ActionServiceStub(channel)
        stub.RecordAction(request(employee, 5), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RecordAction(request(employee, 5000), timeout=10)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def request(employee: str, units: int) -> action_pb2.RecordActionRequest:
    return action_pb2.RecordActionRequest(
        request_id=f"obs-{time.monotonic_ns()}",
        employee_id=employee,
        customer_id="cust-obs",
        amount=money_pb2.Money(currency_code="EUR", units=units),
        reason="late delivery",
        refund=action_pb2.RefundDetails(order_id="o-1"),
    )


def every_named_metric() -> dict[str, set[str]]:
    """Where each metric named by the dashboard or an alert rule is used."""
    used: dict[str, set[str]] = {}
    board = json.loads((OBSERVABILITY / "leeway-dashboard.json").read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                used.setdefault(name, set()).add(f"dashboard panel {panel['title']!r}")
    for variable in board["templating"]["list"]:
        query = variable.get("query", "")
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query) if isinstance(query, str) else None
        if match:
            used.setdefault(match.group(1), set()).add(f"dashboard variable {variable['name']}")
    rules = yaml.safe_load((OBSERVABILITY / "alerts.rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                used.setdefault(name, set()).add(f"alert {rule['alert']}")
    return used


def test_server_and_projections_child_export_what_the_dashboard_and_alerts_read(make_server, tmp_path: Path) -> None:
    server = make_server(f"sqlite:///{tmp_path}/obs.sqlite", {"LEEWAY_BUILD_REVISION": "0123abc"})
    server.start()
    exercise(server.target, "emp-obs")
    child = f"http://{child_metrics_address(server)}"
    server_samples = scrape(server.metrics_url())
    child_samples = scrape(f"{child}/metrics")

    for samples in (server_samples, child_samples):
        (build,) = samples["leeway_build_info"]
        assert build.labels == {"version": "0.1.0", "revision": "0123abc"} and build.value == 1
        assert samples["process_cpu_seconds_total"][0].value > 0
        assert samples["process_resident_memory_bytes"][0].value > 10_000_000
        assert samples["python_info"] and samples["python_gc_collections_total"]
        (store_up,) = samples["leeway_event_store_up"]
        assert store_up.value == 1
        lags = {s.labels["projection"]: s.value for s in samples["leeway_projection_lag_events"]}
        assert set(lags) == {"insights", "balances", "trail"}
    assert server_samples["leeway_approvals_overdue"][0].value == 0
    assert server_samples["leeway_pending_approvals"][0].value == 0
    assert "leeway_approvals_overdue" not in child_samples, "the child exports the projections' metrics only"

    exposed = set(server_samples) | set(child_samples)
    used = every_named_metric()
    assert len(used) >= 15
    missing = {name: sorted(where) for name, where in used.items() if name not in exposed}
    assert not missing, f"named in deploy/observability but not exposed by a running server or child: {missing}"

    assert urlopen(f"{child}/livez", timeout=5).status == 200
    assert urlopen(f"{child}/readyz", timeout=5).read() == b"ok\n"
    with pytest.raises(HTTPError) as not_found:
        urlopen(f"{child}/other", timeout=5)
    assert not_found.value.code == 404

    # A standalone `leeway projections run` that cannot bind its metrics address says so and exits 1.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env.update(LEEWAY_DATABASE_URL=server.database_url, LEEWAY_PROJECTIONS_METRICS_ADDRESS=child.removeprefix("http://"))
    result = subprocess.run([sys.executable, "-m", "leeway.cli", "projections", "run"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "cannot serve metrics on" in result.stderr


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it receives."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the generated name
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_reach_an_otlp_collector_when_the_otel_variables_say_so(make_server, tmp_path: Path) -> None:
    collector = Collector()
    with fake_service(trace_service_pb2_grpc.add_TraceServiceServicer_to_server, collector, workers=2) as otlp:
        server = make_server(f"sqlite:///{tmp_path}/otel.sqlite", {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{otlp}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_SERVICE_NAME": "leeway-e2e",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        })
        server.start()
        with LeewayClient(server.target, timeout=10.0) as client:
            client.open_budget("emp-otel", "team-otel", policy("100"))
        with grpc.insecure_channel(server.target) as channel:
            stub = action_pb2_grpc.ActionServiceStub(channel)
            stub.RecordAction(request("emp-otel", 5), timeout=10,
                              metadata=(("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"),))
        server.stop_cleanly()  # shutdown exports what is still buffered
        serving = [json.loads(line) for line in server.logs().splitlines() if '"serving"' in line]
        assert serving and serving[0]["tracing"] == "on"
    spans = {span.name: (resource, span) for resource, span in collector.spans}
    resource, rpc = spans["leeway.v1.ActionService/RecordAction"]
    assert resource["service.name"] == "leeway-e2e"
    assert rpc.trace_id.hex() == TRACE_ID and rpc.parent_span_id.hex() == PARENT_SPAN_ID
    batches = [span for _, span in collector.spans if span.name == "leeway.writer.batch"
               and any(link.span_id == rpc.span_id for link in span.links)]
    assert len(batches) == 1
    saves = [span for _, span in collector.spans if span.name == "leeway.store.save"
             and span.parent_span_id == batches[0].span_id]
    assert len(saves) == 1


def test_nothing_is_traced_without_the_otel_variables(server) -> None:
    """The module's shared server has no OTEL_* settings: it says tracing is off."""
    serving = [json.loads(line) for line in server.logs().splitlines() if '"serving"' in line]
    assert serving and serving[-1]["tracing"] == "off"


def test_an_unknown_trace_exporter_stops_serve_with_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEEWAY_", "OTEL_"))}
    env.update(LEEWAY_GRPC_ADDRESS="127.0.0.1:0", LEEWAY_DATABASE_URL=f"sqlite:///{tmp_path}/x.sqlite",
               LEEWAY_METRICS_ADDRESS="off", OTEL_TRACES_EXPORTER="jaeger")
    result = subprocess.run([sys.executable, "-m", "leeway.cli", "serve"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "OTEL_TRACES_EXPORTER='jaeger': give one of otlp, console, none" in result.stderr
