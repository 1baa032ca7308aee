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
