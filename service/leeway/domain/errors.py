"""Domain errors. Each carries a machine-readable reason; the gRPC layer maps the class to a status code."""

from __future__ import annotations

from dataclasses import dataclass

from .reasons import Reason


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request; ``field`` is a dotted path such as ``policy.period_allowance``."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition: ``type`` names the limit (e.g. ``PER_ACTION_LIMIT``), ``subject`` what it is on."""

    type: str
    subject: str
    description: str


class LeewayError(Exception):
    """Base class of every error Leeway reports to a caller."""

    reason: str = Reason.LEEWAY_ERROR

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        # A plain str on the instance (a Reason member is one; ``str`` drops the enum type for logs and the wire).
        self.reason = str(reason if reason is not None else self.reason)
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(LeewayError):
    """The request is malformed; nothing about the stored state was consulted."""

    reason = Reason.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None):
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {summary}", reason=reason)


class NotFound(LeewayError):
    """The named resource does not exist."""

    reason = Reason.NOT_FOUND

    def __init__(self, message: str, *, reason: str, resource_type: str, resource_name: str):
        super().__init__(message, reason=reason, metadata={"resource_type": resource_type, "resource_name": resource_name})
        self.resource_type = resource_type
        self.resource_name = resource_name


def _missing(message: str, reason: Reason, resource: str, name: str) -> NotFound:
    """NOT_FOUND naming the resource (of the type ``leeway.v1.<resource>``) that is missing: the same wherever
    it is raised."""
    return NotFound(message, reason=reason, resource_type=f"leeway.v1.{resource}", resource_name=name)


def budget_not_found(employee_id: str, message: str = "") -> NotFound:
    """BUDGET_NOT_FOUND for an employee without a budget."""
    message = message or f"employee {employee_id} has no budget"
    return _missing(message, Reason.BUDGET_NOT_FOUND, "Budget", f"budgets/{employee_id}")


def action_not_found(action_id: str) -> NotFound:
    """ACTION_NOT_FOUND for an id that names no recorded action."""
    return _missing(f"action {action_id} does not exist", Reason.ACTION_NOT_FOUND, "Action", f"actions/{action_id}")


def team_not_found(team_id: str) -> NotFound:
    """TEAM_NOT_FOUND for a team with neither budgets nor a cap."""
    return _missing(f"team {team_id} has no budgets and no cap", Reason.TEAM_NOT_FOUND, "Team", f"teams/{team_id}")


class AlreadyExists(LeewayError):
    """The resource to create exists already, or a request_id was reused for a different request."""

    reason = Reason.ALREADY_EXISTS


class PreconditionFailed(LeewayError):
    """The request is well formed but the state of the system does not allow it (a limit, a closed budget)."""

    reason = Reason.FAILED_PRECONDITION

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        violations: list[PreconditionViolation] | None = None,
        metadata: dict[str, str] | None = None,
    ):
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations or [])


@dataclass(frozen=True)
class Breach:
    """One boundary an action would cross (see ``rules``): what to tell the caller, and how to refuse."""

    reason: str  # a Reason member
    message: str
    violation: PreconditionViolation
    metadata: dict[str, str]

    def refusal(self) -> PreconditionFailed:
        """The PreconditionFailed this breach alone raises."""
        return PreconditionFailed(self.message, reason=self.reason, violations=[self.violation], metadata=self.metadata)


class Conflict(LeewayError):
    """Optimistic concurrency: the caller's view of the budget is stale, or retries were exhausted."""

    reason = Reason.CONFLICT


class Unavailable(LeewayError):
    """The event store could not be reached; the caller may retry with the same request_id."""

    reason = Reason.STORE_UNAVAILABLE


class PermissionDenied(LeewayError):
    """The caller may not do this (e.g. approve their own action, or an action they are not an approver of)."""

    reason = Reason.PERMISSION_DENIED


class Unauthenticated(LeewayError):
    """No valid credentials (missing, expired, wrong audience or signature, unknown API key)."""

    reason = Reason.UNAUTHENTICATED


class ResourceExhausted(LeewayError):
    """Too many requests from one principal: retry after ``retry_after`` seconds."""

    reason = Reason.RATE_LIMITED

    def __init__(self, message: str, *, subject: str, retry_after: float, reason: str | None = None):
        super().__init__(message, reason=reason, metadata={"subject": subject})
        self.subject = subject
        self.retry_after = retry_after


class DeadlineExceeded(LeewayError):
    """The request ran out of time (the caller's deadline, clamped to the server's maximum)."""

    reason = Reason.DEADLINE_EXCEEDED


class DataLoss(LeewayError):
    """The event log lacks an event that another one points at (a request record, a ledger): it was damaged (see
    VerifyIntegrity). Not the caller's mistake, and retrying changes nothing."""

    reason = Reason.EVENT_MISSING


def event_missing(resource_name: str, referenced_by: str) -> DataLoss:
    """DATA_LOSS / EVENT_MISSING: ``referenced_by`` (a request, a customer's ledger ...) points at
    ``resource_name`` (``actions/<id>``, ``budgets/<employee>``), which is no longer in the event log."""
    return DataLoss(
        f"{referenced_by} points at {resource_name}, which is missing from the event log: the log was damaged "
        "(AuditService.VerifyIntegrity names where)",
        metadata={"resource_name": resource_name, "referenced_by": referenced_by},
    )
