"""Shape checks for identifiers and free text, shared by every command."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import FieldViolation

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}\Z")
RULE_CODE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
MAX_REQUEST_ID = 128
MAX_TEXT = 2000
MAX_NAME = 200


#: C0 controls other than tab, line feed and carriage return; DEL and the C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _has_control(value: str) -> bool:
    return _CONTROL.search(value) is not None


def check_id(value: str, field: str, *, required: bool = True) -> list[FieldViolation]:
    """An identifier: 1-128 characters from letters, digits and . _ : @ + -, starting with a letter or digit."""
    if not value:
        return [FieldViolation(field, "is required")] if required else []
    if len(value) > 128:
        return [FieldViolation(field, "must be at most 128 characters")]
    if not ID_PATTERN.match(value):
        return [
            FieldViolation(
                field, "must start with a letter or digit and contain only letters, digits and . _ : @ + -"
            )
        ]
    return []


def check_request_id(value: str, field: str = "request_id") -> list[FieldViolation]:
    """request_id is optional; when given, printable and at most 128 characters."""
    if len(value) > MAX_REQUEST_ID:
        return [FieldViolation(field, f"must be at most {MAX_REQUEST_ID} characters")]
    if value and (value != value.strip() or _has_control(value) or not value.isprintable()):
        return [FieldViolation(field, "must be printable, without leading or trailing spaces")]
    return []


def check_text(value: str, field: str, *, required: bool, max_length: int = MAX_TEXT) -> list[FieldViolation]:
    """Free text: no control characters other than tab and newlines, at most ``max_length`` characters."""
    if not value.strip():
        return [FieldViolation(field, "is required")] if required else []
    if len(value) > max_length:
        return [FieldViolation(field, f"must be at most {max_length} characters")]
    if _has_control(value):
        return [FieldViolation(field, "must not contain control characters")]
    return []


def check_rule_code(value: str, field: str) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(field, "is required")]
    if not RULE_CODE_PATTERN.match(value):
        return [FieldViolation(field, "must be 1-64 characters from letters, digits, '_', '-' and '.'")]
    return []


@dataclass(frozen=True)
class Id:
    """A command's identifier field, checked by ``check_id``."""

    field: str
    required: bool = True

    def check(self, value: str) -> list[FieldViolation]:
        return check_id(value, self.field, required=self.required)


@dataclass(frozen=True)
class Text:
    """A command's free-text field, checked by ``check_text``."""

    field: str
    required: bool = False
    max_length: int = MAX_TEXT

    def check(self, value: str) -> list[FieldViolation]:
        return check_text(value, self.field, required=self.required, max_length=self.max_length)


def check_fields(command: Any, checks: Sequence[Id | Text]) -> list[FieldViolation]:
    """Every declared field's problems, in the order declared."""
    return [problem for check in checks for problem in check.check(getattr(command, check.field))]
