"""loadtests/bench.py --upstream-h2c: rollout-proxy's config speaks h2c to upstreams of their
own (nginx listeners with http2), and the nginx upstream's config gives them. The benchmark
itself is not run here (it needs the machine to itself)."""

from __future__ import annotations

from pathlib import Path

from proxy.config import parse_text
from tests.loadtests.test_bench_shadow import bench


def test_rollout_proxy_is_configured_for_h2c_and_the_upstream_listens_with_http2(
    tmp_path: Path,
) -> None:
    module = bench()
    text = module.rollout_config(1, 2, (3, 4), tmp_path / "s.json", 100, h2c=True)
    config = parse_text(text, "bench.yaml")
    upstreams = config.services[0].upstreams
    assert upstreams.protocol == "h2c"
    assert (upstreams.stable[0].port, upstreams.canary[0].port) == (3, 4)
    plain = parse_text(module.rollout_config(1, 2, (3, 4), tmp_path / "s.json", 100), "b")
    assert plain.services[0].upstreams.protocol == "http1"
    server = module.UPSTREAM_SERVER.format(port=5, pool="stable", http2=" http2")
    assert "listen 127.0.0.1:5 backlog=4096 http2;" in server
    args = module.parse_args(["--upstream-h2c", "--quick"])
    options, _ = module.resolve(args)
    assert options.upstream_h2c
