"""Builders of domain values and application commands shared by the test modules (one home for them).

Import them as ``from builders import ...``: tests/ is on sys.path the same way as for ``pgschema`` (the
rootdir conftest.py lives in tests/, which is not a package, so pytest puts tests/ on sys.path).

Every builder fills in the details a test does not care about with fixed, valid values; request ids that
must be fresh per call get a uuid4 suffix.
"""

from __future__ import annotations

import threading
from concurrent import futures
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from decimal import Decimal
from uuid import uuid4

import grpc
from leeway.application.commands import (
    DecideAction,
    OpenBudget,
    RecordAction,
    ReverseAction,
    SetCustomerCap,
    SetTeamCap,
)
from leeway.domain.money import Money
from leeway.domain.periods import PeriodKind
from leeway.domain.policy import (
    ActionKind, ApprovalLimits, BendableRule, Escalation, EscalationMode, Policy, SplitDetection,
)  # fmt: skip
from leeway.domain.tally import Cap
from pgschema import PostgresSchema

T = TypeVar("T")

#: The details each kind of action needs (RecordAction validates them per kind).
DETAILS = {
    ActionKind.REFUND: {"order_id": "o-1"},
    ActionKind.CREDIT: {"account_ref": "acc-1"},
    ActionKind.RULE_BEND: {"rule_code": "LATE_FEE"},
    ActionKind.GIFT: {"gift_type": "voucher"},
}
#: The kinds make_policy allows unless told otherwise (not GIFT).
KINDS = (ActionKind.REFUND, ActionKind.CREDIT, ActionKind.RULE_BEND)
#: The approval timeout of make_policy's escalation.
TIMEOUT = timedelta(hours=1)


def money(amount: str | int | Decimal, currency: str = "USD") -> Money:
    return Money(Decimal(amount), currency)


def usd(amount: str | int | Decimal) -> Money:
    return money(amount, "USD")


def eur(amount: str | int | Decimal) -> Money:
    return money(amount, "EUR")


def make_policy(
    allowance: str | int = 100,
    *,
    limit: str | int | None = 50,
    per_customer: str | int | None = None,
    kinds: Iterable[ActionKind] = KINDS,
    rules: Iterable[BendableRule] = (BendableRule("LATE_FEE"),),
    approvers: Iterable[str] = (),
    role: str = "",
    timeout: timedelta = TIMEOUT,
    period: PeriodKind = PeriodKind.MONTH,
    currency: str = "USD",
    max_held: str | int | None = None,
    split: SplitDetection | None = None,
    approval_limits: tuple[str | int | None, str | int | None] | None = None,
) -> Policy:
    """A valid policy in ``currency``: refuses over-limit actions, or holds them for approval when ``approvers``
    or ``role`` are given (at most ``max_held`` at once; default one allowance). ``approval_limits``: (per action,
    per period) of what its employee may approve."""
    approvers = tuple(approvers)
    held = None if max_held is None else money(max_held, currency)
    escalation = (
        Escalation(EscalationMode.APPROVAL, timeout, approvers, role, held) if approvers or role else Escalation()
    )
    limits = ApprovalLimits(*(None if v is None else money(v, currency) for v in approval_limits or (None, None)))
    built, problems = Policy.build(
        period_allowance=money(allowance, currency),
        period=period,
        per_action_limit=None if limit is None else money(limit, currency),
        allowed_kinds=list(kinds),
        per_customer_limit=None if per_customer is None else money(per_customer, currency),
        bendable_rules=list(rules),
        escalation=escalation,
        split_detection=split,
        approval_limits=limits,
    )
    assert not problems and built is not None, problems
    return built


def open_cmd(
    employee: str,
    team: str = "team-a",
    policy: Policy | None = None,
    *,
    request_id: str = "",
    display_name: str = "",
) -> OpenBudget:
    return OpenBudget(
        request_id=request_id or f"open-{employee}",
        employee_id=employee,
        team_id=team,
        display_name=display_name or employee.title(),
        policy=policy or make_policy(),
    )


def action_cmd(
    employee: str,
    amount: str | int | Money = 10,
    *,
    kind: ActionKind = ActionKind.REFUND,
    customer: str = "cust-1",
    request_id: str | None = None,
    reason: str = "late delivery",
    details: dict[str, str] | None = None,
    case: str = "",
) -> RecordAction:
    """No case unless told: the actions of one case count together against the per-action limit (split detection)."""
    return RecordAction(
        request_id=request_id if request_id is not None else f"rec-{uuid4()}",
        employee_id=employee,
        customer_id=customer,
        case_id=case,
        kind=kind,
        amount=amount if isinstance(amount, Money) else usd(amount),
        reason=reason,
        details=dict(details if details is not None else DETAILS[kind]),
    )


def bend_cmd(employee: str, amount: str | int = 0, *, rule: str = "LATE_FEE", customer: str = "cust-1") -> RecordAction:
    return action_cmd(employee, amount, kind=ActionKind.RULE_BEND, customer=customer, details={"rule_code": rule})


def decide(
    action_id: str, approve: bool, approver: str = "mgr-1", *, request_id: str | None = None, note: str | None = None
) -> DecideAction:
    return DecideAction(
        request_id=request_id or f"{'ap' if approve else 'dn'}-{uuid4()}",
        action_id=action_id,
        approver_id=approver,
        note=note if note is not None else ("fine" if approve else "no"),
        approve=approve,
    )


def approve(action_id: str, approver: str = "mgr-1", *, request_id: str | None = None, note: str = "fine") -> DecideAction:
    return decide(action_id, True, approver, request_id=request_id, note=note)


def deny(action_id: str, approver: str = "mgr-1", *, request_id: str | None = None, note: str = "no") -> DecideAction:
    return decide(action_id, False, approver, request_id=request_id, note=note)


def reverse_cmd(
    action_id: str, *, actor: str = "sup-1", reason: str = "entered twice", request_id: str | None = None
) -> ReverseAction:
    return ReverseAction(request_id=request_id or f"rv-{uuid4()}", action_id=action_id, reason=reason, actor_id=actor)


def team_cap(team: str, amount: Money, period: PeriodKind = PeriodKind.MONTH) -> SetTeamCap:
    return SetTeamCap(request_id=f"cap-{uuid4()}", team_id=team, cap=Cap(amount, period))


def customer_cap(amount: Money, period: PeriodKind = PeriodKind.MONTH) -> SetCustomerCap:
    return SetCustomerCap(request_id=f"ccap-{uuid4()}", cap=Cap(amount, period))


# ============================================================================ threads


def run_threads(target: Callable[..., object], count: int, *, timeout: float = 120.0) -> None:
    """Runs ``target(i)`` in ``count`` threads (i = 0 .. count-1) and waits for all; fails if any is still running
    after ``timeout`` seconds."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), f"threads still running after {timeout} s"


def drain(
    items: Iterable[T],
    threads: int,
    handle: Callable[[int, T], object],
    *,
    expected: tuple[type[BaseException], ...] = (),
    timeout: float = 120.0,
) -> tuple[list[BaseException], list[BaseException]]:
    """``threads`` threads start together and take ``items`` one at a time until none is left, calling
    ``handle(thread_index, item)`` for each. Returns (the ``expected`` exceptions raised, every other one)."""
    lock = threading.Lock()
    queue = iter(items)
    start = threading.Barrier(threads)
    refused: list[BaseException] = []
    errors: list[BaseException] = []
    done = object()

    def worker(index: int) -> None:
        start.wait()
        while True:
            with lock:
                item: Any = next(queue, done)
            if item is done:
                return
            try:
                handle(index, item)
            except expected as error:
                with lock:
                    refused.append(error)
            except BaseException as error:  # noqa: BLE001 - returned to the test
                with lock:
                    errors.append(error)

    run_threads(worker, threads, timeout=timeout)
    return refused, errors


def replay(events: list[Any]) -> Any:
    """An aggregate rebuilt from its events alone (as the event store would)."""
    aggregate = events[0].mutate(None)
    for event in events[1:]:
        aggregate = event.mutate(aggregate)
    return aggregate


# ============================================================================ databases


@contextmanager
def database(engine: str, directory: Path | None = None, *, prefix: str = "t", name: str = "leeway.sqlite") -> Iterator[str]:
    """A database URL of its own: a SQLite file in ``directory``, or a fresh PostgreSQL schema (named after
    ``prefix``) dropped on the way out."""
    if engine == "sqlite":
        assert directory is not None
        yield f"sqlite:///{directory}/{name}"
        return
    schema = PostgresSchema(prefix)
    try:
        yield schema.url
    finally:
        schema.drop()


def unpacked_details(status: Any) -> dict[str, Any]:
    """The ErrorInfo, QuotaFailure, RetryInfo, BadRequest and PreconditionFailure in a google.rpc.Status, by their
    message name."""
    from google.rpc import error_details_pb2

    kinds = (error_details_pb2.ErrorInfo, error_details_pb2.QuotaFailure, error_details_pb2.RetryInfo,
             error_details_pb2.BadRequest, error_details_pb2.PreconditionFailure)  # fmt: skip
    found: dict[str, Any] = {}
    for detail in status.details:
        for kind in kinds:
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found


@contextmanager
def fake_service(add: Callable[[Any, Any], None], servicer: Any, *, workers: int = 4) -> Iterator[str]:
    """An in-process gRPC server of one servicer (``add``: its generated ``add_..._to_server``) on an ephemeral
    port of 127.0.0.1: yields its target, and stops it afterwards."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def all_pages(fetch: Callable[[str], tuple[list[Any], str]], *, page_size: int) -> tuple[list[Any], int]:
    """Every item of a paged list (``fetch(page_token) -> (items, next_page_token)``) and how many pages it took;
    fails on a page larger than ``page_size``."""
    items: list[Any] = []
    token, pages = "", 0
    while True:
        page, token = fetch(token)
        pages += 1
        assert len(page) <= page_size, f"a page of {len(page)} items, asked for at most {page_size}"
        items += page
        if not token:
            return items, pages


# ---------------------------------------------------------------------------- the boundary rules (domain/rules.py)


def reason(breach: Any) -> str | None:
    """A rule's verdict as the reason it gives (None: nothing breached)."""
    return None if breach is None else breach.reason


def verdict(check: Callable[[Any, Any, datetime], Any], state: Callable[[], Any], action: Any, now: datetime) -> str | None:
    """The reason ``check`` gives for ``action`` against the budget ``state()`` builds, rolled over to ``now``."""
    budget = state()
    budget.roll_over_if_due(now)
    return reason(check(budget, action, now))
