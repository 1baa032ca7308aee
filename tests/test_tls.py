"""TLS on the data listener (certificates by SNI, reload, mTLS, modern defaults) and to
https:// upstreams (verification on by default, its failures counted as their own reason),
against the real proxy with certificates the test makes."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from prometheus_client import generate_latest

from proxy.config import ConfigError, load_config, parse_config
from proxy.runtime import Runtime
from proxy.tls import peer_names
from tests.support.certs import Issued, TestCA
from tests.support.process import ProxyProcess
from tests.support.proxy import config_dict, running_proxy, service


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


POOL = web.AppKey("pool", str)


async def _echo(request: web.Request) -> web.Response:
    """What the upstream saw: the forwarded scheme, and which pool it is."""
    pool = request.app[POOL]
    return web.Response(text=f"{pool} {request.headers.get('X-Forwarded-Proto')}")


async def _upstream(pool: str, tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app[POOL] = pool
    app.router.add_get("/{tail:.*}", _echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    server: Any = site._server  # the bound port of port 0
    return runner, int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def plain_upstream() -> AsyncIterator[str]:
    runner, port = await _upstream("stable")
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _client(ca: TestCA, *, cert: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.pem))
    context.set_alpn_protocols(["h2", "http/1.1"])  # as curl and browsers offer
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


async def _get(
    port: int, context: ssl.SSLContext, name: str = "localhost"
) -> tuple[str, int, str | None]:
    """GET / over a new TLS connection: (body, the certificate's serial, ALPN)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=name
    )
    try:
        tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        serial = x509.load_der_x509_certificate(der).serial_number
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Tenant-ID: t\r\n\r\n")
        reply = await reader.read()
        body = reply.partition(b"\r\n\r\n")[2].decode()
        return body, serial, tls.selected_alpn_protocol()
    finally:
        writer.close()


def _tls_data(upstream: str, cert: Issued, **tls: Any) -> dict[str, Any]:
    data = config_dict(service([upstream], [], name="shop", steps=[{"percent": 0}]))
    data["tls"] = {"cert": str(cert.cert), "key": str(cert.key), **tls}
    return data


async def test_the_listener_terminates_tls_with_modern_defaults(
    ca: TestCA, plain_upstream: str
) -> None:
    cert = ca.issue("proxy", ["localhost", "127.0.0.1"])
    async with running_proxy(_tls_data(plain_upstream, cert)) as runtime:
        port = runtime.data_address[1]
        assert runtime.data_url.startswith("https://")
        body, serial, alpn = await _get(port, _client(ca))
        assert body == "stable https"  # the upstream is told the client spoke TLS
        assert serial == cert.serial
        assert alpn == "http/1.1"  # http2 is off by default: h2 is not offered
        old = _client(ca)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # which is the point
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.minimum_version = ssl.TLSVersion.TLSv1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _get(port, old)
        weak = _client(ca)
        weak.maximum_version = ssl.TLSVersion.TLSv1_2
        weak.set_ciphers("AES128-SHA256")  # no forward secrecy: refused
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _get(port, weak)


async def test_sni_chooses_the_certificate_and_an_unknown_name_gets_the_first(
    ca: TestCA, plain_upstream: str
) -> None:
    first = ca.issue("first", ["shop.test", "127.0.0.1"])
    other = ca.issue("other", ["*.other.test"])
    data = _tls_data(plain_upstream, first)
    del data["tls"]["cert"], data["tls"]["key"]
    data["tls"]["certificates"] = [
        {"cert": str(first.cert), "key": str(first.key)},
        {"cert": str(other.cert), "key": str(other.key)},
    ]
    async with running_proxy(data) as runtime:
        port = runtime.data_address[1]
        assert (await _get(port, _client(ca), "shop.test"))[1] == first.serial
        assert (await _get(port, _client(ca), "api.other.test"))[1] == other.serial
        unknown = _client(ca)
        unknown.check_hostname = False
        assert (await _get(port, unknown, "nobody.test"))[1] == first.serial


async def test_mtls_requires_a_client_certificate_from_the_ca(
    tmp_path: Path, ca: TestCA, plain_upstream: str
) -> None:
    cert = ca.issue("proxy", ["localhost"])
    client = ca.issue("client", ["tester"], client=True)
    stranger_ca = TestCA(tmp_path, "another CA")
    stranger = stranger_ca.issue("stranger", ["tester"], client=True)
    data = _tls_data(plain_upstream, cert, client_ca=str(ca.pem))
    async with running_proxy(data) as runtime:
        port = runtime.data_address[1]
        assert (await _get(port, _client(ca, cert=client)))[0] == "stable https"
        for refused in (_client(ca), _client(ca, cert=stranger)):
            try:
                body, _, _ = await _get(port, refused)
            except (ssl.SSLError, ConnectionError):
                continue
            # TLS 1.3: the client's handshake ends before the server checks its certificate,
            # so the refusal arrives as the connection closing, with no answer.
            assert body == ""


def _spoil(path: Path) -> None:
    path.write_text("not a certificate\n")


async def test_identity_rules_read_the_verified_client_certificate(
    ca: TestCA, plain_upstream: str
) -> None:
    runner, port = await _upstream("canary")
    try:
        cert = ca.issue("proxy", ["localhost"])
        tester = ca.issue(
            "tester", ["tenant-a", "spiffe://mesh.test/ns/shop/sa/tester"], client=True
        )
        other = ca.issue("other", ["tenant-b"], client=True)
        svc = service([plain_upstream], [f"http://127.0.0.1:{port}"], name="shop",
                      steps=[{"percent": 0}])  # fmt: skip
        svc["identity"] = [{"client_cert": "cn", "kind": "tenant"}]
        svc["rollout"]["pins"] = {"tenant-a": "canary"}
        data = config_dict(svc)
        data["tls"] = {"cert": str(cert.cert), "key": str(cert.key), "client_ca": str(ca.pem)}
        async with running_proxy(data) as runtime:
            listen = runtime.data_address[1]
            assert (await _get(listen, _client(ca, cert=tester)))[0] == "canary https"
            assert (await _get(listen, _client(ca, cert=other)))[0] == "stable https"
        del data["tls"]["client_ca"]
        with pytest.raises(ConfigError) as caught:
            parse_config(data, {})
        assert caught.value.path == "services[0].identity[0].client_cert"
    finally:
        await runner.cleanup()


def test_the_names_of_a_verified_certificate() -> None:
    peercert = {
        "subject": ((("countryName", "EU"),), (("commonName", "tenant-a"),)),
        "subjectAltName": (
            ("DNS", "a.test"),
            ("URI", "spiffe://mesh.test/sa/a"),
            ("DNS", "b.test"),
        ),
    }
    names = peer_names(peercert)
    assert dict(names) == {"cn": "tenant-a", "dns": "a.test", "uri": "spiffe://mesh.test/sa/a"}
    assert dict(peer_names({})) == {}
    assert dict(peer_names(None)) == {}


async def test_a_reload_serves_renewed_certificates_and_refuses_a_bad_one(
    tmp_path: Path, ca: TestCA, plain_upstream: str
) -> None:
    cert = ca.issue("proxy", ["localhost"])
    data = _tls_data(plain_upstream, cert)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    runtime = Runtime(load_config(path, {}), env={}, config_path=str(path))
    await runtime.start()
    try:
        port = runtime.data_address[1]
        # A keep-alive connection opened before the renewal.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=_client(ca), server_hostname="localhost"
        )
        request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Tenant-ID: t\r\n\r\n"
        writer.write(request)
        await reader.readuntil(b"stable https")
        renewed = ca.issue("proxy", ["localhost"])  # the same files, a new certificate
        result = await runtime.reloader.reload("SIGHUP")
        assert result.result == "applied", result
        assert "tls: certificates read again" in result.changes
        assert (await _get(port, _client(ca)))[1] == renewed.serial
        writer.write(request)  # the old connection is not dropped
        await reader.readuntil(b"stable https")
        writer.close()

        _spoil(cert.cert)
        result = await runtime.reloader.reload("SIGHUP")
        assert result.result == "invalid"
        assert result.key == "tls.cert"
        assert (await _get(port, _client(ca)))[1] == renewed.serial  # still served
        text = generate_latest(runtime.registry).decode()
        assert 'rollout_config_reload_total{result="invalid"} 1.0' in text

        on_off = dict(data)
        on_off.pop("tls")
        path.write_text(yaml.safe_dump(on_off))
        result = await runtime.reloader.reload("SIGHUP")
        assert result.result == "refused"
        assert result.error is not None
        assert result.error.startswith("tls: changed, and needs a restart")
    finally:
        await runtime.stop(drain_s=0.5, notice_s=0.0)


async def test_https_upstreams_are_verified_and_a_failure_is_counted_as_tls(
    tmp_path: Path, ca: TestCA
) -> None:
    served = ca.issue("upstream", ["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(served.cert), str(served.key))
    stable_runner, stable_port = await _upstream("stable", context)
    canary_runner, canary_port = await _upstream("canary", context)
    try:
        stable, canary = f"https://127.0.0.1:{stable_port}", f"https://127.0.0.1:{canary_port}"
        svc = service([stable], [canary], name="shop", steps=[{"percent": 100}])
        svc["upstream_tls"] = {"ca": str(ca.pem)}
        async with running_proxy(config_dict(svc)) as runtime:
            body = await _plain_get(runtime.data_address[1])
            assert body == "canary http"  # verified against the configured CA
        del svc["upstream_tls"]  # the system's trust store does not know the test CA
        async with running_proxy(config_dict(svc)) as runtime:
            head = await _plain_get(runtime.data_address[1], head=True)
            assert head.startswith("HTTP/1.1 502")
            text = generate_latest(runtime.registry).decode()
            assert (
                'rollout_upstream_failures_total{reason="tls",service="shop",variant="canary"}'
                in text
            )
    finally:
        await stable_runner.cleanup()
        await canary_runner.cleanup()


async def _plain_get(port: int, *, head: bool = False) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Tenant-ID: t\r\n\r\n")
    reply = (await reader.read()).decode()
    writer.close()
    return reply if head else reply.split("\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"cert": "/nonexistent.pem"}, "tls.cert", "no such file"),
        ({"key": "WRONG"}, "tls.cert", "not a usable PEM"),
        ({"client_auth": "required"}, "tls.client_auth", "needs client_ca"),
        ({"client_ca": "/nonexistent-ca.pem"}, "tls.client_ca", "no such file"),
        ({"ciphers": "ALL"}, "tls.ciphers", "unknown key"),
    ],
)
def test_a_bad_tls_block_names_the_key(
    ca: TestCA, change: dict[str, str], key: str, words: str
) -> None:
    cert = ca.issue("proxy", ["localhost"])
    other = ca.issue("other", ["localhost"])
    data = _tls_data("http://127.0.0.1:9", cert)
    data["tls"].update(change)
    if data["tls"].get("key") == "WRONG":
        data["tls"]["key"] = str(other.key)  # a key that is not the certificate's
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {})
    assert caught.value.path == key
    assert words in caught.value.reason


def test_upstream_tls_needs_an_https_upstream(ca: TestCA) -> None:
    svc = service(["http://127.0.0.1:9"], [], name="shop", steps=[{"percent": 0}])
    svc["upstream_tls"] = {"ca": str(ca.pem)}
    with pytest.raises(ConfigError) as caught:
        parse_config(config_dict(svc), {})
    assert caught.value.path == "services[0].upstream_tls"
    svc["upstreams"]["stable"] = ["https://127.0.0.1"]
    config = parse_config(config_dict(svc), {})
    assert config.services[0].upstreams.stable[0].port == 443
    svc["upstream_tls"] = {"ca": "/nonexistent-ca.pem"}
    with pytest.raises(ConfigError) as caught:
        parse_config(config_dict(svc), {})
    assert caught.value.path == "services[0].upstream_tls.ca"


async def test_workers_admin_and_the_access_log_speak_tls(tmp_path: Path, ca: TestCA) -> None:
    """Two worker processes serve the TLS listener; the admin listener takes its own `tls`;
    the access log says https; `rollout-proxy status` reaches the admin listener over TLS
    (trusting the CA through SSL_CERT_FILE)."""
    runner, port = await _upstream("stable")
    try:
        cert = ca.issue("proxy", ["localhost", "127.0.0.1"])
        data = _tls_data(f"http://127.0.0.1:{port}", cert)
        data["admin"]["tls"] = {"cert": str(cert.cert), "key": str(cert.key)}
        log = tmp_path / "access.jsonl"
        data["access_log"] = {"enabled": True, "path": str(log)}
        env = {"SSL_CERT_FILE": str(ca.pem)}
        proxy = await ProxyProcess(data, tmp_path, env, ("--workers", "2")).start()
        try:
            assert proxy.data_url.startswith("https://")
            assert proxy.admin_url.startswith("https://")
            listen = int(proxy.data_url.rsplit(":", 1)[1])
            bodies = [(await _get(listen, _client(ca)))[0] for _ in range(8)]
            assert bodies == ["stable https"] * 8
            code, out = await proxy.cli("status")
            assert code == 0, out
            assert "shop" in out
        finally:
            assert proxy.proc is not None
            proxy.proc.terminate()  # a drain flushes each worker's log
            await proxy.proc.wait()
        lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
        assert len(lines) == 8
        assert {line["scheme"] for line in lines} == {"https"}
    finally:
        await runner.cleanup()


async def test_an_upstream_that_requires_a_client_certificate_gets_the_configured_one(
    ca: TestCA,
) -> None:
    served = ca.issue("upstream", ["127.0.0.1"])
    mine = ca.issue("proxy-client", ["rollout-proxy"], client=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.pem))
    context.load_cert_chain(str(served.cert), str(served.key))
    context.verify_mode = ssl.CERT_REQUIRED
    runner, port = await _upstream("stable", context)
    try:
        svc = service([f"https://127.0.0.1:{port}"], [], name="shop", steps=[{"percent": 0}])
        svc["upstream_tls"] = {"ca": str(ca.pem), "cert": str(mine.cert), "key": str(mine.key)}
        async with running_proxy(config_dict(svc)) as runtime:
            assert await _plain_get(runtime.data_address[1]) == "stable http"
        svc["upstream_tls"] = {"ca": str(ca.pem)}  # no client certificate: refused upstream
        async with running_proxy(config_dict(svc)) as runtime:
            head = await _plain_get(runtime.data_address[1], head=True)
            assert head.startswith("HTTP/1.1 502")
    finally:
        await runner.cleanup()
