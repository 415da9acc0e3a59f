"""The import graph of service/leeway, read with ``ast`` (nothing is imported): no cycles, a pure domain, and
layers that only import downwards.

Every import statement counts: at module level, inside functions (lazy imports) and under
``if TYPE_CHECKING:`` -- a cycle that only type checkers see is still a cycle in the design.

Layers, low -> high (a module may import its own layer and any layer below it, never one above):

0. ``domain``       -- leeway.domain.*: the model. Imports nothing else from leeway, nor gRPC, protobuf, the
                       generated leeway.v1 messages, the event store's persistence/postgres/sqlite modules or
                       psycopg.
1. ``adapters``     -- leeway.adapters.* (recorders, the hash chain, storage, transcodings, bulk reads, the store
                       gate) and the process-level helpers they need: leeway.runtime, leeway.logs, leeway.tracing.
2. ``projections``  -- leeway.projections.*: read models fed by the domain's events and stored through the
                       adapters. They sit BELOW the application because the application's queries
                       (application.insights) read them; a projection calling into the application would be
                       an upward edge, reported here.
3. ``application``  -- leeway.application.*: commands, the unit of work, queries, the audit log.
4. ``reporting``    -- leeway.reporting.*: the managers' report (``leeway report``), read through the application.
5. ``grpc_api``     -- leeway.grpc_api.* and the transport-level modules it uses: leeway.auth (principals,
                       API keys, rate limits) and leeway.observability (interceptors, metrics).
6. ``http_api``     -- leeway.http_api.*: the HTTP/JSON (Connect) front; it serves the grpc_api servicers through
                       grpc_api's interceptor and error table, so it sits above them (the generated Connect
                       stubs it serves are leeway.v1.*_connect, beside the gRPC stubs in clients/python).
7. ``entry``        -- leeway.server, leeway.cli (+ leeway.cli_audit, leeway.cli_keys, leeway.cli_report,
                       leeway.cli_common), leeway.settings, leeway.devcerts, leeway.envcheck, leeway.listening,
                       leeway.healthcheck: wiring and start-up.

Every leeway module must belong to a layer; a new top-level module fails the test until it is placed here.
A package ``__init__`` importing its own submodules is fine (that is what packages do), and so is a module
importing its own parent package implicitly (Python does that for every submodule; it is not an edge here).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "service"
PACKAGE = ROOT / "leeway"

#: (layer name, module-name prefixes), low -> high. A prefix matches the module and everything below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("domain", ("leeway.domain",)),
    ("adapters", ("leeway.adapters", "leeway.runtime", "leeway.logs", "leeway.tracing")),
    ("projections", ("leeway.projections",)),
    ("application", ("leeway.application",)),
    ("reporting", ("leeway.reporting",)),
    ("grpc_api", ("leeway.grpc_api", "leeway.auth", "leeway.observability")),
    ("http_api", ("leeway.http_api",)),
    ("entry", ("leeway.server", "leeway.cli", "leeway.cli_audit", "leeway.cli_keys", "leeway.cli_report",
               "leeway.cli_common", "leeway.settings", "leeway.devcerts", "leeway.envcheck", "leeway.listening",
               "leeway.healthcheck", "leeway")),
]

#: What leeway.domain.* may not import (a prefix matches the module and everything below it).
DOMAIN_FORBIDDEN = (
    "grpc",
    "grpc_status",
    "grpc_health",
    "grpc_reflection",
    "google.protobuf",
    "google.rpc",
    "leeway.v1",
    "eventsourcing.postgres",
    "eventsourcing.sqlite",
    "eventsourcing.persistence",
    "psycopg",
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (absolute)
    line: int
    how: str  # "top", "lazy" or "TYPE_CHECKING"

    def where(self) -> str:
        return f"{self.source} (line {self.line}, {self.how}) imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def discover() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


MODULES = discover()
#: Packages, including namespace packages (folders without __init__.py) such as leeway.grpc_api.
PACKAGES = {name for name, path in MODULES.items() if is_package(path)} | {
    module_name(d / "__init__.py") for d in PACKAGE.rglob("*") if d.is_dir() and "__pycache__" not in d.parts
} | {"leeway"}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_base(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if is_package(path) else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str, path: Path) -> list[Import]:
    """Every import in ``path``, resolved to absolute module names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, how: str) -> None:
        for child in ast.iter_child_nodes(node):
            child_how = how
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                child_how = "lazy"
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, "TYPE_CHECKING")
                for stmt in child.orelse:
                    visit_stmt(stmt, how)
                continue
            visit_stmt(child, child_how)

    def visit_stmt(node: ast.AST, how: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, node.lineno, how))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_base(module, path, node)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                # `from pkg import sub` imports the submodule; `from pkg import name` the package itself.
                target = candidate if candidate in MODULES else base
                found.append(Import(module, target, node.lineno, how))
        visit(node, "lazy" if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else how)

    visit(tree, "top")
    return found


def internal(target: str) -> str | None:
    """The leeway module ``target`` names (or lies in), or None for anything outside service/leeway."""
    name = target
    while name:
        if name in MODULES or name in PACKAGES:
            return name
        name = name.rpartition(".")[0]
    return None


def is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_own_package_edge(source: str, target: str) -> bool:
    """An __init__ importing its own submodule, or a submodule (implicitly) importing its own package."""
    source_is_pkg = source in PACKAGES
    if source_is_pkg and is_under(target, source) and target != source:
        return True
    return is_under(source, target) and target in PACKAGES and target != source


ALL_IMPORTS: list[Import] = [imp for name, path in MODULES.items() for imp in imports_of(name, path)]


def internal_edges() -> dict[str, dict[str, Import]]:
    graph: dict[str, dict[str, Import]] = {name: {} for name in MODULES}
    for imp in ALL_IMPORTS:
        target = internal(imp.target)
        if target is None or target == imp.source or is_own_package_edge(imp.source, target):
            continue
        graph[imp.source].setdefault(target, imp)
        graph.setdefault(target, {})
    return graph


def find_cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), as a path a->b->...->a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:
        members = set(component)
        start = component[0]
        # breadth-first search for the shortest way back to start inside the component
        paths = {start: [start]}
        queue = [start]
        cycle: list[str] | None = None
        while queue and cycle is None:
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    cycle = paths[v] + [start]
                    break
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
        assert cycle is not None
        cycles.append(cycle)
    return cycles


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index): the longest prefix wins
    for number, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix == "leeway" and module != "leeway":
                continue
            if is_under(module, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), number)
    return None if best is None else best[1]


# ============================================================================ the parser itself


def test_the_parser_sees_every_kind_of_import() -> None:
    """Sanity check of imports_of on the real tree: lazy and TYPE_CHECKING imports are found."""
    assert "leeway.domain" in MODULES and "leeway.domain.money" in MODULES, sorted(MODULES)
    hows = {imp.how for imp in ALL_IMPORTS}
    assert "top" in hows and "lazy" in hows, hows
    assert len(MODULES) > 20


def test_relative_imports_resolve_to_module_names() -> None:
    money = imports_of("leeway.domain.policy", MODULES["leeway.domain.policy"])
    assert any(imp.target == "leeway.domain.money" for imp in money), money


# ============================================================================ the rules


def test_no_import_cycles_among_leeway_modules() -> None:
    graph = internal_edges()
    cycles = find_cycles(graph)
    lines = []
    for cycle in cycles:
        lines.append(" -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            lines.append(f"    {graph[a][b].where()}")
    assert not cycles, "import cycles among leeway modules:\n" + "\n".join(lines)


def test_domain_imports_nothing_from_outer_layers_or_infrastructure() -> None:
    problems = []
    for imp in ALL_IMPORTS:
        if not is_under(imp.source, "leeway.domain"):
            continue
        if any(is_under(imp.target, bad) for bad in DOMAIN_FORBIDDEN):
            problems.append(imp.where())
        elif is_under(imp.target, "leeway") and not is_under(imp.target, "leeway.domain"):
            problems.append(imp.where())
    assert not problems, "leeway.domain must stay pure:\n" + "\n".join(sorted(problems))


def test_every_module_has_a_layer() -> None:
    missing = sorted(name for name in MODULES if layer_of(name) is None)
    assert not missing, f"place these modules in LAYERS: {missing}"


def test_layers_only_import_downwards() -> None:
    problems = []
    for imp in ALL_IMPORTS:
        target = internal(imp.target)
        if target is None or is_own_package_edge(imp.source, target):
            continue
        low, high = layer_of(imp.source), layer_of(target)
        if low is None or high is None:
            continue  # reported by test_every_module_has_a_layer
        if high > low:
            problems.append(f"{imp.where()}  [{LAYERS[low][0]} -> {LAYERS[high][0]}]")
    assert not problems, "upward imports (layers low->high: " + " < ".join(n for n, _ in LAYERS) + "):\n" + "\n".join(
        sorted(problems)
    )


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("leeway.domain.money", "domain"),
        ("leeway.adapters", "adapters"),
        ("leeway.runtime", "adapters"),
        ("leeway.projections.views", "projections"),
        ("leeway.application", "application"),
        ("leeway.grpc_api.errors", "grpc_api"),
        ("leeway.server", "entry"),
        ("leeway.cli", "entry"),
        ("leeway.somewhere_new", None),
    ],
)
def test_layer_lookup(module: str, layer: str | None) -> None:
    number = layer_of(module)
    assert (None if number is None else LAYERS[number][0]) == layer
