"""loadtests/bench.py's grpc scenario (and HAProxy in the h2 one): the grpcio upstream
(loadtests/grpc_upstream.py), the gRPC pre-flight through a target, the configs each proxy
gets, h2load's gRPC command line, and one smoke run of both scenarios against every target,
as a user runs it (1 round x 1 s; no timing is asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from proxy.config import parse_text
from tests.loadtests.test_bench_shadow import bench
from tests.support.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "loadtests" / "bench.py"


@pytest.fixture
def upstreams() -> Iterator[tuple[ModuleType, list[int]]]:
    """Two grpc_upstream servers (stable, canary) in this process."""
    module = load_script("grpc_upstream")
    servers = [module.build("127.0.0.1:0", pool, 8) for pool in ("stable", "canary")]
    for server, _, _ in servers:
        server.start()
    try:
        yield module, [port for _, _, port in servers]
    finally:
        for server, _, _ in servers:
            server.stop(grace=None)


def test_the_preflight_counts_ok_echoes_through_a_target_and_the_upstream_counts_them(
    upstreams: tuple[ModuleType, list[int]],
) -> None:
    module = bench()
    _, ports = upstreams
    target = module.Target("direct", ports[0], None)
    error, note = module.grpc_preflight(target, None, calls=50)
    assert error is None
    assert note == "grpc-status 0 on 50/50 calls; canary share 0.0% of 50 ids"
    assert module.grpc_served(ports) == 50  # the Unary calls; Pool and Stats are not counted
    assert module.grpc_served(ports[1:]) == 0
    with module.grpc_channel(ports[1], None) as channel:
        assert channel.unary_unary("/bench.Echo/Pool")(b"", timeout=5) == b"canary"


def test_the_preflight_fails_a_target_that_answers_no_grpc(tmp_path: Path) -> None:
    module = bench()
    port = module.free_ports(1)[0]  # nobody listens there
    error, note = module.grpc_preflight(module.Target("nginx", port, None), None, calls=3)
    assert error is not None
    assert "UNAVAILABLE" in error
    assert note == ""


def test_each_proxy_is_configured_for_grpc_and_h2load_sends_grpc_calls(tmp_path: Path) -> None:
    module = bench()
    files = module.make_certificate(tmp_path)
    assert module.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"

    nginx = module.GRPC_NGINX_HTTP.format(upstream_port=3, port=1, tls_lines="")
    assert "listen 127.0.0.1:1 backlog=4096 ssl http2;" in nginx
    assert "grpc_pass grpc://grpc_stable;" in nginx
    assert "server 127.0.0.1:3;" in nginx
    assert "keepalive 1024;" in nginx

    bind = module.haproxy_bind_tls(files, True)
    cfg = module.HAPROXY_GRPC_CFG.format(maxconn=10, port=1, upstream_port=3, bind_tls=bind)
    assert "server s1 127.0.0.1:3 maxconn 1000 proto h2" in cfg
    checked = subprocess.run(
        ["haproxy", "-c", "-f", "/dev/stdin"], input=cfg, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    text = module.rollout_config(
        1, 2, (3, 4), tmp_path / "s.json", 100, 0.0, files, h2c=True, http2=True
    )
    config = parse_text(text, "bench.yaml")
    assert config.http2.enabled
    assert config.tls is not None
    assert config.services[0].upstreams.protocol == "h2c"

    sc = module.TIMED_SCENARIOS["grpc"](None)
    assert (sc.connections, sc.streams, sc.grpc, sc.path) == (8, 100, True, "/bench.Echo/Unary")
    request = tmp_path / "req.bin"
    argv = module.h2load_argv(sc, 5, 2.0, tmp_path / "log", tls=False, grpc_request=request)
    assert argv[:4] == ["h2load", "-t1", "-c8", "-m100"]
    for pair in (
        ["-d", str(request)],
        ["-H", "content-type: application/grpc"],
        ["-H", "te: trailers"],
    ):
        assert any(argv[i : i + 2] == pair for i in range(len(argv)))
    assert argv[-1] == "http://127.0.0.1:5/bench.Echo/Unary"  # direct: h2c
    tls = module.h2load_argv(sc, 5, 2.0, tmp_path / "log", tls=True, grpc_request=request)
    assert tls[-1] == "https://127.0.0.1:5/bench.Echo/Unary"
    h2 = module.h2load_argv(
        module.TIMED_SCENARIOS["h2"](None), 5, 2.0, tmp_path / "l", tls=True, grpc_request=request
    )
    assert "-d" not in h2
    assert "te: trailers" not in h2

    with pytest.raises(SystemExit, match="grpc scenario runs over TLS"):
        module.resolve(module.parse_args(["--scenarios", "grpc"]))


def test_a_smoke_run_of_h2_and_grpc_against_every_target(tmp_path: Path) -> None:
    needed = ("nginx", "wrk", "h2load", "haproxy", "taskset")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    assert not missing, f"the benchmark needs {missing}"
    out = tmp_path / "bench.json"
    targets = "nginx,haproxy,rollout-proxy,direct"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tls",
            "--scenarios",
            "h2,grpc",
            "--targets",
            targets,
            "--rounds",
            "1",
            "--duration",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "upstream ceiling: the stable grpcio server alone (direct, h2c) answers" in done.stdout
    data = json.loads(out.read_text())
    assert data["ok"] is True
    assert data["failures"] == {}
    assert set(data["grpc_targets"]) == {"nginx", "haproxy", "rollout-proxy", "direct"}
    for name, target in data["grpc_targets"].items():
        assert "grpc-status 0 on 200/200 calls" in target["note"], name
    assert "ALPN h2,http/1.1" in data["targets"]["haproxy"]["note"]

    runs = {(r["scenario"], r["target"]): r for r in data["runs"]}
    assert set(runs) == {
        ("h2", "nginx"),
        ("h2", "haproxy"),
        ("h2", "rollout-proxy"),
        ("grpc", "nginx"),
        ("grpc", "haproxy"),
        ("grpc", "rollout-proxy"),
        ("grpc", "direct"),
    }
    for (scenario, name), run in runs.items():
        assert run["requests"] > 0, name
        assert run["errors"] == 0, name
        assert run["failure"] is None, name
        if scenario == "grpc":
            # every 2xx h2load counted was a call the grpcio servers served (some more were
            # still in flight when h2load stopped)
            assert run["upstream_calls"] >= run["requests"], name
            assert run["upstream_cpu_pct"] > 0
        else:
            assert run["upstream_calls"] is None
    assert data["grpc_rollout"]["status"] == "progressing"  # no gRPC failure rolled it back
    assert data["grpc_rollout"]["failure"] is None
    grpc = {s["target"]: s for s in data["summaries"]["grpc"]}
    assert grpc["direct"]["vs_direct"] == 1.0
    assert grpc["nginx"]["vs_nginx"] == 1.0
    assert grpc["rollout-proxy"]["cpu_us_per_req"] > 0
    assert grpc["direct"]["cpu_us_per_req"] is None
