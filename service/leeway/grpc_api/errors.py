"""Domain errors -> gRPC status with google.rpc details. The one table that decides status codes."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..domain import errors as domain
from ..domain.reasons import Reason

#: ErrorInfo.domain of every error Leeway sends.
ERROR_DOMAIN = "leeway"

#: Domain error class -> (gRPC status code, google.rpc.Code). The most specific class wins.
STATUS_TABLE: list[tuple[type[domain.LeewayError], grpc.StatusCode, int]] = [
    (domain.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    (domain.NotFound, grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    (domain.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
    (domain.PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    (domain.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
    (domain.Conflict, grpc.StatusCode.ABORTED, code_pb2.ABORTED),
    (domain.Unavailable, grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    (domain.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    (domain.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    (domain.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, code_pb2.DEADLINE_EXCEEDED),
    (domain.DataLoss, grpc.StatusCode.DATA_LOSS, code_pb2.DATA_LOSS),
]


#: Caps on what an error echoes back, so that a reply to hostile input stays well inside gRPC's 8 KiB
#: metadata limit (grpc-message and grpc-status-details-bin travel as trailers).
MAX_MESSAGE = 400  # bytes of UTF-8 (grpc-message is percent-encoded on the wire: up to 3 characters a byte)
MAX_DETAIL = 120
MAX_FIELD = 80
MAX_VIOLATIONS = 10


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (on a character boundary), marked with "…" if cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "…"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def status_for(error: domain.LeewayError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """The status and google.rpc.Status (with ErrorInfo and the fitting detail) for a domain error."""
    grpc_code, rpc_code = grpc.StatusCode.UNKNOWN, code_pb2.UNKNOWN
    for cls, g_code, r_code in STATUS_TABLE:
        if isinstance(error, cls):
            grpc_code, rpc_code = g_code, r_code
            break
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason,
                domain=ERROR_DOMAIN,
                metadata={_cut(k, MAX_FIELD): _cut(str(v), MAX_DETAIL) for k, v in list(error.metadata.items())[:8]},
            )
        )
    ]
    if isinstance(error, domain.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=_cut(v.field, MAX_FIELD), description=_cut(v.description, MAX_DETAIL)
                        )
                        for v in error.violations[:MAX_VIOLATIONS]
                    ]
                )
            )
        )
    elif isinstance(error, domain.PreconditionFailed) and error.violations:
        details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=v.type, subject=_cut(v.subject, MAX_FIELD), description=_cut(v.description, MAX_DETAIL)
                        )
                        for v in error.violations[:MAX_VIOLATIONS]
                    ]
                )
            )
        )
    elif isinstance(error, domain.NotFound):
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=error.resource_type,
                    resource_name=_cut(error.resource_name, MAX_FIELD),
                    description=_cut(error.message, MAX_DETAIL),
                )
            )
        )
    elif isinstance(error, domain.Unavailable):
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay={"nanos": 200_000_000})))
    elif isinstance(error, domain.ResourceExhausted):
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[error_details_pb2.QuotaFailure.Violation(subject=error.subject, description=error.message)]
                )
            )
        )
        delay = max(error.retry_after, 0.001)
        details.append(
            _pack(error_details_pb2.RetryInfo(retry_delay={"seconds": int(delay), "nanos": int(delay % 1 * 1e9)}))
        )
    return grpc_code, status_pb2.Status(code=rpc_code, message=_cut(error.message, MAX_MESSAGE), details=details)


def internal_status() -> status_pb2.Status:
    """What a caller sees for a bug: no stack trace, no internals, an ErrorInfo all the same."""
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message="internal error; it has been logged",
        details=[_pack(error_details_pb2.ErrorInfo(reason=Reason.INTERNAL, domain=ERROR_DOMAIN))],
    )


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, Any], ...]):
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


async def abort(context: Any, status: status_pb2.Status, correlation_id: str = "") -> NoReturn:
    """Ends the call with ``status`` (raises, as ``ServicerContext.abort_with_status`` does), keeping the
    correlation id in the trailing metadata next to the google.rpc.Status details."""
    converted = rpc_status.to_status(status)
    metadata = tuple(converted.trailing_metadata)
    if correlation_id:
        metadata += (("x-correlation-id", correlation_id),)
    await context.abort_with_status(_Status(converted.code, converted.details, metadata))
    raise AssertionError("abort_with_status returned")  # pragma: no cover - it always raises
