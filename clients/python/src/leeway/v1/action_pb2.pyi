import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.type import money_pb2 as _money_pb2
from leeway.v1 import budget_pb2 as _budget_pb2
from leeway.v1 import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RefundDetails(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class CreditDetails(_message.Message):
    __slots__ = ("account_ref",)
    ACCOUNT_REF_FIELD_NUMBER: _ClassVar[int]
    account_ref: str
    def __init__(self, account_ref: _Optional[str] = ...) -> None: ...

class RuleBendDetails(_message.Message):
    __slots__ = ("rule_code", "description")
    RULE_CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    rule_code: str
    description: str
    def __init__(self, rule_code: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class GiftDetails(_message.Message):
    __slots__ = ("gift_type", "note")
    GIFT_TYPE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    gift_type: str
    note: str
    def __init__(self, gift_type: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("action_id", "employee_id", "customer_id", "case_id", "kind", "amount", "reason", "refund", "credit", "rule_bend", "gift", "state", "policy_version", "occur_time", "record_time", "team_id", "request_id", "budget_version", "escalation_reasons", "expire_time", "approver_ids", "approver_role", "decision", "reversal", "recorded_by", "win")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Action.State]
        STATE_RECORDED: _ClassVar[Action.State]
        STATE_PENDING_APPROVAL: _ClassVar[Action.State]
        STATE_APPROVED: _ClassVar[Action.State]
        STATE_DENIED: _ClassVar[Action.State]
        STATE_EXPIRED: _ClassVar[Action.State]
        STATE_REVERSED: _ClassVar[Action.State]
    STATE_UNSPECIFIED: Action.State
    STATE_RECORDED: Action.State
    STATE_PENDING_APPROVAL: Action.State
    STATE_APPROVED: Action.State
    STATE_DENIED: Action.State
    STATE_EXPIRED: Action.State
    STATE_REVERSED: Action.State
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REFUND_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    RULE_BEND_FIELD_NUMBER: _ClassVar[int]
    GIFT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    RECORD_TIME_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_VERSION_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_REASONS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    APPROVER_IDS_FIELD_NUMBER: _ClassVar[int]
    APPROVER_ROLE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REVERSAL_FIELD_NUMBER: _ClassVar[int]
    RECORDED_BY_FIELD_NUMBER: _ClassVar[int]
    WIN_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    employee_id: str
    customer_id: str
    case_id: str
    kind: _policy_pb2.ActionKind
    amount: _money_pb2.Money
    reason: str
    refund: RefundDetails
    credit: CreditDetails
    rule_bend: RuleBendDetails
    gift: GiftDetails
    state: Action.State
    policy_version: int
    occur_time: _timestamp_pb2.Timestamp
    record_time: _timestamp_pb2.Timestamp
    team_id: str
    request_id: str
    budget_version: int
    escalation_reasons: _containers.RepeatedScalarFieldContainer[str]
    expire_time: _timestamp_pb2.Timestamp
    approver_ids: _containers.RepeatedScalarFieldContainer[str]
    approver_role: str
    decision: ActionDecision
    reversal: ActionReversal
    recorded_by: str
    win: Win
    def __init__(self, action_id: _Optional[str] = ..., employee_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., case_id: _Optional[str] = ..., kind: _Optional[_Union[_policy_pb2.ActionKind, str]] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., reason: _Optional[str] = ..., refund: _Optional[_Union[RefundDetails, _Mapping]] = ..., credit: _Optional[_Union[CreditDetails, _Mapping]] = ..., rule_bend: _Optional[_Union[RuleBendDetails, _Mapping]] = ..., gift: _Optional[_Union[GiftDetails, _Mapping]] = ..., state: _Optional[_Union[Action.State, str]] = ..., policy_version: _Optional[int] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., record_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., team_id: _Optional[str] = ..., request_id: _Optional[str] = ..., budget_version: _Optional[int] = ..., escalation_reasons: _Optional[_Iterable[str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., approver_ids: _Optional[_Iterable[str]] = ..., approver_role: _Optional[str] = ..., decision: _Optional[_Union[ActionDecision, _Mapping]] = ..., reversal: _Optional[_Union[ActionReversal, _Mapping]] = ..., recorded_by: _Optional[str] = ..., win: _Optional[_Union[Win, _Mapping]] = ...) -> None: ...

class Win(_message.Message):
    __slots__ = ("story", "customer_quote", "outcome", "documented_by", "document_time")
    STORY_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_QUOTE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTED_BY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_TIME_FIELD_NUMBER: _ClassVar[int]
    story: str
    customer_quote: str
    outcome: str
    documented_by: str
    document_time: _timestamp_pb2.Timestamp
    def __init__(self, story: _Optional[str] = ..., customer_quote: _Optional[str] = ..., outcome: _Optional[str] = ..., documented_by: _Optional[str] = ..., document_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ActionDecision(_message.Message):
    __slots__ = ("outcome", "approver_id", "note", "decide_time", "request_id")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    APPROVER_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    DECIDE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    outcome: Action.State
    approver_id: str
    note: str
    decide_time: _timestamp_pb2.Timestamp
    request_id: str
    def __init__(self, outcome: _Optional[_Union[Action.State, str]] = ..., approver_id: _Optional[str] = ..., note: _Optional[str] = ..., decide_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ActionReversal(_message.Message):
    __slots__ = ("actor_id", "reason", "reverse_time", "restored_to_current_period", "request_id")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVERSE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESTORED_TO_CURRENT_PERIOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    reason: str
    reverse_time: _timestamp_pb2.Timestamp
    restored_to_current_period: bool
    request_id: str
    def __init__(self, actor_id: _Optional[str] = ..., reason: _Optional[str] = ..., reverse_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., restored_to_current_period: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class RecordActionRequest(_message.Message):
    __slots__ = ("request_id", "employee_id", "customer_id", "case_id", "amount", "reason", "refund", "credit", "rule_bend", "gift", "occur_time", "kind")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REFUND_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    RULE_BEND_FIELD_NUMBER: _ClassVar[int]
    GIFT_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    employee_id: str
    customer_id: str
    case_id: str
    amount: _money_pb2.Money
    reason: str
    refund: RefundDetails
    credit: CreditDetails
    rule_bend: RuleBendDetails
    gift: GiftDetails
    occur_time: _timestamp_pb2.Timestamp
    kind: _policy_pb2.ActionKind
    def __init__(self, request_id: _Optional[str] = ..., employee_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., case_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., reason: _Optional[str] = ..., refund: _Optional[_Union[RefundDetails, _Mapping]] = ..., credit: _Optional[_Union[CreditDetails, _Mapping]] = ..., rule_bend: _Optional[_Union[RuleBendDetails, _Mapping]] = ..., gift: _Optional[_Union[GiftDetails, _Mapping]] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[_policy_pb2.ActionKind, str]] = ...) -> None: ...

class RecordActionResponse(_message.Message):
    __slots__ = ("action", "budget")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    action: Action
    budget: _budget_pb2.Budget
    def __init__(self, action: _Optional[_Union[Action, _Mapping]] = ..., budget: _Optional[_Union[_budget_pb2.Budget, _Mapping]] = ...) -> None: ...

class GetActionRequest(_message.Message):
    __slots__ = ("action_id",)
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    def __init__(self, action_id: _Optional[str] = ...) -> None: ...

class GetActionResponse(_message.Message):
    __slots__ = ("action",)
    ACTION_FIELD_NUMBER: _ClassVar[int]
    action: Action
    def __init__(self, action: _Optional[_Union[Action, _Mapping]] = ...) -> None: ...

class ListActionsRequest(_message.Message):
    __slots__ = ("employee_id", "customer_id", "kind", "page_size", "page_token", "state", "approver_id", "decided_by")
    EMPLOYEE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    APPROVER_ID_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    employee_id: str
    customer_id: str
    kind: _policy_pb2.ActionKind
    page_size: int
    page_token: str
    state: Action.State
    approver_id: str
    decided_by: str
    def __init__(self, employee_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., kind: _Optional[_Union[_policy_pb2.ActionKind, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[Action.State, str]] = ..., approver_id: _Optional[str] = ..., decided_by: _Optional[str] = ...) -> None: ...

class ListActionsResponse(_message.Message):
    __slots__ = ("actions", "next_page_token")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[Action]
    next_page_token: str
    def __init__(self, actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ApproveActionRequest(_message.Message):
    __slots__ = ("request_id", "action_id", "approver_id", "note")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVER_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    action_id: str
    approver_id: str
    note: str
    def __init__(self, request_id: _Optional[str] = ..., action_id: _Optional[str] = ..., approver_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class ApproveActionResponse(_message.Message):
    __slots__ = ("action", "budget", "spent_in_current_period", "explanation")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SPENT_IN_CURRENT_PERIOD_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    action: Action
    budget: _budget_pb2.Budget
    spent_in_current_period: bool
    explanation: str
    def __init__(self, action: _Optional[_Union[Action, _Mapping]] = ..., budget: _Optional[_Union[_budget_pb2.Budget, _Mapping]] = ..., spent_in_current_period: _Optional[bool] = ..., explanation: _Optional[str] = ...) -> None: ...

class DenyActionRequest(_message.Message):
    __slots__ = ("request_id", "action_id", "approver_id", "note")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVER_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    action_id: str
    approver_id: str
    note: str
    def __init__(self, request_id: _Optional[str] = ..., action_id: _Optional[str] = ..., approver_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class DenyActionResponse(_message.Message):
    __slots__ = ("action", "budget")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    action: Action
    budget: _budget_pb2.Budget
    def __init__(self, action: _Optional[_Union[Action, _Mapping]] = ..., budget: _Optional[_Union[_budget_pb2.Budget, _Mapping]] = ...) -> None: ...

class ReverseActionRequest(_message.Message):
    __slots__ = ("request_id", "action_id", "reason", "actor_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    action_id: str
    reason: str
    actor_id: str
    def __init__(self, request_id: _Optional[str] = ..., action_id: _Optional[str] = ..., reason: _Optional[str] = ..., actor_id: _Optional[str] = ...) -> None: ...

class ReverseActionResponse(_message.Message):
    __slots__ = ("action", "budget", "restored_to_current_period", "explanation")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    RESTORED_TO_CURRENT_PERIOD_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    action: Action
    budget: _budget_pb2.Budget
    restored_to_current_period: bool
    explanation: str
    def __init__(self, action: _Optional[_Union[Action, _Mapping]] = ..., budget: _Optional[_Union[_budget_pb2.Budget, _Mapping]] = ..., restored_to_current_period: _Optional[bool] = ..., explanation: _Optional[str] = ...) -> None: ...

class DocumentWinRequest(_message.Message):
    __slots__ = ("request_id", "action_id", "story", "customer_quote", "outcome")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    STORY_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_QUOTE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    action_id: str
    story: str
    customer_quote: str
    outcome: str
    def __init__(self, request_id: _Optional[str] = ..., action_id: _Optional[str] = ..., story: _Optional[str] = ..., customer_quote: _Optional[str] = ..., outcome: _Optional[str] = ...) -> None: ...

class DocumentWinResponse(_message.Message):
    __slots__ = ("action",)
    ACTION_FIELD_NUMBER: _ClassVar[int]
    action: Action
    def __init__(self, action: _Optional[_Union[Action, _Mapping]] = ...) -> None: ...
