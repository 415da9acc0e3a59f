"""Stored topics of aggregates that moved to another module.

An event's topic is ``module:qualname``, stored with every event and snapshot. An aggregate moved out of the
module its events were first stored under keeps writing (and reading) the old topics: ``keep_legacy_topics``
sets ``TOPIC`` on the aggregate class and on every event class nested in it, and registers the old topics.
"""

from __future__ import annotations

from eventsourcing.domain import Aggregate
from eventsourcing.utils import register_topic


def keep_legacy_topics(old_module: str, *aggregates: type[Aggregate]) -> None:
    """Pins the topics of ``aggregates`` and their nested event classes to ``old_module``. Call it right after
    the classes are defined (before any topic of theirs is read)."""
    for aggregate in aggregates:
        prefix = aggregate.__qualname__ + "."
        nested = [
            value
            for value in vars(aggregate).values()
            if isinstance(value, type) and value.__qualname__.startswith(prefix)
        ]
        # Every class gets its own TOPIC: one without would inherit its parent's through getattr.
        for klass in (aggregate, *nested):
            topic = f"{old_module}:{klass.__qualname__}"
            klass.TOPIC = topic  # type: ignore[attr-defined]
            register_topic(topic, klass)
