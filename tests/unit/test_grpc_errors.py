"""leeway.grpc_api.errors: every domain error class -> its gRPC status code and google.rpc details.

ErrorInfo (domain "leeway", the error's reason and metadata) always comes first; then the detail that fits the
class: BadRequest for InvalidArgument, PreconditionFailure for PreconditionFailed (when it names violations),
ResourceInfo for NotFound, RetryInfo for Unavailable, QuotaFailure + RetryInfo for ResourceExhausted. Everything
echoed back is cut so that a reply to hostile input stays inside gRPC's metadata limits.
"""

from __future__ import annotations

import asyncio

from typing import Any

import grpc
import pytest
from google.protobuf import message as pb_message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from leeway.domain import errors as domain
from leeway.domain.errors import FieldViolation, PreconditionViolation
from leeway.grpc_api.errors import (
    ERROR_DOMAIN,
    MAX_DETAIL,
    MAX_FIELD,
    MAX_MESSAGE,
    MAX_VIOLATIONS,
    STATUS_TABLE,
    abort,
    internal_status,
    status_for,
)

ErrorInfo = error_details_pb2.ErrorInfo
BadRequest = error_details_pb2.BadRequest
PreconditionFailure = error_details_pb2.PreconditionFailure
ResourceInfo = error_details_pb2.ResourceInfo
RetryInfo = error_details_pb2.RetryInfo
QuotaFailure = error_details_pb2.QuotaFailure

DETAIL_TYPES = (ErrorInfo, BadRequest, PreconditionFailure, ResourceInfo, RetryInfo, QuotaFailure)


def unpack(status: status_pb2.Status) -> list[pb_message.Message]:
    """The details of ``status``, unpacked into their message types (in order)."""
    out = []
    for detail in status.details:
        for cls in DETAIL_TYPES:
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                out.append(message)
                break
        else:
            raise AssertionError(f"unexpected detail {detail.type_url}")
    return out


# (error, gRPC code, google.rpc code, reason, the detail types after ErrorInfo)
CASES: list[tuple[str, domain.LeewayError, grpc.StatusCode, int, str, list[type]]] = [
    (
        "invalid-argument",
        domain.InvalidArgument([FieldViolation("amount", "must not be negative")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        code_pb2.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        [BadRequest],
    ),
    (
        "invalid-argument-with-reason",
        domain.InvalidArgument([FieldViolation("page_token", "bad")], reason="INVALID_PAGE_TOKEN"),
        grpc.StatusCode.INVALID_ARGUMENT,
        code_pb2.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        [BadRequest],
    ),
    (
        "not-found",
        domain.budget_not_found("emp-1"),
        grpc.StatusCode.NOT_FOUND,
        code_pb2.NOT_FOUND,
        "BUDGET_NOT_FOUND",
        [ResourceInfo],
    ),
    (
        "already-exists",
        domain.AlreadyExists("budget exists", reason="BUDGET_EXISTS"),
        grpc.StatusCode.ALREADY_EXISTS,
        code_pb2.ALREADY_EXISTS,
        "BUDGET_EXISTS",
        [],
    ),
    (
        "precondition-with-violations",
        domain.PreconditionFailed(
            "over the limit",
            reason="PER_ACTION_LIMIT_EXCEEDED",
            violations=[PreconditionViolation("PER_ACTION_LIMIT", "budgets/emp-1", "at most 50 USD")],
            metadata={"limit": "50"},
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        code_pb2.FAILED_PRECONDITION,
        "PER_ACTION_LIMIT_EXCEEDED",
        [PreconditionFailure],
    ),
    (
        "precondition-without-violations",
        domain.PreconditionFailed("budget closed", reason="BUDGET_CLOSED"),
        grpc.StatusCode.FAILED_PRECONDITION,
        code_pb2.FAILED_PRECONDITION,
        "BUDGET_CLOSED",
        [],
    ),
    (
        "permission-denied",
        domain.PermissionDenied("not your own", reason="SELF_APPROVAL"),
        grpc.StatusCode.PERMISSION_DENIED,
        code_pb2.PERMISSION_DENIED,
        "SELF_APPROVAL",
        [],
    ),
    ("conflict", domain.Conflict("stale"), grpc.StatusCode.ABORTED, code_pb2.ABORTED, "CONFLICT", []),
    (
        "unavailable",
        domain.Unavailable("store down"),
        grpc.StatusCode.UNAVAILABLE,
        code_pb2.UNAVAILABLE,
        "STORE_UNAVAILABLE",
        [RetryInfo],
    ),
    (
        "unauthenticated",
        domain.Unauthenticated("no token"),
        grpc.StatusCode.UNAUTHENTICATED,
        code_pb2.UNAUTHENTICATED,
        "UNAUTHENTICATED",
        [],
    ),
    (
        "resource-exhausted",
        domain.ResourceExhausted("slow down", subject="principal:agent-1", retry_after=1.5),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        code_pb2.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        [QuotaFailure, RetryInfo],
    ),
    (
        "deadline-exceeded",
        domain.DeadlineExceeded("too slow"),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        code_pb2.DEADLINE_EXCEEDED,
        "DEADLINE_EXCEEDED",
        [],
    ),
    (
        "data-loss",
        domain.event_missing("events/abc/3", "request_id 'r-1'"),
        grpc.StatusCode.DATA_LOSS,
        code_pb2.DATA_LOSS,
        "EVENT_MISSING",
        [],
    ),
    ("base-class", domain.LeewayError("odd"), grpc.StatusCode.UNKNOWN, code_pb2.UNKNOWN, "LEEWAY_ERROR", []),
]


@pytest.mark.parametrize(("error", "grpc_code", "rpc_code", "reason", "extra"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_status_for_maps_each_class(
    error: domain.LeewayError, grpc_code: grpc.StatusCode, rpc_code: int, reason: str, extra: list[type]
) -> None:
    code, status = status_for(error)
    assert code == grpc_code
    assert status.code == rpc_code == grpc_code.value[0]
    assert status.message == error.message
    details = unpack(status)
    assert [type(d) for d in details] == [ErrorInfo, *extra]
    info = details[0]
    assert info.reason == reason
    assert info.domain == ERROR_DOMAIN == "leeway"
    assert dict(info.metadata) == error.metadata


def test_every_domain_error_class_has_a_row() -> None:
    classes = {
        cls
        for cls in vars(domain).values()
        if isinstance(cls, type) and issubclass(cls, domain.LeewayError) and cls is not domain.LeewayError
    }
    assert classes == {cls for cls, _, _ in STATUS_TABLE}
    assert all(grpc_code.value[0] == rpc_code for _, grpc_code, rpc_code in STATUS_TABLE)


def test_bad_request_lists_each_field_violation() -> None:
    error = domain.InvalidArgument([FieldViolation("amount", "must not be negative"), FieldViolation("reason", "is required")])
    _, status = status_for(error)
    bad = unpack(status)[1]
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("amount", "must not be negative"),
        ("reason", "is required"),
    ]
    assert status.message == "invalid request: amount: must not be negative; reason: is required"


def test_precondition_failure_lists_each_violation() -> None:
    error = domain.PreconditionFailed(
        "over two limits",
        reason="LIMITS_EXCEEDED",
        violations=[
            PreconditionViolation("PER_ACTION_LIMIT", "budgets/emp-1", "at most 50 USD an action"),
            PreconditionViolation("ALLOWANCE", "budgets/emp-1", "40 USD left"),
        ],
    )
    failure = unpack(status_for(error)[1])[1]
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("PER_ACTION_LIMIT", "budgets/emp-1", "at most 50 USD an action"),
        ("ALLOWANCE", "budgets/emp-1", "40 USD left"),
    ]


def test_resource_info_names_the_missing_resource() -> None:
    _, status = status_for(domain.budget_not_found("emp-9"))
    info, resource = unpack(status)
    assert (resource.resource_type, resource.resource_name, resource.description) == (
        "leeway.v1.Budget",
        "budgets/emp-9",
        "employee emp-9 has no budget",
    )
    assert dict(info.metadata) == {"resource_type": "leeway.v1.Budget", "resource_name": "budgets/emp-9"}


def test_unavailable_asks_for_a_retry_after_200_ms() -> None:
    retry = unpack(status_for(domain.Unavailable("down"))[1])[1]
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (0, 200_000_000)


@pytest.mark.parametrize(
    ("retry_after", "seconds", "nanos"),
    [(1.5, 1, 500_000_000), (2.0, 2, 0), (0.0, 0, 1_000_000), (-3.0, 0, 1_000_000)],
)
def test_resource_exhausted_carries_quota_failure_and_retry_delay(retry_after: float, seconds: int, nanos: int) -> None:
    error = domain.ResourceExhausted("slow down", subject="principal:agent-1", retry_after=retry_after)
    info, quota, retry = unpack(status_for(error)[1])
    assert dict(info.metadata) == {"subject": "principal:agent-1"}
    assert [(v.subject, v.description) for v in quota.violations] == [("principal:agent-1", "slow down")]
    assert retry.retry_delay.seconds == seconds
    assert abs(retry.retry_delay.nanos - nanos) < 1000  # float arithmetic


# ============================================================================ hostile input is cut


def test_long_messages_are_cut_to_max_message_bytes_on_a_character_boundary() -> None:
    _, status = status_for(domain.Conflict("é" * 1000))
    assert len(status.message.encode()) <= MAX_MESSAGE
    assert status.message.endswith("…")
    assert status.message.startswith("éé")


def test_short_messages_are_not_cut() -> None:
    text = "x" * MAX_MESSAGE
    assert status_for(domain.Conflict(text))[1].message == text


def test_metadata_is_capped_at_eight_entries_and_cut() -> None:
    metadata = {f"key-{i}": "v" * 500 for i in range(20)}
    metadata["k" * 500] = "x"
    error = domain.LeewayError("m", reason="R", metadata=metadata)
    info = unpack(status_for(error)[1])[0]
    assert len(info.metadata) == 8
    assert all(len(v.encode()) <= MAX_DETAIL for v in info.metadata.values())
    assert all(len(k.encode()) <= MAX_FIELD for k in info.metadata)


def test_field_violations_are_capped_and_cut() -> None:
    error = domain.InvalidArgument([FieldViolation("f" * 500, "d" * 500) for _ in range(50)])
    bad = unpack(status_for(error)[1])[1]
    assert len(bad.field_violations) == MAX_VIOLATIONS
    for v in bad.field_violations:
        assert len(v.field.encode()) <= MAX_FIELD and v.field.endswith("…")
        assert len(v.description.encode()) <= MAX_DETAIL and v.description.endswith("…")


def test_precondition_violations_are_capped_and_cut() -> None:
    error = domain.PreconditionFailed(
        "m", reason="R", violations=[PreconditionViolation("T", "s" * 500, "d" * 500) for _ in range(50)]
    )
    failure = unpack(status_for(error)[1])[1]
    assert len(failure.violations) == MAX_VIOLATIONS
    assert all(len(v.subject.encode()) <= MAX_FIELD and len(v.description.encode()) <= MAX_DETAIL for v in failure.violations)


def test_a_whole_hostile_status_stays_well_inside_8_kib() -> None:
    error = domain.InvalidArgument([FieldViolation("😀" * 1000, "😀" * 1000) for _ in range(100)])
    _, status = status_for(error)
    assert len(status.SerializeToString()) < 4096


# ============================================================================ internal errors and abort


def test_internal_status_says_nothing_about_internals() -> None:
    status = internal_status()
    assert status.code == code_pb2.INTERNAL
    assert status.message == "internal error; it has been logged"
    (info,) = unpack(status)
    assert (info.reason, info.domain, dict(info.metadata)) == ("INTERNAL", "leeway", {})


class FakeContext:
    """Records what abort_with_status was given, and raises as grpc.aio's ServicerContext does."""

    def __init__(self) -> None:
        self.status: Any = None

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise RuntimeError("aborted")


@pytest.mark.parametrize("correlation_id", ["", "corr-123"])
def test_abort_sends_the_status_details_and_the_correlation_id(correlation_id: str) -> None:
    _, status = status_for(domain.budget_not_found("emp-1"))
    context = FakeContext()
    with pytest.raises(RuntimeError, match="aborted"):
        asyncio.run(abort(context, status, correlation_id))
    sent = context.status
    assert sent.code == grpc.StatusCode.NOT_FOUND
    assert sent.details == "employee emp-1 has no budget"
    metadata = dict(sent.trailing_metadata)
    assert status_pb2.Status.FromString(metadata[rpc_status.GRPC_DETAILS_METADATA_KEY]) == status
    if correlation_id:
        assert metadata["x-correlation-id"] == correlation_id
    else:
        assert "x-correlation-id" not in metadata
