"""Exceptions that carry Leeway's google.rpc error details (ErrorInfo reason, BadRequest, PreconditionFailure)."""

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
    (type, subject, description) from PreconditionFailure.
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    precondition_violations: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        reason = f" {self.reason}" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"

    @property
    def retryable(self) -> bool:
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or (
            self.code is grpc.StatusCode.ABORTED and self.reason == "CONCURRENCY_CONFLICT"
        )


class InvalidArgumentError(LeewayError):
    """INVALID_ARGUMENT: the request is malformed (see field_violations)."""


class NotFoundError(LeewayError):
    """NOT_FOUND: no such budget or action."""


class AlreadyExistsError(LeewayError):
    """ALREADY_EXISTS: the budget exists, or the request_id was used for a different request."""


class FailedPreconditionError(LeewayError):
    """FAILED_PRECONDITION: outside the employee's authority (see reason and precondition_violations)."""


class PermissionDeniedError(LeewayError):
    """PERMISSION_DENIED: the caller may not do this (e.g. approve their own action)."""


class AbortedError(LeewayError):
    """ABORTED: a version mismatch or a concurrency conflict."""


class UnavailableError(LeewayError):
    """UNAVAILABLE (or DEADLINE_EXCEEDED) after all retries."""


_BY_CODE: dict[grpc.StatusCode, type[LeewayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
}


def from_rpc_error(error: grpc.RpcError) -> LeewayError:
    """The LeewayError for a failed call, with every google.rpc detail it carried."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    result = _BY_CODE.get(code, LeewayError)(code=code, message=message or "")
    try:
        status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
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
    return result
