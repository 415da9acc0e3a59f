"""No class defines the same method twice (the second silently replaces the first: two branches once each added
a ``Queries._budget_at`` with different arguments, and GetBudget(as_of) answered INTERNAL). Property setters
and ``typing.overload`` stubs are the legitimate repeats."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "service" / "leeway"


def _repeats_allowed(node: ast.AST) -> bool:
    for decorator in getattr(node, "decorator_list", []):
        text = ast.unparse(decorator)
        if text.endswith((".setter", ".deleter")) or text in ("overload", "typing.overload"):
            return True
    return False


def test_no_class_defines_a_method_twice() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            seen: dict[str, int] = {}
            for item in cls.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _repeats_allowed(item):
                    if item.name in seen:
                        found.append(f"{path.relative_to(PACKAGE)}:{item.lineno} {cls.name}.{item.name} "
                                     f"(first at line {seen[item.name]})")
                    seen.setdefault(item.name, item.lineno)
    assert not found, "methods defined twice in one class:\n" + "\n".join(found)
