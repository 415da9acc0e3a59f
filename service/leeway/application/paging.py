"""Opaque page tokens (AIP-158): a position plus a fingerprint of the filters they were issued for."""

from __future__ import annotations

import base64
import hashlib
import json

from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.reasons import Reason

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(value: int) -> int:
    """AIP-158: 0 means the default, larger than the maximum means the maximum, negative is an error."""
    if value < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    if value == 0:
        return DEFAULT_PAGE_SIZE
    return min(value, MAX_PAGE_SIZE)


def _filters_hash(kind: str, filters: dict[str, str]) -> str:
    raw = json.dumps([kind, filters], sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def encode_token(kind: str, filters: dict[str, str], position: int) -> str:
    raw = json.dumps({"p": position, "f": _filters_hash(kind, filters)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, kind: str, filters: dict[str, str]) -> int:
    """The position a token stands for; 0 for no token. InvalidArgument for a foreign or damaged token."""
    if not token:
        return 0
    bad = InvalidArgument([FieldViolation("page_token", "is not a token this list issued")], reason=Reason.INVALID_PAGE_TOKEN)
    if len(token) > 200:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position = data["p"]
        fingerprint = data["f"]
    except (ValueError, TypeError, KeyError):
        raise bad from None
    if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position < 2**62:
        raise bad
    if fingerprint != _filters_hash(kind, filters):
        raise InvalidArgument(
            [FieldViolation("page_token", "was issued for a request with other filters")], reason=Reason.INVALID_PAGE_TOKEN
        )
    return position
