"""loadtests/bench.py in its quick mode, as a user runs it: it sets up nginx (as the upstream and
the reference proxy), wrk, rollout-proxy and the bare reference proxy on loopback, and reports
every target with zero errors, rollout-proxy against bare, the rollout in progress and its
analysis counting the traffic. No timing is asserted."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "loadtests" / "bench.py"
TARGETS = ("nginx", "rollout-proxy", "bare", "direct")  # the order of the rotation


def test_quick_mode_runs_every_target_without_errors(tmp_path: Path) -> None:
    missing = [tool for tool in ("nginx", "wrk", "taskset") if shutil.which(tool) is None]
    assert not missing, f"the benchmark needs {missing}: apt-get install -y wrk nginx-light"
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--targets", ",".join(TARGETS)]
    done = subprocess.run(
        [*command, "--duration", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "result: ok" in done.stdout
    assert "| target" in done.stdout  # the table
    assert "| rollout-proxy |" in done.stdout
    assert "| bare          |" in done.stdout
    data = json.loads(out.read_text())
    assert data["ok"] is True
    assert data["failures"] == {}
    assert set(data["targets"]) == set(TARGETS)

    summaries = data["summaries"]["tiny"]
    assert [s["target"] for s in summaries] == list(TARGETS)
    for summary in summaries:
        assert (summary["valid_runs"], summary["flagged_runs"], summary["errors"]) == (1, 0, 0)
        assert summary["rps"] > 0
        assert summary["p50_ms"] > 0
        assert summary["p99_ms"] >= summary["p50_ms"]
    by_target = {s["target"]: s for s in summaries}
    assert by_target["nginx"]["vs_nginx"] == 1.0
    assert by_target["rollout-proxy"]["vs_nginx"] > 0
    assert by_target["rollout-proxy"]["cpu_us_per_req"] > 0  # measured for the proxies only
    assert by_target["direct"]["cpu_us_per_req"] is None
    assert by_target["bare"]["vs_nginx"] > 0
    assert by_target["bare"]["cpu_us_per_req"] > 0

    # rollout-proxy against the bare reference, on the line after the tables and in the JSON
    ours, bare = by_target["rollout-proxy"], by_target["bare"]
    ratios = data["vs_bare"]
    assert set(ratios) == {"tiny"}
    assert ratios["tiny"]["rps"] == ours["rps"] / bare["rps"]
    assert ratios["tiny"]["cpu_us_per_req"] == ours["cpu_us_per_req"] / bare["cpu_us_per_req"]
    line = re.search(
        r"rollout-proxy vs bare: (\S+)x RPS, CPU us/req ratio (\S+) \(tiny\)", done.stdout
    )
    assert line, done.stdout[-3000:]
    assert float(line.group(1)) == round(ratios["tiny"]["rps"], 2)
    assert float(line.group(2)) == round(ratios["tiny"]["cpu_us_per_req"], 2)
    assert "(reference only); canary share 0.0% of 200 ids" in data["targets"]["bare"]["note"]

    runs = data["runs"]
    assert {(r["scenario"], r["target"]) for r in runs} == {("tiny", t) for t in TARGETS}
    for run in runs:
        assert run["requests"] > 0
        assert (run["errors"], run["bad_status"], run["socket_errors"]) == (0, 0, {})
        assert run["failure"] is None

    rollout = data["rollout"]
    assert (rollout["status"], rollout["step"], rollout["canary_percent"]) == (
        "progressing",
        0,
        10.0,
    )
    assert rollout["canary_requests"] > 0
    assert rollout["baseline_requests"] > rollout["canary_requests"]  # a 10% step
    assert rollout["failure"] is None
    assert "canary share" in data["targets"]["rollout-proxy"]["note"]
