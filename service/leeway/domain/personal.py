"""The one declaration of what is personal in the stored events (issue 22).

Every string field of every stored event class (a ``str``, or a ``dict`` / ``list`` holding strings) is either
declared **personal** here (of which data subject, and in which form) or declared **not personal** (with why).
``tests/unit/test_personal.py`` fails when an event class gains a string field that is in neither table, or when a
declaration names a field that does not exist.

Personal fields of new events are encrypted at the storage boundary with a key of their data subject
(``adapters/pii.py``), so that shredding the key (``EraseCustomer``, ``EraseEmployee``) erases them everywhere
while the hash chain, which covers the stored (encrypted) form, stays intact.

Forms:

- ``IDENTIFIER``: an id that limits compare (``customer_id``, ``case_id``). Once erased it reads as
  ``[erased:<pseudonym>]``, a keyed pseudonym (HMAC) of the id stored in clear beside the ciphertext, so that what
  was counted under it (per-customer limit, split detection) still counts together if the same customer returns.
- ``TEXT``: free text. Once erased it reads as ``[erased]``.
- ``TEXT_VALUES``: a dict of free text (an action's details); the keys listed in ``KEPT_DETAIL_KEYS`` are not
  personal (limits and KPIs use them) and stay in clear, every other value is sealed as ``TEXT``.
- ``IDENTIFIER_KEYS``: a dict whose ``customers`` sub-dict is keyed by customer ids (a policy change's recount):
  each key is sealed as an ``IDENTIFIER`` of its own customer.
- ``IDENTIFIER_LIST``: a list of ids of the aggregate's customer (a customer ledger's older spellings).

Whose data (``Subject``) is found by ``Source``:

- ``FIELD``: the event's own ``customer_id`` (customer) or ``employee_id`` (employee) field;
- ``ACTION``: the customer of the action the event is about (``action_version`` in the same budget);
- ``AGGREGATE``: the aggregate's own subject, named by its first event (a budget's employee, a ledger's customer).
- ``EACH``: every value names its own subject (``IDENTIFIER_KEYS``).

Employee ids, team ids, request ids, action ids and callers' ids (``actor``) are not personal data that can be
erased here: they are the identities authorization and the audit trail are built on (an employee's erasure erases
their display name and the free text about them; their id stays, as the audit of what they did requires).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: What an erased free-text field reads as.
ERASED = "[erased]"


def erased_identifier(pseudonym: str) -> str:
    """What an erased identifier reads as: its keyed pseudonym, so that it still compares with itself."""
    return f"[erased:{pseudonym}]"


class Subject(StrEnum):
    CUSTOMER = "customer"
    EMPLOYEE = "employee"


class Form(StrEnum):
    IDENTIFIER = "identifier"
    TEXT = "text"
    TEXT_VALUES = "text_values"
    IDENTIFIER_KEYS = "identifier_keys"
    IDENTIFIER_LIST = "identifier_list"


class Source(StrEnum):
    FIELD = "field"
    ACTION = "action"
    AGGREGATE = "aggregate"
    EACH = "each"


@dataclass(frozen=True)
class Personal:
    subject: Subject
    form: Form
    source: Source


#: Detail keys that are not personal: the bent rule (limits count bends per rule) and the kind of gift (KPIs).
KEPT_DETAIL_KEYS = frozenset({"rule_code", "gift_type"})

_C_ID = Personal(Subject.CUSTOMER, Form.IDENTIFIER, Source.FIELD)
_C_TEXT = Personal(Subject.CUSTOMER, Form.TEXT, Source.FIELD)
_C_ACTION_TEXT = Personal(Subject.CUSTOMER, Form.TEXT, Source.ACTION)
_E_TEXT = Personal(Subject.EMPLOYEE, Form.TEXT, Source.FIELD)
_E_BUDGET_TEXT = Personal(Subject.EMPLOYEE, Form.TEXT, Source.AGGREGATE)

_B = "leeway.domain.budget:Budget."

#: topic -> {field: Personal}
PERSONAL: dict[str, dict[str, Personal]] = {
    _B + "Opened": {"display_name": _E_TEXT},
    _B + "PolicyUpdated": {"recount": Personal(Subject.CUSTOMER, Form.IDENTIFIER_KEYS, Source.EACH)},
    _B + "ActionRecorded": {
        "customer_id": _C_ID,
        "case_id": _C_ID,
        "reason": _C_TEXT,
        "details": Personal(Subject.CUSTOMER, Form.TEXT_VALUES, Source.FIELD),
    },
    _B + "ActionApproved": {"note": _C_ACTION_TEXT},
    _B + "ActionDenied": {"note": _C_ACTION_TEXT},
    _B + "ActionReversed": {"customer_id": _C_ID, "reason": _C_TEXT},
    _B + "WinDocumented": {"story": _C_ACTION_TEXT, "customer_quote": _C_ACTION_TEXT, "outcome": _C_ACTION_TEXT},
    _B + "Closed": {"reason": _E_BUDGET_TEXT},
    _B + "Reopened": {"reason": _E_BUDGET_TEXT},
    _B + "TeamChanged": {"reason": _E_BUDGET_TEXT},
    "leeway.domain.indexes:CustomerLedger.Created": {"customer_id": _C_ID},
    "leeway.domain.indexes:CustomerLedger.SpellingsNoted": {
        "spellings": Personal(Subject.CUSTOMER, Form.IDENTIFIER_LIST, Source.AGGREGATE)
    },
    "leeway.domain.limits:HoldBook.HoldOpened": {"customer_id": _C_ID},
}

_ACTOR = "the caller's id (an employee or a service): the audit trail's who"
_EMPLOYEE = "an employee id: the identity authorization and the audit are built on (kept on erasure)"
_TEAM = "a team id (an organisational unit)"
_REQUEST = "an idempotency key chosen by the client (opaque; the README asks clients not to put personal data in it)"
_ACTION = "an action id (budget id and version)"
_CURRENCY = "an ISO 4217 currency code"
_DAY = "an ISO date"
_OUTCOME = "an outcome code (APPROVED, DENIED, EXPIRED, ...)"
_CAP = "a cap: amounts, currency and period"
_NAME = "a singleton aggregate's fixed name"
_TOPIC = "the aggregate's class topic (eventsourcing's)"

#: topic -> {field: why it is not personal}
NOT_PERSONAL: dict[str, dict[str, str]] = {
    _B + "Opened": {
        "employee_id": _EMPLOYEE, "team_id": _TEAM, "actor": _ACTOR, "originator_topic": _TOPIC,
        "policy": "the employee's policy (limits, approver ids, rule codes and their descriptions): organisational",
    },
    _B + "Created": {"originator_topic": _TOPIC},
    _B + "PolicyUpdated": {"policy": "the employee's policy: organisational", "actor": _ACTOR},
    _B + "PeriodRolledOver": {},
    _B + "ActionRecorded": {
        "employee_id": _EMPLOYEE, "request_id": _REQUEST, "kind": "an action kind", "currency": _CURRENCY,
        "team_id": _TEAM, "approver_ids": "employee ids of the approvers", "approver_role": "a role name",
        "escalation_reasons": "reason codes (ErrorInfo reasons)", "actor": _ACTOR,
    },
    _B + "ActionApproved": {"approver_id": _EMPLOYEE, "request_id": _REQUEST, "actor": _ACTOR},
    _B + "ActionDenied": {"approver_id": _EMPLOYEE, "request_id": _REQUEST, "actor": _ACTOR},
    _B + "ActionExpired": {"request_id": _REQUEST, "actor": _ACTOR},
    _B + "ActionReversed": {
        "actor_id": _EMPLOYEE, "request_id": _REQUEST, "rule_code": "a rule code of the policy", "day": _DAY,
        "actor": _ACTOR,
    },
    _B + "WinDocumented": {"actor": _ACTOR},
    _B + "ApprovalGiven": {
        "action_id": _ACTION, "action_employee_id": _EMPLOYEE, "currency": _CURRENCY, "actor": _ACTOR,
    },
    _B + "Closed": {"actor": _ACTOR},
    _B + "Reopened": {"actor": _ACTOR},
    _B + "TeamChanged": {"from_team_id": _TEAM, "team_id": _TEAM, "actor": _ACTOR},
}

for _ledger, _module in (("CustomerLedger", "indexes"), ("TeamLedger", "limits")):
    _L = f"leeway.domain.{_module}:{_ledger}."
    NOT_PERSONAL.update({
        _L + "HoldSettled": {"action_id": _ACTION},
        _L + "HoldReleased": {"action_id": _ACTION, "outcome": _OUTCOME},
        _L + "ActionReversed": {"action_id": _ACTION, "currency": _CURRENCY, "day": _DAY},
    })  # fmt: skip

NOT_PERSONAL.update({
    "leeway.domain.indexes:CustomerLedger.Created": {"originator_topic": _TOPIC},
    "leeway.domain.indexes:CustomerLedger.ActionNoted": {
        "action_id": _ACTION, "employee_id": _EMPLOYEE, "kind": "an action kind", "currency": _CURRENCY,
    },
    "leeway.domain.indexes:CustomerLedger.SpellingsNoted": {},
    "leeway.domain.limits:TeamLedger.Created": {"team_id": _TEAM, "originator_topic": _TOPIC},
    "leeway.domain.limits:TeamLedger.CapSet": {"cap": _CAP, "actor": _ACTOR},
    "leeway.domain.limits:TeamLedger.ActionCounted": {
        "action_id": _ACTION, "employee_id": _EMPLOYEE, "currency": _CURRENCY,
    },
    "leeway.domain.limits:OrgLimits.Created": {"name": _NAME, "originator_topic": _TOPIC},
    "leeway.domain.limits:OrgLimits.CustomerCapSet": {"cap": _CAP, "actor": _ACTOR},
    "leeway.domain.limits:OrgLimits.CustomerCapChanged": {"currency": _CURRENCY, "cap": _CAP, "actor": _ACTOR},
    "leeway.domain.limits:OrgLimits.CustomerIdsScanned": {"form": "a customer-id form (a setting's value)"},
    "leeway.domain.indexes:Directory.Created": {"name": _NAME, "originator_topic": _TOPIC},
    "leeway.domain.indexes:Directory.BudgetListed": {"employee_id": _EMPLOYEE, "team_id": _TEAM},
    "leeway.domain.indexes:TeamRoster.Created": {"team_id": _TEAM, "originator_topic": _TOPIC},
    "leeway.domain.indexes:TeamRoster.MemberAdded": {"employee_id": _EMPLOYEE},
    "leeway.domain.indexes:TeamRoster.MemberRemoved": {"employee_id": _EMPLOYEE},
    "leeway.domain.limits:HoldBook.Created": {"name": _NAME, "originator_topic": _TOPIC},
    "leeway.domain.limits:HoldBook.HoldOpened": {
        "action_id": _ACTION, "employee_id": _EMPLOYEE, "approver_ids": "employee ids of the approvers",
        "approver_role": "a role name",
    },
    "leeway.domain.limits:HoldBook.HoldClosed": {"action_id": _ACTION, "outcome": _OUTCOME},
    "leeway.domain.indexes:RequestRecord.Created": {"originator_topic": _TOPIC},
    "leeway.domain.indexes:RequestRecord.Recorded": {
        "request_id": _REQUEST, "method": "a gRPC method name", "actor": _ACTOR, "originator_topic": _TOPIC,
        "fingerprint": "a SHA-256 digest of the whole request (with its request id): not reversible to its text",
        "result": "the command's result: ids, versions, times and caps (never the request's personal fields)",
    },
    "leeway.domain.privacy:Erasures.Created": {"name": _NAME, "originator_topic": _TOPIC},
    "leeway.domain.privacy:Erasures.DataSubjectErased": {
        "subject": "customer or employee",
        "pseudonym": "the keyed pseudonym of the erased subject (the data itself is never recorded)",
        "reason": "why the subject was erased, as the privacy officer states it (e.g. 'GDPR art. 17 request #123'); "
        "the README asks for a reference, never the data",
        "actor": _ACTOR,
    },
    "leeway.domain.privacy:Erasures.LegacyRedacted": {
        "subject": "customer or employee",
        "pseudonym": "the keyed pseudonym of the subject whose legacy events were redacted (never the data)",
        "reason": "why, as the privacy officer states it (a reference, never the data)",
        "redactions": "aggregate ids, versions, hashes and field names of the redacted events: never their content",
        "actor": _ACTOR,
    },
})  # fmt: skip


def personal_fields(topic: str) -> dict[str, Personal]:
    """The personal fields of the events stored under ``topic`` (empty for none)."""
    return PERSONAL.get(topic, {})
