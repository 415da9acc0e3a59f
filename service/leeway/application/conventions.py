"""How this deployment reads what callers send: the settings that commands and queries apply before the domain
sees a request (``occur_time`` has a horizon). Commands get them when they are admitted
(``Command.admitted``), queries from the application."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ..domain.rules import MAX_OCCUR_AGE


@dataclass(frozen=True)
class Conventions:
    #: How far back ``occur_time`` may be (``LEEWAY_OCCUR_TIME_MAX_AGE_DAYS``).
    occur_time_max_age: timedelta = MAX_OCCUR_AGE
