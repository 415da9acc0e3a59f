"""Python client for Leeway: ``LeewayClient`` plus the generated stubs in ``leeway.v1``."""

from leeway.v1 import action_pb2, budget_pb2, policy_pb2, team_pb2

from .client import LeewayClient, make_cap, make_policy
from .errors import (
    AbortedError,
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    LeewayError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
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

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "BendableRule",
    "Cap",
    "Escalation",
    "CreditDetails",
    "FailedPreconditionError",
    "GiftDetails",
    "InvalidArgumentError",
    "LeewayClient",
    "LeewayError",
    "NotFoundError",
    "PermissionDeniedError",
    "RefundDetails",
    "RuleBendDetails",
    "UnavailableError",
    "action_pb2",
    "budget_pb2",
    "from_money",
    "from_rpc_error",
    "make_cap",
    "make_policy",
    "policy_pb2",
    "team_pb2",
    "to_money",
]
