"""loadtests/bench.py --tls: the certificate it makes, and the TLS each proxy's config gets
(rollout-proxy's config loads and listens with TLS). The benchmark itself is not run here (it
needs the machine to itself); `python loadtests/bench.py --quick --tls` is its smoke run."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

from proxy.config import parse_text
from tests.loadtests.test_bench_shadow import bench


def test_the_certificate_serves_127_0_0_1_and_each_proxy_is_told_to_use_it(
    tmp_path: Path,
) -> None:
    module = bench()
    files = module.make_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(files.cert), str(files.key))  # a usable pair
    assert files.both.read_bytes() == files.cert.read_bytes() + files.key.read_bytes()

    text = module.rollout_config(1, 2, (3, 4), tmp_path / "s.json", 100, 0.0, files)
    config = parse_text(text, "bench.yaml")
    assert config.tls is not None
    assert config.tls.certificates[0].cert == str(files.cert)
    assert (
        parse_text(module.rollout_config(1, 2, (3, 4), tmp_path / "s.json", 100), "b").tls is None
    )

    nginx = module.PROXY_NGINX_HTTP.format(
        upstream_port=3,
        port=1,
        ssl=" ssl",
        tls_lines=module.NGINX_TLS.format(cert=files.cert, key=files.key),
    )
    assert "listen 127.0.0.1:1 backlog=4096 ssl;" in nginx
    assert f"ssl_certificate {files.cert};" in nginx
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in nginx


def test_the_h2_scenario_turns_http2_on_in_each_proxy(tmp_path: Path) -> None:
    module = bench()
    files = module.make_certificate(tmp_path)
    text = module.rollout_config(1, 2, (3, 4), tmp_path / "s.json", 100, 0.0, files, http2=True)
    config = parse_text(text, "bench.yaml")
    assert config.http2.enabled
    assert config.tls is not None
    plain = module.rollout_config(1, 2, (3, 4), tmp_path / "s.json", 100, 0.0, files)
    assert not parse_text(plain, "b").http2.enabled
    scenario = module.TIMED_SCENARIOS["h2"](None)
    assert (scenario.connections, scenario.streams) == (8, 100)
    nginx = module.PROXY_NGINX_HTTP.format(upstream_port=3, port=1, ssl=" ssl http2", tls_lines="")
    assert "listen 127.0.0.1:1 backlog=4096 ssl http2;" in nginx


def test_haproxy_offers_h2_by_alpn_in_the_h2_scenario_and_is_one_of_its_targets(
    tmp_path: Path,
) -> None:
    module = bench()
    files = module.make_certificate(tmp_path)
    assert "haproxy" in module.H2_TARGETS
    h2 = module.haproxy_bind_tls(files, True)
    assert h2 == f" ssl crt {files.both} ssl-min-ver TLSv1.2 alpn h2,http/1.1"
    assert module.haproxy_bind_tls(files, False) == f" ssl crt {files.both} ssl-min-ver TLSv1.2"
    assert module.haproxy_bind_tls(None, True) == ""
    cfg = module.HAPROXY_CFG.format(maxconn=10, port=1, upstream_port=3, bind_tls=h2)
    assert f"bind 127.0.0.1:1{h2}" in cfg
    assert "server s1 127.0.0.1:3 maxconn 1000" in cfg  # an HTTP/1.1 upstream, kept alive
    checked = subprocess.run(
        ["haproxy", "-c", "-f", "/dev/stdin"], input=cfg, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
