"""proxy/core stays pure: no module there imports anything that does I/O or keeps time.

Imports under `if TYPE_CHECKING:` are ignored (type-only). Inside the package, core modules may
import only proxy.core and proxy.errors at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "proxy" / "core"
FORBIDDEN = {
    "aiohttp",
    "asyncio",
    "concurrent",
    "http",  # http.client, http.server, http.cookies: none belongs in the pure core
    "httptools",
    "multiprocessing",
    "os",
    "prometheus_client",
    "redis",
    "requests",
    "select",
    "selectors",
    "shutil",
    "signal",
    "socket",
    "socketserver",
    "ssl",
    "subprocess",
    "threading",
    "time",
    "urllib.request",
    "uvloop",
    "yaml",
}
ALLOWED_PROXY = ("proxy.core", "proxy.errors")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST) -> list[str]:
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append("proxy.core" if node.level == 1 else "proxy")
        for inner in ast.iter_child_nodes(node):
            visit(inner)

    visit(tree)
    return found


def offending(name: str) -> bool:
    parts = name.split(".")
    prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
    if prefixes & FORBIDDEN:
        return True
    return name.startswith("proxy") and not name.startswith(ALLOWED_PROXY)


MODULES = sorted(CORE.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES, ids=[str(m.relative_to(CORE)) for m in MODULES])
def test_core_module_imports_nothing_that_does_io(module: Path) -> None:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    bad = sorted({name for name in runtime_imports(tree) if offending(name)})
    assert not bad, f"{module.name} imports {bad}"


def test_the_walker_sees_imports() -> None:
    source = (
        "import asyncio\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    import socket\nfrom proxy.config import Config\n"
        "def f():\n    import time\n"
    )
    names = [n for n in runtime_imports(ast.parse(source)) if offending(n)]
    assert names == ["asyncio", "proxy.config", "proxy.config.Config", "time"]
