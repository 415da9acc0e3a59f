"""Who is calling: bearer JWTs (PyJWT) and static API keys, turned into a Principal with roles and teams.

- JWT: ``authorization: Bearer <token>``. Algorithms are pinned by configuration (never taken from the token;
  ``alg=none`` is never accepted); ``exp``, ``iat``, ``sub``, ``aud`` and ``iss`` are required. HS256 uses a
  shared secret; RS256 / ES256 / EdDSA use a public key (PEM). Mixing HMAC and public-key algorithms is refused
  at start-up (algorithm confusion). Roles come from the ``roles`` claim, teams from ``teams``.
- API keys for service accounts: ``authorization: ApiKey <key>`` (or ``x-api-key: <key>``). Only the SHA-256 of
  each key is configured (keys are 256-bit random strings made by ``leeway api-key``); comparison is in
  constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import jwt

from .domain.reasons import Reason

#: The roles Leeway knows. Stored nowhere: they come from credentials.
AGENT, SUPERVISOR, AUDITOR, ADMIN, CRM = "agent", "supervisor", "auditor", "admin", "crm"
ROLES = (AGENT, SUPERVISOR, AUDITOR, ADMIN, CRM)
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
API_KEY_PREFIX = "lwk_"


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


class Authenticator:
    """Turns request metadata into a Principal, or raises AuthenticationError."""

    def __init__(self, *, jwt_config: JwtConfig | None = None, api_keys: Sequence[ApiKey] = ()):
        self.jwt = jwt_config
        self.api_keys = list(api_keys)

    @property
    def enabled(self) -> bool:
        return self.jwt is not None or bool(self.api_keys)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
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
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("the token has expired", Reason.TOKEN_EXPIRED) from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("the token is for another audience", Reason.TOKEN_INVALID) from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("the token is from another issuer", Reason.TOKEN_INVALID) from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("the token's signature does not verify", Reason.TOKEN_INVALID) from None
        except jwt.InvalidAlgorithmError:
            raise AuthenticationError("the token's algorithm is not accepted", Reason.TOKEN_INVALID) from None
        except jwt.MissingRequiredClaimError as error:
            raise AuthenticationError(f"the token lacks the {error.claim!r} claim", Reason.TOKEN_INVALID) from None
        except jwt.PyJWTError:
            raise AuthenticationError("the token is not a valid JWT", Reason.TOKEN_INVALID) from None
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
