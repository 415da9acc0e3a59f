"""Idempotent commands (AIP-155): one RequestRecord per request_id, saved atomically with the change it produced,
and the fingerprint that tells a retry from a reused request_id."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from ..domain.errors import AlreadyExists
from ..domain.ids import leeway_id
from ..domain.money import Money
from ..domain.policy import ActionKind, Policy
from ..domain.reasons import Reason
from ..domain.tally import Cap
from ..domain.topics import keep_legacy_topics


class Fingerprinted(Protocol):
    method: str

    def payload(self) -> dict[str, Any]: ...


class RequestRecord(Aggregate):
    """What a request_id did: which method, a fingerprint of the request, and a reference to the result (the
    command result's ``to_record()``)."""

    @staticmethod
    def create_id(request_id: str) -> UUID:
        return leeway_id(f"request:{request_id}")

    @event("Recorded")
    def __init__(
        self, request_id: str, method: str, fingerprint: str, result: dict[str, Any], at: datetime, actor: str = ""
    ) -> None:
        self.request_id = request_id
        self.actor = actor
        self.method = method
        self.fingerprint = fingerprint
        self.result = result
        self.at = at


# Stored since the first release under the module that held it then.
keep_legacy_topics("leeway.domain.indexes", RequestRecord)


def _json_default(value: Any) -> Any:
    if isinstance(value, (Policy, Money, Cap)):
        return value.to_dict()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ActionKind):
        return value.value
    return str(value)


def fingerprint(command: Fingerprinted) -> str:
    """A digest of what the request asked for, to tell a retry from a reused request_id."""
    body = json.dumps([command.method, command.payload()], sort_keys=True, default=_json_default)
    return hashlib.sha256(body.encode()).hexdigest()


def reused(request_id: str, method: str) -> AlreadyExists:
    """ALREADY_EXISTS for a request_id that was used before for a different request."""
    return AlreadyExists(
        f"request_id {request_id!r} was already used for a different request ({method})",
        reason=Reason.REQUEST_ID_REUSED,
        metadata={"request_id": request_id, "original_method": method},
    )


def check_replay(record: RequestRecord, digest: str) -> None:
    """A stored request answered again: refused if the same request_id asked for something else."""
    if record.fingerprint != digest:
        raise reused(record.request_id, record.method)
