"""Unknown ``LEEWAY_*`` environment variables: a typo (``LEEWAY_GRPC_ADRESS``) would otherwise be silently ignored
and the default used. `leeway serve` logs one warning at start naming each, with the closest known name.

The known names are not listed here by hand; they are what the code reads:

- every name ``Settings.from_env`` asks its environment for (recorded while it runs, so a setting added there,
  ``NAME_FILE`` variants of secrets included, is known at once);
- every ``LEEWAY_*`` string literal in the service's own modules (a variable read anywhere else);
- the eventsourcing library's own keys prefixed with the application's name (``LEEWAY_PERSISTENCE_MODULE``, ...:
  the library reads them before the unprefixed ones; those ``Settings.eventsourcing_env`` sets, for every engine);
- ``TOOLING``: variables of the tests, benchmarks and example clients, which a developer's shell may well hold.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .settings import Settings, SettingsError

PREFIX = "LEEWAY_"

#: Read by the tests, scripts and example clients, not by the service (tests/unit/test_envcheck.py keeps this
#: list complete: it fails on a LEEWAY_* name used there and known nowhere).
TOOLING = frozenset(
    {
        "LEEWAY_TEST_POSTGRES_URL",
        "LEEWAY_REQUIRE_POSTGRES",
        "LEEWAY_FUZZ_EXAMPLES",
        "LEEWAY_FUZZ_KEEP_GOING",
        "LEEWAY_FAULTS_CLIENTS",
        "LEEWAY_FAULTS_KILLS",
        "LEEWAY_FAULTS_SEGMENT_SECONDS",
        "LEEWAY_FAULTS_OUTAGE_SECONDS",
        "LEEWAY_FAULTS_REPLICA_SECONDS",
        "LEEWAY_TARGET",
        "LEEWAY_API_KEY",
        "LEEWAY_PYTHON",
        "LEEWAY_SMOKE_API_KEY",
        "LEEWAY_SMOKE_HTTP_URL",
        "LEEWAY_REPORT_SCREENSHOT",
    }
)

#: What Docker links and Kubernetes service links put into a container for a service called "leeway".
_SERVICE_LINK = re.compile(r"LEEWAY_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?|NAME|ENV_\w+)")
_LITERAL = re.compile(r"""["'](LEEWAY_[A-Z0-9_]*[A-Z0-9])["']""")
#: Database URLs of each engine, to learn every key eventsourcing_env can set.
_ENGINES = ("sqlite:///var/leeway.sqlite", "postgresql://leeway@localhost:5432/leeway?schema=leeway")


class _Recording(Mapping[str, str]):
    """An environment that remembers every name it was asked for."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return self._environ[name]

    def get(self, name: str, default: Any = None) -> Any:
        self.asked.add(name)
        return self._environ.get(name, default)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.asked.add(name)
        return name in self._environ

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


def _read_by_settings(environ: Mapping[str, str]) -> set[str]:
    recording = _Recording(environ)
    try:
        Settings.from_env(recording)
    except SettingsError:
        pass  # every variable has been read by the time problems are reported
    return {name for name in recording.asked if name.startswith(PREFIX)}


def _eventsourcing_keys() -> set[str]:
    keys: set[str] = set()
    for url in _ENGINES:
        try:
            keys.update(replace(Settings(), database_url=url).eventsourcing_env())
        except SettingsError:
            continue
    return {PREFIX + key for key in keys}


@lru_cache(maxsize=1)
def _literals() -> frozenset[str]:
    names: set[str] = set()
    for path in Path(__file__).resolve().parent.rglob("*.py"):
        try:
            names.update(_LITERAL.findall(path.read_text(encoding="utf-8")))
        except OSError:
            continue
    return frozenset(names)


def known_variables(environ: Mapping[str, str]) -> set[str]:
    """Every LEEWAY_* name the service (or its tooling) reads."""
    return _read_by_settings(environ) | _eventsourcing_keys() | set(_literals()) | set(TOOLING)


def unknown_variables(environ: Mapping[str, str]) -> list[dict[str, str]]:
    """The LEEWAY_* names in ``environ`` that nothing reads: ``{"name", "hint"}`` each, sorted by name (the hint
    is "did you mean X?" for a near miss, a word on container links, or empty). Never the values: they may be
    secrets."""
    known = known_variables(environ)
    found = []
    for name in sorted(n for n in environ if n.startswith(PREFIX) and n not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        if close:
            hint = f"did you mean {close[0]}?"
        elif _SERVICE_LINK.fullmatch(name):
            hint = "set by a container link for a service called leeway (Kubernetes: enableServiceLinks: false)"
        else:
            hint = ""
        found.append({"name": name, "hint": hint})
    return found


def warn_unknown_variables(environ: Mapping[str, str], log: Any) -> list[dict[str, str]]:
    """Logs one warning (``config.unknown_variables``) if ``environ`` holds LEEWAY_* names nothing reads."""
    unknown = unknown_variables(environ)
    if unknown:
        described = "; ".join(f"{u['name']} ({u['hint']})" if u["hint"] else u["name"] for u in unknown)
        log.warning(
            "config.unknown_variables",
            variables=unknown,
            message=f"ignored, no such setting: {described} (README, Configuration)",
        )
    return unknown
