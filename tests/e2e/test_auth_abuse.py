"""Abuse of authentication end to end (issue 18), against real `leeway serve` processes:

- exactly one credential per call: two (of any kind, even two valid ones) are UNAUTHENTICATED /
  MULTIPLE_CREDENTIALS, never "the last header wins";
- a maximum token lifetime (LEEWAY_JWT_MAX_LIFETIME_SECONDS): a ten-year token is refused, and so is a token
  issued in the future;
- failed authentication is limited per peer address: over the limit, even a valid call from that address is
  refused before its credentials are looked at (RESOURCE_EXHAUSTED / TOO_MANY_AUTH_FAILURES, QuotaFailure,
  RetryInfo), health checks are not, and after the advertised wait the valid call goes through; another
  address is not limited (over IPv6 loopback, where the host has it);
- every refusal line (`rpc.refused`) carries the caller's `peer`, and no credential.

All callers here are on the loopback interface, so the limiter runs with small settings.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from leeway.auth import hash_api_key, new_api_key
from leeway.v1 import team_pb2
from builders import unpacked_details
from leeway_client import LeewayError, from_rpc_error

from .conftest import ServerProcess

AUDIENCE = "leeway-abuse"
ISSUER = "https://idp.abuse.test/"
METHOD = "/leeway.v1.TeamService/GetCustomerUsage"  # open to admin and crm: a cheap read
REQUEST = team_pb2.GetCustomerUsageRequest(customer_id="cust-1")
YEAR = 365 * 86400


def sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/leeway.sqlite"


def call(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> Any:
    rpc = channel.unary_unary(
        METHOD,
        request_serializer=team_pb2.GetCustomerUsageRequest.SerializeToString,
        response_deserializer=team_pb2.GetCustomerUsageResponse.FromString,
    )
    return rpc(REQUEST, metadata=metadata, timeout=10)


def refused(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> tuple[LeewayError, grpc.RpcError]:
    with pytest.raises(grpc.RpcError) as caught:
        call(channel, metadata)
    error = from_rpc_error(caught.value)
    assert error.domain == "leeway", error
    return error, caught.value


def answer(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, str]:
    error, _ = refused(channel, metadata)
    return error.code, error.reason


def status_details(rpc_error: grpc.RpcError) -> dict[str, Any]:
    status = rpc_status.from_call(rpc_error)
    assert status is not None, "no google.rpc.Status in the trailers"
    return unpacked_details(status)


def refusal_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.logs().splitlines() if '"rpc.refused"' in line]


def assert_no_secret_in_logs(server: ServerProcess, secrets_: list[str]) -> None:
    logs = server.logs()
    leaked = [s for s in secrets_ if s in logs]
    assert not leaked, f"{len(leaked)} credential(s) in the server logs, e.g. {leaked[0][:12]}..."


class Issuer:
    """HS256 tokens for the test server, remembered so that none may show up in its logs."""

    def __init__(self) -> None:
        self.secret = "abuse-jwt-secret-" + secrets.token_hex(24)
        self.issued: list[str] = []

    def token(self, lifetime: float = 300, issued_at_offset: float = 0, sub: str = "root") -> str:
        iat = int(time.time() + issued_at_offset)
        body = {"sub": sub, "roles": ["admin"], "aud": AUDIENCE, "iss": ISSUER, "iat": iat, "exp": int(iat + lifetime)}
        token = jwt.encode(body, self.secret, algorithm="HS256")
        self.issued.append(token)
        return token

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "LEEWAY_AUTH": "required",
            "LEEWAY_JWT_ALGORITHMS": "HS256",
            "LEEWAY_JWT_SECRET": self.secret,
            "LEEWAY_JWT_AUDIENCE": AUDIENCE,
            "LEEWAY_JWT_ISSUER": ISSUER,
            **extra,
        }


def bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


# ---------------------------------------------------------------------------- one credential, bounded lifetime


def test_one_credential_per_call_and_a_bounded_token_lifetime(make_server, tmp_path: Path) -> None:
    idp, crm_key = Issuer(), new_api_key()
    server = make_server(sqlite(tmp_path), idp.env(
        LEEWAY_API_KEYS=f"crm-main:crm:{hash_api_key(crm_key)}",
        LEEWAY_JWT_MAX_LIFETIME_SECONDS="3600",
        LEEWAY_AUTH_FAILURE_PER_SECOND="0",  # this test fails on purpose more often than the default allows
    ))
    server.start()
    admin = bearer(idp.token())
    other_admin = bearer(idp.token(sub="root2"))
    with grpc.insecure_channel(server.target) as channel:
        call(channel, (admin,))
        call(channel, (("x-api-key", crm_key),))
        call(channel, (bearer(idp.token(lifetime=3600)),))  # exactly the maximum

        two = {
            "two valid tokens": (admin, other_admin),
            "a token and an API key, both valid": (admin, ("x-api-key", crm_key)),
            "ApiKey authorization and x-api-key": (("authorization", f"ApiKey {crm_key}"), ("x-api-key", crm_key)),
            "two x-api-keys": (("x-api-key", crm_key), ("x-api-key", crm_key)),
            "a forged token after a valid one": (admin, bearer("forged.token.here")),
        }
        answers = {kind: answer(channel, metadata) for kind, metadata in two.items()}
        assert answers == dict.fromkeys(two, (grpc.StatusCode.UNAUTHENTICATED, "MULTIPLE_CREDENTIALS"))

        lifetimes = {
            "ten years": idp.token(lifetime=10 * YEAR),
            "a day (the server allows an hour)": idp.token(lifetime=86400),
            "issued an hour from now": idp.token(issued_at_offset=3600),
        }
        answers = {kind: answer(channel, (bearer(token),)) for kind, token in lifetimes.items()}
        assert answers == {
            "ten years": (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_LIFETIME_TOO_LONG"),
            "a day (the server allows an hour)": (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_LIFETIME_TOO_LONG"),
            "issued an hour from now": (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"),
        }
        call(channel, (admin,))  # with the limit off, failures cost nothing
    server.stop_cleanly()  # info lines are written in batches (logs.py): all of them by exit

    lines = refusal_lines(server)
    reasons = {line["reason"] for line in lines}
    assert {"MULTIPLE_CREDENTIALS", "TOKEN_LIFETIME_TOO_LONG", "TOKEN_INVALID"} <= reasons, lines
    for line in lines:
        assert line["peer"].startswith("ipv4:127.0.0.1:"), line
        assert line["method"] == METHOD and line["code"] == "UNAUTHENTICATED", line
    assert_no_secret_in_logs(server, [idp.secret, crm_key, *idp.issued])


# ---------------------------------------------------------------------------- failed authentication, per peer


def test_failed_authentication_is_limited_per_peer(make_server, tmp_path: Path) -> None:
    crm_key = new_api_key()
    wrong_keys = [new_api_key() for _ in range(3)]
    server = make_server(sqlite(tmp_path), {
        "LEEWAY_AUTH": "required",
        "LEEWAY_API_KEYS": f"crm-main:crm:{hash_api_key(crm_key)}",
        "LEEWAY_AUTH_FAILURE_BURST": "3",
        "LEEWAY_AUTH_FAILURE_PER_SECOND": "0.5",  # after the burst, one failure every 2 s
    })
    server.start()
    good = (("x-api-key", crm_key),)
    with grpc.insecure_channel(server.target) as channel:
        for _ in range(5):
            call(channel, good)  # successes cost nothing
        for key in wrong_keys:
            error, _ = refused(channel, (("x-api-key", key),))
            assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")

        # Over the limit: even the valid key is refused, before it is looked at, with when to come back.
        error, rpc_error = refused(channel, good)
        assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_AUTH_FAILURES")
        details = status_details(rpc_error)
        assert set(details) == {"ErrorInfo", "QuotaFailure", "RetryInfo"}
        assert [v.subject for v in details["QuotaFailure"].violations] == ["peer:127.0.0.1"]
        delay = details["RetryInfo"].retry_delay.ToTimedelta().total_seconds()
        assert 0 < delay <= 2.0, delay
        error, _ = refused(channel, (("x-api-key", wrong_keys[0]),))
        assert error.reason == "TOO_MANY_AUTH_FAILURES", "a refused call is not checked, so it is not a failure"

        # Health checks are never limited.
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING

        # After the advertised wait, the valid call from the same address goes through, and so do the next.
        time.sleep(delay + 0.1)
        for _ in range(5):
            call(channel, good)
    server.stop_cleanly()

    lines = refusal_lines(server)
    assert [line["reason"] for line in lines] == ["API_KEY_INVALID"] * 3 + ["TOO_MANY_AUTH_FAILURES"] * 2, lines
    for line in lines:
        assert line["peer"].startswith("ipv4:127.0.0.1:"), line
        assert line["principal"] == "anonymous", line
    assert_no_secret_in_logs(server, [crm_key, *wrong_keys])


def dual_stack_loopback() -> bool:
    """Whether a socket on [::] takes both 127.0.0.1 and ::1 here."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(("::", 0))
            probe.listen(1)
            port = probe.getsockname()[1]
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                with socket.socket(family, socket.SOCK_STREAM) as client:
                    client.settimeout(2)
                    client.connect((host, port))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not dual_stack_loopback(), reason="needs IPv4 and IPv6 loopback on one socket")
def test_another_address_is_not_limited(make_server, tmp_path: Path) -> None:
    """127.0.0.1 and ::1 are two peers: one failing does not lock out the other."""
    crm_key = new_api_key()
    server = make_server(sqlite(tmp_path), {
        "LEEWAY_AUTH": "required",
        "LEEWAY_API_KEYS": f"crm-main:crm:{hash_api_key(crm_key)}",
        "LEEWAY_GRPC_ADDRESS": "[::]:0",
        "LEEWAY_AUTH_FAILURE_BURST": "2",
        "LEEWAY_AUTH_FAILURE_PER_SECOND": "0.1",
    })
    server.start()
    good, bad = (("x-api-key", crm_key),), (("x-api-key", new_api_key()),)
    with grpc.insecure_channel(server.target) as v4, grpc.insecure_channel(f"[::1]:{server.port}") as v6:
        for _ in range(2):
            assert refused(v4, bad)[0].reason == "API_KEY_INVALID"
        assert refused(v4, good)[0].reason == "TOO_MANY_AUTH_FAILURES"
        call(v6, good)
        assert refused(v6, bad)[0].reason == "API_KEY_INVALID"
        call(v6, good)
        assert refused(v4, good)[0].reason == "TOO_MANY_AUTH_FAILURES"
    server.stop_cleanly()
    peers = {line["reason"]: line["peer"] for line in refusal_lines(server)}
    assert peers["TOO_MANY_AUTH_FAILURES"].startswith("ipv4:127.0.0.1:")
    assert {line["peer"].split(":")[0] for line in refusal_lines(server)} == {"ipv4", "ipv6"}
