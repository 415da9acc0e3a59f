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
    plugin = BIN / "protoc-gen-mypy_grpc"
    assert plugin.exists(), "mypy-protobuf is a dev dependency (pip install -e '.[dev]')"
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "leeway" / "v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTOS),
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            f"--plugin=protoc-gen-mypy_grpc={plugin}", f"--mypy_grpc_out=quiet:{tmp_path}",
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
