"""The `rollout-proxy` command as a user runs it: real processes, real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JWT_KEY = "k" * 40
COMMAND = [sys.executable, "-m", "proxy"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "JWT_KEY": JWT_KEY, **extra}


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT
    )


def test_check_accepts_the_example_config() -> None:
    result = _cli("check", "-c", "config/example.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_names_the_bad_key_and_exits_2(tmp_path: Path) -> None:
    text = (ROOT / "config/example.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("{percent: 25, observe: 10m}", "{percent: 250, observe: 10m}"))
    result = _cli("check", "-c", str(broken))
    assert result.returncode == 2
    assert "services[0].rollout.steps[4].percent" in result.stderr


def test_run_refuses_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: nowhere\nservices: []\n")
    result = _cli("run", "-c", str(broken))
    assert result.returncode == 2
    assert "listen" in result.stderr
    assert "not started" in result.stderr


def _write_config(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        "admin: {listen: 127.0.0.1:0}\n"
        f"state: {{backend: file, path: {tmp_path}/state.json}}\n"
        "services:\n"
        "  - name: svc\n"
        "    identity: [{header: X-Tenant-ID, kind: tenant}]\n"
        "    tiers: {default: free}\n"
        "    upstreams: {stable: ['http://127.0.0.1:9'], canary: ['http://127.0.0.1:9']}\n"
        "    rollout: {salt: s, steps: [{percent: 10}]}\n"
    )
    return path


def test_run_serves_then_drains_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*COMMAND, "run", "-c", str(_write_config(tmp_path))],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"admin on (http://\S+)", line)
        assert match, line
        with urllib.request.urlopen(match.group(1) + "/readyz", timeout=5) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "draining" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_shows_a_failing_canary_rolled_back_with_its_evidence() -> None:
    result = _cli("demo", "--duration", "30", "--canary-error-rate", "0.6", timeout=90)
    assert result.returncode == 0, result.stderr
    assert "rolled back" in result.stdout
    assert "decision journal" in result.stdout
    for tier in ("internal", "enterprise", "paid", "free"):
        assert tier in result.stdout
