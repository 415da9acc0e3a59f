"""Shared helpers for the end-to-end tests."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import grpc
import pytest
from leeway_client import LeewayError, from_money, from_rpc_error, make_policy


def policy(allowance: str | int = "100", currency: str = "EUR", **kwargs: Any):
    kwargs.setdefault("bendable_rules", ["LATE_RETURN", "LATE_FEE", "WAIVE_FEE"])
    return make_policy(currency=currency, period_allowance=allowance, **kwargs)


def expect_error(cls: type[LeewayError], reason: str, call: Callable[[], Any]) -> LeewayError:
    """Runs ``call`` expecting ``cls`` with ErrorInfo ``reason`` in domain 'leeway'; returns the error."""
    with pytest.raises(cls) as caught:
        call()
    error = caught.value
    assert type(error) is cls, f"expected {cls.__name__}, got {type(error).__name__}: {error}"
    assert error.reason == reason, f"expected reason {reason}, got {error}"
    assert error.domain == "leeway", f"ErrorInfo.domain is {error.domain!r}: {error}"
    return error


def expect_raw_error(code: grpc.StatusCode, reason: str, call: Callable[[], Any]) -> LeewayError:
    """Like expect_error, for a raw stub call: decodes the grpc.RpcError with from_rpc_error."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = from_rpc_error(caught.value)
    assert error.code == code, f"expected {code.name}, got {error}"
    assert error.reason == reason, f"expected reason {reason}, got {error}"
    assert error.domain == "leeway", f"ErrorInfo.domain is {error.domain!r}: {error}"
    return error


def fields(error: LeewayError) -> set[str]:
    return {field for field, _ in error.field_violations}


def amount(money) -> Decimal:
    return from_money(money)


def jwt_server_env(secret: str, audience: str, issuer: str, api_keys: str) -> dict[str, str]:
    """The environment of a server that requires authentication: HS256 JWTs signed with ``secret`` for ``audience``
    from ``issuer``, and the API keys ``api_keys`` (LEEWAY_API_KEYS). No rate limits: such tests make hundreds of
    calls, and hundreds of failing ones, all from 127.0.0.1 (the limits are tested on their own:
    tests/e2e/test_auth_abuse.py)."""
    return {
        "LEEWAY_AUTH": "required",
        "LEEWAY_JWT_ALGORITHMS": "HS256",
        "LEEWAY_JWT_SECRET": secret,
        "LEEWAY_JWT_AUDIENCE": audience,
        "LEEWAY_JWT_ISSUER": issuer,
        "LEEWAY_API_KEYS": api_keys,
        "LEEWAY_RATE_LIMIT_PER_SECOND": "0",
        "LEEWAY_AUTH_FAILURE_PER_SECOND": "0",
    }
