"""Security end to end (issue 5): who may call what, with which credentials, over which transport.

Real `leeway serve` processes:

- the authorisation matrix (every RPC of ``authz.RULES`` x every role, and x every kind of bad credential) on
  a server with ``LEEWAY_AUTH=required``, an HS256 JWT secret and one CRM API key, on SQLite and PostgreSQL;
  the expected answer of each (method, role) is written down in ``MATRIX`` below, so this file documents the
  policy; plus the specific rules (an agent spends only their own budget, a refusal does not reveal whether
  the resource exists, an auditor never writes, a CRM records on behalf of an employee but decides nothing,
  supervisors approve as themselves and never their own actions, custom roles count for approver_role);
- the rules at the resource (AIP-211, issue 18), written down in ``RESOURCE_MATRIX``: role approval only in the
  action's team, permission before existence and state, no other team's details in an error, responses without
  what the caller may not read, nobody reverses their own action, a supervisor grants at most their own policy;
- public-key JWTs (EdDSA, RS256) and the HS256 algorithm-confusion attack;
- the per-principal rate limit (RESOURCE_EXHAUSTED + QuotaFailure + RetryInfo);
- refusals logged without secrets;
- TLS and mutual TLS with `leeway dev-certs` certificates;
- `leeway api-key` output as LEEWAY_API_KEYS, and both API key headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from leeway.auth import hash_api_key, new_api_key
from leeway.grpc_api import authz
from leeway.v1 import action_pb2, audit_pb2, budget_pb2, insights_pb2, policy_pb2, privacy_pb2, team_pb2
from leeway_client import (
    LeewayClient,
    LeewayError,
    PermissionDeniedError,
    RefundDetails,
    from_rpc_error,
    make_cap,
    to_money,
)

from builders import unpacked_details

from .conftest import STARTUP_TIMEOUT, ServerProcess
from .helpers import expect_error, jwt_server_env, policy

AUDIENCE = "leeway-e2e"
ISSUER = "https://idp.e2e.test/"
CRM_KEY_NAME = "crm-main"

PENDING = action_pb2.Action.STATE_PENDING_APPROVAL
RECORDED = action_pb2.Action.STATE_RECORDED
APPROVED = action_pb2.Action.STATE_APPROVED
DENIED = action_pb2.Action.STATE_DENIED
REVERSED = action_pb2.Action.STATE_REVERSED

# ---------------------------------------------------------------------------- the policy, written down

ROLES = ("agent", "supervisor", "auditor", "admin", "crm")
#: Who each role is in the matrix: (principal id, JWT roles, JWT teams); the crm is an API key.
CALLERS: dict[str, tuple[str, list[str], list[str]]] = {
    "agent": ("ann", ["agent"], ["desk"]),
    "supervisor": ("sam", ["supervisor"], ["desk"]),
    "auditor": ("audrey", ["auditor"], []),
    "admin": ("root", ["admin"], []),
}
ok, no = "ok", "denied"

#: The answer of each RPC to each role, for the requests built by ``matrix_request`` (all about agent ann of
#: team "desk", whose supervisor is sam; "as caller" means approver_id / actor_id is the caller's own id).
#: "ok" = the call succeeds; "denied" = PERMISSION_DENIED (reason PERMISSION_DENIED) from the permission table.
MATRIX: dict[str, tuple[str, str, str, str, str]] = {
    #                                                     agent supervisor auditor admin  crm
    "/leeway.v1.BudgetService/OpenBudget":               (no,   no,        no,     ok,    no),  # a new desk budget
    "/leeway.v1.BudgetService/GetBudget":                (ok,   ok,        ok,     ok,    ok),  # ann's
    "/leeway.v1.BudgetService/ListBudgets":              (no,   ok,        ok,     ok,    no),  # team desk
    "/leeway.v1.BudgetService/UpdatePolicy":             (no,   ok,        no,     ok,    no),  # ann's
    "/leeway.v1.BudgetService/CloseBudget":              (no,   no,        no,     ok,    no),  # a desk budget
    "/leeway.v1.BudgetService/ReopenBudget":             (no,   no,        no,     ok,    no),  # a closed desk budget
    "/leeway.v1.BudgetService/MoveEmployee":             (no,   no,        no,     ok,    no),  # a desk budget to ops
    "/leeway.v1.ActionService/RecordAction":             (ok,   no,        no,     no,    ok),  # for ann
    "/leeway.v1.ActionService/GetAction":                (ok,   ok,        ok,     ok,    ok),  # ann's
    "/leeway.v1.ActionService/ListActions":              (ok,   ok,        ok,     ok,    no),  # ann's
    "/leeway.v1.ActionService/ApproveAction":            (no,   ok,        no,     no,    no),  # ann's, as caller
    "/leeway.v1.ActionService/DenyAction":               (no,   ok,        no,     no,    no),  # ann's, as caller
    "/leeway.v1.ActionService/ReverseAction":            (no,   ok,        no,     ok,    no),  # ann's, as caller
    "/leeway.v1.ActionService/DocumentWin":              (ok,   ok,        no,     no,    ok),  # ann's
    "/leeway.v1.TeamService/SetTeamCap":                 (no,   no,        no,     ok,    no),  # another team
    "/leeway.v1.TeamService/GetTeam":                    (no,   ok,        ok,     ok,    no),  # team desk
    "/leeway.v1.TeamService/SetCustomerCap":             (no,   no,        no,     ok,    no),  # remove the cap
    "/leeway.v1.TeamService/GetCustomerUsage":           (no,   ok,        ok,     ok,    ok),
    "/leeway.v1.AuditService/StreamEvents":              (no,   no,        ok,     ok,    no),  # ann's events
    "/leeway.v1.AuditService/VerifyIntegrity":           (no,   no,        ok,     ok,    no),  # ann's budget
    "/leeway.v1.AuditService/GetAuditTrail":             (ok,   ok,        ok,     ok,    no),  # ann's budget
    "/leeway.v1.InsightsService/GetKpis":                (ok,   ok,        ok,     ok,    no),  # ann's KPIs
    "/leeway.v1.InsightsService/GetKpiSeries":           (ok,   ok,        ok,     ok,    no),  # ann's, per day
    "/leeway.v1.InsightsService/ListWins":               (ok,   ok,        ok,     ok,    ok),  # team desk's wins
    "/leeway.v1.PrivacyService/EraseCustomer":           (no,   no,        no,     ok,    no),  # a customer
    "/leeway.v1.PrivacyService/EraseEmployee":           (no,   no,        no,     ok,    no),  # a desk employee
    "/leeway.v1.PrivacyService/ExportCustomerData":      (no,   no,        no,     ok,    no),  # cust-1's data
    "/leeway.v1.PrivacyService/RedactLegacyData":        (no,   no,        no,     ok,    no),  # a customer's legacy data
}

#: Every way of presenting bad credentials -> the ErrorInfo reason of the UNAUTHENTICATED answer.
BAD_CREDENTIALS = {
    "no credentials": "UNAUTHENTICATED",
    "expired token": "TOKEN_EXPIRED",
    "wrong audience": "TOKEN_INVALID",
    "wrong issuer": "TOKEN_INVALID",
    "wrong signature": "TOKEN_INVALID",
    "alg=none": "TOKEN_INVALID",
    "missing sub": "TOKEN_INVALID",
    "empty sub": "TOKEN_INVALID",
    "HS512 (not an accepted algorithm)": "TOKEN_INVALID",
    "not a JWT": "TOKEN_INVALID",
    "unknown API key": "API_KEY_INVALID",
    "the API key's hash as the key": "API_KEY_INVALID",
    "Basic scheme": "UNAUTHENTICATED",
}


# ---------------------------------------------------------------------------- tokens and raw calls


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub: str | None, roles: list[str], teams: list[str] = (), **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {
        "sub": sub, "roles": list(roles), "teams": list(teams), "aud": AUDIENCE, "iss": ISSUER,
        "iat": now, "exp": now + 600,
    }
    if sub is None:
        del body["sub"]
    body.update(overrides)
    return body


def unsigned_token(body: dict[str, Any]) -> str:
    """alg=none, crafted by hand: header.payload. (an empty signature)."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(body).encode())}."


def hs256_by_hand(body: dict[str, Any], key: bytes) -> str:
    """An HS256 token with any bytes as the HMAC key (PyJWT refuses to use a PEM key as an HMAC secret)."""
    signing_input = f"{b64url(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64url(json.dumps(body).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def method_descriptor(full_name: str):
    service, name = full_name.strip("/").split("/")
    return descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]


def invoke(channel: grpc.Channel, full_name: str, request: Any, metadata: tuple = ()) -> Any:
    """Calls any unary RPC by its full name (request and response types from the descriptors)."""
    method = method_descriptor(full_name)
    assert request.DESCRIPTOR is method.input_type, f"{full_name} takes {method.input_type.full_name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    if method.server_streaming:
        stream = channel.unary_stream(
            full_name, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_class.FromString
        )
        return list(stream(request, metadata=metadata, timeout=10))
    rpc = channel.unary_unary(
        full_name, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_class.FromString
    )
    return rpc(request, metadata=metadata, timeout=10)


def refusal(call: Callable[[], Any]) -> LeewayError:
    """The error of a raw call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return from_rpc_error(caught.value)


def outcome(channel: grpc.Channel, full_name: str, request: Any, metadata: tuple) -> str:
    """"ok", "denied" (PERMISSION_DENIED from the permission table) or "CODE REASON" for anything else."""
    try:
        invoke(channel, full_name, request, metadata)
        return ok
    except grpc.RpcError as rpc_error:
        error = from_rpc_error(rpc_error)
        if error.code == grpc.StatusCode.PERMISSION_DENIED and error.reason == "PERMISSION_DENIED":
            assert error.domain == "leeway", error
            return no
        return f"{error.code.name} {error.reason}"


def mutating_methods() -> set[str]:
    """The RPCs that change something: their requests carry a request_id (idempotency key)."""
    return {m for m in authz.RULES if "request_id" in method_descriptor(m).input_type.fields_by_name}


def master_key_file(directory: Path) -> Path:
    path = directory / "master.key"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


def refund(amount: str) -> dict[str, Any]:
    return {"amount": amount, "currency": "EUR", "details": RefundDetails(order_id="o-1"), "reason": "goodwill"}


# ---------------------------------------------------------------------------- the matrix server


@dataclass
class World:
    """The authenticated server, its credentials and the data set up as admin."""

    server: ServerProcess
    channel: grpc.Channel
    secret: str
    crm_key: str
    issued: list[str] = field(default_factory=list)  # every credential handed out (none may appear in the logs)
    clients: dict[str, LeewayClient] = field(default_factory=dict)
    recorded_id: str = ""  # a recorded action of ann
    pending_id: str = ""  # a pending action of ann, approvable by sam
    olga_action_id: str = ""  # a recorded action of olga (team ops)

    def token(self, sub: str | None, roles: list[str], teams: list[str] = (), *, key: str | None = None,
              algorithm: str = "HS256", **overrides: Any) -> str:
        token = jwt.encode(claims(sub, roles, teams, **overrides), key or self.secret, algorithm=algorithm)
        self.issued.append(token)
        return token

    def metadata(self, role: str) -> tuple[tuple[str, str], ...]:
        if role == "crm":
            return (("authorization", f"ApiKey {self.crm_key}"),)
        sub, roles, teams = CALLERS[role]
        return bearer(self.token(sub, roles, teams))

    def caller_id(self, role: str) -> str:
        return CRM_KEY_NAME if role == "crm" else CALLERS[role][0]

    def client(self, sub: str, roles: list[str], teams: list[str] = ()) -> LeewayClient:
        """A client with a JWT of its own (closed at the end of the module)."""
        name = f"{sub}:{'+'.join(roles)}:{'+'.join(teams)}"
        if name not in self.clients:
            self.clients[name] = LeewayClient(self.server.target, token=self.token(sub, roles, teams), retries=0)
        return self.clients[name]

    @property
    def admin(self) -> LeewayClient:
        return self.client("root", ["admin"])

    @property
    def crm(self) -> LeewayClient:
        if "crm" not in self.clients:
            self.clients["crm"] = LeewayClient(self.server.target, api_key=self.crm_key, retries=0)
        return self.clients["crm"]

    @property
    def ann(self) -> LeewayClient:
        return self.client("ann", ["agent"], ["desk"])

    @property
    def sam(self) -> LeewayClient:
        return self.client("sam", ["supervisor"], ["desk"])

    # fresh state for calls that consume it
    def fresh_pending(self) -> str:
        response = self.crm.record_action("ann", f"cust-{uuid.uuid4().hex[:8]}", **refund("50"))
        assert response.action.state == PENDING
        return response.action.action_id

    def fresh_recorded(self) -> str:
        response = self.crm.record_action("ann", "cust-1", **refund("1"))
        assert response.action.state == RECORDED
        return response.action.action_id

    def fresh_budget(self, *, closed: bool = False) -> str:
        employee = f"emp-{uuid.uuid4().hex[:8]}"
        self.admin.open_budget(employee, "desk", policy("100"))
        if closed:
            self.admin.close_budget(employee, "left the company")
        return employee


def ann_policy() -> policy_pb2.Policy:
    return policy("10000", per_action_limit="40", escalate_to=["sam"], approval_timeout=timedelta(hours=1))


def matrix_request(world: World, method: str, caller_id: str, *, fresh: bool = True) -> Any:
    """A valid request for ``method`` about agent ann (see MATRIX). ``fresh``: new state for calls that consume
    it (a new pending action to approve, a new budget to close ...); otherwise the shared, set-up state."""
    rid = str(uuid.uuid4())
    name = method.rsplit("/", 1)[-1]
    if name == "OpenBudget":
        employee = f"new-{uuid.uuid4().hex[:8]}" if fresh else "never-opened"
        return budget_pb2.OpenBudgetRequest(request_id=rid, employee_id=employee, team_id="desk", policy=policy("100"))
    if name == "GetBudget":
        return budget_pb2.GetBudgetRequest(employee_id="ann")
    if name == "ListBudgets":
        return budget_pb2.ListBudgetsRequest(team_id="desk")
    if name == "UpdatePolicy":
        return budget_pb2.UpdatePolicyRequest(request_id=rid, employee_id="ann", policy=ann_policy())
    if name == "CloseBudget":
        employee = world.fresh_budget() if fresh else "olga"
        return budget_pb2.CloseBudgetRequest(request_id=rid, employee_id=employee, reason="left the company")
    if name == "ReopenBudget":
        employee = world.fresh_budget(closed=True) if fresh else "olga"
        return budget_pb2.ReopenBudgetRequest(request_id=rid, employee_id=employee, reason="rehired")
    if name == "MoveEmployee":
        employee = world.fresh_budget() if fresh else "olga"
        return budget_pb2.MoveEmployeeRequest(request_id=rid, employee_id=employee, team_id="ops" if fresh else "desk")
    if name == "RecordAction":
        return action_pb2.RecordActionRequest(
            request_id=rid, employee_id="ann", customer_id="cust-1", amount=to_money("1", "EUR"), reason="goodwill",
            refund=action_pb2.RefundDetails(order_id="o-1"),
        )
    if name == "GetAction":
        return action_pb2.GetActionRequest(action_id=world.recorded_id)
    if name == "ListActions":
        return action_pb2.ListActionsRequest(employee_id="ann")
    if name in ("ApproveAction", "DenyAction"):
        message = action_pb2.ApproveActionRequest if name == "ApproveAction" else action_pb2.DenyActionRequest
        action_id = world.fresh_pending() if fresh else world.pending_id
        return message(request_id=rid, action_id=action_id, approver_id=caller_id, note="decided")
    if name == "ReverseAction":
        action_id = world.fresh_recorded() if fresh else world.recorded_id
        return action_pb2.ReverseActionRequest(request_id=rid, action_id=action_id, reason="mistake", actor_id=caller_id)
    if name == "DocumentWin":
        action_id = world.fresh_recorded() if fresh else world.recorded_id
        return action_pb2.DocumentWinRequest(request_id=rid, action_id=action_id, story="the guest came back")
    if name == "SetTeamCap":
        return team_pb2.SetTeamCapRequest(request_id=rid, team_id="matrix-team", cap=make_cap("1000", "EUR"))
    if name == "GetTeam":
        return team_pb2.GetTeamRequest(team_id="desk")
    if name == "SetCustomerCap":
        return team_pb2.SetCustomerCapRequest(request_id=rid)  # no cap: removes it (there is none)
    if name == "StreamEvents":
        return audit_pb2.StreamEventsRequest(employee_id="ann")
    if name == "GetAuditTrail":
        return audit_pb2.GetAuditTrailRequest(employee_id="ann")
    if name == "VerifyIntegrity":
        return audit_pb2.VerifyIntegrityRequest(employee_id="ann")
    if name == "GetCustomerUsage":
        return team_pb2.GetCustomerUsageRequest(customer_id="cust-1")
    if name == "GetKpis":
        return insights_pb2.GetKpisRequest(employee_id="ann")
    if name == "GetKpiSeries":
        end = Timestamp(seconds=int(time.time()))
        start = Timestamp(seconds=end.seconds - 3 * 86400)
        return insights_pb2.GetKpiSeriesRequest(employee_id="ann", start_time=start, end_time=end,
                                                granularity=insights_pb2.KPI_GRANULARITY_DAY)
    if name == "ListWins":
        return insights_pb2.ListWinsRequest(team_id="desk")
    if name == "EraseCustomer":
        customer = f"gone-{uuid.uuid4().hex[:8]}" if fresh else "never-seen"
        return privacy_pb2.EraseCustomerRequest(request_id=rid, customer_id=customer, reason="art. 17 #1")
    if name == "EraseEmployee":
        employee = world.fresh_budget() if fresh else "never-opened"
        return privacy_pb2.EraseEmployeeRequest(request_id=rid, employee_id=employee, reason="art. 17 #2")
    if name == "ExportCustomerData":
        return privacy_pb2.ExportCustomerDataRequest(customer_id="cust-1")
    if name == "RedactLegacyData":
        customer = f"gone-{uuid.uuid4().hex[:8]}" if fresh else "never-seen"
        return privacy_pb2.RedactLegacyDataRequest(request_id=rid, customer_id=customer, reason="art. 17 #3")
    pytest.fail(f"{method} is in authz.RULES but this test builds no request for it: add it here and to MATRIX")


@pytest.fixture(scope="module")
def world(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    secret = "e2e-jwt-secret-" + secrets.token_hex(24)
    crm_key = new_api_key()
    server = ServerProcess(
        engine_url,
        tmp_path_factory.mktemp("e2e-security"),
        {
            **jwt_server_env(secret, AUDIENCE, ISSUER, f"{CRM_KEY_NAME}:crm:{hash_api_key(crm_key)}"),
            # Personal data encrypted on PostgreSQL too (the PrivacyService rows of the matrix erase).
            "LEEWAY_MASTER_KEY_FILE": str(master_key_file(tmp_path_factory.mktemp("e2e-keys"))),
        },
    )
    with server.running(), grpc.insecure_channel(server.target) as channel:
        world = World(server, channel, secret, crm_key)
        try:
            admin = world.admin
            admin.open_budget("ann", "desk", ann_policy())
            admin.open_budget("sam", "desk", policy("1000", per_action_limit="40", escalate_to=["dora"],
                                                    approval_timeout=timedelta(hours=1)))
            admin.open_budget("olga", "ops", policy("1000"))
            # Issue 18: a desk budget whose holds wait for any supervisor (of desk), one whose holds wait for olaf (a
            # supervisor of ops), and one of ops whose holds wait for any supervisor (of ops).
            admin.open_budget("rolf", "desk", policy("1000", per_action_limit="40", approver_role="supervisor",
                                                     approval_timeout=timedelta(hours=1)))
            admin.open_budget("nina", "desk", policy("1000", per_action_limit="40", escalate_to=["olaf"],
                                                     approval_timeout=timedelta(hours=1)))
            world.recorded_id = world.fresh_recorded()
            world.pending_id = world.fresh_pending()
            world.olga_action_id = world.crm.record_action("olga", "cust-1", **refund("1")).action.action_id
            yield world
        finally:
            for client in world.clients.values():
                client.close()


def bad_credentials(world: World) -> dict[str, tuple[tuple[str, str], ...]]:
    """Metadata for each entry of BAD_CREDENTIALS; every token would otherwise be an admin's."""
    now = int(time.time())
    admin = ("root", ["admin"])
    wrong_secret = "another-secret-of-enough-length-" + secrets.token_hex(8)
    world.issued.append(wrong_secret)
    unknown_key = new_api_key()
    made = {
        "no credentials": (),
        "expired token": bearer(world.token(*admin, iat=now - 7200, exp=now - 3600)),
        "wrong audience": bearer(world.token(*admin, aud="someone-else")),
        "wrong issuer": bearer(world.token(*admin, iss="https://evil.example/")),
        "wrong signature": bearer(world.token(*admin, key=wrong_secret)),
        "alg=none": bearer(unsigned_token(claims(*admin))),
        "missing sub": bearer(world.token(None, ["admin"])),
        "empty sub": bearer(world.token("", ["admin"])),
        "HS512 (not an accepted algorithm)": bearer(world.token(*admin, algorithm="HS512", key=world.secret * 2)),
        "not a JWT": bearer("not.a.jwt"),
        "unknown API key": (("authorization", f"ApiKey {unknown_key}"),),
        "the API key's hash as the key": (("x-api-key", hash_api_key(world.crm_key)),),
        "Basic scheme": (("authorization", "Basic cm9vdDpodW50ZXIy"),),
    }
    world.issued.extend(v for meta in made.values() for _, v in meta)
    assert made.keys() == BAD_CREDENTIALS.keys()
    return made


# ---------------------------------------------------------------------------- the matrix


def test_the_matrix_covers_exactly_the_permission_table() -> None:
    assert sorted(MATRIX) == sorted(authz.RULES), "every RPC of authz.RULES needs a row in MATRIX (and no other)"
    for method, row in MATRIX.items():
        allowed = {role for role, answer in zip(ROLES, row, strict=True) if answer == ok}
        assert allowed <= set(authz.RULES[method]), f"{method}: MATRIX allows roles the table has no rule for"


@pytest.mark.parametrize("method", sorted(authz.RULES))
def test_authorisation_matrix(world: World, method: str) -> None:
    """Each role's answer to ``method`` is the one written in MATRIX."""
    assert method in MATRIX, f"{method} has no row in MATRIX: write down who may call it"
    observed = tuple(
        outcome(world.channel, method, matrix_request(world, method, world.caller_id(role)), world.metadata(role))
        for role in ROLES
    )
    assert dict(zip(ROLES, observed, strict=True)) == dict(zip(ROLES, MATRIX[method], strict=True)), method


@pytest.mark.parametrize("method", sorted(authz.RULES))
def test_bad_credentials_are_unauthenticated(world: World, method: str) -> None:
    """No token, expired, wrong audience / issuer / signature, alg=none, no sub ...: UNAUTHENTICATED, nothing done."""
    request = matrix_request(world, method, "root", fresh=False)
    answers = {}
    for kind, metadata in bad_credentials(world).items():
        error = refusal(lambda: invoke(world.channel, method, request, metadata))  # noqa: B023
        assert error.domain == "leeway", error
        answers[kind] = f"{error.code.name} {error.reason}"
    assert answers == {kind: f"UNAUTHENTICATED {reason}" for kind, reason in BAD_CREDENTIALS.items()}, method
    # Nothing happened.
    admin = world.admin
    assert admin.get_action(world.pending_id).state == PENDING
    assert admin.get_action(world.recorded_id).state == RECORDED
    assert admin.get_budget("olga").state == budget_pb2.Budget.STATE_OPEN
    assert admin.get_budget("olga").team_id == "ops"
    _assert_not_found(admin, "never-opened")


def _assert_not_found(admin: LeewayClient, employee: str) -> None:
    with pytest.raises(LeewayError) as caught:
        admin.get_budget(employee)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND, caught.value


# ---------------------------------------------------------------------------- the specific rules


def test_an_agent_spends_and_reads_only_their_own_budget(world: World) -> None:
    ann = world.ann
    spent_before = world.admin.get_budget("olga").spent
    for other in ("olga", "sam"):  # another team's employee, and a colleague of the same team
        expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: ann.record_action(other, "cust-1", **refund("1")))  # noqa: B023
        expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: ann.get_budget(other))  # noqa: B023
        expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: ann.list_actions(employee_id=other))  # noqa: B023
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: ann.get_action(world.olga_action_id))
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: ann.list_actions(customer_id="cust-1"))
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: ann.update_policy("ann", policy("99999")))
    assert world.admin.get_budget("olga").spent == spent_before

    # Her own: yes, and the event names her as the one who recorded it.
    action = ann.record_action("ann", "cust-1", **refund("2")).action
    assert action.employee_id == "ann" and action.recorded_by == "ann"
    assert ann.get_budget("ann").employee_id == "ann"
    assert ann.get_action(action.action_id).action_id == action.action_id
    assert action.action_id in {a.action_id for a in ann.list_actions(employee_id="ann").actions}


def test_permission_denied_does_not_reveal_whether_the_resource_exists(world: World) -> None:
    """The refusal for a resource that does not exist is the very same as for one that does."""
    ghost = f"nobody-{uuid.uuid4().hex[:8]}"
    ghost_action = f"act_{uuid.uuid4().hex}_1"  # well-formed, of no budget

    def answer(call: Callable[[], Any]) -> tuple[Any, ...]:
        with pytest.raises(LeewayError) as caught:
            call()
        e = caught.value
        return e.code, e.reason, e.domain, e.message, e.metadata

    for client in (world.ann, world.sam):  # an agent, and a supervisor of another team than olga's
        pairs = [
            (lambda c=client: c.get_budget("olga"), lambda c=client: c.get_budget(ghost)),
            (lambda c=client: c.record_action("olga", "cust-1", **refund("1")),
             lambda c=client: c.record_action(ghost, "cust-1", **refund("1"))),
            (lambda c=client: c.get_action(world.olga_action_id), lambda c=client: c.get_action(ghost_action)),
            (lambda c=client: c.list_actions(employee_id="olga"), lambda c=client: c.list_actions(employee_id=ghost)),
            (lambda c=client: c.update_policy("olga", policy("5")), lambda c=client: c.update_policy(ghost, policy("5"))),
            (lambda c=client: c.reverse_action(world.olga_action_id, reason="x", actor_id="sam"),
             lambda c=client: c.reverse_action(ghost_action, reason="x", actor_id="sam")),
        ]
        for existing, missing in pairs:
            seen, unseen = answer(existing), answer(missing)
            assert seen[:2] == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"), seen
            assert seen == unseen
    # Whereas a caller who may read anything learns that the ghost does not exist.
    _assert_not_found(world.admin, ghost)


def test_an_auditor_reads_everything_and_writes_nothing(world: World) -> None:
    writes = mutating_methods()
    assert writes == {
        f"/leeway.v1.{m}" for m in (
            "BudgetService/OpenBudget", "BudgetService/UpdatePolicy", "BudgetService/CloseBudget",
            "BudgetService/ReopenBudget", "BudgetService/MoveEmployee",
            "ActionService/RecordAction", "ActionService/ApproveAction", "ActionService/DenyAction",
            "ActionService/ReverseAction", "ActionService/DocumentWin", "TeamService/SetTeamCap",
            "TeamService/SetCustomerCap", "PrivacyService/EraseCustomer", "PrivacyService/EraseEmployee",
            "PrivacyService/RedactLegacyData",
        )
    }
    metadata = world.metadata("auditor")
    answers = {m: outcome(world.channel, m, matrix_request(world, m, "audrey"), metadata) for m in sorted(writes)}
    assert answers == dict.fromkeys(sorted(writes), no)
    # Even as the employee or approver named in the request, or with every team.
    auditor_everywhere = bearer(world.token("ann", ["auditor"], ["desk", "ops"]))
    assert outcome(world.channel, "/leeway.v1.ActionService/RecordAction",
                   matrix_request(world, "/leeway.v1.ActionService/RecordAction", "ann"), auditor_everywhere) == no
    assert outcome(world.channel, "/leeway.v1.ActionService/ApproveAction",
                   matrix_request(world, "/leeway.v1.ActionService/ApproveAction", "sam"),
                   bearer(world.token("sam", ["auditor"], ["desk"]))) == no
    # Reads: anything, of any team (but a data subject's export, article 15, is the admin's: issue 22).
    export = "/leeway.v1.PrivacyService/ExportCustomerData"
    assert outcome(world.channel, export, matrix_request(world, export, "audrey"), metadata) == no
    readers = {m for m in authz.RULES if m not in writes and m != export}
    reads = {m: outcome(world.channel, m, matrix_request(world, m, "audrey"), metadata) for m in sorted(readers)}
    assert reads == dict.fromkeys(sorted(readers), ok)
    auditor = world.client("audrey", ["auditor"])
    assert auditor.get_budget("olga").employee_id == "olga"
    assert auditor.get_action(world.olga_action_id).employee_id == "olga"


def test_a_crm_records_on_behalf_of_an_employee_and_decides_nothing(world: World) -> None:
    crm = world.crm
    action = crm.record_action("ann", "cust-7", **refund("3")).action
    assert action.employee_id == "ann"
    assert action.recorded_by == CRM_KEY_NAME  # the principal, distinct from the employee it is for
    assert world.admin.get_action(action.action_id).recorded_by == CRM_KEY_NAME
    assert crm.record_action("olga", "cust-7", **refund("1")).action.recorded_by == CRM_KEY_NAME

    pending = world.fresh_pending()
    for approver in (CRM_KEY_NAME, "sam"):
        expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: crm.approve_action(pending, approver))  # noqa: B023
        expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: crm.deny_action(pending, approver))  # noqa: B023
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: crm.update_policy("ann", ann_policy()))
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: crm.list_actions(employee_id="ann"))
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: crm.list_actions(state="PENDING_APPROVAL"))
    expect_error(PermissionDeniedError, "PERMISSION_DENIED",
                 lambda: crm.reverse_action(action.action_id, reason="x", actor_id=CRM_KEY_NAME))
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: crm.open_budget("x", "desk", policy("1")))
    assert world.admin.get_action(pending).state == PENDING


def test_list_wins_shows_other_teams_wins_without_their_customers(world: World) -> None:
    """Issue 22 (minimisation): everybody sees the celebration feed, but another team's customer ids and quotes
    only a caller who may read that team (their own, an auditor, an admin, the CRM) does."""
    action = world.crm.record_action("olga", "cust-olga-9", **refund("2")).action
    world.crm.document_win(action.action_id, "saved the weekend", customer_quote="Jane loved it")

    def entry(client: LeewayClient) -> Any:
        wins = [w for w in client.iter_wins(team_id="ops", page_size=50) if w.action_id == action.action_id]
        assert len(wins) == 1
        return wins[0]

    for outsider in (world.client("ann", ["agent"], ["desk"]), world.client("sam", ["supervisor"], ["desk"])):
        seen = entry(outsider)
        assert (seen.customer_id, seen.win.customer_quote) == ("", "")
        assert (seen.win.story, seen.employee_id, seen.team_id) == ("saved the weekend", "olga", "ops")
    insiders = (world.client("olga", ["agent"], ["ops"]), world.client("olaf", ["supervisor"], ["ops"]),
                world.client("audrey", ["auditor"]), world.admin, world.crm)  # fmt: skip
    for insider in insiders:
        seen = entry(insider)
        assert (seen.customer_id, seen.win.customer_quote) == ("cust-olga-9", "Jane loved it")


def test_a_supervisor_approves_in_their_team_as_themself_and_never_their_own(world: World) -> None:
    sam = world.sam
    pending = world.fresh_pending()
    assert pending in {a.action_id for a in sam.list_actions(state="PENDING_APPROVAL", approver_id="sam").actions}
    expect_error(PermissionDeniedError, "PERMISSION_DENIED",
                 lambda: sam.list_actions(state="PENDING_APPROVAL", approver_id="dora"))

    # Not as somebody else (nor as nobody).
    for someone_else in ("dora", "root", ""):
        expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: sam.approve_action(pending, someone_else))  # noqa: B023
        expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: sam.deny_action(pending, someone_else))  # noqa: B023
    assert world.admin.get_action(pending).state == PENDING

    # As themself: yes; the decision names the caller.
    approved = sam.approve_action(pending, "sam", note="fine").action
    assert approved.state == APPROVED and approved.decision.approver_id == "sam"
    denied = sam.deny_action(world.fresh_pending(), "sam", note="no").action
    assert denied.state == DENIED and denied.decision.approver_id == "sam"

    # Their own action: the domain refuses (a policy may not name its own employee as approver either, issue 19).
    own = sam.record_action("sam", "cust-1", **refund("50")).action
    assert own.state == PENDING and own.recorded_by == "sam"
    expect_error(PermissionDeniedError, "SELF_APPROVAL_NOT_ALLOWED", lambda: sam.approve_action(own.action_id, "sam"))
    expect_error(PermissionDeniedError, "SELF_APPROVAL_NOT_ALLOWED", lambda: sam.deny_action(own.action_id, "sam"))
    # ... and their own policy is not theirs to set.
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: sam.update_policy("sam", policy("99999")))
    # Another supervisor named by the policy may.
    dora = world.client("dora", ["supervisor"], ["desk"])
    assert dora.approve_action(own.action_id, "dora").action.decision.approver_id == "dora"

    # A supervisor of another team whom the policy does not name may not decide it, and is told no more than about
    # an action that does not exist (issue 18: it used to be APPROVER_NOT_AUTHORIZED, listing the approvers).
    otto = world.client("otto", ["supervisor"], ["ops"])
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: otto.approve_action(world.fresh_pending(), "otto"))
    # Reversals: the team's actions as themself; not another team's, not as someone else.
    recorded = world.fresh_recorded()
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: otto.reverse_action(recorded, reason="x", actor_id="otto"))
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: sam.reverse_action(recorded, reason="x", actor_id="root"))
    reversed_ = sam.reverse_action(recorded, reason="mistake", actor_id="sam").action
    assert reversed_.state == REVERSED and reversed_.reversal.actor_id == "sam"


def test_custom_roles_in_the_token_count_for_a_policys_approver_role(world: World) -> None:
    """roles may carry names besides the five (here duty-manager): they count for approver_role, and grant no RPC."""
    world.admin.open_budget("bob", "desk", policy("1000", per_action_limit="40", approver_role="duty-manager",
                                                  approval_timeout=timedelta(hours=1)))
    first = world.crm.record_action("bob", "cust-1", **refund("50")).action
    second = world.crm.record_action("bob", "cust-1", **refund("60")).action
    assert first.state == PENDING and first.approver_role == "duty-manager"

    # A supervisor without the role: the policy refuses.
    expect_error(PermissionDeniedError, "APPROVER_NOT_AUTHORIZED", lambda: world.sam.approve_action(first.action_id, "sam"))
    # The role alone grants no RPC.
    only_role = world.client("dave", ["duty-manager"], ["desk"])
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: only_role.approve_action(first.action_id, "dave"))
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: only_role.get_budget("bob"))
    # Unknown role names grant nothing either.
    pretender = world.client("mallory", ["root", "superuser", "Admin"])
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: pretender.open_budget("m", "desk", policy("1")))

    # A supervisor whose token says duty-manager may approve and deny.
    dave = world.client("dave", ["supervisor", "duty-manager"], ["desk"])
    approved = dave.approve_action(first.action_id, "dave", note="duty manager").action
    assert approved.state == APPROVED and approved.decision.approver_id == "dave"
    assert dave.deny_action(second.action_id, "dave").action.state == DENIED


def test_health_is_open_and_reflection_is_off(world: World) -> None:
    health = health_pb2_grpc.HealthStub(world.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)  # no credentials at all
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reply = health.Check(health_pb2.HealthCheckRequest(service="leeway.v1.BudgetService"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    request = reflection_pb2.ServerReflectionRequest(list_services="")
    v1 = world.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    v1alpha = reflection_pb2_grpc.ServerReflectionStub(world.channel).ServerReflectionInfo
    for metadata in ((), world.metadata("admin")):  # refused without credentials, and off even for an admin
        for stub in (v1alpha, v1):
            with pytest.raises(grpc.RpcError) as caught:
                list(stub(iter([request]), metadata=metadata, timeout=5))
            assert caught.value.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED)


def test_refusals_are_logged_without_secrets(world: World) -> None:
    ann = world.ann
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: ann.open_budget("zed", "desk", policy("1")))
    expired = world.token("root", ["admin"], iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    refusal(lambda: invoke(world.channel, "/leeway.v1.BudgetService/GetBudget",
                           budget_pb2.GetBudgetRequest(employee_id="ann"), bearer(expired)))
    refusal(lambda: invoke(world.channel, "/leeway.v1.BudgetService/GetBudget",
                           budget_pb2.GetBudgetRequest(employee_id="ann"), (("x-api-key", "lwk_" + "x" * 43),)))

    wanted = {
        ("ann", "/leeway.v1.BudgetService/OpenBudget", "PERMISSION_DENIED", "PERMISSION_DENIED"),
        ("/leeway.v1.BudgetService/GetBudget", "UNAUTHENTICATED", "TOKEN_EXPIRED"),
        ("/leeway.v1.BudgetService/GetBudget", "UNAUTHENTICATED", "API_KEY_INVALID"),
    }
    deadline = time.monotonic() + 5
    while True:
        logs = world.server.logs()
        refused = [json.loads(line) for line in logs.splitlines() if '"rpc.refused"' in line]
        found = {(r.get("principal"), r["method"], r["code"], r["reason"]) for r in refused if r.get("principal")}
        found |= {(r["method"], r["code"], r["reason"]) for r in refused if r.get("principal")}
        if wanted <= found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert wanted <= found, f"missing rpc.refused lines {wanted - found}:\n{logs}"
    for line in refused:
        assert {"principal", "method", "code", "reason"} <= line.keys(), line

    secrets_ = [world.secret, world.crm_key, *world.issued]
    signatures = [t.rsplit(".", 1)[-1] for t in world.issued if t.count(".") == 2 and len(t.rsplit(".", 1)[-1]) > 16]
    leaked = [s for s in (*secrets_, *signatures) if s and len(s) > 16 and s in logs]
    assert not leaked, f"{len(leaked)} secret(s) in the server logs, e.g. {leaked[0][:12]}..."


# ---------------------------------------------------------------------------- public-key JWTs


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/leeway.sqlite"


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
def test_public_key_tokens_and_the_algorithm_confusion_attack(make_server, tmp_path: Path, algorithm: str) -> None:
    def private_key() -> Any:
        return ed25519.Ed25519PrivateKey.generate() if algorithm == "EdDSA" else rsa.generate_private_key(65537, 2048)

    signing_key = private_key()
    pem = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "idp-public.pem"
    key_file.write_bytes(pem)
    server = make_server(_sqlite(tmp_path), {
        "LEEWAY_AUTH": "required",
        "LEEWAY_JWT_ALGORITHMS": algorithm,
        "LEEWAY_JWT_PUBLIC_KEY_FILE": str(key_file),
        "LEEWAY_JWT_AUDIENCE": AUDIENCE,
        "LEEWAY_JWT_ISSUER": ISSUER,
    })
    server.start()
    admin_claims = claims("root", ["admin"])
    good = jwt.encode(admin_claims, signing_key, algorithm=algorithm)
    with LeewayClient(server.target, token=good, retries=0) as admin:
        assert admin.open_budget("ann", "desk", policy("100")).employee_id == "ann"
    with LeewayClient(server.target, token=jwt.encode(claims("ann", ["agent"]), signing_key, algorithm=algorithm),
                      retries=0) as ann:
        assert ann.get_budget("ann").employee_id == "ann"
        expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: ann.list_budgets("desk"))

    forged = {
        # The attack: HS256 with the (public!) PEM as the HMAC secret, as a naive verifier would check it.
        "HS256 with the public key file as secret": hs256_by_hand(admin_claims, pem),
        "HS256 with the stripped public key as secret": hs256_by_hand(admin_claims, pem.strip()),
        "signed by another key": jwt.encode(admin_claims, private_key(), algorithm=algorithm),
        "alg=none": unsigned_token(admin_claims),
        "expired": jwt.encode(claims("root", ["admin"], exp=int(time.time()) - 3600), signing_key, algorithm=algorithm),
    }
    with grpc.insecure_channel(server.target) as channel:
        request = budget_pb2.GetBudgetRequest(employee_id="ann")
        answers = {}
        for kind, token in forged.items():
            error = refusal(lambda t=token: invoke(channel, "/leeway.v1.BudgetService/GetBudget", request, bearer(t)))
            answers[kind] = (error.code, error.reason)
    expected = dict.fromkeys(forged, (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"))
    expected["expired"] = (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    assert answers == expected
    server.stop_cleanly()


# ---------------------------------------------------------------------------- rate limit


def test_the_rate_limit_is_per_principal_with_quota_failure_and_retry_info(make_server, tmp_path: Path) -> None:
    key_a, key_b = new_api_key(), new_api_key()
    server = make_server(_sqlite(tmp_path), {
        "LEEWAY_AUTH": "required",
        "LEEWAY_API_KEYS": f"crm-a:crm:{hash_api_key(key_a)},crm-b:crm:{hash_api_key(key_b)}",
        "LEEWAY_RATE_LIMIT_PER_SECOND": "1",
        "LEEWAY_RATE_LIMIT_BURST": "2",
    })
    server.start()
    request = team_pb2.GetCustomerUsageRequest(customer_id="cust-1")
    method = "/leeway.v1.TeamService/GetCustomerUsage"
    as_a = (("authorization", f"ApiKey {key_a}"),)
    with grpc.insecure_channel(server.target) as channel:
        invoke(channel, method, request, as_a)
        invoke(channel, method, request, as_a)
        with pytest.raises(grpc.RpcError) as caught:
            invoke(channel, method, request, as_a)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(caught.value)
        assert status is not None, "no google.rpc.Status in the trailers"
        found = unpacked_details(status)
        assert set(found) == {"ErrorInfo", "QuotaFailure", "RetryInfo"}, status
        assert found["ErrorInfo"].reason == "RATE_LIMITED" and found["ErrorInfo"].domain == "leeway"
        assert [v.subject for v in found["QuotaFailure"].violations] == ["principal:crm-a"]
        delay = found["RetryInfo"].retry_delay.ToTimedelta().total_seconds()
        assert 0 < delay <= 1.0, delay

        # Another principal is not limited; health checks are never limited.
        for _ in range(2):
            invoke(channel, method, request, (("x-api-key", key_b),))
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(5):
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING

        # After the advertised delay, the first principal may call again.
        time.sleep(delay + 0.1)
        invoke(channel, method, request, as_a)
    server.stop_cleanly()  # info lines are written in batches (logs.py): all of them by exit
    assert '"RATE_LIMITED"' in server.logs() and key_a not in server.logs() and key_b not in server.logs()


# ---------------------------------------------------------------------------- TLS and mutual TLS


def dev_certs(directory: Path) -> dict[str, bytes]:
    result = subprocess.run([sys.executable, "-m", "leeway.cli", "dev-certs", str(directory)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    names = ("ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
    return {name: (directory / name).read_bytes() for name in names}


def wait_serving_tls(server: ServerProcess, target: str, credentials: grpc.ChannelCredentials) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with grpc.secure_channel(target, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"TLS server not SERVING within {STARTUP_TIMEOUT}s:\n{server.logs()}", pytrace=False)
            time.sleep(0.05)


def health_code(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def test_mutual_tls(make_server, tmp_path: Path) -> None:
    certs = dev_certs(tmp_path / "certs")
    stranger = dev_certs(tmp_path / "other-ca")  # a client certificate from a CA the server does not trust
    server = make_server(_sqlite(tmp_path), {
        "LEEWAY_TLS_CERT_FILE": str(tmp_path / "certs" / "server.pem"),
        "LEEWAY_TLS_KEY_FILE": str(tmp_path / "certs" / "server-key.pem"),
        "LEEWAY_TLS_CLIENT_CA_FILE": str(tmp_path / "certs" / "ca.pem"),
    })
    server.start(wait_serving=False)
    target = f"localhost:{server.port}"
    with_cert = grpc.ssl_channel_credentials(certs["ca.pem"], certs["client-key.pem"], certs["client.pem"])
    wait_serving_tls(server, target, with_cert)

    with LeewayClient(target, root_certificates=certs["ca.pem"], certificate_chain=certs["client.pem"],
                      private_key=certs["client-key.pem"], retries=0) as client:
        client.open_budget("ann", "desk", policy("100"))
        assert client.get_budget("ann").employee_id == "ann"

    refused = {
        "no client certificate": grpc.secure_channel(target, grpc.ssl_channel_credentials(certs["ca.pem"])),
        "certificate of another CA": grpc.secure_channel(target, grpc.ssl_channel_credentials(
            certs["ca.pem"], stranger["client-key.pem"], stranger["client.pem"])),
        "plaintext": grpc.insecure_channel(target),
    }
    try:
        answers = {kind: health_code(channel) for kind, channel in refused.items()}
    finally:
        for channel in refused.values():
            channel.close()
    assert answers == dict.fromkeys(refused, grpc.StatusCode.UNAVAILABLE)
    server.stop_cleanly()


def test_tls_without_client_certificates(make_server, tmp_path: Path) -> None:
    certs = dev_certs(tmp_path / "certs")
    server = make_server(_sqlite(tmp_path), {
        "LEEWAY_TLS_CERT_FILE": str(tmp_path / "certs" / "server.pem"),
        "LEEWAY_TLS_KEY_FILE": str(tmp_path / "certs" / "server-key.pem"),
    })
    server.start(wait_serving=False)
    target = f"localhost:{server.port}"
    wait_serving_tls(server, target, grpc.ssl_channel_credentials(certs["ca.pem"]))
    with LeewayClient(target, root_certificates=certs["ca.pem"], retries=0) as client:
        client.open_budget("ann", "desk", policy("100"))
        assert client.get_budget("ann").employee_id == "ann"
    with grpc.insecure_channel(target) as plaintext:
        assert health_code(plaintext) == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(target, grpc.ssl_channel_credentials()) as untrusted:  # system roots: not our CA
        assert health_code(untrusted) == grpc.StatusCode.UNAVAILABLE
    server.stop_cleanly()


# ---------------------------------------------------------------------------- leeway api-key


def api_key_cli(*args: str) -> tuple[str, str]:
    result = subprocess.run([sys.executable, "-m", "leeway.cli", "api-key", *args],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    key = re.search(r"^key \(.*\): (\S+)$", result.stdout, re.MULTILINE)
    entry = re.search(r"^LEEWAY_API_KEYS entry \(.*\): (\S+)$", result.stdout, re.MULTILINE)
    assert key and entry, result.stdout
    return key.group(1), entry.group(1)


def test_api_keys_from_the_cli(make_server, tmp_path: Path) -> None:
    crm_key, crm_entry = api_key_cli("crm-cli", "crm")
    sup_key, sup_entry = api_key_cli("desk-bot", "supervisor", "--teams", "desk+ops")
    assert crm_entry == f"crm-cli:crm:{hash_api_key(crm_key)}" and crm_key not in crm_entry
    assert sup_entry == f"desk-bot:supervisor:{hash_api_key(sup_key)}:desk+ops"
    admin_key = new_api_key()
    server = make_server(_sqlite(tmp_path), {
        "LEEWAY_AUTH": "required",
        "LEEWAY_API_KEYS": "\n".join([crm_entry, sup_entry, f"ops-admin:admin:{hash_api_key(admin_key)}"]),
    })
    server.start()
    with LeewayClient(server.target, api_key=admin_key, retries=0) as admin:
        admin.open_budget("ann", "desk", policy("100"))
    with LeewayClient(server.target, api_key=crm_key, retries=0) as crm:  # authorization: ApiKey <key>
        action = crm.record_action("ann", "cust-1", **refund("5")).action
        assert action.recorded_by == "crm-cli" and action.employee_id == "ann"
    with LeewayClient(server.target, api_key=sup_key, retries=0) as supervisor:
        assert supervisor.get_team("desk").team_id == "desk"
        expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: supervisor.get_team("elsewhere"))

    with grpc.insecure_channel(server.target) as channel:
        usage = "/leeway.v1.TeamService/GetCustomerUsage"
        request = team_pb2.GetCustomerUsageRequest(customer_id="cust-1")
        invoke(channel, usage, request, (("x-api-key", crm_key),))  # the other header works too
        for metadata in (
            (("x-api-key", new_api_key()),),
            (("authorization", f"ApiKey {new_api_key()}"),),
            (("authorization", f"ApiKey {hash_api_key(crm_key)}"),),  # the configured hash is not a key
        ):
            error = refusal(lambda m=metadata: invoke(channel, usage, request, m))
            assert (error.code, error.reason, error.domain) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID", "leeway")
        # The server accepts no JWTs at all here.
        error = refusal(lambda: invoke(channel, usage, request, bearer(jwt.encode(claims("root", ["admin"]), "x" * 32))))
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
    logs = server.logs()
    assert all(k not in logs for k in (crm_key, sup_key, admin_key))
    server.stop_cleanly()


# ---------------------------------------------------------------------------- at the resource (issue 18)

#: Who calls in RESOURCE_MATRIX: (JWT roles, JWT teams). sam and dora supervise desk (ann's, rolf's, nina's team;
#: ann's policy names sam as approver), otto and olaf supervise ops (nina's policy names olaf), nemo supervises no
#: team, boss is a supervisor and admin of no team.
RESOURCE_CALLERS: dict[str, tuple[list[str], list[str]]] = {
    "sam": (["supervisor"], ["desk"]),
    "dora": (["supervisor"], ["desk"]),
    "otto": (["supervisor"], ["ops"]),
    "olaf": (["supervisor"], ["ops"]),
    "nemo": (["supervisor"], []),
    "boss": (["supervisor", "admin"], []),
}

#: The answer of (caller, method, the resource it names) -- "ok", "denied" (PERMISSION_DENIED from the permission
#: table, the same as for a resource that does not exist) or "CODE REASON" from the domain, which only callers
#: who may read the resource anyway get. Resources are made fresh for each call by ``resource_request``.
RESOURCE_MATRIX: list[tuple[str, str, str, str]] = [
    # role approval (rolf's policy: approver_role supervisor) needs the action's team among the caller's (admin excepted)
    ("sam", "ApproveAction", "rolf's pending", ok),
    ("otto", "ApproveAction", "rolf's pending", no),
    ("otto", "DenyAction", "rolf's pending", no),
    ("nemo", "ApproveAction", "rolf's pending", no),
    ("nemo", "DenyAction", "rolf's pending", no),
    ("boss", "ApproveAction", "rolf's pending", ok),
    # another team's supervisor learns nothing: pending, recorded, decided or missing, the same answer
    ("otto", "ApproveAction", "ann's pending", no),
    ("otto", "ApproveAction", "ann's recorded", no),
    ("otto", "DenyAction", "ann's approved", no),
    ("otto", "DenyAction", "a missing action", no),
    ("sam", "ApproveAction", "a missing action", no),
    # who may read the action gets the domain's answer, who before state
    ("dora", "ApproveAction", "ann's pending", "PERMISSION_DENIED APPROVER_NOT_AUTHORIZED"),
    ("dora", "DenyAction", "ann's approved", "PERMISSION_DENIED APPROVER_NOT_AUTHORIZED"),
    ("dora", "ApproveAction", "ann's recorded", "FAILED_PRECONDITION ACTION_NOT_PENDING"),
    ("sam", "DenyAction", "ann's approved", "FAILED_PRECONDITION ACTION_ALREADY_DECIDED"),
    # a named approver of another team decides (and gets the action without the budget: see below)
    ("olaf", "ApproveAction", "nina's pending", ok),
    ("otto", "ApproveAction", "nina's pending", no),
    # nobody reverses their own action
    ("sam", "ReverseAction", "sam's recorded", "PERMISSION_DENIED SELF_REVERSAL_NOT_ALLOWED"),
    ("dora", "ReverseAction", "sam's recorded", ok),
    ("otto", "ReverseAction", "sam's recorded", no),
    # a supervisor grants at most their own policy (sam's: 1,000 a month, 40 an action; these grant 40 an action)
    ("sam", "UpdatePolicy", "a desk budget: 500 a month", ok),
    ("sam", "UpdatePolicy", "a desk budget: a billion a month", "PERMISSION_DENIED POLICY_CEILING_EXCEEDED"),
    ("sam", "UpdatePolicy", "a desk budget: 100 a day", "PERMISSION_DENIED POLICY_CEILING_EXCEEDED"),
    ("dora", "UpdatePolicy", "a desk budget: 500 a month", "PERMISSION_DENIED POLICY_CEILING_EXCEEDED"),  # no budget
    ("dora", "UpdatePolicy", "a desk budget: 50 a month", ok),  # lowering needs no budget
    ("boss", "UpdatePolicy", "a desk budget: a billion a month", ok),  # admins have no ceiling
    ("otto", "UpdatePolicy", "a desk budget: 50 a month", no),
]

GHOST_ACTION = f"act_{uuid.uuid4().hex}_2"


def resource_request(world: World, method: str, resource: str, caller: str) -> Any:
    """A fresh request of ``method`` about ``resource`` (see RESOURCE_MATRIX), as ``caller``."""
    rid = str(uuid.uuid4())
    if method == "UpdatePolicy":
        amount, _, period = resource.removeprefix("a desk budget: ").partition(" a ")
        allowance = {"a billion": "1000000000"}.get(amount, amount)
        return budget_pb2.UpdatePolicyRequest(request_id=rid, employee_id=world.fresh_budget(),
                                              policy=policy(allowance, period=period.upper(), per_action_limit="40"))
    action_id = {
        "rolf's pending": lambda: world.crm.record_action("rolf", "cust-1", **refund("50")).action.action_id,
        "nina's pending": lambda: world.crm.record_action("nina", "cust-1", **refund("50")).action.action_id,
        "ann's pending": world.fresh_pending,
        "ann's recorded": world.fresh_recorded,
        "ann's approved": lambda: world.sam.approve_action(world.fresh_pending(), "sam").action.action_id,
        "sam's recorded": lambda: world.crm.record_action("sam", "cust-1", **refund("1")).action.action_id,
        "a missing action": lambda: GHOST_ACTION,
    }[resource]()
    if method == "ReverseAction":
        return action_pb2.ReverseActionRequest(request_id=rid, action_id=action_id, reason="mistake", actor_id=caller)
    message = action_pb2.ApproveActionRequest if method == "ApproveAction" else action_pb2.DenyActionRequest
    return message(request_id=rid, action_id=action_id, approver_id=caller, note="decided")


@pytest.mark.parametrize(("caller", "method", "resource", "expected"), RESOURCE_MATRIX,
                         ids=[f"{c}-{m}-{r}" for c, m, r, _ in RESOURCE_MATRIX])
def test_authorisation_at_the_resource(world: World, caller: str, method: str, resource: str, expected: str) -> None:
    full_name = f"/leeway.v1.{'BudgetService' if method == 'UpdatePolicy' else 'ActionService'}/{method}"
    request = resource_request(world, method, resource, caller)
    metadata = bearer(world.token(caller, *RESOURCE_CALLERS[caller]))
    assert outcome(world.channel, full_name, request, metadata) == expected


def _answer(call: Callable[[], Any]) -> tuple[Any, ...]:
    with pytest.raises(LeewayError) as caught:
        call()
    error = caught.value
    return error.code, error.reason, error.domain, error.message, tuple(sorted(error.metadata.items()))


def test_deciding_tells_another_team_nothing(world: World) -> None:
    """ApproveAction/DenyAction check permission before existence and state: a supervisor of another team gets
    one answer for an action that waits, one that needed no approval, one decided and one that does not exist,
    naming none of the action's approvers, its team or its employee."""
    otto = world.client("otto", ["supervisor"], ["ops"])
    approved = world.sam.approve_action(world.fresh_pending(), "sam").action.action_id
    targets = [world.fresh_pending(), world.fresh_recorded(), approved, GHOST_ACTION]
    answers: set[tuple[Any, ...]] = set()
    for decide in (otto.approve_action, otto.deny_action):
        per_target = {_answer(lambda d=decide, t=t: d(t, "otto")) for t in targets}
        assert len(per_target) == 1, per_target  # code, reason, message and metadata: one answer for all four
        answers |= per_target
    assert {a[:2] for a in answers} == {(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")}
    for leaked in ("sam", "dora", "desk", "ann"):
        assert not any(leaked in str(a[3:]) for a in answers), (leaked, answers)
    # A supervisor of the team (who may read the action) is told they may not decide it, but not who may.
    dora = world.client("dora", ["supervisor"], ["desk"])
    refused = expect_error(PermissionDeniedError, "APPROVER_NOT_AUTHORIZED",
                           lambda: dora.approve_action(world.fresh_pending(), "dora"))
    assert "sam" not in refused.message and "sam" not in str(refused.metadata)
    assert world.admin.get_action(targets[0]).state == PENDING


def test_role_approval_needs_the_actions_team(world: World) -> None:
    """rolf's policy asks any supervisor: a supervisor of ops or of no team may neither approve nor deny (and the
    action stays pending); a supervisor of desk, or a supervisor who is an admin, may."""
    pending = world.crm.record_action("rolf", "cust-1", **refund("50")).action
    assert pending.state == PENDING and pending.approver_role == "supervisor"
    for caller, teams in (("otto", ["ops"]), ("nemo", [])):
        stranger = world.client(caller, ["supervisor"], teams)
        for decide in (stranger.approve_action, stranger.deny_action):
            expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda d=decide, c=caller: d(pending.action_id, c))
    assert world.admin.get_action(pending.action_id).state == PENDING
    response = world.sam.approve_action(pending.action_id, "sam")
    assert response.action.state == APPROVED and response.budget.employee_id == "rolf"  # sam may read rolf's budget
    boss = world.client("boss", ["supervisor", "admin"])
    denied = world.crm.record_action("rolf", "cust-1", **refund("55")).action.action_id
    assert boss.deny_action(denied, "boss").action.state == DENIED


def test_an_approver_of_another_team_gets_the_action_not_the_budget(world: World) -> None:
    """nina's policy names olaf (ops): he decides her action, and the response carries the action he decided but
    not her budget, which he may not read with GetBudget either."""
    olaf = world.client("olaf", ["supervisor"], ["ops"])
    for decide in (olaf.approve_action, olaf.deny_action):
        pending = world.crm.record_action("nina", "cust-1", **refund("50")).action.action_id
        response = decide(pending, "olaf")
        assert response.action.action_id == pending and response.action.decision.approver_id == "olaf"
        assert not response.HasField("budget"), response.budget
    expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda: olaf.get_budget("nina"))
    # Whoever may read the budget still gets it.
    assert world.sam.deny_action(world.fresh_pending(), "sam").budget.employee_id == "ann"


def test_nobody_reverses_their_own_action(world: World) -> None:
    """A supervisor could reverse their own action after the gift went out, returning the amount to their own
    budget; now SELF_REVERSAL_NOT_ALLOWED (admins too), and a colleague may."""
    sam, admin = world.sam, world.admin
    own = world.crm.record_action("sam", "cust-1", **refund("7")).action
    spent = admin.get_budget("sam").spent
    expect_error(PermissionDeniedError, "SELF_REVERSAL_NOT_ALLOWED",
                 lambda: sam.reverse_action(own.action_id, reason="oops", actor_id="sam"))
    assert admin.get_action(own.action_id).state == RECORDED and admin.get_budget("sam").spent == spent
    dora = world.client("dora", ["supervisor"], ["desk"])
    assert dora.reverse_action(own.action_id, reason="duplicate", actor_id="dora").action.state == REVERSED

    # An admin with a budget of their own (rooty) may reverse anyone's action but their own.
    rooty = world.client("rooty", ["admin"])
    admin.open_budget("rooty", "hq", policy("100"))
    mine = world.crm.record_action("rooty", "cust-1", **refund("5")).action.action_id
    expect_error(PermissionDeniedError, "SELF_REVERSAL_NOT_ALLOWED",
                 lambda: rooty.reverse_action(mine, reason="oops", actor_id="rooty"))
    assert admin.reverse_action(mine, reason="duplicate", actor_id="root").action.state == REVERSED


def test_two_supervisors_cannot_raise_each_other(world: World) -> None:
    """Two supervisors of a team, each with a budget of 1,000 a month: neither can raise the other above what
    their own policy allows (a billion, or 100 a day), each can lower the other, and keep or lower what the other
    has even above their own; an admin sets anything."""
    admin = world.admin
    admin.open_budget("sup-a", "twin", policy("1000"))
    admin.open_budget("sup-b", "twin", policy("1000"))
    a, b = world.client("sup-a", ["supervisor"], ["twin"]), world.client("sup-b", ["supervisor"], ["twin"])
    for granter, other in ((a, "sup-b"), (b, "sup-a")):
        for too_much in (policy("1000000000"), policy("100", period="DAY"), policy("1001")):
            error = expect_error(PermissionDeniedError, "POLICY_CEILING_EXCEEDED",
                                 lambda g=granter, o=other, p=too_much: g.update_policy(o, p))
            assert "period_allowance" in error.metadata["exceeded"].split(","), error
            assert error.metadata["employee_id"] == other
    assert {admin.get_budget(e).allowance.units for e in ("sup-a", "sup-b")} == {1000}
    assert a.update_policy("sup-b", policy("800")).allowance.units == 800  # lower: yes
    assert b.update_policy("sup-a", policy("900")).allowance.units == 900  # above b's own 800, below a's 900 now
    expect_error(PermissionDeniedError, "POLICY_CEILING_EXCEEDED", lambda: b.update_policy("sup-a", policy("1000")))
    # What an admin grants a supervisor is what that supervisor may grant.
    assert admin.update_policy("sup-a", policy("5000")).allowance.units == 5000
    assert a.update_policy("sup-b", policy("5000")).allowance.units == 5000
    expect_error(PermissionDeniedError, "POLICY_CEILING_EXCEEDED", lambda: a.update_policy("sup-b", policy("5001")))


def test_what_i_decided_is_listed_to_me_alone(world: World) -> None:
    """ListActions(decided_by): an approver's history of decisions. A supervisor may list their own (or, as ever,
    their teams' employees' actions); only auditors and admins anyone's."""
    approved = world.sam.approve_action(world.fresh_pending(), "sam").action.action_id
    denied = world.sam.deny_action(world.fresh_pending(), "sam").action.action_id
    mine = [a.action_id for a in world.sam.iter_actions(decided_by="sam")]
    assert [a for a in mine if a in (approved, denied)] == [approved, denied]
    audrey = world.client("audrey", ["auditor"])
    assert [a.action_id for a in audrey.iter_actions(decided_by="sam")] == mine
    assert [a.action_id for a in world.admin.iter_actions(decided_by="sam")] == mine
    dora = world.client("dora", ["supervisor"], ["desk"])
    otto = world.client("otto", ["supervisor"], ["ops"])
    for caller in (dora, otto, world.ann):
        expect_error(PermissionDeniedError, "PERMISSION_DENIED", lambda c=caller: c.list_actions(decided_by="sam"))
    assert list(otto.iter_actions(decided_by="otto")) == []
    # Narrowed to an employee they may read anyway, the usual rule holds: dora and ann see ann's actions sam decided.
    for caller in (dora, world.ann):
        ann_decided = [a.action_id for a in caller.iter_actions(decided_by="sam", employee_id="ann")]
        assert approved in ann_decided and denied in ann_decided
    expect_error(PermissionDeniedError, "PERMISSION_DENIED",
                 lambda: otto.list_actions(decided_by="sam", employee_id="ann"))
