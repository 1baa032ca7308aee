"""loadtests/bench.py --shadow: the rollout-proxy config it writes holds a shadow step, and
its help works. The benchmark itself is not run here (it needs the machine to itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

from proxy.config import parse_text
from tests.support.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "loadtests" / "bench.py"


def bench() -> ModuleType:
    return load_script("bench")


def test_the_shadow_flag_writes_a_shadow_step(tmp_path: Path) -> None:
    module = bench()
    for shadow, first in ((10.0, (0.0, 10.0)), (100.0, (0.0, 100.0)), (0.0, (10.0, 0.0))):
        text = module.rollout_config(1, 2, (3, 4), tmp_path / "s.json", 100, shadow)
        step = parse_text(text, "bench.yaml").services[0].rollout.steps[0]
        assert (step.percent, step.shadow) == first
        assert step.observe_s == 86400.0


def test_help_names_the_shadow_flag() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "--shadow PERCENT" in done.stdout
    refused = subprocess.run(
        [sys.executable, str(SCRIPT), "--shadow", "150", "--targets", "direct"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "--shadow: a percent from 0 to 100" in refused.stderr
