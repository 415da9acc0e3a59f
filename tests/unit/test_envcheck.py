"""Unknown LEEWAY_* variables: what is known is derived from the code (Settings.from_env, literals in the service,
eventsourcing's prefixed keys) plus the tooling's own variables; a near miss gets "did you mean"."""

from __future__ import annotations

import re
from pathlib import Path

from leeway.envcheck import TOOLING, known_variables, unknown_variables, warn_unknown_variables

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "service" / "leeway" / "settings.py"
#: Tests that set unknown variables on purpose.
MADE_UP = {"test_envcheck.py", "test_startup_checks.py"}


def test_every_setting_declared_in_settings_py_is_known_with_its_file_variants() -> None:
    declared = set(re.findall(r'"(LEEWAY_[A-Z0-9_]*[A-Z0-9])"', SETTINGS.read_text()))
    assert len(declared) > 40
    known = known_variables({})
    assert declared <= known, sorted(declared - known)
    # Secrets may come from files: NAME_FILE is built by from_env, not written anywhere as a literal.
    assert {"LEEWAY_JWT_SECRET_FILE", "LEEWAY_JWT_PUBLIC_KEY_FILE", "LEEWAY_API_KEYS_FILE"} <= known


def test_eventsourcing_keys_prefixed_with_the_application_name_are_known() -> None:
    known = known_variables({})
    for key in ("LEEWAY_PERSISTENCE_MODULE", "LEEWAY_SQLITE_DBNAME", "LEEWAY_POSTGRES_POOL_SIZE", "LEEWAY_POSTGRES_SCHEMA"):
        assert key in known, key


def test_a_setting_added_to_from_env_is_known_without_listing_it(monkeypatch) -> None:
    from leeway import settings as module

    original = module.Settings.from_env.__func__  # type: ignore[attr-defined]

    def from_env(cls, environ=None):  # what a new setting does: read its variable from the environment
        (environ if environ is not None else {}).get("LEEWAY_BRAND_NEW_SETTING", "")
        return original(cls, environ)

    monkeypatch.setattr(module.Settings, "from_env", classmethod(from_env))
    assert "LEEWAY_BRAND_NEW_SETTING" in known_variables({})
    assert unknown_variables({"LEEWAY_BRAND_NEW_SETTING": "1"}) == []


def test_every_leeway_variable_the_tests_scripts_and_clients_read_is_known() -> None:
    used: set[str] = set()
    for folder in ("tests", "scripts", "clients/examples", "clients/typescript/src", "deploy"):
        for path in (ROOT / folder).rglob("*"):
            if path.name in MADE_UP:
                continue
            if path.is_file() and path.suffix in (".py", ".sh", ".ts", ".yaml", ".yml", ".env") and "node_modules" not in path.parts:
                used.update(re.findall(r"\b(LEEWAY_[A-Z0-9_]*[A-Z0-9])\b", path.read_text(errors="replace")))
    known = known_variables({})
    ignored = {name for name in used if name.startswith(("LEEWAY_FAULTS_", "LEEWAY_ERROR"))} | {
        "LEEWAY_PORT",  # tests/deploy and deploy/: the service-link variables that enableServiceLinks: false keeps out
        "LEEWAY_SERVICE_HOST",
    }
    assert sorted(used - known - ignored) == []
    assert {n for n in used if n.startswith("LEEWAY_FAULTS_")} <= TOOLING


def test_unknown_names_with_suggestions_and_never_their_values() -> None:
    environ = {
        "LEEWAY_GRPC_ADRESS": "0.0.0.0:1",
        "LEEWAY_DATABASE_URL": "sqlite:///x.sqlite",
        "LEEWAY_JWT_SECRET_FIEL": "s3cret-value",
        "LEEWAY_SERVICE_HOST": "10.0.0.1",
        "LEEWAY_WHATEVER": "1",
        "LEEWAY_TEST_POSTGRES_URL": "postgresql://x",
        "HOME": "/root",
    }
    found = {u["name"]: u["hint"] for u in unknown_variables(environ)}
    assert found == {
        "LEEWAY_GRPC_ADRESS": "did you mean LEEWAY_GRPC_ADDRESS?",
        "LEEWAY_JWT_SECRET_FIEL": "did you mean LEEWAY_JWT_SECRET_FILE?",
        "LEEWAY_SERVICE_HOST": found["LEEWAY_SERVICE_HOST"],
        "LEEWAY_WHATEVER": "",
    }
    assert "enableServiceLinks" in found["LEEWAY_SERVICE_HOST"]

    lines: list[tuple[str, dict]] = []

    class Log:
        def warning(self, event: str, **fields: object) -> None:
            lines.append((event, fields))

    warn_unknown_variables(environ, Log())
    assert len(lines) == 1 and lines[0][0] == "config.unknown_variables"
    assert "s3cret-value" not in repr(lines) and "0.0.0.0:1" not in repr(lines)
    assert "did you mean LEEWAY_GRPC_ADDRESS?" in str(lines[0][1]["message"])
    lines.clear()
    warn_unknown_variables({"LEEWAY_DATABASE_URL": "sqlite:///x.sqlite", "LEEWAY_AUTH": "off"}, Log())
    assert lines == []
