"""How domain value objects are stored in events and snapshots (JSON). Names are stored: never change them."""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import Transcoding

from ..domain.money import Money
from ..domain.policy import Policy


class _AsDict(Transcoding):
    """A value object stored as its ``to_dict()`` and read back with ``type.from_dict``."""

    def encode(self, obj: Any) -> dict[str, Any]:
        return obj.to_dict()

    def decode(self, data: dict[str, Any]) -> Any:
        return self.type.from_dict(data)


class PolicyAsDict(_AsDict):
    type = Policy
    name = "leeway_policy"


class MoneyAsDict(_AsDict):
    type = Money
    name = "leeway_money"
