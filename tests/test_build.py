"""proxy/build.py and setup.py's list of compiled modules."""

from __future__ import annotations

import ast
import asyncio
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from proxy.build import compiled, describe, stale_modules
from tests.support.client import exchange, get, scrape, value
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, service
from tests.support.upstream import RecordingUpstream

ROOT = Path(__file__).resolve().parents[1]


def _hot_modules() -> set[str]:
    """setup.py's HOT_MODULES as module names (read, not run: running it would build)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "HOT_MODULES":
            paths = ast.literal_eval(node.value)
            return {p.removesuffix(".py").replace("/", ".") for p in paths}
    raise AssertionError("setup.py has no HOT_MODULES")


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _classes(path: Path) -> list[ast.ClassDef]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]


def test_every_compiled_module_exists_and_the_probe_is_one_of_them() -> None:
    hot = _hot_modules()
    for name in hot:
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), name
    assert "proxy.http.relay" in hot


def test_no_interpreted_class_inherits_from_a_compiled_one() -> None:
    """A compiled build refuses it at import ("interpreted classes cannot inherit from
    compiled"): every subclass of a class of a compiled module must be compiled too."""
    hot = _hot_modules()
    compiled_classes = {
        (name, cls.name)
        for name in hot
        for cls in _classes(ROOT / (name.replace(".", "/") + ".py"))
    }
    offenders = []
    for path in [*ROOT.glob("proxy/**/*.py"), *ROOT.glob("tests/**/*.py")]:
        module = _module_name(path)
        if module in hot:
            continue
        tree = ast.parse(path.read_text())
        imported = {
            alias.asname or alias.name: (node.module, alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
        for cls in _classes(path):
            for base in cls.bases:
                origin = imported.get(ast.unparse(base))
                if origin in compiled_classes:
                    offenders.append(f"{module}.{cls.name}({ast.unparse(base)})")
    assert offenders == []


def test_a_source_edited_after_its_build_is_stale(tmp_path: Path) -> None:
    package = tmp_path / "pkg" / "http"
    package.mkdir(parents=True)
    suffix = EXTENSION_SUFFIXES[0]
    for name, source_age, build_age in (("edited", 10, 100), ("fresh", 100, 10)):
        source, extension = package / f"{name}.py", package / f"{name}{suffix}"
        source.write_text("")
        extension.write_bytes(b"")
        os.utime(source, (1_000_000 - source_age,) * 2)
        os.utime(extension, (1_000_000 - build_age,) * 2)
    (package / "plain.py").write_text("")  # no compiled module: never stale
    assert stale_modules(tmp_path / "pkg") == [package / "edited.py"]


def test_an_installed_package_is_never_stale(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "pkg"
    package.mkdir(parents=True)
    source, extension = package / "m.py", package / f"m{EXTENSION_SUFFIXES[0]}"
    extension.write_bytes(b"")
    source.write_text("")
    os.utime(extension, (1_000_000,) * 2)
    assert stale_modules(package) == []


def test_version_names_the_build_that_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip().endswith(f"({describe()})")
    assert ("compiled" in out) == compiled()


async def test_the_interpreted_build_serves_from_a_copy_without_compiled_modules(
    tmp_path: Path,
) -> None:
    """The plain `pip install .` build: the package's sources only, whatever this checkout
    was built as. Requests reach both arms, and are counted."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "proxy", source / "proxy", ignore=shutil.ignore_patterns("*.so"))
    env = {"PYTHONPATH": str(source)}
    version = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy", "--version"),
        cwd=source,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await version.communicate()
    assert "(interpreted data plane)" in out.decode()
    stable, canary = (
        await RecordingUpstream("stable").start(),
        await RecordingUpstream("canary").start(),
    )
    steps: list[dict[str, Any]] = [{"percent": 50, "observe": "1h"}, {"percent": 100}]
    config = config_dict(service([stable.url], [canary.url], steps=steps))
    proxy = await ProxyProcess(config, tmp_path, env, cwd=source).start()
    assert proxy.ready.rstrip().endswith("(interpreted data plane)")
    try:
        port = int(proxy.data_url.rsplit(":", 1)[1])
        for n in range(40):
            reply = await exchange(port, get("/", {"X-Tenant-ID": f"tenant-{n}"}))
            assert reply.status == 200
        samples = await scrape(proxy)
    finally:
        await proxy.kill()
        await stable.close()
        await canary.close()
    assert len(stable.requests) + len(canary.requests) == 40
    assert stable.requests
    assert canary.requests
    counted = {
        variant: value(
            samples,
            "rollout_requests_total",
            service="svc",
            variant=variant,
            tier="free",
            status_class="2xx",
        )
        for variant in ("stable", "canary")
    }
    assert counted == {"stable": len(stable.requests), "canary": len(canary.requests)}


async def test_the_compiled_build_says_so_when_it_starts(tmp_path: Path) -> None:
    stable = await RecordingUpstream("stable").start()
    try:
        proxy = await ProxyProcess(
            config_dict(service([stable.url], [stable.url])), tmp_path, {}
        ).start()
        await proxy.kill()
    finally:
        await stable.close()
    assert proxy.ready.rstrip().endswith(f"({describe()})")


# The packages the compiled modules may import: the standard library and the runtime
# dependencies of pyproject.toml (by their import names). mypyc type-checks every module they
# import, so anything else would have to be in the build environment too.
_RUNTIME_IMPORTS = {"aiohttp", "uvloop", "httptools", "orjson", "xxhash", "prometheus_client"}
_RUNTIME_IMPORTS |= {"yaml", "jwt", "rich", "cryptography", "h2", "hpack"}


def _imports_of(path: Path) -> set[str]:
    """Every module `path` imports, wherever the import stands (in a function, under
    TYPE_CHECKING): mypy follows them all."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _module_file(name: str) -> Path | None:
    base = ROOT / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_the_compiled_modules_reach_only_the_runtime_dependencies() -> None:
    """What mypyc type-checks while compiling: the compiled modules, every project module they
    import (a package's __init__ too), and third-party packages. The build environment holds
    the runtime dependencies only (setup.py), so an import of an optional or test package, even
    a type-only one, breaks the compiled build from nothing (the Redis store did)."""
    todo = sorted(_hot_modules())
    seen: set[str] = set()
    outside: dict[str, str] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]  # the packages above
        path = _module_file(module)
        if path is None:
            continue
        for name in _imports_of(path):
            top = name.split(".")[0]
            if top == "proxy":
                todo.append(name)
            elif top not in sys.stdlib_module_names and top not in _RUNTIME_IMPORTS:
                outside[name] = module
    assert outside == {}
    assert "proxy.store" in seen  # the package of the records the rollout state uses


_PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation")


def _setup(tmp_path: Path, env: dict[str, str]) -> tuple[int, str, list[Path]]:
    """`pip wheel` of this checkout's sources (a copy: no compiled modules of the checkout)
    with `env`; exit status, what the build said, the wheels made."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "proxy", source / "proxy", ignore=shutil.ignore_patterns("*.so"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [*_PIP_WHEEL, "--wheel-dir", str(wheels), str(source)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    return build.returncode, build.stdout + build.stderr, sorted(wheels.glob("*.whl"))


def _notes(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if "rollout-proxy: not compiled" in line]


def test_without_a_compiler_the_install_is_interpreted_and_says_so_once(tmp_path: Path) -> None:
    status, output, wheels = _setup(tmp_path, {"CC": "no-such-cc"})
    assert status == 0, output
    (wheel,) = wheels
    assert wheel.name.endswith("-py3-none-any.whl")  # no compiled module in it
    assert _notes(output) == [
        "rollout-proxy: not compiled: no C compiler (no-such-cc) on PATH; installing the "
        "interpreted data plane (about 3x the CPU per request)"
    ]


def test_compile_required_without_a_compiler_fails_saying_why(tmp_path: Path) -> None:
    status, output, wheels = _setup(tmp_path, {"CC": "no-such-cc", "ROLLOUT_PROXY_COMPILE": "1"})
    assert status != 0
    assert wheels == []
    assert "ROLLOUT_PROXY_COMPILE=1, but the data plane cannot be compiled: no C compiler" in (
        output
    )


def test_compile_off_builds_the_interpreted_wheel_without_a_word(tmp_path: Path) -> None:
    status, output, wheels = _setup(tmp_path, {"ROLLOUT_PROXY_COMPILE": "0"})
    assert status == 0, output
    assert [w.name.endswith("-py3-none-any.whl") for w in wheels] == [True]
    assert _notes(output) == []


def test_an_unknown_compile_setting_is_refused(tmp_path: Path) -> None:
    status, output, _ = _setup(tmp_path, {"ROLLOUT_PROXY_COMPILE": "yes"})
    assert status != 0
    assert "ROLLOUT_PROXY_COMPILE must be 1 (compile), 0 (do not) or unset (auto)" in output
