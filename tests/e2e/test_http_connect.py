"""The HTTP/JSON front (issue 20): every RPC over the Connect protocol, called by plain HTTP clients that know
nothing about Connect (httpx and curl), against real `leeway serve` processes with authentication on.

- JSON POST, proto POST, GET for a read, StreamEvents as a Connect server stream (envelopes read by hand);
- every error kind with its details (ErrorInfo always; BadRequest, PreconditionFailure, ResourceInfo,
  QuotaFailure + RetryInfo), decoded from the base64 protobuf the Connect error JSON carries and compared with its
  ``debug`` JSON; a body that does not parse; Connect-Timeout-Ms;
- authentication missing / wrong / forbidden, the same permission table as gRPC;
- correlation ids, metrics, log lines; CORS preflight; --http-port-file and LEEWAY_HTTP_ADDRESS=off; draining
  on SIGTERM;
- every RPC of protos/leeway/v1 is served (fails when a proto gains an RPC and the Connect stubs were not
  regenerated with `make proto`).
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2
from leeway.auth import hash_api_key, new_api_key
from leeway.v1 import action_pb2, audit_pb2, budget_pb2, insights_pb2, team_pb2

from .conftest import ServerProcess
from .helpers import jwt_server_env

AUDIENCE = "leeway-http-e2e"
ISSUER = "https://idp.http-e2e.test/"
ORIGIN = "https://crm.example.com"
DETAIL_TYPES = {
    "google.rpc.ErrorInfo": error_details_pb2.ErrorInfo,
    "google.rpc.BadRequest": error_details_pb2.BadRequest,
    "google.rpc.PreconditionFailure": error_details_pb2.PreconditionFailure,
    "google.rpc.ResourceInfo": error_details_pb2.ResourceInfo,
    "google.rpc.QuotaFailure": error_details_pb2.QuotaFailure,
    "google.rpc.RetryInfo": error_details_pb2.RetryInfo,
}
SERVICE_MODULES = (action_pb2, audit_pb2, budget_pb2, insights_pb2, team_pb2)


class Http:
    """A plain HTTP caller of one server, with one set of credentials."""

    def __init__(self, base: str, secret: str, crm_key: str):
        self.base = base
        self.secret = secret
        self.crm_key = crm_key
        self.http = httpx.Client(base_url=base, timeout=20.0)

    def token(self, sub: str, roles: list[str], teams: list[str] = ()) -> str:
        now = int(time.time())
        body = {"sub": sub, "roles": roles, "teams": list(teams), "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 600}
        return jwt.encode(body, self.secret, algorithm="HS256")

    def auth(self, who: str) -> dict[str, str]:
        if who == "crm":
            return {"authorization": f"ApiKey {self.crm_key}"}
        roles = {"admin": (["admin"], []), "auditor": (["auditor"], []), "ann": (["agent"], ["desk"]),
                 "bob": (["agent"], ["desk"])}[who]  # fmt: skip
        return {"authorization": f"Bearer {self.token(who, *roles)}"}

    def post(self, method: str, body: dict[str, Any], who: str | None = "admin", **headers: str) -> httpx.Response:
        sent = {"content-type": "application/json", **(self.auth(who) if who else {}), **headers}
        return self.http.post(f"/leeway.v1.{method}", content=json.dumps(body), headers=sent)

    def ok(self, method: str, body: dict[str, Any], who: str = "admin") -> dict[str, Any]:
        reply = self.post(method, body, who)
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == "application/json"
        return reply.json()


def refusal(reply: httpx.Response, status: int, code: str, reason: str) -> dict[str, Any]:
    """Asserts a Connect error JSON; returns its details decoded {type name: message}, each checked against its
    debug JSON."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    return error_details(reply.json(), code, reason)


def error_details(error: dict[str, Any], code: str, reason: str) -> dict[str, Any]:
    assert error["code"] == code, error
    assert error["message"], error
    details: dict[str, Any] = {}
    for detail in error["details"]:
        packed = any_pb2.Any(type_url=f"type.googleapis.com/{detail['type']}",
                             value=base64.b64decode(detail["value"] + "==="))  # fmt: skip
        message = DETAIL_TYPES[detail["type"]]()
        assert packed.Unpack(message), detail
        assert json_format.MessageToDict(message) == detail["debug"], "debug is the detail as JSON"
        details[detail["type"]] = message
    info = details["google.rpc.ErrorInfo"]
    assert (info.reason, info.domain) == (reason, "leeway"), info
    return details


def frames(body: bytes) -> list[tuple[int, dict[str, Any]]]:
    """A Connect stream body (application/connect+json) as (flags, JSON) envelopes."""
    found, at = [], 0
    while at < len(body):
        flags, size = struct.unpack(">BI", body[at : at + 5])
        found.append((flags, json.loads(body[at + 5 : at + 5 + size])))
        at += 5 + size
    return found


def envelope(message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(data)) + data


def open_request(employee: str, team: str = "desk", allowance: int = 500, per_action: int = 100) -> dict[str, Any]:
    return {
        "requestId": f"open-{employee}", "employeeId": employee, "teamId": team, "displayName": employee.title(),
        "policy": {"periodAllowance": {"currencyCode": "USD", "units": str(allowance)}, "period": "PERIOD_MONTH",
                   "perActionLimit": {"currencyCode": "USD", "units": str(per_action)},
                   "allowedKinds": ["ACTION_KIND_GIFT", "ACTION_KIND_REFUND"]},
    }  # fmt: skip


def gift(employee: str, request_id: str, units: int, nanos: int = 0) -> dict[str, Any]:
    return {
        "requestId": request_id, "employeeId": employee, "customerId": "guest-42", "caseId": "4711",
        "amount": {"currencyCode": "USD", "units": str(units), "nanos": nanos},
        "reason": "Dinner served late", "gift": {"giftType": "flowers"},
    }  # fmt: skip


@pytest.fixture(scope="module")
def site(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Http]]:
    secret = "http-e2e-secret-" + secrets.token_hex(24)
    crm_key = new_api_key()
    server = ServerProcess(
        engine_url,
        tmp_path_factory.mktemp("e2e-http"),
        {
            **jwt_server_env(secret, AUDIENCE, ISSUER, f"crm-main:crm:{hash_api_key(crm_key)}"),
            "LEEWAY_HTTP_CORS_ORIGINS": f"{ORIGIN}, http://localhost:3000",
        },
    )
    with server.running():
        http = Http(server.http_url, secret, crm_key)
        try:
            http.ok("BudgetService/OpenBudget", open_request("ann"))
            yield server, http
        finally:
            http.http.close()


@pytest.fixture
def http(site: tuple[ServerProcess, Http]) -> Http:
    return site[1]


# ---------------------------------------------------------------------------- the wire


def test_json_post_records_and_reads_with_exact_money(http: Http) -> None:
    first = http.ok("ActionService/RecordAction", gift("ann", "case-1-gift", 45, 500_000_000), who="crm")
    assert first["action"]["amount"] == {"currencyCode": "USD", "units": "45", "nanos": 500000000}
    assert first["action"]["kind"] == "ACTION_KIND_GIFT"
    again = http.ok("ActionService/RecordAction", gift("ann", "case-1-gift", 45, 500_000_000), who="crm")
    assert again["action"]["actionId"] == first["action"]["actionId"], "the same request_id records once"
    budget = http.ok("BudgetService/GetBudget", {"employee_id": "ann"}, who="ann")["budget"]  # proto names too
    assert budget["employeeId"] == "ann"
    listed = http.ok("ActionService/ListActions", {"employeeId": "ann"}, who="ann")
    assert first["action"]["actionId"] in [a["actionId"] for a in listed["actions"]]


def test_proto_post(http: Http) -> None:
    reply = http.http.post(
        "/leeway.v1.BudgetService/GetBudget",
        content=budget_pb2.GetBudgetRequest(employee_id="ann").SerializeToString(),
        headers={"content-type": "application/proto", **http.auth("ann")},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/proto"
    assert budget_pb2.GetBudgetResponse.FromString(reply.content).budget.employee_id == "ann"
    grpc_here = http.http.post("/leeway.v1.BudgetService/GetBudget", content=b"\0\0\0\0\0",
                               headers={"content-type": "application/grpc", **http.auth("ann")})  # fmt: skip
    assert grpc_here.status_code == 415 and "LEEWAY_GRPC_ADDRESS" in grpc_here.json()["message"]


def test_reads_by_get_and_writes_only_by_post(http: Http) -> None:
    reply = http.http.get(
        "/leeway.v1.BudgetService/GetBudget",
        params={"encoding": "json", "message": json.dumps({"employeeId": "ann"})},
        headers=http.auth("ann"),
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["budget"]["employeeId"] == "ann"
    packed = base64.urlsafe_b64encode(action_pb2.ListActionsRequest(employee_id="ann").SerializeToString()).decode()
    reply = http.http.get(
        "/leeway.v1.ActionService/ListActions",
        params={"encoding": "proto", "base64": "1", "message": packed.rstrip("=")},
        headers=http.auth("ann"),
    )
    assert reply.status_code == 200, reply.text
    assert action_pb2.ListActionsResponse.FromString(reply.content).actions
    write = http.http.get(
        "/leeway.v1.BudgetService/OpenBudget",
        params={"encoding": "json", "message": json.dumps(open_request("nope"))},
        headers=http.auth("admin"),
    )
    assert write.status_code == 405 and write.headers["allow"] == "POST"


def test_stream_events_is_a_connect_server_stream(http: Http) -> None:
    http.ok("ActionService/RecordAction", gift("ann", "case-2-gift", 5), who="crm")
    reply = http.http.post(
        "/leeway.v1.AuditService/StreamEvents",
        content=envelope({"employeeId": "ann"}),
        headers={"content-type": "application/connect+json", **http.auth("auditor")},
    )
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/connect+json"
    found = frames(reply.content)
    *events, (end_flags, end) = found
    assert end_flags & 0b10 and "error" not in end, end
    assert len(events) >= 3 and all(flags == 0 for flags, _ in events)
    types = [event["event"]["eventType"] for _, event in events]
    assert any("Action" in name for name in types), types
    positions = [int(event["event"]["position"]) for _, event in events]
    assert positions == sorted(positions)
    # An error in a stream is the end message's error, with the same details.
    bad = http.http.post(
        "/leeway.v1.AuditService/StreamEvents",
        content=envelope({"afterPosition": "-1"}),
        headers={"content-type": "application/connect+json", **http.auth("auditor")},
    )
    (flags, end), = frames(bad.content)  # fmt: skip
    details = error_details(end["error"], "invalid_argument", "INVALID_ARGUMENT")
    assert [v.field for v in details["google.rpc.BadRequest"].field_violations] == ["after_position"]


def test_a_following_stream_honours_connect_timeout_ms(http: Http) -> None:
    started = time.monotonic()
    reply = http.http.post(
        "/leeway.v1.AuditService/StreamEvents",
        content=envelope({"employeeId": "ann", "follow": True}),
        headers={"content-type": "application/connect+json", "connect-timeout-ms": "700", **http.auth("auditor")},
    )
    assert 0.6 < time.monotonic() - started < 10
    *_, (flags, end) = frames(reply.content)
    assert flags & 0b10
    error_details(end["error"], "deadline_exceeded", "DEADLINE_EXCEEDED")


# ---------------------------------------------------------------------------- errors


def test_every_error_kind_carries_its_details(http: Http) -> None:
    details = refusal(http.post("BudgetService/OpenBudget", {"employeeId": "x"}), 400, "invalid_argument", "INVALID_ARGUMENT")
    assert {"team_id", "policy"} <= {v.field for v in details["google.rpc.BadRequest"].field_violations}

    details = refusal(
        http.post("ActionService/RecordAction", gift("ann", "too-much", 150), who="crm"),
        400, "failed_precondition", "PER_ACTION_LIMIT_EXCEEDED",
    )  # fmt: skip
    assert details["google.rpc.PreconditionFailure"].violations[0].type

    details = refusal(http.post("BudgetService/GetBudget", {"employeeId": "ghost"}), 404, "not_found", "BUDGET_NOT_FOUND")
    assert details["google.rpc.ResourceInfo"].resource_name == "budgets/ghost"

    refusal(http.post("BudgetService/OpenBudget", {**open_request("ann"), "requestId": "other"}), 409,
            "already_exists", "BUDGET_ALREADY_EXISTS")  # fmt: skip
    refusal(http.post("ActionService/RecordAction", gift("ann", "case-1-gift", 46), who="crm"), 409,
            "already_exists", "REQUEST_ID_REUSED")  # fmt: skip

    details = refusal(
        http.http.post("/leeway.v1.BudgetService/GetBudget", content=b"{not json",
                       headers={"content-type": "application/json", **http.auth("ann")}),
        400, "invalid_argument", "MALFORMED_REQUEST",
    )  # fmt: skip
    assert details["google.rpc.BadRequest"].field_violations[0].field == "request"
    # Even the errors the Connect runtime answers before a call starts carry an ErrorInfo.
    bad_header = http.post("BudgetService/GetBudget", {"employeeId": "ann"}, who="ann", **{"connect-timeout-ms": "soon"})
    refusal(bad_header, 400, "invalid_argument", "MALFORMED_REQUEST")


def test_authentication_missing_wrong_and_forbidden(http: Http, site: tuple[ServerProcess, Http]) -> None:
    refusal(http.post("BudgetService/GetBudget", {"employeeId": "ann"}, who=None), 401, "unauthenticated", "UNAUTHENTICATED")
    wrong = http.post("BudgetService/GetBudget", {"employeeId": "ann"}, who=None, authorization="ApiKey lwk_wrong")
    refusal(wrong, 401, "unauthenticated", "API_KEY_INVALID")
    expired = jwt.encode({"sub": "ann", "roles": ["agent"], "aud": AUDIENCE, "iss": ISSUER, "iat": 1, "exp": 2},
                         http.secret, algorithm="HS256")  # fmt: skip
    refusal(http.post("BudgetService/GetBudget", {"employeeId": "ann"}, who=None, authorization=f"Bearer {expired}"),
            401, "unauthenticated", "TOKEN_EXPIRED")  # fmt: skip
    # The permission table at the resource: an agent reads only their own budget, and a missing one is refused
    # the same way as another's.
    other = refusal(http.post("BudgetService/GetBudget", {"employeeId": "ann"}, who="bob"), 403, "permission_denied",
                    "PERMISSION_DENIED")  # fmt: skip
    missing = refusal(http.post("BudgetService/GetBudget", {"employeeId": "ghost"}, who="bob"), 403,
                      "permission_denied", "PERMISSION_DENIED")  # fmt: skip
    assert set(other) == set(missing)
    refusal(http.post("BudgetService/OpenBudget", open_request("zed"), who="crm"), 403, "permission_denied",
            "PERMISSION_DENIED")  # fmt: skip
    server, _ = site
    deadline = time.monotonic() + 5  # info lines are written LEEWAY_LOG_FLUSH_SECONDS apart
    while '"rpc.refused"' not in server.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    logs = server.logs()
    assert '"rpc.refused"' in logs and "lwk_wrong" not in logs and http.secret not in logs


def test_unary_connect_timeout_ms(http: Http) -> None:
    reply = http.post("BudgetService/GetBudget", {"employeeId": "ann"}, who="ann", **{"connect-timeout-ms": "0"})
    refusal(reply, 504, "deadline_exceeded", "DEADLINE_EXCEEDED")


def test_correlation_ids_metrics_and_log_lines(site: tuple[ServerProcess, Http]) -> None:
    server, http = site
    reply = http.post("BudgetService/GetBudget", {"employeeId": "ann"}, who="ann", **{"x-correlation-id": "crm-trace-77"})
    assert reply.status_code == 200 and reply.headers["x-correlation-id"] == "crm-trace-77"
    refused = http.post("BudgetService/GetBudget", {"employeeId": "ghost"}, who="admin")
    assert len(refused.headers["x-correlation-id"]) == 32, "a new id when the caller sends none"
    deadline = time.monotonic() + 5
    while '"crm-trace-77"' not in server.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(json.loads(x) for x in server.logs().splitlines() if '"crm-trace-77"' in x)
    assert (line["event"], line["method"], line["principal"], line["code"]) == (
        "rpc", "/leeway.v1.BudgetService/GetBudget", "ann", "OK")
    assert line["peer"].startswith("ipv4:127.0.0.1:")
    metrics = httpx.get(server.metrics_url()).text
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="GetBudget",grpc_service="leeway.v1.BudgetService",grpc_type="unary"}' in metrics
    assert 'grpc_code="NOT_FOUND",grpc_method="GetBudget"' in metrics
    assert 'leeway_http_calls_total{grpc_method="GetBudget",grpc_service="leeway.v1.BudgetService",http_method="POST"}' in metrics
    assert 'leeway_refusals_total{grpc_method="GetBudget",reason="BUDGET_NOT_FOUND"}' in metrics


def test_cors_preflight_and_exposed_headers(http: Http) -> None:
    preflight = http.http.options(
        "/leeway.v1.BudgetService/GetBudget",
        headers={"origin": ORIGIN, "access-control-request-method": "POST",
                 "access-control-request-headers": "content-type,authorization,connect-protocol-version"},
    )  # fmt: skip
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    stranger = http.http.options(
        "/leeway.v1.BudgetService/GetBudget",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert stranger.status_code == 400 and "access-control-allow-origin" not in stranger.headers
    call = http.post("BudgetService/GetBudget", {"employeeId": "ann"}, who="ann", origin=ORIGIN)
    assert call.headers["access-control-allow-origin"] == ORIGIN
    assert "x-correlation-id" in call.headers["access-control-expose-headers"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(http: Http) -> None:
    token = http.auth("ann")["authorization"]
    posted = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H", "content-type: application/json", "-H", f"authorization: {token}",
         "-d", '{"employeeId": "ann"}', f"{http.base}/leeway.v1.BudgetService/GetBudget"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(posted.stdout)["budget"]["employeeId"] == "ann"
    got = subprocess.run(
        ["curl", "-sS", "-G", "-H", f"authorization: {token}", "--data-urlencode", "encoding=json",
         "--data-urlencode", 'message={"employeeId": "ann"}', f"{http.base}/leeway.v1.BudgetService/GetBudget"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(got.stdout)["budget"]["employeeId"] == "ann"
    refused = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", "-H", "content-type: application/json",
         "-d", '{"employeeId": "ann"}', f"{http.base}/leeway.v1.BudgetService/GetBudget"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    body, status = refused.stdout.rsplit("\n", 1)
    assert status == "401" and json.loads(body)["code"] == "unauthenticated"


def test_every_rpc_of_the_protos_is_served(http: Http) -> None:
    """Each RPC answers over Connect (a refusal of an empty request is an answer); a proto RPC without Connect
    stubs would be 404, one without a servicer UNIMPLEMENTED: run `make proto` (and add its servicer)."""
    methods = [(s.full_name, m) for module in SERVICE_MODULES for s in module.DESCRIPTOR.services_by_name.values()
               for m in s.methods]  # fmt: skip
    assert len(methods) >= 23
    unserved = []
    for service, method in methods:
        if method.server_streaming:
            reply = http.http.post(f"/{service}/{method.name}", content=envelope({}),
                                   headers={"content-type": "application/connect+json", **http.auth("admin")})  # fmt: skip
            error = frames(reply.content)[-1][1].get("error") if reply.status_code == 200 else {"code": reply.status_code}
        else:
            reply = http.http.post(f"/{service}/{method.name}", content=b"{}",
                                   headers={"content-type": "application/json", **http.auth("admin")})  # fmt: skip
            error = None if reply.status_code == 200 else reply.json()
        if reply.status_code == 404 and error.get("code") != "not_found" or (error or {}).get("code") == "unimplemented":
            unserved.append(f"/{service}/{method.name}")
    assert not unserved, f"not served over Connect: {unserved}; run `make proto` and commit clients/python/src/leeway/v1/*_connect.py"


# ---------------------------------------------------------------------------- lifecycle and settings


def test_rate_limit_and_http_off(engine_url: str, make_server: Any) -> None:
    """A server with a tight rate limit: RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo over HTTP; with
    LEEWAY_HTTP_ADDRESS=off no HTTP port is opened (and none written) while gRPC serves."""
    key = new_api_key()
    limited = make_server(engine_url, {
        "LEEWAY_AUTH": "required", "LEEWAY_API_KEYS": f"crm-main:crm:{hash_api_key(key)}",
        "LEEWAY_RATE_LIMIT_PER_SECOND": "1", "LEEWAY_RATE_LIMIT_BURST": "2",
    })  # fmt: skip
    limited.start()
    with httpx.Client(base_url=limited.http_url, timeout=10) as client:
        replies = [
            client.post("/leeway.v1.TeamService/GetCustomerUsage", content=b'{"customerId": "c1"}',
                        headers={"content-type": "application/json", "authorization": f"ApiKey {key}"})
            for _ in range(4)
        ]  # fmt: skip
    details = refusal(replies[-1], 429, "resource_exhausted", "RATE_LIMITED")
    assert details["google.rpc.QuotaFailure"].violations[0].subject == "principal:crm-main"
    assert details["google.rpc.RetryInfo"].retry_delay.ToTimedelta().total_seconds() > 0
    limited.stop_cleanly()

    off = make_server(engine_url, {"LEEWAY_HTTP_ADDRESS": "off"})
    off.start()
    assert off.http_port == 0 and not (off.workdir / "http-port-1").exists()
    serving = next(json.loads(x) for x in off.logs().splitlines() if '"serving"' in x)
    assert serving["http"] == "off"
    off.stop_cleanly()


def test_bad_http_settings_are_refused_at_start(tmp_path: Path) -> None:
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEWAY_")}
    env.update(LEEWAY_GRPC_ADDRESS="127.0.0.1:0", LEEWAY_DATABASE_URL=f"sqlite:///{tmp_path}/x.sqlite",
               LEEWAY_HTTP_ADDRESS="8080", LEEWAY_HTTP_CORS_ORIGINS="crm.example.com/app")  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "leeway.cli", "serve"], env=env, capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "LEEWAY_HTTP_ADDRESS='8080'" in result.stderr and "LEEWAY_HTTP_CORS_ORIGINS" in result.stderr


def test_sigterm_drains_the_http_front(engine_url: str, make_server: Any) -> None:
    """SIGTERM: a following HTTP stream ends cleanly (end-of-stream, no error), a unary call in flight is
    answered, the process exits 0 and the HTTP port is closed."""
    server = make_server(engine_url, {"LEEWAY_SHUTDOWN_GRACE_SECONDS": "5"})
    server.start()
    base = server.http_url
    with httpx.Client(base_url=base, timeout=20) as client:
        client.post("/leeway.v1.BudgetService/OpenBudget", content=json.dumps(open_request("eve")),
                    headers={"content-type": "application/json"}).raise_for_status()  # fmt: skip
        stream: dict[str, Any] = {}

        def follow() -> None:
            reply = client.post("/leeway.v1.AuditService/StreamEvents", content=envelope({"follow": True}),
                                headers={"content-type": "application/connect+json"})  # fmt: skip
            stream["frames"] = frames(reply.content)

        follower = threading.Thread(target=follow)
        follower.start()
        time.sleep(1.0)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        follower.join(timeout=15)
        assert not follower.is_alive()
    *events, (flags, end) = stream["frames"]
    assert events and flags & 0b10 and "error" not in end, end
    assert server.proc.wait(timeout=15) == 0
    server.proc = None
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{base}/leeway.v1.BudgetService/GetBudget", content=b"{}", headers={"content-type": "application/json"})


def test_the_http_front_uses_the_same_tls_and_mutual_tls(make_server: Any, tmp_path: Path) -> None:
    """LEEWAY_TLS_* covers the HTTP front too: https with the server's certificate, client certificates required
    with LEEWAY_TLS_CLIENT_CA_FILE; plain http and a client without a certificate get no answer."""
    import ssl
    import sys

    certs = tmp_path / "certs"
    made = subprocess.run([sys.executable, "-m", "leeway.cli", "dev-certs", str(certs)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    server = make_server(f"sqlite:///{tmp_path}/tls.sqlite", {
        "LEEWAY_TLS_CERT_FILE": str(certs / "server.pem"), "LEEWAY_TLS_KEY_FILE": str(certs / "server-key.pem"),
        "LEEWAY_TLS_CLIENT_CA_FILE": str(certs / "ca.pem"),
    })  # fmt: skip
    server.start(wait_serving=False)
    url = f"https://localhost:{server.http_port}/leeway.v1.BudgetService/OpenBudget"
    body, headers = json.dumps(open_request("tia")), {"content-type": "application/json"}
    with_cert = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with_cert.load_cert_chain(str(certs / "client.pem"), str(certs / "client-key.pem"))
    deadline = time.monotonic() + 20
    while True:
        try:
            reply = httpx.post(url, content=body, headers=headers, verify=with_cert, timeout=10)
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline, server.logs()
            time.sleep(0.1)
    assert reply.status_code == 200 and reply.json()["budget"]["employeeId"] == "tia", reply.text
    without_cert = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(url, content=body, headers=headers, verify=without_cert, timeout=10)
    try:
        plain: httpx.Response | None = httpx.post(url.replace("https", "http"), content=body, headers=headers, timeout=10)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        plain = None
    assert plain is None or plain.status_code >= 400, "plain http is not answered"
    server.stop_cleanly()
