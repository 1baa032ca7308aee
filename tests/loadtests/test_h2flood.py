"""loadtests/h2flood.py against the real proxy, as a user runs it (2 s per attack): every attack
of tests/http2/test_h2_hostile.py runs, the figures it reports are sane (what the proxy refuses
never reaches the upstream, or only within the allowance its limits give each connection; the
target survives with bounded memory; the legitimate client beside the flood gets 200s only).
No timing is asserted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from proxy.config import parse_text
from proxy.config.model import Http2Config
from tests.support.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "loadtests" / "h2flood.py"


def test_the_proxy_it_floods_listens_with_h2c(tmp_path: Path) -> None:
    bench = load_script("bench")
    text = bench.rollout_config(
        1, 2, (3, 3), tmp_path / "s.json", 100, http2=True, h2c_listener=True
    )
    config = parse_text(text, "flood.yaml")
    assert config.http2.enabled
    assert config.http2.h2c
    assert config.tls is None


def test_every_attack_against_rollout_proxy_reports_sane_figures(tmp_path: Path) -> None:
    missing = [tool for tool in ("nginx", "h2load", "taskset") if shutil.which(tool) is None]
    assert not missing, f"h2flood needs {missing}"
    out = tmp_path / "flood.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--targets",
            "rollout-proxy",
            "--duration",
            "2",
            "--connections",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| attack " in done.stdout  # the table
    data = json.loads(out.read_text())
    assert data["ok"] is True
    results = {r["attack"]: r for r in data["results"]}
    assert list(results) == [
        "none",
        "rapid-reset",
        "continuation",
        "settings",
        "ping",
        "hpack-bomb",
    ]
    limits = Http2Config()  # the proxy runs with its default HTTP/2 limits

    for name, r in results.items():
        assert r["target"] == "rollout-proxy"
        assert r["failure"] is None, name
        assert r["legit_requests"] > 0, name  # served during the flood, if slowly
        assert r["legit_2xx"] == r["legit_requests"], name
        assert r["upstream_legit_requests"] >= r["legit_requests"], name
        assert r["legit_p99_ms"] >= r["legit_p50_ms"] > 0, name
        assert 0 < r["rss_before_mib"] <= r["rss_peak_mib"], name
        assert r["rss_after_mib"] < r["rss_before_mib"] + 64, name  # memory comes back
        assert 0 <= r["cpu_pct"] <= 110, name  # one core at most (pinned)
        assert r["duration_s"] >= 2.0, name
        if name == "none":
            assert (r["sent"], r["connections"], r["upstream_attack_requests"]) == (0, 0, 0)
            continue
        assert r["sent"] > 0, name
        assert 0 < r["connections"] <= 500, name  # --max-connections
        assert r["cpu_s"] > 0, name

    for name in ("continuation", "settings", "ping"):
        r = results[name]
        assert r["upstream_attack_requests"] == 0, name  # refused before any byte went up
        assert r["closed_by_target"] >= 1, name  # the proxy cuts the connection
    for name in ("rapid-reset", "settings", "ping"):
        r = results[name]
        # The attacker's address is barred once one of its connections spends an allowance
        # (http2.penalty): its reconnections are closed at accept, none with a fresh allowance.
        assert r["closed_unanswered"] >= 1, name
        assert 1 <= r["closed_by_target"] - r["closed_unanswered"] <= 2, name  # --connections
    reset = results["rapid-reset"]
    assert reset["sent_unit"] == "streams"
    allowance = limits.max_resets_per_s + limits.max_concurrent_streams
    assert reset["upstream_attack_requests"] <= reset["connections"] * allowance
    assert reset["upstream_attack_requests"] < reset["sent"]
    bomb = results["hpack-bomb"]
    assert bomb["closed_by_target"] >= 1
    # The first request of each connection (the one that fills the HPACK table) may go up;
    # a bomb never does.
    assert bomb["upstream_attack_requests"] <= bomb["connections"]
