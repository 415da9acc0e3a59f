"""leeway.domain.validation: the shape checks for identifiers, request ids, free text and rule codes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from leeway.domain.errors import FieldViolation
from leeway.domain.validation import (
    MAX_NAME,
    MAX_REQUEST_ID,
    MAX_TEXT,
    Id,
    Text,
    check_fields,
    check_id,
    check_request_id,
    check_rule_code,
    check_text,
)

ID_SHAPE = "must start with a letter or digit and contain only letters, digits and . _ : @ + -"
PRINTABLE = "must be printable, without leading or trailing spaces"
RULE_SHAPE = "must be 1-64 characters from letters, digits, '_', '-' and '.'"


@pytest.mark.parametrize(
    ("value", "required", "problem"),
    [
        ("emp-1", True, None),
        ("a", True, None),
        ("0", True, None),
        ("Emp.1_x:y@z+w-v", True, None),
        ("a" * 128, True, None),
        ("", True, "is required"),
        ("", False, None),
        ("a" * 129, True, "must be at most 128 characters"),
        ("a" * 129, False, "must be at most 128 characters"),
        ("-emp", True, ID_SHAPE),
        (".emp", True, ID_SHAPE),
        ("_emp", True, ID_SHAPE),
        ("emp 1", True, ID_SHAPE),
        ("emp/1", True, ID_SHAPE),
        ("emp\nx", True, ID_SHAPE),
        # `$` would also match just before a final newline: the pattern ends in `\Z`.
        ("emp\n", True, ID_SHAPE),
        ("émp", True, ID_SHAPE),
        (" emp", False, ID_SHAPE),
    ],
)
def test_check_id(value: str, required: bool, problem: str | None) -> None:
    expected = [] if problem is None else [FieldViolation("employee_id", problem)]
    assert check_id(value, "employee_id", required=required) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", None),  # optional
        ("req-1", None),
        ("any printable text, even with spaces inside", None),
        ("ünïcödé ✓", None),
        ("r" * MAX_REQUEST_ID, None),
        ("r" * (MAX_REQUEST_ID + 1), f"must be at most {MAX_REQUEST_ID} characters"),
        (" req", PRINTABLE),
        ("req ", PRINTABLE),
        ("re\tq", PRINTABLE),
        ("re\nq", PRINTABLE),
        ("re\x00q", PRINTABLE),
        ("re\x7fq", PRINTABLE),
        ("re\x85q", PRINTABLE),  # a C1 control
        ("re\u200bq", PRINTABLE),  # not printable (zero width space)
    ],
)
def test_check_request_id(value: str, problem: str | None) -> None:
    expected = [] if problem is None else [FieldViolation("request_id", problem)]
    assert check_request_id(value) == expected


def test_check_request_id_names_the_field_it_is_given() -> None:
    assert check_request_id(" x", "decision.request_id") == [FieldViolation("decision.request_id", PRINTABLE)]


def test_length_is_checked_before_shape() -> None:
    assert check_request_id(" " * (MAX_REQUEST_ID + 1)) == [
        FieldViolation("request_id", f"must be at most {MAX_REQUEST_ID} characters")
    ]


@pytest.mark.parametrize(
    ("value", "required", "max_length", "problem"),
    [
        ("late delivery", True, MAX_TEXT, None),
        ("line one\nline two\r\n\tindented", True, MAX_TEXT, None),
        ("", True, MAX_TEXT, "is required"),
        ("   \n\t", True, MAX_TEXT, "is required"),
        ("", False, MAX_TEXT, None),
        ("  ", False, MAX_TEXT, None),
        ("x" * MAX_TEXT, True, MAX_TEXT, None),
        ("x" * (MAX_TEXT + 1), True, MAX_TEXT, f"must be at most {MAX_TEXT} characters"),
        ("x" * MAX_NAME, True, MAX_NAME, None),
        ("x" * (MAX_NAME + 1), False, MAX_NAME, f"must be at most {MAX_NAME} characters"),
        ("bell\x07", True, MAX_TEXT, "must not contain control characters"),
        ("nul\x00", False, MAX_TEXT, "must not contain control characters"),
        ("vt\x0b", True, MAX_TEXT, "must not contain control characters"),
        ("del\x7f", True, MAX_TEXT, "must not contain control characters"),
        ("c1\x9f", True, MAX_TEXT, "must not contain control characters"),
        ("ünïcödé ✓ 日本", True, MAX_TEXT, None),
    ],
)
def test_check_text(value: str, required: bool, max_length: int, problem: str | None) -> None:
    expected = [] if problem is None else [FieldViolation("reason", problem)]
    assert check_text(value, "reason", required=required, max_length=max_length) == expected


def test_check_text_length_counts_characters_not_bytes() -> None:
    assert check_text("é" * MAX_TEXT, "reason", required=True) == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("LATE_FEE", None),
        ("late-fee.v2", None),
        ("1", None),
        ("R" * 64, None),
        ("", "is required"),
        ("R" * 65, RULE_SHAPE),
        ("_LATE", RULE_SHAPE),
        ("LATE FEE", RULE_SHAPE),
        ("LATE:FEE", RULE_SHAPE),
        ("LATE@FEE", RULE_SHAPE),
        ("LATE\n", RULE_SHAPE),
    ],
)
def test_check_rule_code(value: str, problem: str | None) -> None:
    expected = [] if problem is None else [FieldViolation("details.rule_code", problem)]
    assert check_rule_code(value, "details.rule_code") == expected


@dataclass
class _Fields:
    who: str
    note: str
    title: str


@pytest.mark.parametrize(
    ("fields", "problems"),
    [
        (_Fields("ann", "", ""), []),
        (_Fields("", "", ""), [("who", "is required")]),
        (_Fields("a b", "x" * (MAX_TEXT + 1), "t" * (MAX_NAME + 1)),
         [("who", ID_SHAPE), ("note", f"must be at most {MAX_TEXT} characters"),
          ("title", f"must be at most {MAX_NAME} characters")]),
        (_Fields("ann", "\x00", "ok"), [("note", "must not contain control characters")]),
    ],
)
def test_declared_field_checks_run_in_order(fields: _Fields, problems: list[tuple[str, str]]) -> None:
    checks = (Id("who"), Text("note"), Text("title", max_length=MAX_NAME))
    assert check_fields(fields, checks) == [FieldViolation(field, problem) for field, problem in problems]


def test_declared_checks_are_the_plain_checks() -> None:
    assert Id("x", required=False).check("") == check_id("", "x", required=False) == []
    assert Text("x", required=True).check(" ") == check_text(" ", "x", required=True) == [FieldViolation("x", "is required")]
