"""deploy/observability: the generated dashboard and rule files are what generate.py writes now, the plain rules
file and the PrometheusRule hold the same groups, ``promtool check rules`` accepts both and ``promtool test rules``
passes the rule-unit tests. (That every metric they name is really exported: tests/e2e/test_observability.py.)

promtool comes with Debian's ``prometheus`` package (``apt-get install prometheus``); .ci/run installs it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from promql_names import metric_names

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "deploy" / "observability"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("leeway_observability_generate", HERE / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: install Debian's prometheus package (apt-get install -y prometheus); "
                    ".ci/run does", pytrace=False)
    return found


def dashboard() -> dict[str, Any]:
    return json.loads((HERE / "leeway-dashboard.json").read_text())


def dashboard_exprs(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]


def test_generated_files_are_up_to_date(generator: ModuleType, tmp_path: Path) -> None:
    assert generator.main(["generate.py", str(tmp_path)]) == 0
    for name in (generator.DASHBOARD_FILE, generator.RULES_FILE, generator.PROMETHEUS_RULE_FILE):
        assert (tmp_path / name).read_text() == (HERE / name).read_text(), (
            f"deploy/observability/{name} is stale: run .venv/bin/python deploy/observability/generate.py")


def test_plain_rules_and_prometheus_rule_agree() -> None:
    plain = yaml.safe_load((HERE / "alerts.rules.yaml").read_text())
    rule = yaml.safe_load((HERE / "prometheusrule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"] == "leeway" and "namespace" not in rule["metadata"]
    assert rule["metadata"]["labels"]["app.kubernetes.io/part-of"] == "leeway"
    assert rule["spec"]["groups"] == plain["groups"]
    alerts = {r["alert"] for group in plain["groups"] for r in group["rules"]}
    assert alerts == {
        "LeewayEventStoreDown", "LeewayProjectionLagging", "LeewayProjectionStuck", "LeewayHighErrorRate",
        "LeewayInternalError", "LeewayApprovalsOverdue",
    }
    for group in plain["groups"]:
        for r in group["rules"]:
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert r["annotations"]["summary"] and "Runbook" in r["annotations"]["description"], r["alert"]


def test_promtool_accepts_both_rule_files(promtool: str, tmp_path: Path) -> None:
    spec = yaml.safe_load((HERE / "prometheusrule.yaml").read_text())["spec"]
    extracted = tmp_path / "from-prometheusrule.yaml"
    extracted.write_text(yaml.safe_dump(spec))
    for path in (HERE / "alerts.rules.yaml", extracted):
        result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 6 rules found" in result.stdout


def test_promtool_rejects_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """The check above can fail: a rule with a PromQL syntax error is refused."""
    plain = yaml.safe_load((HERE / "alerts.rules.yaml").read_text())
    plain["groups"][0]["rules"][0]["expr"] = "min by (job (leeway_event_store_up) == 0"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(plain))
    result = subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yaml"], cwd=HERE, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_alert_rule_unit_tests_cover_every_alert() -> None:
    tests = yaml.safe_load((HERE / "alerts.test.yaml").read_text())
    plain = yaml.safe_load((HERE / "alerts.rules.yaml").read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    alerts = {r["alert"] for group in plain["groups"] for r in group["rules"]}
    assert fired == alerts, "every alert has a case where it fires"
    assert quiet == alerts, "and one where it stays quiet"


def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["uid"] == "leeway-overview" and board["title"] == "Leeway"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["query"] == "label_values(leeway_build_info, job)"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert '$job' in target["expr"], f"{panel['title']}: {target['expr']} ignores the job variable"
    titles = " / ".join(panel["title"] for panel in board["panels"])
    for wanted in ("Rate by method", "Errors by method", "Latency p99", "Refusals by reason", "Write batches",
                   "Projection lag", "Event store up", "Pending approvals", "CPU", "Resident memory"):
        assert wanted in titles


def test_dashboard_and_rules_name_the_metrics_the_issue_asks_for(generator: ModuleType) -> None:
    names = set().union(*(metric_names(e) for e in dashboard_exprs(dashboard())))
    for metric in ("grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "leeway_refusals_total",
                   "leeway_write_batches_total", "leeway_write_conflicts_total", "leeway_projection_lag_events",
                   "leeway_event_store_up", "leeway_pending_approvals", "process_cpu_seconds_total",
                   "process_resident_memory_bytes"):
        assert metric in names
