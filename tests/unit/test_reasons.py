"""ErrorInfo reasons live in one StrEnum, every one of them is documented, and none is spelled out elsewhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from leeway.domain.reasons import Reason

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service" / "leeway"


def errors_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Errors")
    return readme[start : readme.index("\n## ", start)]


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_is_in_the_readme_error_table(reason: Reason) -> None:
    assert f"`{reason.value}`" in errors_section()


def test_the_readme_names_no_reason_that_does_not_exist() -> None:
    named = set(re.findall(r"`([A-Z][A-Z_]+[A-Z])`", errors_section()))
    statuses = {
        "INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "NOT_FOUND", "ALREADY_EXISTS", "ABORTED",
        "UNAVAILABLE", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "INTERNAL", "DATA_LOSS",
    }  # fmt: skip
    assert named - statuses - {r.value for r in Reason} == set()


def test_reason_values_are_their_names() -> None:
    assert all(reason.value == reason.name for reason in Reason)


def reason_literals() -> list[str]:
    """``reason="..."`` keyword arguments and ``reason = "..."`` class attributes with a string literal."""
    found = []
    for path in SERVICE.rglob("*.py"):
        if path.name == "reasons.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            values = []
            if isinstance(node, ast.keyword) and node.arg == "reason":
                values = [node.value]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "reason" for t in targets) and node.value is not None:
                    values = [node.value]
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value:
                    found.append(f"{path.relative_to(ROOT)}:{value.lineno} {value.value}")
    return found


def test_no_reason_is_spelled_out_outside_the_enum() -> None:
    assert reason_literals() == []
