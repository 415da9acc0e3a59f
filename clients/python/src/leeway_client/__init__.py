"""Python client for Leeway: ``LeewayClient`` (blocking), ``leeway_client.aio.AsyncLeewayClient`` (asyncio), plus
the generated stubs in ``leeway.v1``."""

from leeway.v1 import action_pb2, audit_pb2, budget_pb2, insights_pb2, policy_pb2, team_pb2

from .client import LeewayClient, make_cap, make_policy
from .errors import (
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    ERRORS_BY_CODE,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    LeewayError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    from_rpc_error,
)
from .money import from_money, to_money

RefundDetails = action_pb2.RefundDetails
CreditDetails = action_pb2.CreditDetails
RuleBendDetails = action_pb2.RuleBendDetails
GiftDetails = action_pb2.GiftDetails
BendableRule = policy_pb2.BendableRule
Escalation = policy_pb2.Escalation
Cap = team_pb2.Cap
Checkpoint = audit_pb2.Checkpoint

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "BendableRule",
    "CancelledError",
    "Cap",
    "Checkpoint",
    "CreditDetails",
    "DataLossError",
    "DeadlineExceededError",
    "ERRORS_BY_CODE",
    "Escalation",
    "FailedPreconditionError",
    "GiftDetails",
    "InternalError",
    "InvalidArgumentError",
    "LeewayClient",
    "LeewayError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "RefundDetails",
    "ResourceExhaustedError",
    "RuleBendDetails",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "action_pb2",
    "audit_pb2",
    "budget_pb2",
    "from_money",
    "from_rpc_error",
    "insights_pb2",
    "make_cap",
    "make_policy",
    "policy_pb2",
    "team_pb2",
    "to_money",
]
