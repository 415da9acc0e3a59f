"""Aggregates of which there is one: the directory of budgets, the hold book, the organisation's limits.

Each is called ``NAME``; its id derives from ``ID_PREFIX`` and the name, and its ``Created`` event carries the
name (``__init__ = created()`` in the class: eventsourcing makes each class its own event class from it). The
state it starts with is set up by ``_start``, which runs again on every replay.
"""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import event

from .ids import leeway_id


class Singleton:
    """Mixed in before ``Aggregate``."""

    NAME: ClassVar[str]
    ID_PREFIX: ClassVar[str]

    @classmethod
    def create_id(cls, name: str) -> UUID:
        return leeway_id(f"{cls.ID_PREFIX}:{name}")

    @classmethod
    def the_id(cls) -> UUID:
        """The id of the one aggregate of this class."""
        return cls.create_id(cls.NAME)

    @classmethod
    def new(cls) -> Any:
        """The one aggregate of this class, created."""
        return cls(name=cls.NAME)  # type: ignore[call-arg]

    def _start(self) -> None:
        """Sets up the state the aggregate starts with."""


def created() -> Any:
    """A singleton's ``__init__``: its ``Created`` event, which carries the name."""

    @event("Created")
    def __init__(self: Any, name: str) -> None:
        self.name = name
        self._start()

    return __init__
