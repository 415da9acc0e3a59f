"""Writes Leeway's Grafana dashboard and Prometheus alert rules (README, "Observability"):

- ``leeway-dashboard.json``: the dashboard, built with Grafana's own dashboards-as-code library
  (``grafana-foundation-sdk``, a dev dependency): import it in Grafana (Dashboards > New > Import) or provision it;
  it asks for a Prometheus data source and filters by ``job``.
- ``alerts.rules.yaml``: the alert rules as a plain Prometheus rules file (``rule_files:``).
- ``prometheusrule.yaml``: the same groups as a ``PrometheusRule`` for the Prometheus Operator on Kubernetes.

Both rule files come from ``ALERT_GROUPS`` below (tests/deploy/test_observability.py checks they agree, that
``promtool check rules`` accepts them and that ``promtool test rules alerts.test.yaml`` passes). Run
``.venv/bin/python deploy/observability/generate.py`` after editing this file, and commit what it writes; the
test regenerates everything and fails on any difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import StackingConfig, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueGraphMode, GraphDrawStyle, StackingMode, LegendDisplayMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableHide, VariableRefresh

HERE = Path(__file__).resolve().parent
DASHBOARD_FILE = "leeway-dashboard.json"
RULES_FILE = "alerts.rules.yaml"
PROMETHEUS_RULE_FILE = "prometheusrule.yaml"

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
#: Every query's selector: the scrape jobs chosen in the dashboard's "job" variable.
JOB = 'job=~"$job"'
RATE = "$__rate_interval"
#: gRPC codes that are the server's fault (a client's mistake is not an error here).
SERVER_ERROR_CODES = "UNKNOWN|INTERNAL|UNAVAILABLE|DATA_LOSS|DEADLINE_EXCEEDED"
#: The RPCs that go through the group-commit writer.
WRITE_METHODS = (
    "RecordAction|ApproveAction|DenyAction|ReverseAction|DocumentWin|OpenBudget|UpdatePolicy|CloseBudget|"
    "ReopenBudget|MoveEmployee|SetTeamCap|SetCustomerCap"
)


# ------------------------------------------------------------------------------------------------ dashboard


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def graph(title: str, description: str, unit: str, *queries: prometheus.Dataquery, stacked: bool = False,
          width: int = 12) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(width)
        .draw_style(GraphDrawStyle.LINE)
        .fill_opacity(10)
        .legend(_legend())
    )
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL))
    for item in queries:
        panel = panel.with_target(item)
    return panel


def _legend() -> VizLegendOptions:
    return VizLegendOptions().display_mode(LegendDisplayMode.TABLE).placement("right").show_legend(True).calcs(
        ["mean", "max", "lastNotNull"]
    )


def single(title: str, description: str, unit: str, expr: str, legend: str, width: int = 4) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(4)
        .span(width)
        .graph_mode(BigValueGraphMode.AREA)
        .with_target(query(expr, legend))
    )


def build_dashboard() -> dict[str, Any]:
    datasource = dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    job = (
        dashboard.QueryVariable("job")
        .label("Job")
        .datasource(DATASOURCE)
        .query("label_values(leeway_build_info, job)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .hide(VariableHide.DONT_HIDE)
    )
    board = (
        dashboard.Dashboard("Leeway")
        .uid("leeway-overview")
        .description("Leeway's gRPC service, writer, event store, projections and processes (deploy/observability).")
        .tags(["leeway"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .with_variable(datasource)
        .with_variable(job)
    )
    by_method = f"sum by (grpc_service, grpc_method) (rate(grpc_server_handled_total{{{JOB}}}[{RATE}]))"
    board = (
        board.with_row(dashboard.Row("Service"))
        .with_panel(single("Event store up", "1 while every replica's event store answers its health probe.",
                           "none", f"min(leeway_event_store_up{{{JOB}}})", "store up"))
        .with_panel(single("RPCs / s", "Calls completed per second, every method.", "reqps",
                           f"sum(rate(grpc_server_handled_total{{{JOB}}}[{RATE}]))", "calls/s"))
        .with_panel(single(
            "Server errors", "Share of calls that failed on the server's side (" + SERVER_ERROR_CODES + ").",
            "percentunit",
            f'sum(rate(grpc_server_handled_total{{{JOB},grpc_code=~"{SERVER_ERROR_CODES}"}}[{RATE}])) / '
            f"sum(rate(grpc_server_handled_total{{{JOB}}}[{RATE}]))", "errors"))
        .with_panel(single("Pending approvals", "Actions waiting for a supervisor's decision.", "none",
                           f"max(leeway_pending_approvals{{{JOB}}})", "pending"))
        .with_panel(single("Approvals overdue", "Holds past their approval timeout not expired yet (should be 0).",
                           "none", f"max(leeway_approvals_overdue{{{JOB}}})", "overdue"))
        .with_panel(single("Projection lag", "Events committed but not yet in the slowest read model.", "none",
                           f"max(leeway_projection_lag_events{{{JOB}}})", "events behind"))
        .with_row(dashboard.Row("RPCs by method"))
        .with_panel(graph("Rate by method", "Calls completed per second, by method.", "reqps",
                          query(by_method, "{{grpc_method}}")))
        .with_panel(graph(
            "Errors by method and code", "Calls per second that ended with a status other than OK.", "reqps",
            query(f'sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{{JOB},grpc_code!="OK"}}[{RATE}]))',
                  "{{grpc_method}} {{grpc_code}}")))
        .with_panel(graph(
            "Latency p99 by method", "99th percentile of the server's handling time (unary and streams).", "s",
            query(f"histogram_quantile(0.99, sum by (grpc_method, le) "
                  f"(rate(grpc_server_handling_seconds_bucket{{{JOB}}}[{RATE}])))", "{{grpc_method}}")))
        .with_panel(graph(
            "Latency p50 by method", "Median handling time.", "s",
            query(f"histogram_quantile(0.5, sum by (grpc_method, le) "
                  f"(rate(grpc_server_handling_seconds_bucket{{{JOB}}}[{RATE}])))", "{{grpc_method}}")))
        .with_panel(graph(
            "Refusals by reason", "Requests refused with a Leeway reason (ErrorInfo.reason), per second.", "reqps",
            query(f"sum by (reason) (rate(leeway_refusals_total{{{JOB}}}[{RATE}]))", "{{reason}}"), stacked=True))
        .with_panel(graph(
            "Actions by kind and outcome", "Actions recorded per second: within authority, or pending approval.",
            "ops", query(f"sum by (kind, outcome) (rate(leeway_actions_total{{{JOB}}}[{RATE}]))",
                         "{{kind}} {{outcome}}"), stacked=True))
        .with_row(dashboard.Row("Writes, store and projections"))
        .with_panel(graph(
            "Write batches and conflicts", "Group-commit transactions per second, and batches decided again "
            "(a version conflict or a log that moved).", "ops",
            query(f"sum(rate(leeway_write_batches_total{{{JOB}}}[{RATE}]))", "batches", "A"),
            query(f"sum(rate(leeway_write_conflicts_total{{{JOB}}}[{RATE}]))", "conflicts", "B"), width=8))
        .with_panel(graph(
            "Write calls per batch", "Write RPCs completed per group-commit transaction, on average (expiries "
            "and refusals included in the batches, so a rough figure).", "none",
            query(f'sum(rate(grpc_server_handled_total{{{JOB},grpc_method=~"{WRITE_METHODS}"}}[{RATE}])) / '
                  f"sum(rate(leeway_write_batches_total{{{JOB}}}[{RATE}]))", "calls/batch"), width=8))
        .with_panel(graph(
            "Decisions", "Pending actions and corrections decided: approved, denied, expired, reversed.", "ops",
            query(f"sum by (outcome) (rate(leeway_action_decisions_total{{{JOB}}}[{RATE}]))", "{{outcome}}"),
            stacked=True, width=8))
        .with_panel(graph(
            "Projection lag", "Events committed but not yet in each read model (every process that reports it).",
            "none", query(f"max by (projection) (leeway_projection_lag_events{{{JOB}}})", "{{projection}}"),
            width=8))
        .with_panel(graph(
            "Event store up", "1 while the event store answers, per process (servers and projections).", "none",
            query(f"leeway_event_store_up{{{JOB}}}", "{{job}} {{instance}}"), width=8))
        .with_panel(graph(
            "Pending approvals", "Actions waiting for approval, and holds past their timeout.", "none",
            query(f"max(leeway_pending_approvals{{{JOB}}})", "pending", "A"),
            query(f"max(leeway_approvals_overdue{{{JOB}}})", "overdue", "B"), width=8))
        .with_row(dashboard.Row("Processes"))
        .with_panel(graph(
            "CPU", "CPU used per process, in cores.", "none",
            query(f"rate(process_cpu_seconds_total{{{JOB}}}[{RATE}])", "{{job}} {{instance}}"), width=8))
        .with_panel(graph(
            "Resident memory", "Resident set size per process.", "bytes",
            query(f"process_resident_memory_bytes{{{JOB}}}", "{{job}} {{instance}}"), width=8))
        .with_panel(graph(
            "Garbage collections", "Python's cyclic collections per second, by generation.", "ops",
            query(f"sum by (job, generation) (rate(python_gc_collections_total{{{JOB}}}[{RATE}]))",
                  "{{job}} gen {{generation}}"), width=8))
        .with_panel(graph(
            "Open file descriptors", "Sockets and files open per process, against its limit.", "none",
            query(f"process_open_fds{{{JOB}}}", "{{job}} {{instance}} open", "A"),
            query(f"process_max_fds{{{JOB}}}", "{{job}} {{instance}} limit", "B"), width=12))
        .with_panel(graph(
            "Running versions", "Processes per version and source revision (leeway_build_info).", "none",
            query(f"count by (version, revision) (leeway_build_info{{{JOB}}})", "{{version}} {{revision}}"),
            width=12))
    )
    built = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for number, panel in enumerate(built["panels"], start=1):
        panel["id"] = number  # Grafana wants every panel's id unique: in the order they appear
    return built


# ------------------------------------------------------------------------------------------------ alerts

RUNBOOK = "README.md#observability"

ALERT_GROUPS: list[dict[str, Any]] = [
    {
        "name": "leeway",
        "rules": [
            {
                "alert": "LeewayEventStoreDown",
                "expr": "min by (job, instance) (leeway_event_store_up) == 0",
                "for": "1m",
                "labels": {"severity": "critical"},
                "annotations": {
                    "summary": "{{ $labels.job }} {{ $labels.instance }} cannot reach the event store",
                    "description": "The event store has not answered for a minute: writes and reads fail with "
                    "UNAVAILABLE (servers report NOT_SERVING; projections stop). Check the database and the "
                    f"network to it. Runbook: {RUNBOOK}",
                },
            },
            {
                "alert": "LeewayProjectionLagging",
                "expr": "max by (projection) (leeway_projection_lag_events) > 10000",
                "for": "10m",
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": "Read model {{ $labels.projection }} is {{ $value }} events behind the log",
                    "description": "Insights and audit trails wait for it and then answer PROJECTION_LAGGING. "
                    "Is `leeway projections run` (or the child of `leeway serve`) running and keeping up? "
                    f"Runbook: {RUNBOOK}",
                },
            },
            {
                "alert": "LeewayProjectionStuck",
                "expr": "max by (projection) (leeway_projection_lag_events) > 0 "
                "and max by (projection) (delta(leeway_projection_position[10m])) <= 0",
                "for": "5m",
                "labels": {"severity": "critical"},
                "annotations": {
                    "summary": "Read model {{ $labels.projection }} has not moved for 15 minutes while behind",
                    "description": "Events wait and the projection's position does not advance: its runner "
                    f"is down or failing on an event (see its logs: projection.failed). Runbook: {RUNBOOK}",
                },
            },
            {
                "alert": "LeewayHighErrorRate",
                "expr": "sum by (job) (rate(grpc_server_handled_total"
                f'{{grpc_code=~"{SERVER_ERROR_CODES}"}}[5m]))\n'
                "  / sum by (job) (rate(grpc_server_handled_total[5m])) > 0.05",
                "for": "5m",
                "labels": {"severity": "critical"},
                "annotations": {
                    "summary": "{{ $labels.job }}: {{ $value | humanizePercentage }} of calls fail on the server",
                    "description": f"More than 5% of calls end with {SERVER_ERROR_CODES} for 5 minutes (client "
                    f"mistakes and refusals are not counted). Runbook: {RUNBOOK}",
                },
            },
            {
                "alert": "LeewayInternalError",
                # increase() misses a series' first sample: a method whose first INTERNAL comes after a
                # restart appears at 1, hence the second half (a series that did not exist 5 minutes ago).
                "expr": 'sum by (job, grpc_service, grpc_method) (increase(grpc_server_handled_total{grpc_code="INTERNAL"}[5m])) > 0\n'
                'or sum by (job, grpc_service, grpc_method) (grpc_server_handled_total{grpc_code="INTERNAL"}\n'
                '  unless grpc_server_handled_total{grpc_code="INTERNAL"} offset 5m) > 0',
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": "{{ $labels.grpc_service }}/{{ $labels.grpc_method }} answered INTERNAL",
                    "description": "INTERNAL means a bug, never a client's mistake: find the rpc.internal_error "
                    f"log line (its correlation_id and trace_id lead to the call). Runbook: {RUNBOOK}",
                },
            },
            {
                "alert": "LeewayApprovalsOverdue",
                "expr": "max(leeway_approvals_overdue) > 0",
                "for": "5m",
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": "{{ $value }} pending approvals are past their timeout and not expired",
                    "description": "The servers expire holds every LEEWAY_EXPIRY_INTERVAL_SECONDS; overdue ones "
                    "for 5 minutes mean expiry is off (0) or failing (expiry.failed / expiry.error in the logs), "
                    f"and the employees' budgets stay held. Runbook: {RUNBOOK}",
                },
            },
        ],
    }
]


def rules_file() -> dict[str, Any]:
    return {"groups": ALERT_GROUPS}


def prometheus_rule() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "leeway",
            "labels": {
                "app.kubernetes.io/name": "leeway",
                "app.kubernetes.io/part-of": "leeway",
                # Prometheus Operator installs select rules by label; match yours (e.g. release: <helm release>).
                "role": "alert-rules",
            },
        },
        "spec": {"groups": ALERT_GROUPS},
    }


HEADER = "# Generated by deploy/observability/generate.py from ALERT_GROUPS: edit that, then run it again.\n"


def render() -> dict[str, str]:
    """Every generated file's name and text."""
    dump = lambda data: yaml.safe_dump(data, sort_keys=False, width=120, allow_unicode=True)  # noqa: E731
    return {
        DASHBOARD_FILE: json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n",
        RULES_FILE: HEADER + dump(rules_file()),
        PROMETHEUS_RULE_FILE: HEADER + dump(prometheus_rule()),
    }


def main(argv: list[str]) -> int:
    target = Path(argv[1]) if len(argv) > 1 else HERE
    target.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (target / name).write_text(text)
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
