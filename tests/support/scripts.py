"""The project's scripts (loadtests/*.py) imported as modules, for tests of their parts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

LOADTESTS = Path(__file__).resolve().parents[2] / "loadtests"


def load_script(name: str) -> ModuleType:
    """loadtests/`name`.py as the module `name`."""
    spec = importlib.util.spec_from_file_location(name, LOADTESTS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module
