"""Both Python clients (sync and asyncio) against an in-process fake: rate limits are retried after the wait the
server's RetryInfo names (with the same request_id), within the retry and time bounds; every gRPC status code
has its LeewayError subclass; the sync and async clients offer the same methods."""

from __future__ import annotations

import asyncio
import inspect
import time
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from leeway.v1 import action_pb2, action_pb2_grpc

import leeway_client
from leeway_client import (
    ERRORS_BY_CODE,
    FailedPreconditionError,
    GiftDetails,
    LeewayClient,
    LeewayError,
    ResourceExhaustedError,
    UnavailableError,
)
from leeway_client.aio import AsyncLeewayClient
from builders import fake_service


def status(code: int, reason: str, *extra: object) -> status_pb2.Status:
    details = []
    for message in (error_details_pb2.ErrorInfo(reason=reason, domain="leeway"), *extra):
        packed = any_pb2.Any()
        packed.Pack(message)
        details.append(packed)
    return status_pb2.Status(code=code, message=f"staged {reason}", details=details)


def rate_limited(seconds: float, reason: str = "RATE_LIMITED", retry_info: bool = True) -> status_pb2.Status:
    extra: list[object] = [
        error_details_pb2.QuotaFailure(violations=[error_details_pb2.QuotaFailure.Violation(subject="principal:crm", description="d")])
    ]
    if retry_info:
        extra.append(error_details_pb2.RetryInfo(retry_delay={"seconds": int(seconds), "nanos": int(seconds % 1 * 1e9)}))
    return status(code_pb2.RESOURCE_EXHAUSTED, reason, *extra)


class Staged(action_pb2_grpc.ActionServiceServicer):
    """RecordAction answers the staged statuses first, then succeeds; records when each request arrived."""

    def __init__(self) -> None:
        self.failures: list[status_pb2.Status] = []
        self.seen: list[tuple[float, action_pb2.RecordActionRequest]] = []

    def RecordAction(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.seen.append((time.monotonic(), request))
        if self.failures:
            context.abort_with_status(rpc_status.to_status(self.failures.pop(0)))
        return action_pb2.RecordActionResponse(action=action_pb2.Action(action_id="act_1", amount=request.amount))


@pytest.fixture
def staged() -> Any:
    servicer = Staged()
    with fake_service(action_pb2_grpc.add_ActionServiceServicer_to_server, servicer) as target:
        yield servicer, target


GIFT = GiftDetails(gift_type="flowers")


def record_sync(target: str, **options: Any) -> action_pb2.RecordActionResponse:
    with LeewayClient(target, **{"retries": 3, "backoff": 0.01, "timeout": 5, **options}) as client:
        return client.record_action("ann", "guest-1", Decimal("12.34"), "USD", GIFT, reason="late")


def record_async(target: str, **options: Any) -> action_pb2.RecordActionResponse:
    async def run() -> action_pb2.RecordActionResponse:
        async with AsyncLeewayClient(target, **{"retries": 3, "backoff": 0.01, "timeout": 5, **options}) as client:
            return await client.record_action("ann", "guest-1", Decimal("12.34"), "USD", GIFT, reason="late")

    return asyncio.run(run())


CLIENTS = pytest.mark.parametrize("record", [record_sync, record_async], ids=["sync", "async"])


@CLIENTS
def test_a_rate_limit_is_retried_after_the_wait_retry_info_names_with_the_same_request_id(staged, record) -> None:
    servicer, target = staged
    servicer.failures = [rate_limited(0.4), rate_limited(0.3)]
    started = time.monotonic()
    assert record(target).action.action_id == "act_1"
    times = [t for t, _ in servicer.seen]
    assert len(times) == 3
    # The backoff alone (0.01 s, 0.02 s) would have come back at once: the waits are RetryInfo's.
    assert times[1] - times[0] >= 0.4 and times[2] - times[1] >= 0.3
    assert times[2] - started < 2.0
    assert len({r.request_id for _, r in servicer.seen}) == 1 and servicer.seen[0][1].request_id


@CLIENTS
def test_rate_limit_retries_are_bounded_and_the_last_error_carries_the_details(staged, record) -> None:
    servicer, target = staged
    servicer.failures = [rate_limited(0.01)] * 10
    with pytest.raises(ResourceExhaustedError) as info:
        record(target, retries=2)
    assert len(servicer.seen) == 3
    error = info.value
    assert error.reason == "RATE_LIMITED" and error.retry_delay == pytest.approx(0.01)
    assert error.quota_violations == [("principal:crm", "d")]


@CLIENTS
def test_a_wait_past_the_total_timeout_is_not_made(staged, record) -> None:
    servicer, target = staged
    servicer.failures = [rate_limited(5.0)]
    started = time.monotonic()
    with pytest.raises(ResourceExhaustedError):
        record(target, total_timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert len(servicer.seen) == 1


@CLIENTS
def test_resource_exhausted_without_retry_info_or_rate_limit_is_not_retried(staged, record) -> None:
    servicer, target = staged
    servicer.failures = [rate_limited(0.01, reason="MESSAGE_TOO_LARGE", retry_info=False)]
    with pytest.raises(ResourceExhaustedError):
        record(target)
    assert len(servicer.seen) == 1
    servicer.failures = [rate_limited(0.01, retry_info=False)]  # RATE_LIMITED without RetryInfo: backoff
    assert record(target).action.action_id == "act_1"


@CLIENTS
def test_unavailable_is_retried_and_refusals_are_not(staged, record) -> None:
    servicer, target = staged
    servicer.failures = [status(code_pb2.UNAVAILABLE, "STORE_UNAVAILABLE")] * 10
    with pytest.raises(UnavailableError):
        record(target)
    assert len(servicer.seen) == 4
    servicer.seen.clear()
    servicer.failures = [status(code_pb2.FAILED_PRECONDITION, "BUDGET_EXHAUSTED")]
    with pytest.raises(FailedPreconditionError) as info:
        record(target)
    assert info.value.reason == "BUDGET_EXHAUSTED" and len(servicer.seen) == 1


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK], ids=lambda c: c.name)
def test_every_status_code_has_its_own_error_class(staged, code: grpc.StatusCode) -> None:
    servicer, target = staged
    cls = ERRORS_BY_CODE[code]
    assert cls is not LeewayError and issubclass(cls, LeewayError)
    assert cls.__name__ in leeway_client.__all__
    assert sum(1 for c in ERRORS_BY_CODE.values() if c is cls) == 1
    servicer.failures = [status(code.value[0], "STAGED")]
    with pytest.raises(cls) as info:
        record_sync(target, retries=0)
    assert info.value.code is code and info.value.reason == "STAGED"


def test_the_async_client_has_every_method_of_the_sync_one_with_the_same_parameters() -> None:
    public = lambda cls: {n: f for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}  # noqa: E731
    sync, aio = public(LeewayClient), public(AsyncLeewayClient)
    assert set(sync) == set(aio)
    for name, function in sync.items():
        assert inspect.signature(function).parameters.keys() == inspect.signature(aio[name]).parameters.keys(), name
        if name.startswith("iter_") or name == "stream_events":
            assert inspect.isasyncgenfunction(aio[name]) or "AsyncIterator" in str(inspect.signature(aio[name]))
        elif name != "close":
            assert inspect.iscoroutinefunction(aio[name]), name
    assert {"stream_events", "get_audit_trail", "verify_integrity", "iter_audit_trail"} <= set(sync)
