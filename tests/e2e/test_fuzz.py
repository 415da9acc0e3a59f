"""Hostile and malformed input (issue 8): property-based fuzzing of every leeway.v1 RPC against one real server.

One ``leeway serve`` process on SQLite for the whole module (authentication off, so every RPC is reachable; the
expiry task off, so that nothing but our own calls writes to the log). Every RPC of every service in
budget_pb2 / action_pb2 / team_pb2 / audit_pb2 is found through the descriptors, so new RPCs are fuzzed too.

Per RPC, two hypothesis properties:

- ``test_structured_requests``: requests built generically from the request descriptor (strings with NUL,
  control characters, emojis and up to 1 MB; ints at their bounds; unknown enum numbers; Money with nanos out
  of range, mismatched signs, huge units and bad currency codes; Timestamps and Durations out of range; long
  repeated fields; random oneof choices including none); or valid seed requests (real ids, real action ids,
  real page tokens, built on budgets opened per test) with up to four fields anywhere in them replaced by such
  values; or, for lists, a seed whose own page token points to an odd position. So the code behind validation
  runs too.
- ``test_random_bytes``: random bytes as the serialized request (pure noise, mutated valid requests, and
  streams of random tags/wire types).

For every call: the status is never INTERNAL, UNKNOWN, DATA_LOSS or UNIMPLEMENTED; every non-OK status carries
a google.rpc.Status with an ErrorInfo of domain "leeway"; an OK response parses as the response message; the
server process is still running; and nothing was written to the log by a refused mutating call (one with a
request_id) or by any read-only call (StreamEvents from the last known position must return nothing new).

Bytes that do not even parse as the request message are answered by grpcio itself, before any Leeway code
runs, with INTERNAL "Exception deserializing request!" and no ErrorInfo. ``test_random_bytes`` counts those as
"INTERNAL(undecodable)" (and still checks that nothing is written and the server lives);
``test_undecodable_requests_are_refused_with_error_info`` states the issue's requirement for them outright.

Examples per RPC: LEEWAY_FUZZ_EXAMPLES (default 200), 3/4 structured and 1/4 random bytes; derandomized, so
CI runs are reproducible. ``pytest -s`` prints the status codes seen per RPC at the end of the module.
LEEWAY_FUZZ_KEEP_GOING=1 (for chaos runs) does not stop an RPC's fuzzing at its first failure: every kind of
failure is collected with its smallest request and reported by ``test_no_failures_collected`` at the end.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from leeway.v1 import action_pb2, audit_pb2, audit_pb2_grpc, budget_pb2, team_pb2
from leeway_client import GiftDetails, LeewayClient, RefundDetails, RuleBendDetails, make_cap, make_policy, to_money

from .conftest import ServerProcess

# ---------------------------------------------------------------------------- configuration

#: Fuzz cases per RPC (structured + random bytes). `make chaos`-style runs raise it (e.g. 10000).
EXAMPLES = max(4, int(os.environ.get("LEEWAY_FUZZ_EXAMPLES", "200")))
STRUCTURED_EXAMPLES = EXAMPLES * 3 // 4
RAW_EXAMPLES = EXAMPLES - STRUCTURED_EXAMPLES
#: pytest-timeout per test: generous for chaos runs (the project default is 300 s).
TEST_TIMEOUT = max(300, int(EXAMPLES * 0.25))

#: Deadline of a unary call or a non-following stream; running into it means the server hung.
CALL_TIMEOUT = 30.0
#: A following StreamEvents never ends by itself: it is read for this long, then our deadline ends it.
FOLLOW_TIMEOUT = 0.25
#: At most this many StreamEvents responses are read per fuzz call (then the call is cancelled).
MAX_STREAM_RESPONSES = 100

#: Requests stay below the server's grpc.max_receive_message_length (4 MiB): beyond it grpcio refuses them
#: with RESOURCE_EXHAUSTED before Leeway sees them (the slow-loris part of issue 8, not this test's subject).
MAX_REQUEST_BYTES = 4 * 1024 * 1024 - 4096

#: gRPC's default soft limit on received metadata (grpc.max_metadata_size): a client with default settings
#: starts dropping trailers beyond it (at random up to the 16 KiB hard limit, always after), and then sees
#: RESOURCE_EXHAUSTED "received metadata size exceeds ..." instead of the refusal and its ErrorInfo. The fuzz
#: channel raises its own limits so that it can measure the trailers deterministically and hold them to this.
DEFAULT_METADATA_LIMIT = 8 * 1024
FUZZ_CHANNEL_OPTIONS = [("grpc.max_metadata_size", 16 * 1024 * 1024), ("grpc.absolute_max_metadata_size", 16 * 1024 * 1024)]

ERROR_DOMAIN = "leeway"
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED}
#: What grpcio answers (before any servicer code) for bytes that do not parse as the request message.
UNDECODABLE_DETAILS = "Exception deserializing request!"


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
            HealthCheck.filter_too_much,
        ],
    )


# ---------------------------------------------------------------------------- the RPCs, from the descriptors


def _all_methods() -> list[MethodDescriptor]:
    methods = []
    for module in (budget_pb2, action_pb2, team_pb2, audit_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            methods.extend(service.methods)
    return methods


METHODS = _all_methods()
METHOD_IDS = [f"{m.containing_service.name}.{m.name}" for m in METHODS]


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def is_mutating(method: MethodDescriptor) -> bool:
    """Writes carry a request_id (AIP-155); everything else is a read."""
    return "request_id" in method.input_type.fields_by_name


def is_streaming(method: MethodDescriptor) -> bool:
    return method.server_streaming or method.client_streaming


def test_every_rpc_is_fuzzed() -> None:
    assert len(METHODS) >= 19, METHOD_IDS
    assert not any(m.client_streaming for m in METHODS), "a client-streaming RPC needs a fuzz driver of its own"


# ---------------------------------------------------------------------------- statistics (printed at the end)

STATS: dict[str, Counter[str]] = defaultdict(Counter)


def _print_stats() -> None:
    if not STATS:
        return
    labels = sorted({label for counts in STATS.values() for label in counts})
    width = max(len(m) for m in STATS)
    print(f"\n\nFuzz statuses per RPC (LEEWAY_FUZZ_EXAMPLES={EXAMPLES}; 'kind:' structured or raw bytes)")
    for method in sorted(STATS):
        counts = STATS[method]
        row = ", ".join(f"{label}={counts[label]}" for label in labels if counts[label])
        print(f"  {method:<{width}}  {row}")
    total = Counter[str]()
    for counts in STATS.values():
        total.update(counts)
    cases = sum(total.values())
    internals = sum(n for label, n in total.items() if "INTERNAL" in label or "UNKNOWN" in label)
    print(f"  fuzz cases tried: {cases}; INTERNAL/UNKNOWN seen: {internals} "
          f"(of which undecodable bytes answered by grpcio: "
          f"{sum(n for label, n in total.items() if 'undecodable' in label)})")


# ---------------------------------------------------------------------------- the server and its data


@dataclass
class World:
    """Real data on the server, for strategies that should reach past validation."""

    employees: list[str] = field(default_factory=list)
    teams: list[str] = field(default_factory=list)
    customers: list[str] = field(default_factory=list)
    action_ids: list[str] = field(default_factory=list)
    approvers: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    #: Full method name -> valid requests to mutate.
    seeds: dict[str, list[Message]] = field(default_factory=lambda: defaultdict(list))

    def __repr__(self) -> str:  # hypothesis prints the test's arguments with a failure: keep it short
        return f"World(employees={self.employees}, action_ids={len(self.action_ids)}, seeds={len(self.seeds)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def merged(self, other: World) -> World:
        seeds: dict[str, list[Message]] = defaultdict(list)
        for source in (self.seeds, other.seeds):
            for name, requests in source.items():
                seeds[name].extend(requests)
        return World(
            employees=self.employees + other.employees,
            teams=self.teams + other.teams,
            customers=self.customers + other.customers,
            action_ids=self.action_ids + other.action_ids,
            approvers=self.approvers + other.approvers,
            tokens=self.tokens + other.tokens,
            request_ids=self.request_ids + other.request_ids,
            event_types=sorted(set(self.event_types + other.event_types)),
            seeds=seeds,
        )


def _populate(client: LeewayClient, tag: str) -> World:
    """Budgets (one with an approval escalation), recorded and pending actions, a team cap, page tokens and a
    valid seed request per RPC. ``tag`` keeps the ids of different callers apart."""
    world = World()
    suffix = f"-{tag}" if tag else ""
    ann, bob, team, guest = f"ann{suffix}", f"bob{suffix}", f"front-desk{suffix}", f"guest-42{suffix}"
    supervisor = f"sup-1{suffix}"
    policy = make_policy(
        currency="EUR",
        period_allowance="500",
        per_action_limit="100",
        per_customer_limit="300",
        bendable_rules=["LATE_FEE", "LATE_RETURN"],
        escalate_to=[supervisor],
        approval_timeout=timedelta(hours=1),
    )
    plain = make_policy(currency="EUR", period_allowance="1000", bendable_rules=["WAIVE_FEE"])
    client.open_budget(ann, team, policy, display_name="Ann", request_id=f"seed-open-{ann}")
    client.open_budget(bob, team, plain, display_name="Bob", request_id=f"seed-open-{bob}")
    gift = client.record_action(
        ann, guest, "45.50", "EUR", GiftDetails(gift_type="flowers", note="sorry"), reason="late dinner",
        request_id=f"seed-gift-{ann}",
    )
    pending = [
        client.record_action(
            ann, guest, amount, "EUR", RefundDetails(order_id=f"o-{n}"), reason="big refund",
            request_id=f"seed-pending-{n}-{ann}",
        )
        for n, amount in ((1, "150"), (2, "120"))
    ]
    bend = client.record_action(
        bob, guest, "0", "EUR", RuleBendDetails(rule_code="WAIVE_FEE"), reason="first time",
        request_id=f"seed-bend-{bob}",
    )
    assert all(p.action.state == action_pb2.Action.STATE_PENDING_APPROVAL for p in pending), pending
    client.set_team_cap(team, make_cap("100000", "EUR"), request_id=f"seed-cap-{team}")

    world.employees += [ann, bob]
    world.teams += [team]
    world.customers += [guest]
    world.approvers += [supervisor]
    world.action_ids += [gift.action.action_id, bend.action.action_id, *(p.action.action_id for p in pending)]
    world.request_ids += [f"seed-open-{ann}", f"seed-gift-{ann}", f"seed-cap-{team}"]

    tokens = [
        client.list_budgets(team, page_size=1).next_page_token,
        client.list_budgets("", page_size=1).next_page_token,
        client.list_actions(employee_id=ann, page_size=1).next_page_token,
        client.list_actions(customer_id=guest, page_size=1).next_page_token,
        client.get_audit_trail(employee_id=ann, page_size=1).next_page_token,
        client.get_audit_trail(customer_id=guest, page_size=1).next_page_token,
    ]
    assert all(tokens), tokens
    world.tokens += tokens

    now = datetime.now(timezone.utc)
    as_of = budget_pb2.GetBudgetRequest(employee_id=ann)
    as_of.as_of.FromDatetime(now - timedelta(seconds=1))
    late_fee = action_pb2.RecordActionRequest(
        request_id=f"fuzz-rule-{ann}", employee_id=ann, customer_id=guest, amount=_money("0"), reason="waived",
        rule_bend=action_pb2.RuleBendDetails(rule_code="LATE_FEE"),
    )
    seeds: dict[str, list[Message]] = {
        "OpenBudget": [
            budget_pb2.OpenBudgetRequest(
                request_id=f"fuzz-open-{tag}", employee_id=f"cy{suffix}", team_id=team, display_name="Cy", policy=policy
            )
        ],
        "GetBudget": [budget_pb2.GetBudgetRequest(employee_id=ann), as_of],
        "ListBudgets": [
            budget_pb2.ListBudgetsRequest(team_id=team, page_size=1, page_token=tokens[0]),
            budget_pb2.ListBudgetsRequest(page_size=1, page_token=tokens[1]),
        ],
        "UpdatePolicy": [
            budget_pb2.UpdatePolicyRequest(request_id=f"fuzz-policy-{tag}", employee_id=bob, policy=plain)
        ],
        "CloseBudget": [budget_pb2.CloseBudgetRequest(request_id=f"fuzz-close-{tag}", employee_id=bob, reason="left")],
        "ReopenBudget": [budget_pb2.ReopenBudgetRequest(request_id=f"fuzz-reopen-{tag}", employee_id=bob, reason="back")],
        "MoveEmployee": [
            budget_pb2.MoveEmployeeRequest(request_id=f"fuzz-move-{tag}", employee_id=bob, team_id=f"{team}-2", reason="x")
        ],
        "RecordAction": [
            action_pb2.RecordActionRequest(
                request_id=f"fuzz-record-{tag}", employee_id=ann, customer_id=guest, case_id="4711",
                amount=_money("10.25"), reason="goodwill", refund=action_pb2.RefundDetails(order_id="o-9"),
            ),
            late_fee,
        ],
        "GetAction": [action_pb2.GetActionRequest(action_id=a) for a in world.action_ids],
        "ListActions": [
            action_pb2.ListActionsRequest(employee_id=ann, page_size=1, page_token=tokens[2]),
            action_pb2.ListActionsRequest(customer_id=guest, page_size=1, page_token=tokens[3]),
            action_pb2.ListActionsRequest(state=action_pb2.Action.STATE_PENDING_APPROVAL, approver_id=supervisor),
        ],
        "ApproveAction": [
            action_pb2.ApproveActionRequest(
                request_id=f"fuzz-approve-{tag}", action_id=pending[0].action.action_id, approver_id=supervisor
            )
        ],
        "DenyAction": [
            action_pb2.DenyActionRequest(
                request_id=f"fuzz-deny-{tag}", action_id=pending[1].action.action_id, approver_id=supervisor,
                note="no",
            )
        ],
        "ReverseAction": [
            action_pb2.ReverseActionRequest(
                request_id=f"fuzz-reverse-{tag}", action_id=gift.action.action_id, reason="mistake", actor_id="admin"
            )
        ],
        "DocumentWin": [
            action_pb2.DocumentWinRequest(
                request_id=f"fuzz-win-{tag}", action_id=gift.action.action_id, story="came back", outcome="loyal"
            )
        ],
        "SetTeamCap": [
            team_pb2.SetTeamCapRequest(request_id=f"fuzz-team-cap-{tag}", team_id=team, cap=make_cap("50000", "EUR"))
        ],
        "GetTeam": [team_pb2.GetTeamRequest(team_id=team)],
        "SetCustomerCap": [
            team_pb2.SetCustomerCapRequest(request_id=f"fuzz-customer-cap-{tag}", cap=make_cap("100000", "EUR"))
        ],
        "GetCustomerUsage": [team_pb2.GetCustomerUsageRequest(customer_id=guest)],
        "StreamEvents": [audit_pb2.StreamEventsRequest(after_position=0, event_types=["Budget.ActionRecorded"])],
        "VerifyIntegrity": [
            audit_pb2.VerifyIntegrityRequest(employee_id=ann),
            audit_pb2.VerifyIntegrityRequest(checkpoint=audit_pb2.Checkpoint(position=1, log_hash="0" * 64)),
        ],
        "GetAuditTrail": [
            audit_pb2.GetAuditTrailRequest(employee_id=ann, page_size=1, page_token=tokens[4]),
            audit_pb2.GetAuditTrailRequest(customer_id=guest, page_size=1, page_token=tokens[5]),
        ],
    }
    for method in METHODS:
        for seed in seeds.get(method.name, []):
            if seed.DESCRIPTOR is method.input_type:
                world.seeds[path_of(method)].append(seed)
    return world


def _money(amount: str, currency: str = "EUR") -> Any:
    return to_money(amount, currency)


class Log:
    """The store's notification log as StreamEvents shows it: tracks the last position seen."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = audit_pb2_grpc.AuditServiceStub(channel)
        self.position = 0
        self.new()

    def new(self) -> list[audit_pb2.Event]:
        """Events after the last known position (which moves to the end)."""
        events = [
            r.event
            for r in self.stub.StreamEvents(audit_pb2.StreamEventsRequest(after_position=self.position), timeout=60)
        ]
        if events:
            self.position = events[-1].position
        return events


@dataclass
class Target:
    server: ServerProcess
    channel: grpc.Channel
    world: World
    log: Log

    def __repr__(self) -> str:
        return f"Target({self.server.target})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    server = ServerProcess.on_sqlite(
        tmp_path_factory.mktemp("fuzz-server"),
        # Nothing but our own calls may write: the refused-request-leaves-no-event check relies on it.
        {"LEEWAY_EXPIRY_INTERVAL_SECONDS": "0", "LEEWAY_LOG_LEVEL": "warning"},
    )
    with server.running():
        try:
            with LeewayClient(server.target, timeout=30.0) as client:
                world = _populate(client, "")
            with grpc.insecure_channel(server.target, options=FUZZ_CHANNEL_OPTIONS) as channel:
                log = Log(channel)
                world.event_types = sorted({e.event_type for e in log_all(log)})
                yield Target(server, channel, world, log)
        finally:
            _print_stats()


def log_all(log: Log) -> list[audit_pb2.Event]:
    return [r.event for r in log.stub.StreamEvents(audit_pb2.StreamEventsRequest(), timeout=60)]


@pytest.fixture
def world(target: Target, request: pytest.FixtureRequest) -> World:
    """The module's data plus budgets and actions of this test's own (so that one RPC's fuzzing closing or
    draining a budget does not take the deeper paths away from the next RPC's)."""
    tag = request.node.callspec.id.lower().replace(".", "-").replace("_", "-")
    tag = f"{request.node.originalname.split('_')[1][:3]}-{tag}"
    with LeewayClient(target.server.target, timeout=30.0) as client:
        client.set_customer_cap(None)  # an earlier RPC's fuzzing may have left a tiny organisation-wide cap
        own = _populate(client, tag)
    target.log.new()
    return target.world.merged(own)


# ---------------------------------------------------------------------------- strategies: scalars


def _edges(low: int, high: int) -> list[int]:
    candidates = {
        low, low + 1, high - 1, high, -1, 0, 1, 2, 7, 100, 127, 128, 255, 256, 1000,
        2**31 - 1, -(2**31), 2**31, 2**32, 2**53, 2**53 + 1, 2**62, 2**63 - 1, -(2**63),
        10**9 - 1, 10**9, -(10**9 - 1), -(10**9), 10**12, 10**12 + 1, -(10**12), 10**15, 10**18,
        # Timestamp / Duration edges: year 1, year 9999, +-10,000 years.
        -62135596800, -62135596801, 253402300799, 253402300800, 315576000000, 315576000001, -315576000000,
    }
    return sorted(c for c in candidates if low <= c <= high)


def ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = st.sampled_from(_edges(low, high))
    return st.one_of(edges, edges, st.integers(max(low, -1000), min(high, 1000)), st.integers(low, high))


INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

NASTY = [
    "", " ", "ann", " ann", "ann ", "ANN", "Ann", "ann\x00", "\x00", "\x00ann", "ann\n", "ann\t", "\r\n", "\x7f", "\x85",
    "\u200b", "\u202eann", "\ufeff", "\ufffd", "\U0010ffff", "😀", "👩‍👩‍👧‍👦", "🏳️‍🌈", "ｱﾝ", "ＡＮＮ", "ǅ", "ﬀ", "İ",
    "a" * 127, "a" * 128, "a" * 129, "x" * 200, "x" * 201, "x" * 2000, "x" * 2001,
    "../../etc/passwd", "' OR '1'='1", "%s%s%n", "{}", "null", "\\", '"', "NaN", "-0", "1e999", "act_", "act__1",
]


def text_any() -> st.SearchStrategy[str]:
    control = st.characters(min_codepoint=0, max_codepoint=0xA0)
    return st.one_of(
        st.sampled_from(NASTY),
        st.text(max_size=24),
        st.text(alphabet=control, max_size=24),
        st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), min_size=1, max_size=8),
        # Long: up to ~100 KB, now and then 1 MB.
        st.builds(
            lambda ch, n: ch * n,
            st.sampled_from(["a", "é", "😀", "\x00", " ", "\n", "-"]),
            st.one_of(st.integers(0, 100_000), st.sampled_from([65_535, 65_536, 100_000, 1_000_000])),
        ),
    )


def ids(pool: list[str]) -> st.SearchStrategy[str]:
    valid = ["ann", "bob", "cy", "sup-1", "front-desk", "guest-42", "admin", "a", "A.b_c:d@e+f-g", "9" * 128]
    return st.one_of(st.sampled_from(pool + valid), text_any())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _token_with(token: str, **changes: Any) -> str:
    """``token`` (a real page token: base64 of a JSON object) with some of its keys replaced."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:  # not a real token (any more): leave it as it is
        return token
    if not isinstance(data, dict):
        return token
    data.update(changes)
    return _b64(json.dumps(data).encode())


#: Positions to put into a real page token: the int64 edges and beyond, and things that are no position at all.
WEIRD_POSITIONS = st.one_of(
    st.sampled_from([2**63, 2**64, 10**30]),
    st.sampled_from([2**63 - 1, -1, -(10**30), 1.5, 1e308, "1", None, True, [], {}]),
    ints(-(2**63), 2**63 - 1),
)


def page_tokens(tokens: list[str]) -> st.SearchStrategy[str]:
    """Real tokens, real tokens with their position or fingerprint replaced, and broken tokens."""
    weird_positions = WEIRD_POSITIONS
    strategies: list[st.SearchStrategy[str]] = [
        st.sampled_from(
            [
                _b64(b"{}"), _b64(b"[]"), _b64(b"1"), _b64(b'"p"'), _b64(b"null"), _b64(b'{"p":1}'),
                _b64(b'{"p":1,"f":""}'), _b64(b"\xff\xfe"), _b64(b'{"p":1e999,"f":"x"}'), "!!!!", "====", "a", "a" * 201,
            ]
        ),
        st.binary(max_size=60).map(_b64),
        text_any(),
    ]
    if tokens:
        strategies.append(st.sampled_from(tokens))
        strategies.append(st.builds(lambda t, p: _token_with(t, p=p), st.sampled_from(tokens), weird_positions))
        strategies.append(st.builds(lambda t, f: _token_with(t, f=f), st.sampled_from(tokens), st.text(max_size=20)))
    return st.one_of(strategies)


def action_ids(pool: list[str]) -> st.SearchStrategy[str]:
    """Real action ids, forged ones on real budgets (version 0, beyond the history, 2**63...), and junk."""
    hexes = sorted({a.split("_")[1] for a in pool if a.count("_") == 2}) or ["0" * 32]
    versions = st.one_of(
        st.sampled_from([0, 1, 2, 3, 4, 5, 6, 10, 99, 10**18 - 1, 2**63 - 1, 2**63, 10**19, -1]),
        st.integers(0, 50),
    )
    forged = st.builds(lambda h, v: f"act_{h}_{v}", st.sampled_from(hexes + ["0" * 32, "f" * 32]), versions)
    variants = st.builds(
        lambda a, f: f(a),
        st.sampled_from(pool or ["act_" + "0" * 32 + "_1"]),
        st.sampled_from([str.upper, lambda a: a + " ", lambda a: " " + a, lambda a: a + "\x00", lambda a: a + "0"]),
    )
    return st.one_of(st.sampled_from(pool), forged, variants, text_any())


CURRENCIES = ["EUR", "USD", "JPY", "BHD", "XAU", "XTS", "XXX", "CLF", "eur", "EU", "EURO", "€", "E\x00R", "ZZZ", ""]


def strings_for(name: str, world: World) -> st.SearchStrategy[str]:
    """Field-name aware strings: real and near-real values mixed with anything."""
    if name == "action_id":
        return action_ids(world.action_ids)
    if name == "page_token":
        return page_tokens(world.tokens)
    if name == "request_id":
        reused = world.request_ids + ["fuzz-rid-1", "fuzz-rid-2"]
        return st.one_of(st.sampled_from(reused), st.uuids().map(str), text_any())
    if name == "currency_code":
        return st.one_of(st.sampled_from(CURRENCIES), st.sampled_from(CURRENCIES), st.text(max_size=4), text_any())
    if name == "rule_code":
        codes = ["LATE_FEE", "LATE_RETURN", "WAIVE_FEE", "UNKNOWN_RULE", "x" * 64, "x" * 65, "-x", "a b"]
        return st.one_of(st.sampled_from(codes), text_any())
    if name == "event_types":
        return st.one_of(st.sampled_from(world.event_types or ["Budget.Opened"]), text_any())
    if name == "approver_role":
        return st.one_of(st.sampled_from(["supervisor", "admin", "agent", "auditor"]), text_any())
    if name.endswith("_id") or name.endswith("_ids"):
        pool = world.employees + world.teams + world.customers + world.approvers
        return ids(pool)
    plain = ["goodwill", "Late dinner", "flowers", "o-1", "ACC-1", "x", "Café ☕ ok\nline two\tand a tab"]
    return st.one_of(st.sampled_from(plain), text_any())


def enums(field_descriptor: FieldDescriptor) -> st.SearchStrategy[int]:
    known = [v.number for v in field_descriptor.enum_type.values]
    unknown = [-(2**31), -1, max(known) + 1, 99, 2**31 - 1]
    return st.one_of(st.sampled_from(known), st.sampled_from(unknown), st.integers(-(2**31), 2**31 - 1))


# ---------------------------------------------------------------------------- strategies: messages

MAX_DEPTH = 4
NANOS = st.one_of(
    ints(-(2**31), 2**31 - 1),
    st.integers(0, 999_999_999),
    st.sampled_from([0, 500_000_000, 999_999_999, 10**9, -1, -999_999_999, -(10**9)]),
)


def _fill_money(draw: Callable[..., Any], message: Any, world: World) -> None:
    if draw(st.integers(0, 2)) == 0:  # a sane amount, so that deeper checks run too
        message.currency_code = draw(st.sampled_from(["EUR", "EUR", "USD", "JPY"]))
        message.units = draw(st.integers(0, 600))
        message.nanos = draw(st.sampled_from([0, 0, 500_000_000, 10_000_000, 1]))
        return
    if draw(st.booleans()):
        message.currency_code = draw(strings_for("currency_code", world))
    if draw(st.booleans()):
        message.units = draw(ints(-(2**63), 2**63 - 1))
    if draw(st.booleans()):
        message.nanos = draw(NANOS)


#: "Now" for timestamp strategies, fixed once: a strategy must draw the same way on every run of a test.
NOW = int(datetime.now(timezone.utc).timestamp())


#: Seconds no datetime / timedelta holds (timedelta: +-86,399,999,999,999 s; datetime: years 1-9999).
OVERFLOWING_SECONDS = [2**63 - 1, -(2**63), 10**18, -(10**18), 2**53, 10**15, 86_400 * 999_999_999 + 1, 253402300800]


def _fill_time(draw: Callable[..., Any], message: Any, span: tuple[int, int]) -> None:
    seconds = st.one_of(
        st.sampled_from(OVERFLOWING_SECONDS),
        ints(-(2**63), 2**63 - 1),
        ints(-(2**63), 2**63 - 1),
        st.integers(*span),
        st.integers(NOW - 86400 * 400, NOW + 3600),
        st.integers(0, 86400 * 40),
    )
    if draw(st.integers(0, 5)):
        message.seconds = draw(seconds)
    if draw(st.booleans()):
        message.nanos = draw(NANOS)


SPECIAL_FILLERS: dict[str, Callable[[Callable[..., Any], Any, World], None]] = {
    "google.type.Money": _fill_money,
    "google.protobuf.Timestamp": lambda draw, m, w: _fill_time(draw, m, (-62135596800, 253402300799)),
    "google.protobuf.Duration": lambda draw, m, w: _fill_time(draw, m, (-315576000000, 315576000000)),
}


def _value(draw: Callable[..., Any], fd: FieldDescriptor, world: World, depth: int) -> Any:
    """One (non-repeated) value for field ``fd``."""
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _message(draw, fd.message_type, world, depth + 1)
    if fd.type == FieldDescriptor.TYPE_STRING:
        return draw(strings_for(fd.name, world))
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return draw(enums(fd))
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return draw(st.booleans())
    if fd.type in INT_RANGES:
        return draw(ints(*INT_RANGES[fd.type]))
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return draw(st.floats(width=64 if fd.type == FieldDescriptor.TYPE_DOUBLE else 32))
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return draw(st.binary(max_size=64))
    raise AssertionError(f"no strategy for {fd.full_name} (type {fd.type})")


def _values(draw: Callable[..., Any], fd: FieldDescriptor, world: World, depth: int) -> list[Any]:
    """Values of a repeated field: a few, or many copies of one (past MAX_BENDABLE_RULES, MAX_APPROVERS...)."""
    if draw(st.integers(0, 7)) == 0:
        one = _value(draw, fd, world, depth)
        if isinstance(one, str):
            one = one[:64]
        if isinstance(one, Message) and one.ByteSize() > 512:
            return [one] * 3  # keeps the request far below the 4 MB message limit
        return [one] * draw(st.sampled_from([101, 201, 1000]))
    return [_value(draw, fd, world, depth) for _ in range(draw(st.integers(0, 4)))]


def _assign(message: Any, fd: FieldDescriptor, value: Any) -> None:
    if fd.is_repeated:
        container = getattr(message, fd.name)
        del container[:]
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                container.add().CopyFrom(item)
        else:
            container.extend(value)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        sub = getattr(message, fd.name)
        sub.CopyFrom(value)
        sub.SetInParent()  # present even when empty (also selects a oneof member)
    else:
        setattr(message, fd.name, value)


def _message(draw: Callable[..., Any], descriptor: Descriptor, world: World, depth: int = 0) -> Message:
    message = message_class(descriptor)()
    if depth > MAX_DEPTH:
        return message
    filler = SPECIAL_FILLERS.get(descriptor.full_name)
    if filler is not None:
        filler(draw, message, world)
        return message
    for oneof in descriptor.oneofs:
        choice = draw(st.sampled_from([None, *list(oneof.fields)]))
        if choice is not None:
            _assign(message, choice, _value(draw, choice, world, depth))
    for fd in descriptor.fields:
        if fd.containing_oneof is not None:
            continue
        nested = fd.type == FieldDescriptor.TYPE_MESSAGE
        if not draw(st.integers(0, 5 if nested else 2)):
            continue  # plain fields are set two times in three, message fields five times in six
        value = _values(draw, fd, world, depth) if fd.is_repeated else _value(draw, fd, world, depth)
        _assign(message, fd, value)
    return message


def _leaves(message: Any, depth: int = 0) -> list[tuple[Any, FieldDescriptor, int]]:
    """Every field of ``message`` and of the sub-messages it has set: the places a mutation may hit."""
    found = [(message, fd, depth) for fd in message.DESCRIPTOR.fields]
    if depth < MAX_DEPTH:
        for fd in message.DESCRIPTOR.fields:
            if fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.is_repeated and message.HasField(fd.name):
                found += _leaves(getattr(message, fd.name), depth + 1)
    return found


def _mutate(draw: Callable[..., Any], root: Any, world: World) -> None:
    """Replaces (or clears) one field anywhere in ``root``, each place equally likely."""
    leaves = _leaves(root)
    message, fd, depth = leaves[draw(st.integers(0, len(leaves) - 1))]
    if draw(st.integers(0, 5)) == 0:
        message.ClearField(fd.name)
        return
    if fd.name == "page_token" and message.page_token and draw(st.booleans()):
        # The seed's own token (its fingerprint matches the seed's filters) pointing somewhere odd.
        message.page_token = _token_with(message.page_token, p=draw(WEIRD_POSITIONS))
        return
    if fd.containing_type.full_name in SPECIAL_FILLERS and fd.type != FieldDescriptor.TYPE_STRING:
        # A number inside Money / Timestamp / Duration: the filler's distribution (edges, overflows).
        fresh = message_class(fd.containing_type)()
        SPECIAL_FILLERS[fd.containing_type.full_name](draw, fresh, world)
        setattr(message, fd.name, getattr(fresh, fd.name))
        return
    value = _values(draw, fd, world, depth) if fd.is_repeated else _value(draw, fd, world, depth)
    _assign(message, fd, value)


@st.composite
def requests(draw: Callable[..., Any], method: MethodDescriptor, world: World) -> Message:
    """A generated request; or a valid seed with 0-4 fields replaced; or (for lists) a valid seed whose own page
    token points to an odd position (its fingerprint still matches, so the position reaches the store)."""
    seeds = world.seeds.get(path_of(method), [])
    paged = [s for s in seeds if "page_token" in s.DESCRIPTOR.fields_by_name and s.page_token]
    branch = draw(st.sampled_from(["generated", "seed", "seed", "token"]))
    if not seeds or branch == "generated":
        return _message(draw, method.input_type, world)
    message = message_class(method.input_type)()
    if branch == "token" and paged:
        message.CopyFrom(draw(st.sampled_from(paged)))
        message.page_token = _token_with(message.page_token, p=draw(WEIRD_POSITIONS))
        return message
    message.CopyFrom(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        _mutate(draw, message, world)
    return message


# ---------------------------------------------------------------------------- strategies: raw bytes


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@st.composite
def wire_tokens(draw: Callable[..., Any]) -> bytes:
    """A stream of (tag, payload) with random field numbers and wire types, some of them lying."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 6))):
        number = draw(st.one_of(st.integers(1, 26), st.sampled_from([0, 1000, 19000, 2**29 - 1, 2**29])))
        wire_type = draw(st.integers(0, 7))
        out += _varint((number << 3) | wire_type)
        if wire_type == 0:
            out += draw(
                st.one_of(
                    st.integers(0, 2**64 - 1).map(_varint),
                    st.just(b"\xff" * 10 + b"\x01"),  # an 11-byte varint
                    st.just(b"\x80"),  # truncated varint
                )
            )
        elif wire_type == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire_type == 2:
            payload = draw(
                st.one_of(
                    st.binary(max_size=40),
                    st.text(max_size=20).map(str.encode),
                    st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"ann\x00", "😀".encode()]),
                )
            )
            length = draw(st.one_of(st.just(len(payload)), st.integers(0, 2**32), st.just(2**63)))
            out += _varint(length) + payload
        elif wire_type == 5:
            out += draw(st.binary(min_size=4, max_size=4))
    return bytes(out)


@st.composite
def mutated_bytes(draw: Callable[..., Any], seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append", "dup"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at]
        elif op == "truncate":
            del data[at:]
        elif op == "append":
            data += draw(st.one_of(st.binary(max_size=16), wire_tokens()))
        elif op == "dup":
            data += bytes(data)
    return bytes(data)


def raw_requests(method: MethodDescriptor, world: World) -> st.SearchStrategy[bytes]:
    seeds = [s.SerializeToString() for s in world.seeds.get(path_of(method), [])] or [b""]
    return st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=64, max_size=4096),
        mutated_bytes(seeds),
        wire_tokens(),
        st.sampled_from(seeds),
        st.sampled_from([b"", b"\x00", b"\xff" * 16, b"\x0a" + b"\xff" * 10, struct.pack("<Q", 2**64 - 1)]),
    )


# ---------------------------------------------------------------------------- calling and checking


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    error_infos: list[error_details_pb2.ErrorInfo]
    status_problem: str  # why no google.rpc.Status could be read ("" if it could, or the call was OK)
    responses: int
    bad_response: str  # an OK response that does not parse as the response message
    trailer_bytes: int  # the trailers' size as gRPC counts it against grpc.max_metadata_size


def _pct_encoded_length(text: str) -> int:
    """Length of grpc-message on the wire (percent-encoded UTF-8, as the gRPC HTTP/2 protocol says)."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in text.encode("utf-8", "surrogatepass"))


def _trailer_bytes(call: Any, details: str) -> int:
    """The size gRPC core holds against grpc.max_metadata_size for a refusal (a Trailers-Only response): name +
    value + 32 per entry, for :status, content-type, grpc-status, grpc-message (percent-encoded) and the trailing
    metadata (binary values counted decoded). Matches core's "received metadata size exceeds" figures."""
    size = (len(":status") + 3 + 32) + (len("content-type") + len("application/grpc") + 32)
    size += len("grpc-status") + 1 + 32 + len("grpc-message") + _pct_encoded_length(details) + 32
    for key, value in call.trailing_metadata() or ():
        size += len(key) + len(value if isinstance(value, bytes) else value.encode()) + 32
    return size


def call(channel: grpc.Channel, method: MethodDescriptor, payload: bytes, *, follow: bool = False) -> Outcome:
    """Sends ``payload`` as the serialized request (identity serializer) and collects the outcome."""
    identity: Callable[[bytes], bytes] = lambda b: b  # noqa: E731
    response_class = message_class(method.output_type)
    bad_response = ""
    responses = 0

    def check_response(raw: bytes) -> None:
        nonlocal bad_response
        try:
            response_class.FromString(raw)
        except DecodeError as error:
            bad_response = f"response does not parse as {method.output_type.full_name}: {error}"

    outcome_call: Any
    if method.server_streaming:
        stream = channel.unary_stream(path_of(method), request_serializer=identity, response_deserializer=identity)
        outcome_call = stream(payload, timeout=FOLLOW_TIMEOUT if follow else CALL_TIMEOUT)
        try:
            for raw in outcome_call:
                check_response(raw)
                responses += 1
                if responses >= MAX_STREAM_RESPONSES:
                    outcome_call.cancel()
                    break
        except grpc.RpcError:
            pass
        code = outcome_call.code()
    else:
        unary = channel.unary_unary(path_of(method), request_serializer=identity, response_deserializer=identity)
        try:
            raw, outcome_call = unary.with_call(payload, timeout=CALL_TIMEOUT)
            check_response(raw)
            responses = 1
        except grpc.RpcError as error:
            outcome_call = error
        code = outcome_call.code()
    infos: list[error_details_pb2.ErrorInfo] = []
    problem = ""
    if code != grpc.StatusCode.OK:
        try:
            status = rpc_status.from_call(outcome_call)
        except ValueError as error:
            status, problem = None, f"malformed grpc-status-details-bin: {error}"
        else:
            if status is None:
                problem = "no google.rpc.Status (grpc-status-details-bin) in the trailers"
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    infos.append(info)
    details = outcome_call.details() or ""
    return Outcome(code, details, infos, problem, responses, bad_response, _trailer_bytes(outcome_call, details))


def label_of(outcome: Outcome) -> str:
    if outcome.code == grpc.StatusCode.OK:
        return "OK"
    reason = outcome.error_infos[0].reason if outcome.error_infos else "-"
    return f"{outcome.code.name}/{reason}"


Problem = tuple[str, str]  # (category, what exactly): the category groups failures in keep-going runs


def problems_with(method: MethodDescriptor, outcome: Outcome, *, follow: bool, cancelled_by_us: bool) -> list[Problem]:
    """Everything wrong with one call's outcome (empty when it is as the issue demands)."""
    problems: list[Problem] = []
    if outcome.bad_response:
        problems.append(("bad response", outcome.bad_response))
    code = outcome.code
    if code == grpc.StatusCode.OK:
        return problems
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and follow and method.server_streaming:
        return problems  # our own short deadline ends a following stream
    if code == grpc.StatusCode.CANCELLED and cancelled_by_us:
        return problems
    if code in NEVER:
        problems.append((f"status {code.name}", f"status {code.name}: {outcome.details[:500]!r}"))
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        problems.append(("hung", f"no answer within {CALL_TIMEOUT} s (DEADLINE_EXCEEDED): the server hung"))
    if outcome.status_problem:
        problems.append(
            (
                f"{code.name} without ErrorInfo",
                f"refusal {code.name} without ErrorInfo: {outcome.status_problem} (details {outcome.details[:500]!r})",
            )
        )
    elif not outcome.error_infos:
        problems.append((f"{code.name} without ErrorInfo", f"refusal {code.name}: google.rpc.Status but no ErrorInfo"))
    elif not any(i.domain == ERROR_DOMAIN and i.reason for i in outcome.error_infos):
        problems.append(("foreign ErrorInfo", f"ErrorInfo without reason or domain != {ERROR_DOMAIN!r}: {outcome.error_infos}"))
    if outcome.trailer_bytes > DEFAULT_METADATA_LIMIT:
        problems.append(
            (
                "oversized trailers",
                f"the refusal's trailers take {outcome.trailer_bytes} bytes, over gRPC's default "
                f"{DEFAULT_METADATA_LIMIT}-byte metadata limit: a client with default settings gets RESOURCE_EXHAUSTED "
                "'received metadata size exceeds ...' instead (at random up to 16 KiB, always beyond)",
            )
        )
    return problems


def _compact(lines: list[str], limit: int) -> list[str]:
    """Shortens very long lines and folds runs of identical lines into one ("... x 1000")."""
    out: list[str] = []
    previous, count = None, 0
    for line in [*lines, None]:
        if line == previous:
            count += 1
            continue
        if previous is not None:
            shown = previous if len(previous) <= limit else f"{previous[:limit]}... ({len(previous)} chars)"
            out.append(shown if count == 1 else f"{shown}    # x {count}")
        previous, count = line, 1
    return out


def describe(message: Message | bytes, limit: int = 200) -> str:
    """A request for a report: text format (or bytes repr), short enough to read."""
    if isinstance(message, bytes):
        text = repr(message)
        return text if len(text) <= limit * 4 else f"{text[: limit * 4]}... ({len(message)} bytes)"
    text = text_format.MessageToString(message, as_utf8=True) or "<empty message>"
    lines = _compact(text.splitlines(), limit)
    return "\n".join(lines[:60] + ([f"... ({len(lines) - 60} more lines)"] if len(lines) > 60 else []))


class Shown:
    """A drawn request whose repr (printed by hypothesis for a failing example) is readable."""

    def __init__(self, message: Message) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"{self.message.DESCRIPTOR.name}<\n{describe(self.message)}\n>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


#: LEEWAY_FUZZ_KEEP_GOING=1 (chaos runs): a failing case does not stop its RPC's fuzzing; the smallest example of
#: each kind of failure is kept here and test_no_failures_collected (the module's last test) reports them all.
KEEP_GOING = os.environ.get("LEEWAY_FUZZ_KEEP_GOING", "") not in ("", "0")
COLLECTED: dict[tuple[str, str, str], tuple[int, str]] = {}


def run_case(
    target: Target, method: MethodDescriptor, payload: bytes, request: Message | None, kind: str, shown: str
) -> None:
    """Sends one fuzz case and asserts every invariant; records its status in STATS."""
    follow = bool(request is not None and getattr(request, "follow", False))
    outcome = call(target.channel, method, payload, follow=follow)
    cancelled_by_us = outcome.responses >= MAX_STREAM_RESPONSES
    undecodable = request is None
    label = label_of(outcome)
    if undecodable and outcome.code == grpc.StatusCode.INTERNAL and outcome.details == UNDECODABLE_DETAILS:
        label = "INTERNAL(undecodable)"
    STATS[f"{method.containing_service.name}.{method.name}"][f"{kind}:{label}"] += 1

    problems = [] if label == "INTERNAL(undecodable)" else problems_with(
        method, outcome, follow=follow, cancelled_by_us=cancelled_by_us
    )
    if target.server.proc is None or target.server.proc.poll() is not None:
        problems.append(("server gone", f"the server process is gone:\n{target.server.logs()[-5000:]}"))
    else:
        written = target.log.new()
        refused = outcome.code != grpc.StatusCode.OK
        if written and (not is_mutating(method) or refused):
            what = "a refused request" if refused else "a read-only call"
            problems.append(
                (
                    f"{what} left events",
                    f"{what} left {len(written)} event(s) behind: "
                    + ", ".join(f"{e.position}:{e.event_type}" for e in written[:10]),
                )
            )
    if not problems:
        return
    report = (
        f"{path_of(method)} ({kind}) -> {outcome.code.name} {outcome.details[:500]!r}\n"
        + "\n".join(f"  - {text}" for _, text in problems)
        + f"\nrequest ({len(payload)} bytes serialized):\n{shown}"
    )
    if KEEP_GOING:
        for category, _ in problems:
            key = (path_of(method), kind, category)
            if key not in COLLECTED or len(payload) < COLLECTED[key][0]:
                COLLECTED[key] = (len(payload), report)
        return
    raise AssertionError(report)


# ---------------------------------------------------------------------------- the properties


@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
@fuzz_settings(STRUCTURED_EXAMPLES)
@given(data=st.data())
def test_structured_requests(target: Target, world: World, method: MethodDescriptor, data: st.DataObject) -> None:
    request = data.draw(requests(method, world).map(Shown), label="request").message
    payload = request.SerializeToString()
    assume(len(payload) <= MAX_REQUEST_BYTES)
    shown = describe(request)
    run_case(target, method, payload, request, "structured", shown)


@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
@fuzz_settings(RAW_EXAMPLES)
@given(data=st.data())
def test_random_bytes(target: Target, world: World, method: MethodDescriptor, data: st.DataObject) -> None:
    payload = data.draw(raw_requests(method, world), label="payload")
    try:
        request: Message | None = message_class(method.input_type).FromString(payload)
    except DecodeError:
        request = None  # grpcio on the server will not parse it either
    shown = describe(payload) + ("" if request is None else f"\nparses as:\n{describe(request)}")
    run_case(target, method, payload, request, "raw", shown)


#: Bytes no request message parses: a truncated varint, a truncated length-delimited field, invalid UTF-8 in
#: field 1 (a string in most requests; in the others it is a truncated field anyway), an end-group tag.
UNDECODABLE = [b"\x08\x80", b"\x0a\x05ab", b"\x0a\x01\xff", b"\x0c"]


def test_undecodable_requests_are_refused_with_error_info(target: Target) -> None:
    """Issue 8: even a request that is not a protobuf of the request message is refused with ErrorInfo, never
    INTERNAL. grpcio's generated handlers answer such bytes before any Leeway code runs."""
    failures = []
    for method in METHODS:
        undecodable = []
        for payload in UNDECODABLE:
            try:
                message_class(method.input_type).FromString(payload)
            except DecodeError:
                undecodable.append(payload)
        assert undecodable, f"no payload in UNDECODABLE fails to parse as {method.input_type.full_name}"
        for payload in undecodable:
            outcome = call(target.channel, method, payload)
            problems = problems_with(method, outcome, follow=False, cancelled_by_us=False)
            if outcome.code == grpc.StatusCode.OK:
                problems.append(("accepted", "accepted bytes that do not parse"))
            if problems:
                failures.append(f"{path_of(method)} {payload!r}: {problems[-1][1]}")
            assert target.server.proc is not None and target.server.proc.poll() is None, target.server.logs()[-5000:]
            assert not target.log.new(), f"{path_of(method)} {payload!r} left events behind"
    assert not failures, f"{len(failures)} undecodable requests not refused properly:\n" + "\n".join(failures)


def test_no_failures_collected() -> None:
    """With LEEWAY_FUZZ_KEEP_GOING=1: every kind of failure seen, each with its smallest request."""
    if not COLLECTED:
        return
    print(f"\n\n{len(COLLECTED)} kinds of failure (smallest example of each):")
    for (method, kind, category), (_, report) in sorted(COLLECTED.items()):
        print(f"\n=== {method} [{kind}] {category}\n{report}")
    raise AssertionError(
        f"{len(COLLECTED)} kinds of failure: " + "; ".join(f"{m} [{k}] {c}" for m, k, c in sorted(COLLECTED))
    )
