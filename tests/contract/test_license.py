"""The license: Apache-2.0's full text at the root, the same in both client packages, declared by every package."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_root_license_is_the_apache_2_text_and_the_packages_carry_it() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "9. Accepting Warranty or Additional Liability." in text
    for copy in ("clients/python/LICENSE", "clients/typescript/LICENSE"):
        assert (ROOT / copy).read_text() == text, f"{copy} differs from LICENSE"
    for project in ("pyproject.toml", "clients/python/pyproject.toml"):
        assert tomllib.loads((ROOT / project).read_text())["project"]["license"] == "Apache-2.0", project
    package = json.loads((ROOT / "clients/typescript/package.json").read_text())
    assert package["license"] == "Apache-2.0" and "LICENSE" in package["files"] and "README.md" in package["files"]
    assert (ROOT / "clients/python/README.md").is_file() and (ROOT / "clients/typescript/README.md").is_file()
