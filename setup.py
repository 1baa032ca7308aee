"""Build hook: `ROLLOUT_PROXY_COMPILE=1 pip install .` compiles the data plane's hot modules
with mypyc (the compiler that ships with mypy). They are typed under `mypy --strict` already,
so they compile as they are and the request path runs as C, without a second implementation
to keep in step. A plain `pip install .` needs no compiler and installs the same modules as
Python; both builds pass the same test suite.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from setuptools import setup

COMPILE = os.environ.get("ROLLOUT_PROXY_COMPILE") == "1"

# Everything a proxied request runs through, and every subclass of what it runs through
# (an interpreted class cannot inherit from a compiled one).
HOT_MODULES = [
    "proxy/http/connection.py",
    "proxy/http/downstream.py",
    "proxy/http/exchange.py",
    "proxy/http/fields.py",
    "proxy/http/framing.py",
    "proxy/http/head.py",
    "proxy/http/pool.py",
    "proxy/http/relay.py",
    "proxy/http/request.py",
    "proxy/http/requestid.py",
    "proxy/http/response.py",
    "proxy/http/server.py",
    "proxy/http/upstream.py",
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


def compiled_modules() -> list[object]:
    if not COMPILE:
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as missing:
        if "egg_info" in sys.argv:
            # pip first asks for the build requirements (setup_requires below), before mypy
            # is installed in the build environment.
            return []
        message = "ROLLOUT_PROXY_COMPILE=1 needs mypy (it provides mypyc) to build"
        raise SystemExit(message) from missing
    return list(mypycify(HOT_MODULES, opt_level="3"))


# mypyc type-checks what it compiles, so the build needs the typed dependencies too: the
# project's own (pyproject.toml) and the stubs of the one that ships none.
PROJECT = tomllib.loads(Path(__file__).with_name("pyproject.toml").read_text())["project"]
BUILD_REQUIRES = ["mypy>=1.10", "types-PyYAML", *PROJECT["dependencies"]]

setup(
    ext_modules=compiled_modules(),
    setup_requires=BUILD_REQUIRES if COMPILE else [],
)
