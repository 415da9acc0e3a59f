"""Security building blocks without a server: JWT and API-key authentication, the rate limiter, the security
settings, the authorisation table (``authz.check``) and the development certificates."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from leeway.auth import (
    ADMIN,
    AGENT,
    API_KEY_PREFIX,
    AUDITOR,
    CRM,
    ROLES,
    SUPERVISOR,
    ApiKey,
    AuthenticationError,
    Authenticator,
    JwtConfig,
    Principal,
    RateLimiter,
    hash_api_key,
    new_api_key,
)
from leeway.devcerts import write_dev_certs
from leeway.domain.errors import NotFound, PermissionDenied
from leeway.grpc_api import authz
from leeway.settings import Settings, SettingsError
from leeway.v1 import action_pb2, budget_pb2, insights_pb2, team_pb2

SECRET = "s3cret-" + "x" * 60  # >= 32 bytes (and >= 64 so that PyJWT does not warn for HS512)
AUDIENCE = "leeway"
ISSUER = "https://idp.example"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": now,
        "exp": now + 300,
        "roles": ["agent"],
        "teams": ["t1"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    """A JWT built by hand (PyJWT refuses to make some of the bad ones we need)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b64(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


def hs256(**overrides: Any) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def hs_auth() -> Authenticator:
    return Authenticator(jwt_config=JwtConfig(("HS256",), SECRET, AUDIENCE, ISSUER, 30))


def reason_of(auth: Authenticator, metadata: Any) -> str:
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(metadata)
    return info.value.reason


# ---------------------------------------------------------------------------- JWT, HS256


def test_valid_token_gives_the_principal(hs_auth: Authenticator) -> None:
    token = hs256(sub="sam", roles=["supervisor", "agent"], teams=["t1", "t2"])
    principal = hs_auth.authenticate(bearer(token))
    assert principal == Principal("sam", frozenset({"supervisor", "agent"}), frozenset({"t1", "t2"}), "jwt")
    assert principal.has(SUPERVISOR) and not principal.has(ADMIN)


def test_custom_role_names_are_kept(hs_auth: Authenticator) -> None:
    """A policy's approver_role may name any role (e.g. "team-lead"); the principal must carry it."""
    principal = hs_auth.authenticate(bearer(hs256(roles=["supervisor", "team-lead"])))
    assert principal.roles == frozenset({"supervisor", "team-lead"})


def test_roles_and_teams_default_to_empty(hs_auth: Authenticator) -> None:
    principal = hs_auth.authenticate(bearer(hs256(roles=_DROP, teams=_DROP)))
    assert (principal.id, principal.roles, principal.teams, principal.method) == ("alice", frozenset(), frozenset(), "jwt")


def test_header_names_and_scheme_are_case_insensitive(hs_auth: Authenticator) -> None:
    assert hs_auth.authenticate([("Authorization", f"bearer {hs256()}")]).id == "alice"


def test_binary_metadata_is_ignored(hs_auth: Authenticator) -> None:
    metadata = [("x-trace-bin", b"\x00\x01"), *bearer(hs256())]
    assert hs_auth.authenticate(metadata).id == "alice"


def test_expired_token(hs_auth: Authenticator) -> None:
    now = int(time.time())
    assert reason_of(hs_auth, bearer(hs256(iat=now - 600, exp=now - 120))) == "TOKEN_EXPIRED"


def test_token_within_leeway_is_still_valid(hs_auth: Authenticator) -> None:
    now = int(time.time())
    assert hs_auth.authenticate(bearer(hs256(iat=now - 600, exp=now - 10))).id == "alice"


def test_no_leeway_means_expired() -> None:
    auth = Authenticator(jwt_config=JwtConfig(("HS256",), SECRET, AUDIENCE, ISSUER, 0))
    now = int(time.time())
    assert reason_of(auth, bearer(hs256(iat=now - 600, exp=now - 10))) == "TOKEN_EXPIRED"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: hs256(aud="another-service"), id="wrong-audience"),
        pytest.param(lambda: hs256(iss="https://evil.example"), id="wrong-issuer"),
        pytest.param(lambda: jwt.encode(claims(), "another-secret-" + "y" * 40, algorithm="HS256"), id="wrong-signature"),
        pytest.param(lambda: hs256(exp=_DROP), id="missing-exp"),
        pytest.param(lambda: hs256(iat=_DROP), id="missing-iat"),
        pytest.param(lambda: hs256(sub=_DROP), id="missing-sub"),
        pytest.param(lambda: hs256(aud=_DROP), id="missing-aud"),
        pytest.param(lambda: hs256(iss=_DROP), id="missing-iss"),
        pytest.param(lambda: hand_made({"alg": "none", "typ": "JWT"}, claims()), id="alg-none"),
        pytest.param(lambda: hand_made({"alg": "None", "typ": "JWT"}, claims()), id="alg-None"),
        pytest.param(
            lambda: hand_made(
                {"alg": "none", "typ": "JWT"}, claims(), lambda m: hmac.new(SECRET.encode(), m, hashlib.sha256).digest()
            ),
            id="alg-none-with-signature",
        ),
        pytest.param(lambda: jwt.encode(claims(), SECRET, algorithm="HS512"), id="HS512-not-configured"),
        pytest.param(lambda: "not-a-jwt", id="malformed"),
        pytest.param(lambda: "a.b.c", id="malformed-parts"),
        pytest.param(lambda: hs256()[:-5], id="truncated"),
        pytest.param(lambda: hs256(roles="admin"), id="roles-not-a-list"),
        pytest.param(lambda: hs256(roles=["agent", 7]), id="roles-not-strings"),
        pytest.param(lambda: hs256(teams="t1"), id="teams-not-a-list"),
        pytest.param(lambda: hs256(sub=""), id="empty-sub"),
        pytest.param(lambda: hs256(exp="tomorrow"), id="exp-not-a-number"),
    ],
)
def test_invalid_tokens(hs_auth: Authenticator, token: Any) -> None:
    assert reason_of(hs_auth, bearer(token())) == "TOKEN_INVALID"


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "aud", "iss"])
def test_missing_claim_is_named_in_the_message(hs_auth: Authenticator, claim: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        hs_auth.authenticate(bearer(hs256(**{claim: _DROP})))
    assert info.value.reason == "TOKEN_INVALID"
    assert claim in str(info.value)


def test_token_is_not_in_the_error(hs_auth: Authenticator) -> None:
    token = hs256(aud="another-service")
    with pytest.raises(AuthenticationError) as info:
        hs_auth.authenticate(bearer(token))
    assert token not in str(info.value) and SECRET not in str(info.value)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param([], id="no-metadata"),
        pytest.param([("x-other", "1")], id="no-credentials"),
        pytest.param([("authorization", "Basic dXNlcjpwYXNz")], id="basic"),
        pytest.param([("authorization", "Bearer")], id="bearer-without-token"),
        pytest.param([("authorization", "Bearer   ")], id="bearer-blank-token"),
        pytest.param([("authorization", "ApiKey")], id="apikey-without-key"),
        pytest.param([("authorization", "Token abc")], id="unknown-scheme"),
        pytest.param([("x-api-key", "")], id="empty-x-api-key"),
    ],
)
def test_missing_or_malformed_header_is_unauthenticated(hs_auth: Authenticator, metadata: Any) -> None:
    assert reason_of(hs_auth, metadata) == "UNAUTHENTICATED"


def test_bearer_token_refused_without_jwt_configuration() -> None:
    auth = Authenticator(api_keys=[ApiKey("crm", frozenset({CRM}), hash_api_key("k"))])
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(bearer(hs256()))
    assert info.value.reason in ("UNAUTHENTICATED", "TOKEN_INVALID")


def test_enabled() -> None:
    assert not Authenticator().enabled
    assert Authenticator(jwt_config=JwtConfig(("HS256",), SECRET, AUDIENCE, ISSUER)).enabled
    assert Authenticator(api_keys=[ApiKey("crm", frozenset({CRM}), hash_api_key("k"))]).enabled


# ---------------------------------------------------------------------------- JWT, public keys


@dataclass(frozen=True)
class KeyPair:
    algorithm: str
    private: Any
    public_pem: str


@pytest.fixture(scope="module", params=["EdDSA", "RS256"])
def key_pair(request: pytest.FixtureRequest) -> KeyPair:
    if request.param == "EdDSA":
        private: Any = ed25519.Ed25519PrivateKey.generate()
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(request.param, private, pem.decode())


def pk_auth(pair: KeyPair) -> Authenticator:
    return Authenticator(jwt_config=JwtConfig((pair.algorithm,), pair.public_pem, AUDIENCE, ISSUER, 30))


def test_public_key_token_is_valid(key_pair: KeyPair) -> None:
    token = jwt.encode(claims(sub="bob", roles=["crm"], teams=[]), key_pair.private, algorithm=key_pair.algorithm)
    assert pk_auth(key_pair).authenticate(bearer(token)) == Principal("bob", frozenset({"crm"}), frozenset(), "jwt")


def test_public_key_token_from_another_key_is_refused(key_pair: KeyPair) -> None:
    other: Any = (
        ed25519.Ed25519PrivateKey.generate()
        if key_pair.algorithm == "EdDSA"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    token = jwt.encode(claims(), other, algorithm=key_pair.algorithm)
    assert reason_of(pk_auth(key_pair), bearer(token)) == "TOKEN_INVALID"


@pytest.mark.parametrize("hmac_alg", ["HS256", "HS512"])
def test_algorithm_confusion_is_refused(key_pair: KeyPair, hmac_alg: str) -> None:
    """An HMAC token whose secret is the server's public key PEM (the classic confusion attack)."""
    digest = hashlib.sha256 if hmac_alg == "HS256" else hashlib.sha512
    for secret in (key_pair.public_pem.encode(), key_pair.public_pem.strip().encode()):
        token = hand_made(
            {"alg": hmac_alg, "typ": "JWT"}, claims(roles=["admin"]), lambda m, s=secret: hmac.new(s, m, digest).digest()
        )
        assert reason_of(pk_auth(key_pair), bearer(token)) == "TOKEN_INVALID"


def test_alg_none_refused_with_public_keys(key_pair: KeyPair) -> None:
    token = hand_made({"alg": "none", "typ": "JWT"}, claims(roles=["admin"]))
    assert reason_of(pk_auth(key_pair), bearer(token)) == "TOKEN_INVALID"


# ---------------------------------------------------------------------------- API keys

DIGEST = hash_api_key("lwk_example")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (f"crm:crm:{DIGEST}", ApiKey("crm", frozenset({"crm"}), DIGEST, frozenset())),
        (f"ops:admin+auditor:{DIGEST}", ApiKey("ops", frozenset({"admin", "auditor"}), DIGEST, frozenset())),
        (f"lead:supervisor:{DIGEST}:t1+t2", ApiKey("lead", frozenset({"supervisor"}), DIGEST, frozenset({"t1", "t2"}))),
        (f"  crm:crm:{DIGEST.upper()}  ", ApiKey("crm", frozenset({"crm"}), DIGEST, frozenset())),
        (f"crm:crm:{DIGEST}:", ApiKey("crm", frozenset({"crm"}), DIGEST, frozenset())),
    ],
)
def test_api_key_parse(entry: str, expected: ApiKey) -> None:
    assert ApiKey.parse(entry) == expected


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("", id="empty"),
        pytest.param("crm", id="name-only"),
        pytest.param("crm:crm", id="no-hash"),
        pytest.param(f":crm:{DIGEST}", id="no-name"),
        pytest.param(f"crm::{DIGEST}", id="no-roles"),
        pytest.param(f"crm:wizard:{DIGEST}", id="unknown-role"),
        pytest.param(f"crm:crm+wizard:{DIGEST}", id="one-unknown-role"),
        pytest.param("crm:crm:abc123", id="short-hash"),
        pytest.param(f"crm:crm:{'g' * 64}", id="not-hex"),
        pytest.param(f"crm:crm:{DIGEST}0", id="long-hash"),
        pytest.param(f"crm:crm:{DIGEST}:t1:extra", id="too-many-fields"),
    ],
)
def test_api_key_parse_rejects(entry: str) -> None:
    with pytest.raises(ValueError):
        ApiKey.parse(entry)


def test_api_key_parse_error_does_not_show_the_hash() -> None:
    with pytest.raises(ValueError) as info:
        ApiKey.parse(f"svc:wizard:{DIGEST}")
    assert DIGEST not in str(info.value) and "svc" in str(info.value)


@pytest.fixture
def key_auth() -> tuple[Authenticator, str, str]:
    crm_key, ops_key = new_api_key(), new_api_key()
    auth = Authenticator(
        api_keys=[
            ApiKey.parse(f"crm-service:crm:{hash_api_key(crm_key)}"),
            ApiKey.parse(f"ops:admin+auditor:{hash_api_key(ops_key)}:t1+t2"),
        ]
    )
    return auth, crm_key, ops_key


def test_api_key_via_authorization(key_auth: tuple[Authenticator, str, str]) -> None:
    auth, crm_key, ops_key = key_auth
    assert auth.authenticate([("authorization", f"ApiKey {crm_key}")]) == Principal(
        "crm-service", frozenset({CRM}), frozenset(), "api_key"
    )
    assert auth.authenticate([("authorization", f"apikey {ops_key}")]) == Principal(
        "ops", frozenset({ADMIN, AUDITOR}), frozenset({"t1", "t2"}), "api_key"
    )


def test_api_key_via_x_api_key(key_auth: tuple[Authenticator, str, str]) -> None:
    auth, crm_key, _ = key_auth
    assert auth.authenticate([("x-api-key", crm_key)]).id == "crm-service"
    assert auth.authenticate([("X-Api-Key", f" {crm_key} ")]).id == "crm-service"


@pytest.mark.parametrize(
    "header",
    [
        lambda key: ("authorization", f"ApiKey {key}x"),
        lambda key: ("x-api-key", key[:-1]),
        lambda key: ("x-api-key", hash_api_key(key)),  # the hash is not the key
        lambda key: ("x-api-key", "lwk_wrong"),
    ],
)
def test_wrong_api_key(key_auth: tuple[Authenticator, str, str], header: Any) -> None:
    auth, crm_key, _ = key_auth
    assert reason_of(auth, [header(crm_key)]) == "API_KEY_INVALID"


def test_api_key_refused_when_none_configured(hs_auth: Authenticator) -> None:
    assert reason_of(hs_auth, [("x-api-key", new_api_key())]) == "API_KEY_INVALID"


def test_jwt_and_api_keys_together(key_auth: tuple[Authenticator, str, str]) -> None:
    _, crm_key, _ = key_auth
    auth = Authenticator(
        jwt_config=JwtConfig(("HS256",), SECRET, AUDIENCE, ISSUER),
        api_keys=[ApiKey.parse(f"crm-service:crm:{hash_api_key(crm_key)}")],
    )
    assert auth.authenticate(bearer(hs256())).method == "jwt"
    assert auth.authenticate([("x-api-key", crm_key)]).method == "api_key"


def test_new_api_key() -> None:
    keys = {new_api_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith(API_KEY_PREFIX) and API_KEY_PREFIX == "lwk_"
        assert len(key) >= len(API_KEY_PREFIX) + 43  # 32 random bytes, base64url
        assert all(c.isalnum() or c in "-_" for c in key)
        assert ":" not in key and "," not in key
    assert len(hash_api_key("x")) == 64


# ---------------------------------------------------------------------------- rate limiter


class Ticker:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_with_the_wait() -> None:
    clock = Ticker()
    limiter = RateLimiter(2, 3, clock=clock)
    assert [limiter.acquire("alice") for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire("alice") == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.acquire("alice") == pytest.approx(0.25)  # a refusal costs nothing


def test_refill_over_time() -> None:
    clock = Ticker()
    limiter = RateLimiter(2, 3, clock=clock)
    for _ in range(3):
        limiter.acquire("alice")
    clock.now += 0.5
    assert limiter.acquire("alice") == 0
    assert limiter.acquire("alice") > 0
    clock.now += 60  # refills to the burst, no further
    assert [limiter.acquire("alice") for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire("alice") == pytest.approx(0.5)


def test_keys_are_independent() -> None:
    limiter = RateLimiter(1, 1, clock=Ticker())
    assert limiter.acquire("alice") == 0
    assert limiter.acquire("alice") == pytest.approx(1.0)
    assert limiter.acquire("bob") == 0


def test_rate_zero_disables() -> None:
    limiter = RateLimiter(0, 1, clock=Ticker())
    assert all(limiter.acquire("alice") == 0 for _ in range(1000))


def test_idle_principals_are_forgotten() -> None:
    clock = Ticker()
    limiter = RateLimiter(1, 1, clock=clock, max_principals=10)
    for i in range(10):
        limiter.acquire(f"p{i}")
    clock.now += 120
    limiter.acquire("new")
    assert len(limiter._buckets) <= 10


# ---------------------------------------------------------------------------- settings


def _pem(private: Any) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


ED_PEM = _pem(ed25519.Ed25519PrivateKey.generate())
HS_ENV = {
    "LEEWAY_AUTH": "required",
    "LEEWAY_JWT_ALGORITHMS": "HS256",
    "LEEWAY_JWT_SECRET": SECRET,
    "LEEWAY_JWT_AUDIENCE": AUDIENCE,
    "LEEWAY_JWT_ISSUER": ISSUER,
}
ED_ENV = {**HS_ENV, "LEEWAY_JWT_ALGORITHMS": "EdDSA", "LEEWAY_JWT_SECRET": "", "LEEWAY_JWT_PUBLIC_KEY": ED_PEM}


def settings_error(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    return str(info.value)


def without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        pytest.param({"LEEWAY_AUTH": "required"}, "LEEWAY_AUTH", id="required-without-credentials"),
        pytest.param({"LEEWAY_AUTH": "sometimes"}, "LEEWAY_AUTH", id="unknown-auth-mode"),
        pytest.param(without(HS_ENV, "LEEWAY_JWT_ALGORITHMS"), "LEEWAY_JWT_ALGORITHMS", id="algorithms-missing"),
        pytest.param(without(ED_ENV, "LEEWAY_JWT_ALGORITHMS"), "LEEWAY_JWT_ALGORITHMS", id="algorithms-missing-pk"),
        pytest.param({**HS_ENV, "LEEWAY_JWT_ALGORITHMS": "HS1"}, "LEEWAY_JWT_ALGORITHMS", id="unknown-algorithm"),
        pytest.param({**HS_ENV, "LEEWAY_JWT_ALGORITHMS": "none"}, "LEEWAY_JWT_ALGORITHMS", id="alg-none"),
        pytest.param({**HS_ENV, "LEEWAY_JWT_ALGORITHMS": "HS256,RS256"}, "LEEWAY_JWT_ALGORITHMS", id="hs-mixed-rs"),
        pytest.param(
            {**ED_ENV, "LEEWAY_JWT_ALGORITHMS": "EdDSA,HS512", "LEEWAY_JWT_SECRET": SECRET},
            "LEEWAY_JWT_ALGORITHMS",
            id="eddsa-mixed-hs",
        ),
        pytest.param({**HS_ENV, "LEEWAY_JWT_SECRET": "short"}, "LEEWAY_JWT_SECRET", id="short-secret"),
        pytest.param({**HS_ENV, "LEEWAY_JWT_SECRET": "x" * 31}, "LEEWAY_JWT_SECRET", id="31-byte-secret"),
        pytest.param(without(HS_ENV, "LEEWAY_JWT_SECRET"), "LEEWAY_JWT_SECRET", id="secret-missing"),
        pytest.param(
            {**without(HS_ENV, "LEEWAY_JWT_SECRET"), "LEEWAY_JWT_ALGORITHMS": "RS256"},
            "LEEWAY_JWT_PUBLIC_KEY",
            id="public-key-missing",
        ),
        pytest.param(
            {**without(HS_ENV, "LEEWAY_JWT_SECRET"), "LEEWAY_JWT_ALGORITHMS": "RS256", "LEEWAY_JWT_PUBLIC_KEY": "abc"},
            "LEEWAY_JWT_PUBLIC_KEY",
            id="public-key-not-pem",
        ),
        pytest.param(
            {**without(HS_ENV, "LEEWAY_JWT_SECRET"), "LEEWAY_JWT_ALGORITHMS": "RS256", "LEEWAY_JWT_PUBLIC_KEY": SECRET},
            "LEEWAY_JWT_PUBLIC_KEY",
            id="rs256-with-a-secret-as-key",
        ),
        pytest.param(without(HS_ENV, "LEEWAY_JWT_AUDIENCE"), "LEEWAY_JWT_AUDIENCE", id="audience-missing"),
        pytest.param(without(HS_ENV, "LEEWAY_JWT_ISSUER"), "LEEWAY_JWT_ISSUER", id="issuer-missing"),
        pytest.param(without(ED_ENV, "LEEWAY_JWT_AUDIENCE"), "LEEWAY_JWT_AUDIENCE", id="audience-missing-pk"),
        pytest.param({**HS_ENV, "LEEWAY_JWT_LEEWAY_SECONDS": "-1"}, "LEEWAY_JWT_LEEWAY_SECONDS", id="negative-leeway"),
        pytest.param(
            {"LEEWAY_AUTH": "required", "LEEWAY_API_KEYS": "crm:crm:nothex"}, "LEEWAY_API_KEYS", id="bad-api-key"
        ),
        pytest.param(
            {"LEEWAY_AUTH": "required", "LEEWAY_API_KEYS": f"crm:crm:{DIGEST},ops:wizard:{DIGEST}"},
            "LEEWAY_API_KEYS",
            id="one-bad-api-key-of-two",
        ),
        pytest.param({"LEEWAY_API_KEYS": "crm:crm:nothex"}, "LEEWAY_API_KEYS", id="bad-api-key-auth-off"),
        pytest.param(
            {**HS_ENV, "LEEWAY_JWT_SECRET_FILE": "/nonexistent/secret"}, "LEEWAY_JWT_SECRET_FILE", id="secret-and-file"
        ),
        pytest.param(
            {**without(HS_ENV, "LEEWAY_JWT_SECRET"), "LEEWAY_JWT_SECRET_FILE": "/nonexistent/secret"},
            "LEEWAY_JWT_SECRET_FILE",
            id="unreadable-secret-file",
        ),
        pytest.param(
            {**without(ED_ENV, "LEEWAY_JWT_PUBLIC_KEY"), "LEEWAY_JWT_PUBLIC_KEY_FILE": "/nonexistent/key.pem"},
            "LEEWAY_JWT_PUBLIC_KEY_FILE",
            id="unreadable-public-key-file",
        ),
        pytest.param(
            {"LEEWAY_AUTH": "required", "LEEWAY_API_KEYS_FILE": "/nonexistent/keys"},
            "LEEWAY_API_KEYS_FILE",
            id="unreadable-api-keys-file",
        ),
        pytest.param(
            {"LEEWAY_AUTH": "required", "LEEWAY_API_KEYS": f"crm:crm:{DIGEST}", "LEEWAY_API_KEYS_FILE": "/nonexistent"},
            "LEEWAY_API_KEYS_FILE",
            id="api-keys-and-file",
        ),
        pytest.param({"LEEWAY_RATE_LIMIT_PER_SECOND": "-1"}, "LEEWAY_RATE_LIMIT_PER_SECOND", id="negative-rate"),
        pytest.param({"LEEWAY_RATE_LIMIT_BURST": "0"}, "LEEWAY_RATE_LIMIT_BURST", id="zero-burst"),
        pytest.param({"LEEWAY_GRPC_MAX_MESSAGE_BYTES": "10"}, "LEEWAY_GRPC_MAX_MESSAGE_BYTES", id="tiny-messages"),
        pytest.param({"LEEWAY_GRPC_MAX_CONCURRENT_RPCS": "0"}, "LEEWAY_GRPC_MAX_CONCURRENT_RPCS", id="no-rpcs"),
        pytest.param({"LEEWAY_MAX_DEADLINE_SECONDS": "0"}, "LEEWAY_MAX_DEADLINE_SECONDS", id="zero-deadline"),
    ],
)
def test_bad_security_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    message = settings_error(env)
    assert variable in message
    assert SECRET not in message and DIGEST not in message


def test_secret_is_not_in_the_error() -> None:
    message = settings_error({**HS_ENV, "LEEWAY_JWT_SECRET": "hunter2-short", "LEEWAY_JWT_AUDIENCE": ""})
    assert "hunter2" not in message


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
        paths[name] = str(tmp_path / name)
    return paths


def test_tls_cert_without_key(tls_files: dict[str, str]) -> None:
    assert "LEEWAY_TLS_KEY_FILE" in settings_error({"LEEWAY_TLS_CERT_FILE": tls_files["cert.pem"]})
    assert "LEEWAY_TLS_CERT_FILE" in settings_error({"LEEWAY_TLS_KEY_FILE": tls_files["key.pem"]})


def test_client_ca_without_cert(tls_files: dict[str, str]) -> None:
    assert "LEEWAY_TLS_CLIENT_CA_FILE" in settings_error({"LEEWAY_TLS_CLIENT_CA_FILE": tls_files["ca.pem"]})


@pytest.mark.parametrize("variable", ["LEEWAY_TLS_CERT_FILE", "LEEWAY_TLS_KEY_FILE", "LEEWAY_TLS_CLIENT_CA_FILE"])
def test_tls_file_that_does_not_exist(tls_files: dict[str, str], tmp_path: Path, variable: str) -> None:
    env = {
        "LEEWAY_TLS_CERT_FILE": tls_files["cert.pem"],
        "LEEWAY_TLS_KEY_FILE": tls_files["key.pem"],
        "LEEWAY_TLS_CLIENT_CA_FILE": tls_files["ca.pem"],
        variable: str(tmp_path / "missing.pem"),
    }
    message = settings_error(env)
    assert variable in message and "missing.pem" in message


def test_tls_settings_accepted(tls_files: dict[str, str]) -> None:
    s = Settings.from_env(
        {
            "LEEWAY_TLS_CERT_FILE": tls_files["cert.pem"],
            "LEEWAY_TLS_KEY_FILE": tls_files["key.pem"],
            "LEEWAY_TLS_CLIENT_CA_FILE": tls_files["ca.pem"],
        }
    )
    assert s.tls_enabled and s.tls_client_ca_file == tls_files["ca.pem"]
    assert not Settings.from_env({}).tls_enabled


def test_security_defaults() -> None:
    s = Settings.from_env({})
    assert not s.auth_required and s.reflection is True
    assert (s.max_message_bytes, s.max_concurrent_rpcs, s.max_deadline_seconds) == (4 * 1024 * 1024, 10_000, 30.0)
    assert (s.rate_limit_per_second, s.rate_limit_burst, s.jwt_leeway_seconds) == (50.0, 100, 30.0)
    assert not s.authenticator().enabled
    assert Settings.from_env({"LEEWAY_AUTH": "off"}) == s


def test_hs256_settings_give_a_working_authenticator() -> None:
    s = Settings.from_env({**HS_ENV, "LEEWAY_JWT_LEEWAY_SECONDS": "5"})
    assert s.auth_required and s.jwt_algorithms == ("HS256",) and s.jwt_leeway_seconds == 5
    auth = s.authenticator()
    assert auth.jwt is not None and auth.jwt.leeway_seconds == 5
    assert auth.authenticate(bearer(hs256())).id == "alice"


def test_several_hmac_algorithms_are_accepted() -> None:
    s = Settings.from_env({**HS_ENV, "LEEWAY_JWT_ALGORITHMS": "HS256, HS512"})
    assert s.jwt_algorithms == ("HS256", "HS512")
    assert s.authenticator().authenticate(bearer(jwt.encode(claims(), SECRET, algorithm="HS512"))).id == "alice"


def test_secret_from_file(tmp_path: Path) -> None:
    path = tmp_path / "jwt-secret"
    path.write_text(SECRET + "\n")
    s = Settings.from_env({**without(HS_ENV, "LEEWAY_JWT_SECRET"), "LEEWAY_JWT_SECRET_FILE": str(path)})
    assert s.jwt_secret == SECRET
    assert s.authenticator().authenticate(bearer(hs256())).id == "alice"


def test_public_key_from_file(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "jwt.pem"
    path.write_text(_pem(private))
    s = Settings.from_env({**without(ED_ENV, "LEEWAY_JWT_PUBLIC_KEY"), "LEEWAY_JWT_PUBLIC_KEY_FILE": str(path)})
    token = jwt.encode(claims(sub="eve"), private, algorithm="EdDSA")
    assert s.authenticator().authenticate(bearer(token)).id == "eve"


def test_api_keys_from_a_file_with_newlines(tmp_path: Path) -> None:
    crm_key, ops_key, lead_key = new_api_key(), new_api_key(), new_api_key()
    path = tmp_path / "api-keys"
    path.write_text(
        f"crm-service:crm:{hash_api_key(crm_key)}\n\n"
        f"ops:admin+auditor:{hash_api_key(ops_key)}\r\n"
        f"lead:supervisor:{hash_api_key(lead_key)}:t1+t2\n"
    )
    s = Settings.from_env({"LEEWAY_AUTH": "required", "LEEWAY_API_KEYS_FILE": str(path)})
    assert len(s.api_keys) == 3
    auth = s.authenticator()
    assert auth.jwt is None
    assert auth.authenticate([("x-api-key", crm_key)]).id == "crm-service"
    assert auth.authenticate([("authorization", f"ApiKey {ops_key}")]).roles == frozenset({ADMIN, AUDITOR})
    assert auth.authenticate([("x-api-key", lead_key)]).teams == frozenset({"t1", "t2"})


def test_api_keys_separated_by_commas() -> None:
    crm_key = new_api_key()
    s = Settings.from_env(
        {"LEEWAY_AUTH": "required", "LEEWAY_API_KEYS": f" crm:crm:{hash_api_key(crm_key)} , ops:admin:{DIGEST},"}
    )
    assert [ApiKey.parse(e).name for e in s.api_keys] == ["crm", "ops"]
    assert s.authenticator().authenticate([("x-api-key", crm_key)]).id == "crm"


def test_reflection_defaults_off_under_required_auth() -> None:
    assert Settings.from_env(HS_ENV).reflection is False
    assert Settings.from_env({**HS_ENV, "LEEWAY_REFLECTION": "true"}).reflection is True
    assert Settings.from_env({**HS_ENV, "LEEWAY_REFLECTION": "false"}).reflection is False
    assert Settings.from_env({"LEEWAY_AUTH": "off"}).reflection is True


def test_repr_hides_secrets() -> None:
    crm_key = new_api_key()
    digest = hash_api_key(crm_key)
    s = Settings.from_env({**HS_ENV, "LEEWAY_API_KEYS": f"crm:crm:{digest}"})
    assert s.jwt_secret == SECRET and s.api_keys
    for text in (repr(s), str(s)):
        assert SECRET not in text and digest not in text and crm_key not in text
    s = Settings.from_env(ED_ENV)
    assert "BEGIN PUBLIC KEY" not in repr(s)


# ---------------------------------------------------------------------------- authorisation table


@dataclass(frozen=True)
class FakeBudget:
    employee_id: str
    team_id: str


@dataclass(frozen=True)
class FakeAction:
    action_id: str
    employee_id: str
    team_id: str
    approver_ids: tuple[str, ...] = ()
    approver_role: str = ""


class FakeApp:
    """What the scopes read: budgets (employee -> team) and actions (-> employee, team[, approvers, role])."""

    budgets: ClassVar[dict[str, str]] = {"alice": "t1", "bob": "t1", "sam": "t1", "carol": "t2", "tom": "t2"}
    actions: ClassVar[dict[str, tuple[Any, ...]]] = {
        "a-alice": ("alice", "t1"),
        "a-sam": ("sam", "t1"),
        "a-carol": ("carol", "t2"),
        # carol's actions that wait for sam by name, and for any supervisor of team t2
        "a-carol-sam": ("carol", "t2", ("sam",)),
        "a-carol-role": ("carol", "t2", (), SUPERVISOR),
    }

    def get_budget(self, employee_id: str) -> FakeBudget:
        if employee_id not in self.budgets:
            raise NotFound(
                f"no budget for {employee_id}", reason="BUDGET_NOT_FOUND", resource_type="budget", resource_name=employee_id
            )
        return FakeBudget(employee_id, self.budgets[employee_id])

    def get_action(self, action_id: str) -> FakeAction:
        if action_id not in self.actions:
            raise NotFound(
                f"no action {action_id}", reason="ACTION_NOT_FOUND", resource_type="action", resource_name=action_id
            )
        return FakeAction(action_id, *self.actions[action_id])


APP = FakeApp()
P = {
    "alice": Principal("alice", frozenset({AGENT}), frozenset({"t1"}), "jwt"),  # an agent's teams grant nothing
    "sam": Principal("sam", frozenset({SUPERVISOR}), frozenset({"t1"}), "jwt"),
    "crm": Principal("crm", frozenset({CRM}), frozenset(), "api_key"),
    "audit": Principal("audit", frozenset({AUDITOR}), frozenset(), "jwt"),
    "root": Principal("root", frozenset({ADMIN}), frozenset(), "jwt"),
}
ALL = tuple(P)

B, A, T = "/leeway.v1.BudgetService/", "/leeway.v1.ActionService/", "/leeway.v1.TeamService/"
I = "/leeway.v1.InsightsService/"  # noqa: E741
PENDING = action_pb2.Action.STATE_PENDING_APPROVAL

# (method, request, principals allowed) -- every other principal of P is denied.
CASES: list[tuple[str, Any, set[str]]] = [
    # GetBudget: agent own, supervisor own or team, crm/auditor/admin any
    (B + "GetBudget", budget_pb2.GetBudgetRequest(employee_id="alice"), {"alice", "sam", "crm", "audit", "root"}),
    (B + "GetBudget", budget_pb2.GetBudgetRequest(employee_id="bob"), {"sam", "crm", "audit", "root"}),
    (B + "GetBudget", budget_pb2.GetBudgetRequest(employee_id="sam"), {"sam", "crm", "audit", "root"}),
    (B + "GetBudget", budget_pb2.GetBudgetRequest(employee_id="carol"), {"crm", "audit", "root"}),
    (B + "GetBudget", budget_pb2.GetBudgetRequest(employee_id="ghost"), {"crm", "audit", "root"}),
    (B + "GetBudget", budget_pb2.GetBudgetRequest(employee_id=""), {"crm", "audit", "root"}),
    # ListBudgets: supervisor their teams, auditor/admin any
    (B + "ListBudgets", budget_pb2.ListBudgetsRequest(team_id="t1"), {"sam", "audit", "root"}),
    (B + "ListBudgets", budget_pb2.ListBudgetsRequest(team_id="t2"), {"audit", "root"}),
    (B + "ListBudgets", budget_pb2.ListBudgetsRequest(), {"audit", "root"}),
    # UpdatePolicy: supervisor a budget of their teams but not their own; admin any
    (B + "UpdatePolicy", budget_pb2.UpdatePolicyRequest(employee_id="alice"), {"sam", "root"}),
    (B + "UpdatePolicy", budget_pb2.UpdatePolicyRequest(employee_id="sam"), {"root"}),
    (B + "UpdatePolicy", budget_pb2.UpdatePolicyRequest(employee_id="carol"), {"root"}),
    (B + "UpdatePolicy", budget_pb2.UpdatePolicyRequest(employee_id="ghost"), {"root"}),
    # admin only
    (B + "OpenBudget", budget_pb2.OpenBudgetRequest(employee_id="alice", team_id="t1"), {"root"}),
    (B + "OpenBudget", budget_pb2.OpenBudgetRequest(employee_id="sam", team_id="t1"), {"root"}),
    (B + "CloseBudget", budget_pb2.CloseBudgetRequest(employee_id="alice"), {"root"}),
    (T + "SetTeamCap", team_pb2.SetTeamCapRequest(team_id="t1"), {"root"}),
    (T + "SetCustomerCap", team_pb2.SetCustomerCapRequest(), {"root"}),
    # RecordAction: agent & supervisor as themself, crm on behalf of anyone
    (A + "RecordAction", action_pb2.RecordActionRequest(employee_id="alice"), {"alice", "crm"}),
    (A + "RecordAction", action_pb2.RecordActionRequest(employee_id="bob"), {"crm"}),
    (A + "RecordAction", action_pb2.RecordActionRequest(employee_id="sam"), {"sam", "crm"}),
    (A + "RecordAction", action_pb2.RecordActionRequest(employee_id="ghost"), {"crm"}),
    # GetAction: agent own, supervisor own or team, crm/auditor/admin any
    (A + "GetAction", action_pb2.GetActionRequest(action_id="a-alice"), {"alice", "sam", "crm", "audit", "root"}),
    (A + "GetAction", action_pb2.GetActionRequest(action_id="a-sam"), {"sam", "crm", "audit", "root"}),
    (A + "GetAction", action_pb2.GetActionRequest(action_id="a-carol"), {"crm", "audit", "root"}),
    (A + "GetAction", action_pb2.GetActionRequest(action_id="ghost"), {"crm", "audit", "root"}),
    # ListActions: agent own, supervisor own/team or what waits for them; auditor/admin any; not crm
    (A + "ListActions", action_pb2.ListActionsRequest(employee_id="alice"), {"alice", "sam", "audit", "root"}),
    (A + "ListActions", action_pb2.ListActionsRequest(employee_id="bob"), {"sam", "audit", "root"}),
    (A + "ListActions", action_pb2.ListActionsRequest(employee_id="carol"), {"audit", "root"}),
    (A + "ListActions", action_pb2.ListActionsRequest(employee_id="ghost"), {"audit", "root"}),
    (A + "ListActions", action_pb2.ListActionsRequest(), {"audit", "root"}),
    (A + "ListActions", action_pb2.ListActionsRequest(state=PENDING, approver_id="sam"), {"sam", "audit", "root"}),
    (A + "ListActions", action_pb2.ListActionsRequest(state=PENDING, approver_id="tom"), {"audit", "root"}),
    (A + "ListActions", action_pb2.ListActionsRequest(approver_id="sam"), {"audit", "root"}),
    (A + "ListActions", action_pb2.ListActionsRequest(state=PENDING), {"audit", "root"}),
    (A + "ListActions", action_pb2.ListActionsRequest(customer_id="c1"), {"audit", "root"}),
    # Approve/Deny: supervisor as themself only
    (A + "ApproveAction", action_pb2.ApproveActionRequest(action_id="a-alice", approver_id="sam"), {"sam"}),
    (A + "ApproveAction", action_pb2.ApproveActionRequest(action_id="a-alice", approver_id="tom"), set()),
    (A + "ApproveAction", action_pb2.ApproveActionRequest(action_id="a-alice", approver_id="root"), set()),
    (A + "ApproveAction", action_pb2.ApproveActionRequest(action_id="a-alice", approver_id="alice"), set()),
    (A + "DenyAction", action_pb2.DenyActionRequest(action_id="a-alice", approver_id="sam"), {"sam"}),
    (A + "DenyAction", action_pb2.DenyActionRequest(action_id="a-alice", approver_id="crm"), set()),
    # ... and only an action they may decide (named, or its role in their team) or may read (own, their teams')
    (A + "ApproveAction", action_pb2.ApproveActionRequest(action_id="a-carol", approver_id="sam"), set()),
    (A + "ApproveAction", action_pb2.ApproveActionRequest(action_id="a-carol-sam", approver_id="sam"), {"sam"}),
    (A + "ApproveAction", action_pb2.ApproveActionRequest(action_id="a-carol-role", approver_id="sam"), set()),
    (A + "DenyAction", action_pb2.DenyActionRequest(action_id="a-carol-role", approver_id="sam"), set()),
    (A + "ApproveAction", action_pb2.ApproveActionRequest(action_id="ghost", approver_id="sam"), set()),
    (A + "ApproveAction", action_pb2.ApproveActionRequest(action_id="a-sam", approver_id="sam"), {"sam"}),  # the domain refuses
    # ReverseAction: supervisor as themself for a team action; admin as themself
    (A + "ReverseAction", action_pb2.ReverseActionRequest(action_id="a-alice", actor_id="sam"), {"sam"}),
    (A + "ReverseAction", action_pb2.ReverseActionRequest(action_id="a-carol", actor_id="sam"), set()),
    (A + "ReverseAction", action_pb2.ReverseActionRequest(action_id="ghost", actor_id="sam"), set()),
    (A + "ReverseAction", action_pb2.ReverseActionRequest(action_id="a-alice", actor_id="alice"), set()),
    (A + "ReverseAction", action_pb2.ReverseActionRequest(action_id="a-alice", actor_id="root"), {"root"}),
    (A + "ReverseAction", action_pb2.ReverseActionRequest(action_id="a-carol", actor_id="root"), {"root"}),
    (A + "ReverseAction", action_pb2.ReverseActionRequest(action_id="a-alice", actor_id="crm"), set()),
    # GetTeam: supervisor own team, auditor/admin
    (T + "GetTeam", team_pb2.GetTeamRequest(team_id="t1"), {"sam", "audit", "root"}),
    (T + "GetTeam", team_pb2.GetTeamRequest(team_id="t2"), {"audit", "root"}),
    # GetCustomerUsage: supervisor, crm, auditor, admin
    (T + "GetCustomerUsage", team_pb2.GetCustomerUsageRequest(customer_id="c1"), {"sam", "crm", "audit", "root"}),
    # GetKpis: agent their own figures, supervisor their teams (or an employee of them), auditor/admin anything
    (I + "GetKpis", insights_pb2.GetKpisRequest(employee_id="alice"), {"alice", "sam", "audit", "root"}),
    (I + "GetKpis", insights_pb2.GetKpisRequest(employee_id="sam"), {"sam", "audit", "root"}),
    (I + "GetKpis", insights_pb2.GetKpisRequest(employee_id="carol"), {"audit", "root"}),
    (I + "GetKpis", insights_pb2.GetKpisRequest(employee_id="ghost"), {"audit", "root"}),
    (I + "GetKpis", insights_pb2.GetKpisRequest(team_id="t1"), {"sam", "audit", "root"}),
    (I + "GetKpis", insights_pb2.GetKpisRequest(team_id="t2"), {"audit", "root"}),
    (I + "GetKpis", insights_pb2.GetKpisRequest(team_id="t1", employee_id="alice"), {"alice", "sam", "audit", "root"}),
    (I + "GetKpis", insights_pb2.GetKpisRequest(team_id="t1", employee_id="carol"), {"audit", "root"}),
    (I + "GetKpis", insights_pb2.GetKpisRequest(), {"audit", "root"}),
    # GetKpiSeries: the same scope as GetKpis
    (I + "GetKpiSeries", insights_pb2.GetKpiSeriesRequest(employee_id="alice"), {"alice", "sam", "audit", "root"}),
    (I + "GetKpiSeries", insights_pb2.GetKpiSeriesRequest(employee_id="carol"), {"audit", "root"}),
    (I + "GetKpiSeries", insights_pb2.GetKpiSeriesRequest(team_id="t1"), {"sam", "audit", "root"}),
    (I + "GetKpiSeries", insights_pb2.GetKpiSeriesRequest(team_id="t2"), {"audit", "root"}),
    (I + "GetKpiSeries", insights_pb2.GetKpiSeriesRequest(team_id="t1", employee_id="carol"), {"audit", "root"}),
    (I + "GetKpiSeries", insights_pb2.GetKpiSeriesRequest(), {"audit", "root"}),
    # ListWins: the celebration feed is everyone's
    (I + "ListWins", insights_pb2.ListWinsRequest(), set(ALL)),
    (I + "ListWins", insights_pb2.ListWinsRequest(team_id="t2", employee_id="carol"), set(ALL)),
]


def _case_id(case: tuple[str, Any, set[str]]) -> str:
    method, request, _ = case
    fields = ",".join(f"{f.name}={v}" for f, v in request.ListFields())
    return f"{method.rsplit('/', 1)[-1]}({fields})"


@pytest.mark.parametrize("who", ALL)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_scopes(case: tuple[str, Any, set[str]], who: str) -> None:
    method, request, allowed = case
    if who in allowed:
        authz.check(P[who], method, request, APP)
    else:
        with pytest.raises(PermissionDenied) as info:
            authz.check(P[who], method, request, APP)
        assert info.value.reason == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("who", "method", "missing", "present"),
    [
        ("alice", B + "GetBudget", budget_pb2.GetBudgetRequest(employee_id="ghost"), budget_pb2.GetBudgetRequest(employee_id="bob")),
        ("sam", B + "GetBudget", budget_pb2.GetBudgetRequest(employee_id="ghost"), budget_pb2.GetBudgetRequest(employee_id="carol")),
        ("sam", B + "UpdatePolicy", budget_pb2.UpdatePolicyRequest(employee_id="ghost"), budget_pb2.UpdatePolicyRequest(employee_id="carol")),
        ("alice", A + "GetAction", action_pb2.GetActionRequest(action_id="ghost"), action_pb2.GetActionRequest(action_id="a-carol")),
        ("sam", A + "GetAction", action_pb2.GetActionRequest(action_id="ghost"), action_pb2.GetActionRequest(action_id="a-carol")),
        ("sam", A + "ListActions", action_pb2.ListActionsRequest(employee_id="ghost"), action_pb2.ListActionsRequest(employee_id="carol")),
        ("sam", A + "ReverseAction", action_pb2.ReverseActionRequest(action_id="ghost", actor_id="sam"), action_pb2.ReverseActionRequest(action_id="a-carol", actor_id="sam")),
        ("sam", A + "ApproveAction", action_pb2.ApproveActionRequest(action_id="ghost", approver_id="sam"), action_pb2.ApproveActionRequest(action_id="a-carol", approver_id="sam")),
        ("sam", A + "DenyAction", action_pb2.DenyActionRequest(action_id="ghost", approver_id="sam"), action_pb2.DenyActionRequest(action_id="a-carol-role", approver_id="sam")),
    ],
)
def test_not_found_looks_like_permission_denied(who: str, method: str, missing: Any, present: Any) -> None:
    """For scoped roles a missing resource gives the same PermissionDenied as someone else's."""
    with pytest.raises(PermissionDenied) as gone:
        authz.check(P[who], method, missing, APP)
    with pytest.raises(PermissionDenied) as other:
        authz.check(P[who], method, present, APP)
    assert not isinstance(gone.value, NotFound)
    assert (type(gone.value), gone.value.reason, str(gone.value), gone.value.metadata) == (
        type(other.value), other.value.reason, str(other.value), other.value.metadata
    )
    assert "ghost" not in str(gone.value) and "ghost" not in gone.value.metadata.values()


def test_role_approval_needs_the_actions_team_admin_excepted() -> None:
    """a-carol-role waits for any supervisor of team t2: a supervisor of t2 may decide it, one of another team or
    of none may not (the same answer as for an action that does not exist), an admin supervisor may."""
    approve = action_pb2.ApproveActionRequest
    allowed = {
        "tess": Principal("tess", frozenset({SUPERVISOR}), frozenset({"t2"}), "jwt"),
        "boss": Principal("boss", frozenset({SUPERVISOR, ADMIN}), frozenset(), "jwt"),
    }
    refused = {
        "sam": P["sam"],
        "lone": Principal("lone", frozenset({SUPERVISOR}), frozenset(), "jwt"),
        "root": P["root"],  # an admin without the supervisor role calls no ApproveAction
    }
    for who, principal in allowed.items():
        authz.check(principal, A + "ApproveAction", approve(action_id="a-carol-role", approver_id=who), APP)
    for who, principal in refused.items():
        answers = set()
        for action_id in ("a-carol-role", "ghost"):
            with pytest.raises(PermissionDenied) as info:
                authz.check(principal, A + "ApproveAction", approve(action_id=action_id, approver_id=who), APP)
            answers.add((info.value.reason, str(info.value), tuple(info.value.metadata.items())))
        assert len(answers) == 1 and next(iter(answers))[0] == "PERMISSION_DENIED"
        assert "t2" not in str(answers) and "carol" not in str(answers)


def _decided(employee_id: str) -> action_pb2.ApproveActionResponse:
    return action_pb2.ApproveActionResponse(
        action=action_pb2.Action(action_id=f"a-{employee_id}", employee_id=employee_id),
        budget=budget_pb2.Budget(employee_id=employee_id, display_name=employee_id.title()),
    )


@pytest.mark.parametrize(
    ("who", "employee", "keeps_budget"),
    [
        ("sam", "carol", False),  # an approver named by another team's policy: the action, not the budget
        ("sam", "alice", True),  # their team's
        ("sam", "ghost", False),
        ("audit", "carol", True),
        ("root", "carol", True),
        ("crm", "carol", True),
        ("alice", "alice", True),
        ("alice", "bob", False),
    ],
)
def test_a_response_carries_only_the_budget_the_caller_may_read(who: str, employee: str, keeps_budget: bool) -> None:
    for method in (A + "ApproveAction", A + "DenyAction", A + "ReverseAction", A + "RecordAction"):
        response = _decided(employee)
        assert authz.visible(P[who], method, action_pb2.ApproveActionRequest(), response, APP) is response
        assert response.HasField("budget") is keeps_budget, method
        assert response.action.employee_id == employee  # the action stays


def test_visible_leaves_responses_without_a_budget_alone() -> None:
    win = action_pb2.DocumentWinResponse(action=action_pb2.Action(action_id="a-carol", employee_id="carol"))
    assert authz.visible(P["sam"], A + "DocumentWin", action_pb2.DocumentWinRequest(), win, APP) == win
    listed = budget_pb2.ListBudgetsResponse(budgets=[budget_pb2.Budget(employee_id="carol")])
    assert len(authz.visible(P["sam"], B + "ListBudgets", budget_pb2.ListBudgetsRequest(), listed, APP).budgets) == 1


EVERYONE = Principal("everyone", frozenset(ROLES), frozenset({"t1", "t2"}), "jwt")


@pytest.mark.parametrize(
    "method",
    [
        "/leeway.v1.BudgetService/DeleteBudget",
        "/leeway.v1.AuditService/DeleteEvents",
        "/leeway.v1.budgetservice/getbudget",
        "leeway.v1.BudgetService/GetBudget",
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "",
    ],
)
def test_method_not_in_rules_is_denied_for_every_role(method: str) -> None:
    assert method not in authz.RULES
    for principal in [*P.values(), EVERYONE]:
        with pytest.raises(PermissionDenied):
            authz.check(principal, method, budget_pb2.GetBudgetRequest(employee_id=principal.id), APP)


def test_admin_reversing_as_someone_else_is_denied() -> None:
    with pytest.raises(PermissionDenied):
        authz.check(P["root"], A + "ReverseAction", action_pb2.ReverseActionRequest(action_id="a-alice", actor_id="sam"), APP)
    authz.check(P["root"], A + "ReverseAction", action_pb2.ReverseActionRequest(action_id="a-alice", actor_id="root"), APP)


def test_principal_without_roles_is_denied_everything() -> None:
    nobody = Principal("alice", frozenset({"team-lead"}), frozenset({"t1"}), "jwt")
    for method in authz.RULES:
        with pytest.raises(PermissionDenied):
            authz.check(nobody, method, budget_pb2.GetBudgetRequest(employee_id="alice"), APP)


def test_any_role_of_several_may_grant() -> None:
    both = Principal("sam", frozenset({AGENT, SUPERVISOR}), frozenset({"t1"}), "jwt")
    authz.check(both, B + "GetBudget", budget_pb2.GetBudgetRequest(employee_id="bob"), APP)  # as supervisor
    authz.check(both, A + "RecordAction", action_pb2.RecordActionRequest(employee_id="sam"), APP)
    with pytest.raises(PermissionDenied):
        authz.check(both, A + "RecordAction", action_pb2.RecordActionRequest(employee_id="bob"), APP)


def test_auditor_cannot_write_and_crm_cannot_approve() -> None:
    verbs = ("Open", "Close", "Update", "Set", "Record", "Approve", "Deny", "Reverse")
    writes = [m for m in authz.RULES if m.rsplit("/", 1)[-1].startswith(verbs)]
    assert len(writes) == 9
    for method in writes:
        assert AUDITOR not in authz.RULES[method]
    for method in (A + "ApproveAction", A + "DenyAction", B + "UpdatePolicy"):
        assert CRM not in authz.RULES[method]


def test_every_rpc_has_a_rule() -> None:
    names = set()
    from leeway.v1 import audit_pb2, insights_pb2, privacy_pb2

    for module in (action_pb2, budget_pb2, team_pb2, audit_pb2, insights_pb2, privacy_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            names |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert names == set(authz.RULES)
    assert authz.OPEN_METHODS.isdisjoint(authz.RULES)


# ---------------------------------------------------------------------------- development certificates


@pytest.fixture(scope="module")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_dev_certs(tmp_path_factory.mktemp("certs") / "dev", client_name="crm-service")


def _cert(path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _verify_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    if hasattr(cert, "verify_directly_issued_by"):
        cert.verify_directly_issued_by(ca)
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def test_dev_cert_files(dev_certs: dict[str, str]) -> None:
    assert set(dev_certs) == {"ca_cert", "server_cert", "server_key", "client_cert", "client_key"}
    assert {Path(p).name for p in dev_certs.values()} == {
        "ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"
    }
    for path in dev_certs.values():
        assert Path(path).is_file() and Path(path).stat().st_size > 0
    for name in ("server_key", "client_key"):
        assert stat.S_IMODE(os.stat(dev_certs[name]).st_mode) == 0o600


def test_dev_server_cert(dev_certs: dict[str, str]) -> None:
    import ipaddress

    ca, server = _cert(dev_certs["ca_cert"]), _cert(dev_certs["server_cert"])
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert server.issuer == ca.subject
    _verify_issued_by(server, ca)
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    _verify_issued_by(ca, ca)  # self-signed


def test_dev_client_cert(dev_certs: dict[str, str]) -> None:
    ca, client = _cert(dev_certs["ca_cert"]), _cert(dev_certs["client_cert"])
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert ExtendedKeyUsageOID.SERVER_AUTH not in eku
    assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "crm-service"
    _verify_issued_by(client, ca)


@pytest.mark.parametrize(("cert", "key"), [("server_cert", "server_key"), ("client_cert", "client_key")])
def test_dev_keys_match_their_certs(dev_certs: dict[str, str], cert: str, key: str) -> None:
    private = serialization.load_pem_private_key(Path(dev_certs[key]).read_bytes(), password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert private.public_key().public_bytes(*fmt) == _cert(dev_certs[cert]).public_key().public_bytes(*fmt)


def test_dev_certs_are_fresh_each_time(tmp_path: Path) -> None:
    first = Path(write_dev_certs(tmp_path)["ca_cert"]).read_bytes()
    second = Path(write_dev_certs(tmp_path)["ca_cert"]).read_bytes()
    assert first != second
    assert stat.S_IMODE(os.stat(tmp_path / "server-key.pem").st_mode) == 0o600
