"""Exceptions that carry Leeway's google.rpc error details (ErrorInfo reason, BadRequest, PreconditionFailure,
QuotaFailure, RetryInfo): one subclass of ``LeewayError`` for every gRPC status code."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class LeewayError(Exception):
    """A call Leeway refused or could not complete.

    ``reason`` is the ErrorInfo reason (e.g. ``BUDGET_EXHAUSTED``), ``metadata`` its metadata;
    ``field_violations`` lists (field, description) from BadRequest and ``precondition_violations``
    (type, subject, description) from PreconditionFailure; ``quota_violations`` (subject, description) from
    QuotaFailure; ``retry_delay`` the seconds RetryInfo asks the caller to wait before trying again (None if the
    server sent no RetryInfo).
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    precondition_violations: list[tuple[str, str, str]] = field(default_factory=list)
    quota_violations: list[tuple[str, str]] = field(default_factory=list)
    retry_delay: float | None = None

    def __str__(self) -> str:
        reason = f" {self.reason}" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again (same request_id) may succeed: UNAVAILABLE, DEADLINE_EXCEEDED,
        a concurrency conflict, and a rate limit (RESOURCE_EXHAUSTED with RetryInfo, or reason RATE_LIMITED: the
        server says how long to wait). RESOURCE_EXHAUSTED without either (e.g. a message too large) is not."""
        if self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return True
        if self.code is grpc.StatusCode.ABORTED:
            return self.reason == "CONCURRENCY_CONFLICT"
        if self.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return self.retry_delay is not None or self.reason == "RATE_LIMITED"
        return self.reason == "RATE_LIMITED"


class CancelledError(LeewayError):
    """CANCELLED: the call was cancelled (usually by the caller)."""


class UnknownError(LeewayError):
    """UNKNOWN: a failure without a status (e.g. a proxy's)."""


class InvalidArgumentError(LeewayError):
    """INVALID_ARGUMENT: the request is malformed (see field_violations)."""


class NotFoundError(LeewayError):
    """NOT_FOUND: no such budget or action."""


class AlreadyExistsError(LeewayError):
    """ALREADY_EXISTS: the budget exists, or the request_id was used for a different request."""


class PermissionDeniedError(LeewayError):
    """PERMISSION_DENIED: the caller may not do this (e.g. approve their own action)."""


class ResourceExhaustedError(LeewayError):
    """RESOURCE_EXHAUSTED: a rate limit (reason RATE_LIMITED, TOO_MANY_STREAMS, ...; ``retry_delay`` says when to
    come back, ``quota_violations`` which limit) or a size limit; raised once the retries are used up."""


class FailedPreconditionError(LeewayError):
    """FAILED_PRECONDITION: outside the employee's authority (see reason and precondition_violations)."""


class AbortedError(LeewayError):
    """ABORTED: a version mismatch or a concurrency conflict."""


class OutOfRangeError(LeewayError):
    """OUT_OF_RANGE: a value past the end of what exists."""


class UnimplementedError(LeewayError):
    """UNIMPLEMENTED: the server does not have this method (an older server)."""


class InternalError(LeewayError):
    """INTERNAL: a bug on the server (it logged it); nothing the caller can change."""


class UnavailableError(LeewayError):
    """UNAVAILABLE (or DEADLINE_EXCEEDED) after all retries."""


class DeadlineExceededError(UnavailableError):
    """DEADLINE_EXCEEDED after all retries (an UnavailableError, as before this class existed)."""


class DataLossError(LeewayError):
    """DATA_LOSS: the event log lacks an event another one points at (see VerifyIntegrity)."""


class UnauthenticatedError(LeewayError):
    """UNAUTHENTICATED: no valid credentials (missing, expired or unknown token or API key)."""


#: The LeewayError subclass of every gRPC status code but OK.
ERRORS_BY_CODE: dict[grpc.StatusCode, type[LeewayError]] = {
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNKNOWN: UnknownError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def from_rpc_error(error: grpc.RpcError) -> LeewayError:
    """The LeewayError for a failed call (sync or grpc.aio), with every google.rpc detail it carried."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    result = ERRORS_BY_CODE.get(code, LeewayError)(code=code, message=message or "")
    try:
        status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None  # type: ignore[arg-type]
    except ValueError:
        # The details disagree with the call's code (e.g. trailers cut off by a metadata size limit): keep the
        # code and message, without details, rather than fail while reporting a failure.
        status = None
    if status is None:
        return result
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            result.reason, result.domain, result.metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            result.field_violations = [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            result.precondition_violations = [(v.type, v.subject, v.description) for v in failure.violations]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            result.quota_violations = [(v.subject, v.description) for v in quota.violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            result.retry_delay = max(0.0, retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9)
    return result
