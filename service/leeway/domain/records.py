"""Building one record from another whose fields have the same names."""

from __future__ import annotations

from typing import Any


def carried(source: Any, *names: str) -> dict[str, Any]:
    """The attributes ``names`` of ``source``, as keyword arguments for a record with fields of the same names
    (a view from a state, a command from a request, a message from a view)."""
    return {name: getattr(source, name) for name in names}
