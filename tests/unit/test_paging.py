"""leeway.application.paging: AIP-158 page sizes and opaque page tokens bound to the filters they were issued for."""

from __future__ import annotations

import base64
import json

import pytest
from leeway.application.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, decode_token, encode_token, page_size
from leeway.domain.errors import FieldViolation, InvalidArgument

FILTERS = {"employee_id": "emp-1", "state": "PENDING_APPROVAL"}
FOREIGN = [FieldViolation("page_token", "is not a token this list issued")]
OTHER_FILTERS = [FieldViolation("page_token", "was issued for a request with other filters")]


@pytest.mark.parametrize(
    ("asked", "given"),
    [(0, DEFAULT_PAGE_SIZE), (1, 1), (49, 49), (MAX_PAGE_SIZE, MAX_PAGE_SIZE), (MAX_PAGE_SIZE + 1, MAX_PAGE_SIZE), (10**9, MAX_PAGE_SIZE)],
)
def test_page_size(asked: int, given: int) -> None:
    assert page_size(asked) == given


def test_negative_page_size_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_size(-1)
    assert caught.value.violations == [FieldViolation("page_size", "must not be negative")]
    assert caught.value.reason == "INVALID_ARGUMENT"


@pytest.mark.parametrize("position", [0, 1, 50, 12345, 2**62 - 1])
def test_a_token_round_trips_its_position(position: int) -> None:
    token = encode_token("actions", FILTERS, position)
    assert decode_token(token, "actions", FILTERS) == position


def test_a_token_is_url_safe_without_padding_and_short() -> None:
    token = encode_token("actions", FILTERS, 2**62 - 1)
    assert "=" not in token and "+" not in token and "/" not in token
    assert len(token) <= 200


def test_no_token_is_the_first_page() -> None:
    assert decode_token("", "actions", FILTERS) == 0


def test_the_filters_fingerprint_ignores_key_order() -> None:
    token = encode_token("actions", {"a": "1", "b": "2"}, 7)
    assert decode_token(token, "actions", {"b": "2", "a": "1"}) == 7


@pytest.mark.parametrize(
    ("kind", "filters"),
    [
        ("wins", FILTERS),  # another list
        ("actions", {**FILTERS, "state": "RECORDED"}),  # another filter value
        ("actions", {"employee_id": "emp-1"}),  # a filter dropped
        ("actions", {**FILTERS, "customer_id": "c"}),  # a filter added
    ],
)
def test_a_token_is_refused_for_other_filters(kind: str, filters: dict[str, str]) -> None:
    token = encode_token("actions", FILTERS, 5)
    with pytest.raises(InvalidArgument) as caught:
        decode_token(token, kind, filters)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert caught.value.violations == OTHER_FILTERS


def _raw(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _fingerprint() -> str:
    token = encode_token("actions", FILTERS, 0)
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["f"]


@pytest.mark.parametrize(
    "token",
    [
        "not base64 !!",
        "x",
        "A" * 201,  # too long, refused before decoding
        _raw([1, 2]),  # not an object
        _raw({"p": 1}),  # no fingerprint
        _raw({"f": "abc"}),  # no position
        _raw({"p": "1", "f": _fingerprint()}),  # position not an int
        _raw({"p": True, "f": _fingerprint()}),  # a bool is not a position
        _raw({"p": 1.5, "f": _fingerprint()}),
        _raw({"p": -1, "f": _fingerprint()}),
        _raw({"p": 2**62, "f": _fingerprint()}),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not UTF-8 JSON
    ],
)
def test_a_damaged_or_foreign_token_is_invalid(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_token(token, "actions", FILTERS)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert caught.value.violations == FOREIGN


def test_a_hand_made_token_with_the_right_fingerprint_is_accepted() -> None:
    assert decode_token(_raw({"p": 3, "f": _fingerprint()}), "actions", FILTERS) == 3
