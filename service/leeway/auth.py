"""Who is calling: bearer JWTs (PyJWT) and static API keys, turned into a Principal with roles and teams.

- JWT: ``authorization: Bearer <token>``. Algorithms are pinned by configuration (never taken from the token;
  ``alg=none`` is never accepted); ``exp``, ``iat``, ``sub``, ``aud`` and ``iss`` are required. HS256 uses a
  shared secret; RS256 / ES256 / EdDSA use a public key (PEM). Mixing HMAC and public-key algorithms is refused
  at start-up (algorithm confusion). Roles come from the ``roles`` claim, teams from ``teams``.
- API keys for service accounts: ``authorization: ApiKey <key>`` (or ``x-api-key: <key>``). Only the SHA-256 of
  each key is configured (keys are 256-bit random strings made by ``leeway api-key``); comparison is in
  constant time.
- Exactly one credential per call: two ``authorization`` headers, two ``x-api-key`` headers, or one of each are
  refused (MULTIPLE_CREDENTIALS), never resolved by picking one.
- A JWT may live at most ``JwtConfig.max_lifetime_seconds`` (``exp - iat``; TOKEN_LIFETIME_TOO_LONG), and its
  ``iat`` and ``nbf`` may not be in the future beyond the leeway: together they bound how long any accepted
  token stays valid, whatever the issuer put in ``exp``.
- ``AuthFailureLimiter``: failed authentications per peer address (a token bucket); the interceptor asks it
  before checking any credential of a call, and tells it about every failure.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

import jwt

from .domain.reasons import Reason

#: The roles Leeway knows. Stored nowhere: they come from credentials.
AGENT, SUPERVISOR, AUDITOR, ADMIN, CRM = "agent", "supervisor", "auditor", "admin", "crm"
ROLES = (AGENT, SUPERVISOR, AUDITOR, ADMIN, CRM)
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
API_KEY_PREFIX = "lwk_"
#: The metadata keys that carry a credential; a call may send exactly one of them, once.
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``id`` is the JWT subject (an employee id for people) or the API key's name."""

    id: str
    roles: frozenset[str]
    teams: frozenset[str] = field(default_factory=frozenset)
    method: str = "none"  # "jwt", "api_key" or "none" (authentication off)

    def has(self, role: str) -> bool:
        return role in self.roles


#: The caller when authentication is off (quick start): every role, so everything works as before.
ANONYMOUS = Principal("anonymous", frozenset(ROLES), frozenset(), "none")


class AuthenticationError(Exception):
    """Missing or invalid credentials; ``reason`` is sent in ErrorInfo (never the credential itself)."""

    def __init__(self, message: str, reason: str = Reason.UNAUTHENTICATED):
        super().__init__(message)
        self.reason = str(reason)


@dataclass(frozen=True)
class ApiKey:
    name: str
    roles: frozenset[str]
    sha256: str
    teams: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entry: str) -> ApiKey:
        """``NAME:ROLE[+ROLE]:SHA256HEX[:TEAM[+TEAM]]`` (what ``leeway api-key`` prints)."""
        parts = entry.strip().split(":")
        if len(parts) not in (3, 4) or not parts[0]:
            # Never echo the entry: an operator may have pasted the key itself.
            raise ValueError("an entry is not NAME:ROLE[+ROLE]:SHA256HEX[:TEAMS] (use `leeway api-key` to make one)")
        name, roles, digest = parts[0], frozenset(r for r in parts[1].split("+") if r), parts[2].lower()
        unknown = roles - set(ROLES)
        if not roles or unknown:
            raise ValueError(f"API key {name!r}: roles must be from {', '.join(ROLES)}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"API key {name!r}: the third field must be the key's SHA-256 in hex")
        teams = frozenset(t for t in parts[3].split("+") if t) if len(parts) == 4 else frozenset()
        return cls(name, roles, digest, teams)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class JwtConfig:
    algorithms: tuple[str, ...]
    key: str | bytes
    audience: str
    issuer: str
    leeway_seconds: float = 30.0
    #: The longest ``exp - iat`` accepted (LEEWAY_JWT_MAX_LIFETIME_SECONDS).
    max_lifetime_seconds: float = 86400.0


#: What a caller is told when PyJWT refuses a token, by the kind of refusal (the first that matches).
_JWT_REFUSALS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired", Reason.TOKEN_EXPIRED),
    (jwt.ImmatureSignatureError, "the token is not valid yet (iat or nbf is in the future)", Reason.TOKEN_INVALID),
    (jwt.InvalidAudienceError, "the token is for another audience", Reason.TOKEN_INVALID),
    (jwt.InvalidIssuerError, "the token is from another issuer", Reason.TOKEN_INVALID),
    (jwt.InvalidSignatureError, "the token's signature does not verify", Reason.TOKEN_INVALID),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted", Reason.TOKEN_INVALID),
)


class Authenticator:
    """Turns request metadata into a Principal, or raises AuthenticationError.

    ``failures`` is the per-peer failed-authentication limiter the gRPC interceptor consults around
    ``authenticate`` (``grpc_api.authz.authenticate_call``); it is off unless given (settings give one).
    """

    def __init__(
        self,
        *,
        jwt_config: JwtConfig | None = None,
        api_keys: Sequence[ApiKey] = (),
        failures: AuthFailureLimiter | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.jwt = jwt_config
        self.api_keys = list(api_keys)
        self.failures = failures if failures is not None else AuthFailureLimiter(0, 1)
        self.clock = clock  # wall-clock seconds, for iat / nbf (PyJWT checks exp with its own)

    @property
    def enabled(self) -> bool:
        return self.jwt is not None or bool(self.api_keys)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        metadata = list(metadata)
        sent = [key.lower() for key, _ in metadata if key.lower() in CREDENTIAL_HEADERS]
        if len(sent) > 1:
            # Never pick one: a proxy and the client (or two layers of a client) disagreeing about who calls is
            # exactly the case where "the last header wins" lets the wrong one through.
            raise AuthenticationError(
                f"send exactly one credential per call (this call sent {len(sent)}: {' and '.join(sent)})",
                Reason.MULTIPLE_CREDENTIALS,
            )
        headers = {k.lower(): v for k, v in metadata if isinstance(v, str)}
        authorization = headers.get("authorization", "")
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return self._jwt(credential.strip())
        if scheme.lower() == "apikey" and credential.strip():
            return self._api_key(credential.strip())
        if headers.get("x-api-key"):
            return self._api_key(headers["x-api-key"].strip())
        if authorization:
            raise AuthenticationError("the authorization header must be 'Bearer <jwt>' or 'ApiKey <key>'")
        raise AuthenticationError("credentials are required: send 'authorization: Bearer <jwt>' or 'ApiKey <key>'")

    def _jwt(self, token: str) -> Principal:
        if self.jwt is None:
            raise AuthenticationError("bearer tokens are not accepted by this server (no JWT key configured)")
        config = self.jwt
        try:
            claims = jwt.decode(
                token,
                key=config.key,
                algorithms=list(config.algorithms),
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.MissingRequiredClaimError as error:
            raise AuthenticationError(f"the token lacks the {error.claim!r} claim", Reason.TOKEN_INVALID) from None
        except jwt.PyJWTError as error:
            message, reason = next(
                (found for kind, *found in _JWT_REFUSALS if isinstance(error, kind)),
                ("the token is not a valid JWT", Reason.TOKEN_INVALID),
            )
            raise AuthenticationError(message, reason) from None
        self._check_lifetime(claims, config)
        subject = claims.get("sub")
        roles = claims.get("roles", [])
        teams = claims.get("teams", [])
        if not isinstance(subject, str) or not subject:
            raise AuthenticationError("the token's subject is empty", Reason.TOKEN_INVALID)
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthenticationError("the token's roles claim must be a list of strings", Reason.TOKEN_INVALID)
        if not isinstance(teams, list) or not all(isinstance(t, str) for t in teams):
            raise AuthenticationError("the token's teams claim must be a list of strings", Reason.TOKEN_INVALID)
        # Every role name is kept: the five built-in roles grant methods (authz.RULES); other names (such as
        # "duty-manager") only count for a policy's approver_role.
        return Principal(subject, frozenset(roles), frozenset(teams), "jwt")

    def _check_lifetime(self, claims: dict[str, object], config: JwtConfig) -> None:
        """``exp - iat`` at most the configured maximum, and ``iat`` / ``nbf`` not in the future beyond the leeway.

        With both, no accepted token is valid for longer than leeway + maximum from now. PyJWT also refuses an
        ``iat`` or ``nbf`` in the future (since 2.6); this check does not depend on the library's version."""
        try:
            issued, expires = float(claims["iat"]), float(claims["exp"])  # type: ignore[arg-type]
            not_before = float(claims["nbf"]) if "nbf" in claims else None  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, OverflowError):
            raise AuthenticationError("the token's iat, exp and nbf must be numbers", Reason.TOKEN_INVALID) from None
        horizon = self.clock() + config.leeway_seconds
        if issued > horizon or (not_before is not None and not_before > horizon):
            raise AuthenticationError("the token is not valid yet (iat or nbf is in the future)", Reason.TOKEN_INVALID)
        if expires - issued > config.max_lifetime_seconds:
            raise AuthenticationError(
                f"the token's lifetime (exp - iat) is {expires - issued:.0f} s; this server accepts at most "
                f"{config.max_lifetime_seconds:g} s",
                Reason.TOKEN_LIFETIME_TOO_LONG,
            )

    def _api_key(self, key: str) -> Principal:
        digest = hash_api_key(key)
        found = None
        for entry in self.api_keys:  # compare against every entry, in constant time each
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        if found is None:
            raise AuthenticationError("the API key is not valid", Reason.API_KEY_INVALID)
        return Principal(found.name, found.roles, found.teams, "api_key")


class RateLimiter:
    """A token bucket per principal: ``rate`` calls per second, bursts of ``burst``. In-memory, per replica."""

    def __init__(self, rate: float, burst: int, *, clock: object = time.monotonic, max_principals: int = 100_000):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_principals = max_principals
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """0 if the call may go ahead, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()  # type: ignore[operator]
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1 - tokens) / self.rate
            if len(self._buckets) > self.max_principals:  # forget the idle ones
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return wait


def peer_address(peer: str) -> str:
    """What the failed-authentication limit is keyed by: the address of a gRPC peer string, without the port.

    ``ipv4:10.1.2.3:5555`` -> ``10.1.2.3``; ``ipv6:[2001:db8::7]:5555`` (or percent-encoded, ``%5B...%5D``) ->
    ``2001:db8::/64`` (one IPv6 host usually holds a whole /64, so per address would be no limit at all);
    an IPv4-mapped IPv6 address -> the IPv4 address; ``unix:...`` -> ``unix`` (local callers share one key);
    anything else -> the string itself, cut to 64 characters.
    """
    scheme, _, rest = peer.partition(":")
    rest = unquote(rest)
    if scheme == "ipv4":
        host = rest.rpartition(":")[0] or rest
    elif scheme == "ipv6":
        host = rest[1 : rest.index("]")] if rest.startswith("[") and "]" in rest else rest
        host = host.split("%", 1)[0]  # a zone index (fe80::1%eth0) names no other host
    elif scheme.startswith("unix"):
        return "unix"
    else:
        return peer[:64]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return peer[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AuthFailureLimiter:
    """Failed authentications per peer address: a token bucket of ``burst`` failures, refilled at ``rate`` per second.

    A peer (``peer_address``: its IP address, not its port; an IPv6 /64) may fail ``burst`` times in a row; after
    that, one more failure every ``1 / rate`` seconds. ``wait(peer)`` says how long the peer must wait before its
    next call is even looked at (0: go ahead); ``failed(peer)`` records one failure. Only failures cost: a
    successful call neither costs nor resets anything (an attacker holding one valid credential cannot refill
    its budget with it). Calls refused because of the wait are not failures either (nothing was checked), so a
    peer that retries after the advertised wait is let through.

    Concurrent calls may all pass ``wait`` and then fail: the bucket then goes below zero, down to ``-burst``,
    which makes the wait longer (at most ``(1 + burst) / rate``) instead of granting the extra attempts.

    Memory is bounded: at most ``max_peers`` peers are tracked; beyond that the one whose last failure is the
    oldest is forgotten (it gets a full bucket back), and a peer whose bucket has refilled is dropped when next
    asked about. In memory, per replica, like the per-principal RateLimiter. Thread-safe, and never blocks
    beyond a short lock (also fine to call from an asyncio event loop). ``rate <= 0`` turns it off.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = rate
        self.burst = max(1, burst)
        self.max_peers = max(1, max_peers)
        self.clock = clock
        self._peers: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def wait(self, peer: str) -> float:
        """Seconds until ``peer`` may try again (0: it may now). Costs nothing."""
        if not self._peers:  # the common case, no recent failure from anyone: not even a lock
            return 0.0
        key = peer_address(peer)
        with self._lock:
            entry = self._peers.get(key)
            if entry is None:
                return 0.0
            tokens = self._refilled(entry, self.clock())
            if tokens >= self.burst:
                del self._peers[key]  # nothing left to remember
                return 0.0
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def failed(self, peer: str) -> float:
        """Records one failed authentication of ``peer``; returns the wait it now has (0: it may try again)."""
        if not self.enabled:
            return 0.0
        key = peer_address(peer)
        with self._lock:
            now = self.clock()
            entry = self._peers.get(key)
            tokens = float(self.burst) if entry is None else self._refilled(entry, now)
            tokens = max(tokens - 1, -float(self.burst))
            self._peers[key] = (tokens, now)
            self._peers.move_to_end(key)
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def tracked(self) -> int:
        """How many peers are remembered now (for tests and diagnostics)."""
        return len(self._peers)

    def _refilled(self, entry: tuple[float, float], now: float) -> float:
        tokens, at = entry
        return min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
