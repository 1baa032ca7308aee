"""Which build of the data plane runs: compiled with mypyc (what `pip install .` builds where a
C compiler is, see setup.py) or interpreted; and, in a source checkout, compiled modules older
than their source, which Python would import in place of the edited code."""

from __future__ import annotations

import importlib.util
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# A module every compiled build compiles (setup.py's HOT_MODULES).
PROBE = "proxy.http.relay"
INTERPRETED_NOTE = (
    "the interpreted data plane runs about 3x the compiled one's instructions per request; "
    "`pip install .` compiles it where a C compiler and Python's headers are present "
    "(README: Compiled build)"
)


def compiled() -> bool:
    spec = importlib.util.find_spec(PROBE)
    origin = spec.origin if spec is not None else None
    return origin is not None and origin.endswith(tuple(EXTENSION_SUFFIXES))


def describe() -> str:
    return "compiled data plane (mypyc)" if compiled() else "interpreted data plane"


def stale_modules(package_dir: Path) -> list[Path]:
    """Sources edited after their compiled module was built. Installed packages are skipped:
    an installer writes both files, in any order."""
    if {"site-packages", "dist-packages"} & set(package_dir.resolve().parts):
        return []
    stale = []
    for suffix in EXTENSION_SUFFIXES:
        for extension in package_dir.rglob(f"*{suffix}"):
            source = extension.with_name(extension.name[: -len(suffix)] + ".py")
            if source.is_file() and source.stat().st_mtime > extension.stat().st_mtime:
                stale.append(source)
    return sorted(set(stale))
