"""How domain value objects are stored in events and snapshots (JSON). Names are stored: never change them."""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import Transcoding

from ..domain.money import Money
from ..domain.policy import Policy


class PolicyAsDict(Transcoding):
    type = Policy
    name = "leeway_policy"

    def encode(self, obj: Policy) -> dict[str, Any]:
        return obj.to_dict()

    def decode(self, data: dict[str, Any]) -> Policy:
        return Policy.from_dict(data)


class MoneyAsDict(Transcoding):
    type = Money
    name = "leeway_money"

    def encode(self, obj: Money) -> dict[str, str]:
        return obj.to_dict()

    def decode(self, data: dict[str, str]) -> Money:
        return Money.from_dict(data)
