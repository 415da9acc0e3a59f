"""What every ``leeway`` command shares: one way to say a problem on stderr, and the settings of the offline tools."""

from __future__ import annotations

import os
import sys

from .logs import configure_logging
from .settings import Settings, SettingsError


def say(command: str, message: object) -> None:
    """One line on stderr: ``leeway <command>: <message>`` (``leeway: <message>`` without a command)."""
    print(f"leeway{' ' + command if command else ''}: {message}", file=sys.stderr)


def fail(command: str, message: object, status: int = 1) -> int:
    """``say`` the problem; the command's exit status (1: it could not be done, 2: it was asked wrongly)."""
    say(command, message)
    return status


def tool_settings(**overrides: str) -> Settings | None:
    """The settings of an offline tool (export, verify, keys): the environment with ``overrides`` and JSON logs;
    None after saying why not."""
    try:
        settings = Settings.from_env({**os.environ, **overrides})
    except SettingsError as error:
        say("", error)
        return None
    configure_logging(settings.log_level, "json", settings.log_flush_seconds)
    return settings
