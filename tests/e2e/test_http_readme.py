"""The README's HTTP/JSON curl examples run as written (bash, curl, jq) against a real server (only the address is
changed), and every call in them succeeds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def answers(output: str) -> list[dict[str, Any]]:
    """The JSON documents curl printed, one after the other."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(output):
        if output[at].isspace():
            at += 1
            continue
        document, at = decoder.raw_decode(output, at)
        found.append(document)
    return found


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq") and shutil.which("bash")),
                    reason="the README's examples need bash, curl and jq")  # fmt: skip
def test_readme_curl_examples(make_server: Any, tmp_path: Path) -> None:
    section = README.read_text().split("## HTTP/JSON (Connect)", 1)[1]
    script = re.search(r"```sh\n(.*?)```", section, re.S)
    assert script, "README lost the curl examples of HTTP/JSON (Connect)"
    server = make_server(f"sqlite:///{tmp_path}/readme-http.sqlite")
    server.start()
    code = script.group(1)
    assert "LEEWAY=http://127.0.0.1:8080" in code
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code.replace("http://127.0.0.1:8080", server.http_url)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    replies = answers(run.stdout)
    errors = [reply for reply in replies if "code" in reply]
    assert not errors, errors
    opened, recorded, by_post, by_get, listed, approved = replies
    assert opened["budget"]["employeeId"] == "ann"
    assert recorded["action"]["state"] == "STATE_RECORDED"
    assert by_post == by_get and by_post["budget"]["spent"] == {"currencyCode": "USD", "units": "45", "nanos": 500000000}
    assert [a["actionId"] for a in listed["actions"]] == [recorded["action"]["actionId"]]
    assert approved["action"]["state"] == "STATE_APPROVED"
    assert approved["action"]["decision"]["approverId"] == "duty-manager-1"
