"""Abuse of authentication, without a server (issue 18): exactly one credential per call, the longest JWT
lifetime, the failed-authentication limit per peer (``AuthFailureLimiter``, ``peer_address``), the interceptor's
authentication step (``authz.authenticate_call``) and their settings. Clocks are injected; nothing sleeps."""

from __future__ import annotations

import threading
import time
from typing import Any

import jwt
import pytest
from leeway.auth import (
    ApiKey,
    AuthenticationError,
    Authenticator,
    AuthFailureLimiter,
    JwtConfig,
    Principal,
    hash_api_key,
    new_api_key,
    peer_address,
)
from leeway.domain.errors import LeewayError, ResourceExhausted, Unauthenticated
from leeway.grpc_api import authz
from leeway.grpc_api.errors import status_for
from leeway.settings import Settings
from builders import unpacked_details

SECRET = "abuse-secret-" + "x" * 60
AUDIENCE, ISSUER = "leeway", "https://idp.example"
DAY, YEAR = 86400, 365 * 86400
CRM_KEY = new_api_key()


def token(iat: float | None = None, exp: float | None = None, **extra: Any) -> str:
    """An HS256 token for alice; ``iat`` / ``exp`` default to now / now + 300 (real time: PyJWT reads it)."""
    now = int(time.time())
    body = {"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "iat": now if iat is None else iat,
            "exp": now + 300 if exp is None else exp, "roles": ["agent"], **extra}
    return jwt.encode(body, SECRET, algorithm="HS256")


def authenticator(max_lifetime: float = DAY, clock: Any = time.time, **kwargs: Any) -> Authenticator:
    return Authenticator(
        jwt_config=JwtConfig(("HS256",), SECRET, AUDIENCE, ISSUER, 30, max_lifetime),
        api_keys=[ApiKey.parse(f"crm-main:crm:{hash_api_key(CRM_KEY)}")],
        clock=clock,
        **kwargs,
    )


def outcome(auth: Authenticator, metadata: list[tuple[str, Any]]) -> str:
    """The principal's id, or the AuthenticationError's reason."""
    try:
        return auth.authenticate(metadata).id
    except AuthenticationError as error:
        return error.reason


# ---------------------------------------------------------------------------- exactly one credential


def bearer() -> tuple[str, str]:
    return ("authorization", f"Bearer {token()}")


def api_key() -> tuple[str, str]:
    return ("authorization", f"ApiKey {CRM_KEY}")


def x_api_key() -> tuple[str, str]:
    return ("x-api-key", CRM_KEY)


CREDENTIAL_CASES = {
    # one credential, whatever else comes with it
    "a bearer token": ([bearer], "alice"),
    "an ApiKey authorization": ([api_key], "crm-main"),
    "an x-api-key": ([x_api_key], "crm-main"),
    "a credential and other headers": ([lambda: ("x-correlation-id", "c-1"), x_api_key, lambda: ("x-b-bin", b"\0")],
                                       "crm-main"),
    # more than one: refused, never "the last one wins"
    "two bearer tokens": ([bearer, bearer], "MULTIPLE_CREDENTIALS"),
    "two ApiKey authorizations": ([api_key, api_key], "MULTIPLE_CREDENTIALS"),
    "bearer and ApiKey": ([bearer, api_key], "MULTIPLE_CREDENTIALS"),
    "authorization and x-api-key": ([bearer, x_api_key], "MULTIPLE_CREDENTIALS"),
    "x-api-key and authorization": ([x_api_key, api_key], "MULTIPLE_CREDENTIALS"),
    "two x-api-keys": ([x_api_key, x_api_key], "MULTIPLE_CREDENTIALS"),
    "a bad and a good one": ([lambda: ("authorization", "Bearer forged"), bearer], "MULTIPLE_CREDENTIALS"),
    "a good one and an empty one": ([bearer, lambda: ("x-api-key", "")], "MULTIPLE_CREDENTIALS"),
    "names in other cases": ([lambda: ("Authorization", f"Bearer {token()}"), lambda: ("X-API-KEY", CRM_KEY)],
                             "MULTIPLE_CREDENTIALS"),
}


@pytest.mark.parametrize("case", CREDENTIAL_CASES)
def test_exactly_one_credential_per_call(case: str) -> None:
    headers, expected = CREDENTIAL_CASES[case]
    assert outcome(authenticator(), [make() for make in headers]) == expected


def test_the_multiple_credentials_refusal_echoes_no_credential() -> None:
    sent = [bearer(), x_api_key()]
    with pytest.raises(AuthenticationError) as info:
        authenticator().authenticate(sent)
    assert "authorization and x-api-key" in str(info.value)
    assert all(value not in str(info.value) for _, value in sent)
    assert CRM_KEY not in str(info.value) and "Bearer" not in str(info.value)


# ---------------------------------------------------------------------------- the longest lifetime


def lifetime_cases() -> dict[str, tuple[dict[str, Any], float, str]]:
    """name -> (claims relative to now, max lifetime, expected principal or reason)."""
    return {
        "five minutes": ({"iat": 0, "exp": 300}, DAY, "alice"),
        "exactly the maximum": ({"iat": 0, "exp": DAY}, DAY, "alice"),
        "a second over the maximum": ({"iat": 0, "exp": DAY + 1}, DAY, "TOKEN_LIFETIME_TOO_LONG"),
        "ten years": ({"iat": 0, "exp": 10 * YEAR}, DAY, "TOKEN_LIFETIME_TOO_LONG"),
        "issued long ago, valid a little longer": ({"iat": -9 * YEAR, "exp": 3600}, DAY, "TOKEN_LIFETIME_TOO_LONG"),
        "a smaller maximum": ({"iat": 0, "exp": 600}, 300, "TOKEN_LIFETIME_TOO_LONG"),
        "a larger maximum": ({"iat": 0, "exp": 7 * DAY}, 7 * DAY, "alice"),
        # iat in the future would let a short "lifetime" start whenever the issuer likes
        "issued within the leeway ahead": ({"iat": 20, "exp": 320}, DAY, "alice"),
        "issued an hour ahead": ({"iat": 3600, "exp": 3900}, DAY, "TOKEN_INVALID"),
        "issued ten years ahead, one minute long": ({"iat": 10 * YEAR, "exp": 10 * YEAR + 60}, DAY, "TOKEN_INVALID"),
        "nbf in the past": ({"iat": -60, "exp": 300, "nbf": -60}, DAY, "alice"),
        "nbf an hour ahead": ({"iat": 0, "exp": 7200, "nbf": 3600}, DAY, "TOKEN_INVALID"),
        "nbf does not shorten the lifetime that counts": ({"iat": -DAY, "exp": 60, "nbf": 0}, DAY,
                                                          "TOKEN_LIFETIME_TOO_LONG"),
    }


@pytest.mark.parametrize("case", lifetime_cases())
def test_the_longest_lifetime_and_no_future_iat_or_nbf(case: str) -> None:
    relative, max_lifetime, expected = lifetime_cases()[case]
    now = int(time.time())
    body = {name: now + offset for name, offset in relative.items()}
    assert outcome(authenticator(max_lifetime), [("authorization", f"Bearer {token(**body)}")]) == expected


def test_the_future_iat_check_is_the_servers_own() -> None:
    """With a server clock an hour behind, a token issued now is issued in the future: refused by Leeway's own
    check (PyJWT, on the real clock, would accept it), so the rule does not depend on the library's version."""
    behind = authenticator(clock=lambda: time.time() - 3600)
    assert outcome(behind, [bearer()]) == "TOKEN_INVALID"
    assert outcome(authenticator(clock=lambda: time.time() + 3600), [bearer()]) == "alice"


def test_the_lifetime_refusal_says_what_is_allowed_and_echoes_no_token() -> None:
    now = int(time.time())
    long_lived = token(iat=now, exp=now + 10 * YEAR)
    with pytest.raises(AuthenticationError) as info:
        authenticator().authenticate([("authorization", f"Bearer {long_lived}")])
    assert info.value.reason == "TOKEN_LIFETIME_TOO_LONG"
    assert "86400" in str(info.value) and long_lived not in str(info.value)


# ---------------------------------------------------------------------------- peer addresses


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:127.0.0.1:5555", "127.0.0.1"),
        ("ipv4:10.1.2.3:1", "10.1.2.3"),
        ("ipv6:[::1]:5555", "::/64"),
        ("ipv6:%5B::1%5D:5555", "::/64"),
        ("ipv6:[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:443", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2::7]:444", "2001:db8:1:2::/64"),
        ("ipv6:[::ffff:192.0.2.7]:5555", "192.0.2.7"),
        ("ipv6:[fe80::1%25eth0]:5555", "fe80::/64"),
        ("unix:/run/leeway.sock", "unix"),
        ("unix:", "unix"),
        ("unix-abstract:leeway", "unix"),
        ("ipv4:not-an-address:1", "ipv4:not-an-address:1"),
        ("", ""),
        ("something-else:" + "x" * 200, ("something-else:" + "x" * 200)[:64]),
    ],
)
def test_peer_address(peer: str, key: str) -> None:
    assert peer_address(peer) == key


# ---------------------------------------------------------------------------- the limiter


class Ticker:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


A1, A2, B = "ipv4:10.0.0.1:1111", "ipv4:10.0.0.1:2222", "ipv4:10.0.0.2:1111"

#: (steps, expected waits): each step is "fail <peer>", "wait <peer>" or "+<seconds>"; a wait step records what
#: wait() answered. rate 1 per second, bursts of 3.
LIMITER_CASES: dict[str, tuple[list[str], list[float]]] = {
    "a new peer waits for nothing": (["wait A1"], [0]),
    "the burst is free": (["fail A1", "fail A1", "wait A1", "fail A1", "wait A1"], [0, 1.0]),
    "the port does not matter": (["fail A1", "fail A2", "fail A1", "wait A2"], [1.0]),
    "other addresses are not limited": (["fail A1"] * 3 + ["wait B", "wait A1"], [0, 1.0]),
    "the wait runs down": (["fail A1"] * 3 + ["+0.25", "wait A1", "+0.75", "wait A1"], [0.75, 0]),
    "asking costs nothing": (["fail A1"] * 3 + ["wait A1", "wait A1", "+1", "wait A1"], [1.0, 1.0, 0]),
    "one more failure each refill": (["fail A1"] * 3 + ["+1", "wait A1", "fail A1", "wait A1"], [0, 1.0]),
    "the bucket refills to the burst, no further": (
        ["fail A1"] * 3 + ["+100", "fail A1", "fail A1", "wait A1", "fail A1", "wait A1"], [0, 1.0]),
    "racing failures lengthen the wait, bounded": (["fail A1"] * 50 + ["wait A1"], [4.0]),
}


@pytest.mark.parametrize("case", LIMITER_CASES)
def test_failure_limiter(case: str) -> None:
    steps, expected = LIMITER_CASES[case]
    peers = {"A1": A1, "A2": A2, "B": B}
    clock = Ticker()
    limiter = AuthFailureLimiter(1.0, 3, clock=clock)
    waits = []
    for step in steps:
        if step.startswith("+"):
            clock.now += float(step[1:])
        elif step.startswith("fail "):
            limiter.failed(peers[step[5:]])
        else:
            waits.append(limiter.wait(peers[step[5:]]))
    assert waits == pytest.approx(expected)


def test_failed_returns_the_wait_it_leaves() -> None:
    limiter = AuthFailureLimiter(0.5, 2, clock=Ticker())
    assert [limiter.failed(A1) for _ in range(3)] == pytest.approx([0, 2.0, 4.0])


def test_rate_zero_turns_it_off() -> None:
    limiter = AuthFailureLimiter(0, 1, clock=Ticker())
    assert not limiter.enabled
    assert all(limiter.failed(A1) == 0 for _ in range(100))
    assert limiter.wait(A1) == 0 and limiter.tracked() == 0


def test_a_refilled_peer_is_forgotten() -> None:
    clock = Ticker()
    limiter = AuthFailureLimiter(1.0, 3, clock=clock)
    limiter.failed(A1)
    assert limiter.tracked() == 1
    clock.now += 0.5
    assert limiter.wait(A1) == 0 and limiter.tracked() == 1
    clock.now += 0.5
    assert limiter.wait(A1) == 0 and limiter.tracked() == 0


def test_memory_is_bounded_and_the_oldest_failure_is_forgotten_first() -> None:
    limiter = AuthFailureLimiter(0.001, 1, max_peers=3, clock=Ticker())
    for peer in ("ipv4:10.0.0.1:1", "ipv4:10.0.0.2:1", "ipv4:10.0.0.3:1", "ipv4:10.0.0.1:2", "ipv4:10.0.0.4:1"):
        limiter.failed(peer)
    assert limiter.tracked() == 3
    waits = {n: limiter.wait(f"ipv4:10.0.0.{n}:9") for n in (1, 2, 3, 4)}
    assert waits[2] == 0, "10.0.0.2 failed longest ago: forgotten"
    assert all(waits[n] > 0 for n in (1, 3, 4))
    for n in range(1000):
        limiter.failed(f"ipv4:172.16.{n // 256}.{n % 256}:1")
    assert limiter.tracked() == 3


def test_ipv6_peers_share_their_64() -> None:
    limiter = AuthFailureLimiter(1.0, 2, clock=Ticker())
    limiter.failed("ipv6:[2001:db8::1]:1")
    limiter.failed("ipv6:[2001:db8::ffff:2]:1")
    assert limiter.wait("ipv6:[2001:db8::3]:1") == pytest.approx(1.0)
    assert limiter.wait("ipv6:[2001:db8:0:1::3]:1") == 0


def test_concurrent_failures_are_all_counted() -> None:
    """Eight threads x 100 failures against a bucket of 801: exactly one token is left, and one more failure
    empties it (a lost update would leave more)."""
    limiter = AuthFailureLimiter(0.001, 801, clock=Ticker())
    start = threading.Barrier(8)

    def fail() -> None:
        start.wait()
        for _ in range(100):
            limiter.failed(A1)

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert limiter.wait(A1) == 0
    limiter.failed(A1)
    assert limiter.wait(A1) == pytest.approx(1000.0)


# ---------------------------------------------------------------------------- the interceptor's step


class Counting(Authenticator):
    """An Authenticator that counts how often credentials were looked at."""

    checked = 0

    def authenticate(self, metadata: Any) -> Principal:
        self.checked += 1
        return super().authenticate(metadata)


def details(error: LeewayError) -> dict[str, Any]:
    _, status = status_for(error)
    return unpacked_details(status)


def test_authenticate_call_limits_failures_per_peer_before_looking_at_credentials() -> None:
    clock = Ticker()
    auth = Counting(
        jwt_config=JwtConfig(("HS256",), SECRET, AUDIENCE, ISSUER),
        api_keys=[ApiKey.parse(f"crm-main:crm:{hash_api_key(CRM_KEY)}")],
        failures=AuthFailureLimiter(0.5, 2, clock=clock),
    )
    wrong, good = [("x-api-key", new_api_key())], [("x-api-key", CRM_KEY)]
    for _ in range(2):
        with pytest.raises(Unauthenticated) as unauthenticated:
            authz.authenticate_call(auth, A1, wrong)
        assert unauthenticated.value.reason == "API_KEY_INVALID"
    assert auth.checked == 2

    # Over the limit: refused with the wait, good credentials or not, and they are not even looked at.
    for metadata in (wrong, good):
        with pytest.raises(ResourceExhausted) as limited:
            authz.authenticate_call(auth, A2, metadata)
        assert limited.value.reason == "TOO_MANY_AUTH_FAILURES"
        assert limited.value.retry_after == pytest.approx(2.0)
    assert auth.checked == 2
    found = details(limited.value)
    assert set(found) == {"ErrorInfo", "QuotaFailure", "RetryInfo"}
    assert (found["ErrorInfo"].reason, found["ErrorInfo"].domain) == ("TOO_MANY_AUTH_FAILURES", "leeway")
    assert [v.subject for v in found["QuotaFailure"].violations] == ["peer:10.0.0.1"]
    assert found["RetryInfo"].retry_delay.ToTimedelta().total_seconds() == pytest.approx(2.0)
    assert status_for(limited.value)[0].name == "RESOURCE_EXHAUSTED"
    assert CRM_KEY not in str(limited.value)

    # Another address is not limited; after the wait the same address gets in with good credentials, and
    # successes cost nothing: the next failure is limited again at once.
    assert authz.authenticate_call(auth, B, good).id == "crm-main"
    clock.now += 2.0
    for _ in range(5):
        assert authz.authenticate_call(auth, A1, good).id == "crm-main"
    with pytest.raises(Unauthenticated):
        authz.authenticate_call(auth, A1, wrong)
    with pytest.raises(ResourceExhausted):
        authz.authenticate_call(auth, A1, good)


def test_two_credentials_count_as_a_failure() -> None:
    auth = authenticator(failures=AuthFailureLimiter(1.0, 1, clock=Ticker()))
    with pytest.raises(Unauthenticated) as info:
        authz.authenticate_call(auth, A1, [bearer(), x_api_key()])
    assert info.value.reason == "MULTIPLE_CREDENTIALS"
    assert auth.failures.wait(A1) == pytest.approx(1.0)


def test_an_authenticator_made_without_a_limiter_limits_nothing() -> None:
    auth = authenticator()
    for _ in range(100):
        with pytest.raises(Unauthenticated):
            authz.authenticate_call(auth, A1, [])
    assert authz.authenticate_call(auth, A1, [x_api_key()]).id == "crm-main"


# ---------------------------------------------------------------------------- settings


def test_abuse_settings_defaults() -> None:
    s = Settings.from_env({})
    assert s.jwt_max_lifetime_seconds == 86400
    assert (s.auth_failure_per_second, s.auth_failure_burst, s.auth_failure_max_peers) == (0.2, 10, 10_000)
    assert s.metrics_address == "127.0.0.1:9464", "metrics on loopback unless configured"


def test_abuse_settings_reach_the_authenticator() -> None:
    s = Settings.from_env({
        "LEEWAY_AUTH": "required", "LEEWAY_JWT_ALGORITHMS": "HS256", "LEEWAY_JWT_SECRET": SECRET,
        "LEEWAY_JWT_AUDIENCE": AUDIENCE, "LEEWAY_JWT_ISSUER": ISSUER,
        "LEEWAY_JWT_MAX_LIFETIME_SECONDS": "3600",
        "LEEWAY_AUTH_FAILURE_PER_SECOND": "2.5", "LEEWAY_AUTH_FAILURE_BURST": "4",
        "LEEWAY_AUTH_FAILURE_MAX_PEERS": "50",
    })
    auth = s.authenticator()
    assert auth.jwt is not None and auth.jwt.max_lifetime_seconds == 3600
    assert (auth.failures.rate, auth.failures.burst, auth.failures.max_peers) == (2.5, 4, 50)
    default = Settings.from_env({"LEEWAY_AUTH": "required", "LEEWAY_API_KEYS": f"crm:crm:{hash_api_key(CRM_KEY)}"})
    assert (default.authenticator().failures.rate, default.authenticator().failures.burst) == (0.2, 10)
    off = Settings.from_env({"LEEWAY_AUTH_FAILURE_PER_SECOND": "0"})
    assert not off.authenticator().failures.enabled


