"""No import cycles in proxy/, and the layers the engine is built in.

Every import of a proxy module counts: at module level, under `if TYPE_CHECKING:` and inside
functions. `from package import name` imports the submodule `package.name` when there is one
(and the package otherwise). The graph's strongly connected components (Tarjan) of more than
one module are the cycles; a module importing itself is one too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

Graph = Mapping[str, frozenset[str]]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of `package` under `root`."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(node: ast.AST, name: str, is_package: bool, known: Mapping[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join([*base, node.module] if node.module else base)
    else:
        module = node.module or ""
    subs = {f"{module}.{alias.name}" for alias in node.names}
    modules = {sub for sub in subs if sub in known}
    if len(modules) < len(subs):  # a name that is no submodule: from the module itself
        modules.add(module)
    return modules


def _nearest(name: str, known: Mapping[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path, package: str) -> dict[str, frozenset[str]]:
    """Module -> the modules of `package` it imports, anywhere in its text."""
    known = module_names(root, package)
    graph: dict[str, frozenset[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            for imported in _imported(node, name, path.name == "__init__.py", known):
                target = _nearest(imported, known)
                if target is not None:
                    targets.add(target)
        graph[name] = frozenset(targets)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The import cycles of `graph`: its strongly connected components (Tarjan, iterative)
    of more than one module, and modules that import themselves; each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = []
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        work.append((start, iter(sorted(graph[start]))))
        while work:
            node, edges = work[-1]
            advanced = False
            for target in edges:
                if target not in graph:
                    continue
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    advanced = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return sorted(found)


def reachable(graph: Graph, start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), frozenset()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


GRAPH = import_graph(ROOT, "proxy")


def _described(found: list[list[str]]) -> str:
    lines = []
    for component in found:
        members = set(component)
        edges = [f"{m} -> {t}" for m in component for t in sorted(GRAPH.get(m, ())) if t in members]
        lines.append(f"{len(component)} modules: " + ", ".join(edges))
    return "\n".join(lines)


def test_proxy_has_no_import_cycle() -> None:
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + _described(found)


def test_the_walker_sees_every_module_of_the_engine() -> None:
    for name in ("proxy.dataplane", "proxy.http.exchange", "proxy.http.sides", "proxy.config"):
        assert name in GRAPH
    # Imports under TYPE_CHECKING count: the exchange names its route's type only there.
    assert "proxy.dataplane" in GRAPH["proxy.http.exchange"]
    # A function-level import counts too (the CLI reads config keys inside a command).
    assert "proxy.config.reader" in GRAPH["proxy.cli"]


# --- the layers (see proxy/http/__init__.py) ------------------------------------------------

CLIENT_HTTP1 = {"proxy.http.connection", "proxy.http.downstream"}
UPSTREAM_HTTP1 = {"proxy.http.upstream"}
SERVER = {"proxy.http.server"}


def test_core_imports_only_core_and_errors_even_for_types() -> None:
    bad = {
        (name, target)
        for name, targets in GRAPH.items()
        if name.startswith("proxy.core")
        for target in targets
        if not target.startswith("proxy.core") and target != "proxy.errors"
    }
    assert not bad, sorted(bad)


def test_config_submodules_never_import_the_config_package() -> None:
    bad = sorted(
        name
        for name, targets in GRAPH.items()
        if name.startswith("proxy.config.") and "proxy.config" in targets
    )
    assert not bad


def test_sides_imports_no_other_part_of_the_engine() -> None:
    engine = CLIENT_HTTP1 | UPSTREAM_HTTP1 | SERVER
    engine |= {"proxy.http.exchange", "proxy.http.relay", "proxy.http.pool", "proxy.dataplane"}
    assert not reachable(GRAPH, "proxy.http.sides") & engine


@pytest.mark.parametrize("module", ["proxy.http.exchange", "proxy.http.relay"])
def test_the_exchange_knows_no_client_connection_and_no_server(module: str) -> None:
    """Directly or not: the exchange reaches its client through ClientSide only."""
    assert not reachable(GRAPH, module) & (CLIENT_HTTP1 | SERVER)


@pytest.mark.parametrize("module", ["proxy.http.exchange", "proxy.http.relay"])
def test_the_exchange_imports_no_connection_module_itself(module: str) -> None:
    assert not GRAPH[module] & (CLIENT_HTTP1 | UPSTREAM_HTTP1 | SERVER)


def test_the_upstream_connection_knows_neither_its_pool_nor_its_exchange() -> None:
    above = {"proxy.http.pool", "proxy.http.exchange", "proxy.http.relay", "proxy.dataplane"}
    assert not reachable(GRAPH, "proxy.http.upstream") & (above | CLIENT_HTTP1 | SERVER)


def test_the_client_connection_does_not_know_its_server() -> None:
    for module in CLIENT_HTTP1:
        assert not reachable(GRAPH, module) & SERVER, module


def test_routing_knows_no_connection_of_either_side() -> None:
    assert not reachable(GRAPH, "proxy.dataplane") & (CLIENT_HTTP1 | SERVER)
    assert "proxy.http.exchange" not in reachable(GRAPH, "proxy.dataplane")


LEAVES = ["fields", "head", "request", "requestid", "framing", "response", "capture", "sides"]


@pytest.mark.parametrize("leaf", LEAVES)
def test_the_lowest_layer_imports_nothing_above_it(leaf: str) -> None:
    above = CLIENT_HTTP1 | UPSTREAM_HTTP1 | SERVER
    above |= {"proxy.http.exchange", "proxy.http.relay", "proxy.http.pool", "proxy.dataplane"}
    assert not reachable(GRAPH, f"proxy.http.{leaf}") & above


# --- the test of the test ---------------------------------------------------------------------


def _package(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_cycle_through_type_checking_and_a_function_is_found(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pkg.b import B\n",
            "pkg/b.py": "def f() -> None:\n    from pkg import c\n",
            "pkg/c.py": "from . import a\n",
            "pkg/d.py": "import pkg.a\n",  # imports into the cycle, is not part of it
            "pkg/sub/__init__.py": "from pkg.sub.e import E as E\n",
            "pkg/sub/e.py": "from pkg.sub import f\n",
            "pkg/sub/f.py": "from pkg.sub import E\n",  # the package, which imports e
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.b"] == {"pkg.c"}
    assert cycles(graph) == [
        ["pkg.a", "pkg.b", "pkg.c"],
        ["pkg.sub", "pkg.sub.e", "pkg.sub.f"],
    ]


def test_an_acyclic_package_has_no_cycle(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import A as A\n",
            "pkg/a.py": "from pkg import b\nA = 1\n",
            "pkg/b.py": "import os\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": frozenset()}
    assert cycles(graph) == []


def test_a_module_importing_itself_is_a_cycle() -> None:
    assert cycles({"m": frozenset({"m"}), "n": frozenset()}) == [["m"]]
