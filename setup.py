"""Build hook: `pip install .` compiles the data plane's hot modules with mypyc (the compiler
that ships with mypy) whenever it can. They are typed under `mypy --strict` already, so they
compile as they are and the request path runs as C, without a second implementation to keep
in step. Both builds pass the same test suite; the compiled one runs about a third of the
interpreted one's instructions per request.

`ROLLOUT_PROXY_COMPILE` chooses:

- unset (or `auto`): compile when a C compiler and Python's headers are present; otherwise,
  or when compiling fails, install the interpreted build and say so in one line (the install
  never fails for want of a compiler). `rollout-proxy --version` names the build installed.
- `1`: compile, and fail the build when that is not possible (CI and the container image).
- `0`: the interpreted build, without trying.

mypyc type-checks every module the compiled ones import, so the build environment holds mypy,
the project's dependencies and the stubs of the one that ships none (`setup_requires`, which
setuptools' PEP 517 backend reports to pip as build requirements). The compiled modules never
import the optional Redis store, so the extra is not needed to build (tests/test_build.py walks
their imports).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import sysconfig
import tomllib
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

_MODES = {"": "auto", "auto": "auto", "1": "required", "0": "off"}
MODE = _MODES.get(os.environ.get("ROLLOUT_PROXY_COMPILE", "").strip().lower(), "invalid")
if MODE == "invalid":
    raise SystemExit("ROLLOUT_PROXY_COMPILE must be 1 (compile), 0 (do not) or unset (auto)")

# Everything a proxied request runs through, and every subclass of what it runs through
# (an interpreted class cannot inherit from a compiled one).
HOT_MODULES = [
    "proxy/http/connection.py",
    "proxy/http/downstream.py",
    "proxy/http/exchange.py",
    "proxy/http/fields.py",
    "proxy/http/framing.py",
    "proxy/http/h2connection.py",
    "proxy/http/h2exchange.py",
    "proxy/http/h2fields.py",
    "proxy/http/h2stream.py",
    "proxy/http/head.py",
    "proxy/http/pool.py",
    "proxy/http/relay.py",
    "proxy/http/request.py",
    "proxy/http/requestid.py",
    "proxy/http/response.py",
    "proxy/http/sides.py",
    "proxy/http/server.py",
    "proxy/http/upstream.py",
    "proxy/http/upstream_h2.py",
    "proxy/logexchange.py",
    "proxy/dataplane.py",
    "proxy/feed.py",
    "proxy/rollout.py",
    "proxy/fleet/batch.py",
    "proxy/metrics.py",
    "proxy/config/model.py",
    "proxy/core/analysis.py",
    "proxy/core/bucketing.py",
    "proxy/core/checks.py",
    "proxy/core/guardrail.py",
    "proxy/core/identity.py",
    "proxy/core/latency.py",
    "proxy/core/machine.py",
    "proxy/core/outcome.py",
    "proxy/core/retries.py",
    "proxy/core/routing.py",
    "proxy/core/traffic.py",
]

_FALLBACK = "installing the interpreted data plane (about 3x the CPU per request)"


def note(why: str) -> None:
    """The one line an automatic build says when it does not compile."""
    print(f"rollout-proxy: not compiled: {why}; {_FALLBACK}", file=sys.stderr, flush=True)


def missing_toolchain() -> str | None:
    """What the compiled build lacks here (a C compiler, Python's headers), or None."""
    # The compiler setuptools will call: $CC, else the one Python was built with.
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    compiler = shlex.split(command)[:1] or ["cc"]
    if shutil.which(compiler[0]) is None:
        return f"no C compiler ({compiler[0]}) on PATH"
    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").is_file():
        return f"Python's headers are missing ({include}/Python.h; Debian: python3-dev)"
    return None


def cannot(why: str) -> list[object]:
    if MODE == "required":
        raise SystemExit(f"ROLLOUT_PROXY_COMPILE=1, but the data plane cannot be compiled: {why}")
    note(why)
    return []


def metadata_only() -> bool:
    """pip's first calls only ask for the build requirements and the metadata (mypy may not
    be installed yet, and nothing is built): mypyc need not run for them."""
    return {"egg_info", "dist_info"} & set(sys.argv[1:]) != set()


def compiled_modules() -> list[object]:
    if MODE == "off" or metadata_only():
        return []
    missing = missing_toolchain()
    if missing is not None:
        return cannot(missing)
    try:
        from mypyc.build import mypycify
    except ImportError:
        return cannot("mypy (which provides mypyc) is not installed in the build environment")
    try:
        return list(mypycify(HOT_MODULES, opt_level="3"))
    except (Exception, SystemExit) as failed:  # mypyc exits on a type error
        return cannot(f"mypyc failed ({failed})")


class BuildExt(build_ext):
    """Compiles the extensions; in an automatic build, a compiler error means the interpreted
    build (the `.py` sources are in the package either way)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as failed:
            if MODE == "required":
                raise
            note(f"the C compiler failed ({failed})")
            for extension in self.extensions:
                Path(self.get_ext_fullpath(extension.name)).unlink(missing_ok=True)
            self.extensions = []


# mypyc type-checks what it compiles, so the build needs the typed dependencies too: the
# project's own (pyproject.toml) and the stubs of the one that ships none.
PROJECT = tomllib.loads(Path(__file__).with_name("pyproject.toml").read_text())["project"]
BUILD_REQUIRES = ["mypy>=1.10", "types-PyYAML", *PROJECT["dependencies"]]
EXTENSIONS = compiled_modules()

setup(
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": BuildExt},
    setup_requires=BUILD_REQUIRES if MODE != "off" and missing_toolchain() is None else [],
)
