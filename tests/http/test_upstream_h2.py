"""HTTP/2 to upstreams: `upstreams.protocol: h2c` (prior knowledge) and `h2` (TLS, ALPN),
against real HTTP/2 origins (the h2 library's server side, and nginx) on loopback.

HTTP/1.1 clients reach the HTTP/2 upstream with the same fields an HTTP/1.1 one gets; many
exchanges share one connection, up to its stream limit; a client that does not read stalls
its own stream and nothing else; resets, refused streams and GOAWAY are failures of the
variant (or safe retries); trailers reach the exchange; bad configs name the key.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import h2.errors
import pytest
from prometheus_client import generate_latest

from proxy.config import ConfigError, parse_config
from proxy.releases import start_request
from proxy.runtime import Runtime
from tests.support.certs import TestCA
from tests.support.h2server import H2Origin, H2Reply, H2Request, server_context
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import RecordingUpstream

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _h2c_service(stable: str, canary: str, percent: float = 0, **extra: Any) -> dict[str, Any]:
    svc = service([stable], [canary], name="shop", steps=[{"percent": percent}], **extra)
    svc["upstreams"]["protocol"] = "h2c"
    return svc


@asynccontextmanager
async def _origins(
    handler: Any = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[H2Origin, H2Origin]]:
    def named(name: str) -> Any:
        def reply(request: H2Request) -> H2Reply:
            if handler is not None:
                return handler(name, request)  # type: ignore[no-any-return]
            return H2Reply(fields=[("x-pool", name)], body=f"{name}\n".encode())

        return reply

    stable = await H2Origin(named("stable"), tls).start()
    canary = await H2Origin(named("canary"), tls).start()
    try:
        yield stable, canary
    finally:
        await stable.close()
        await canary.close()


def _port(runtime: Runtime) -> int:
    return runtime.data_address[1]


async def test_an_http1_client_reaches_an_h2c_upstream_with_the_fields_http1_would_send() -> None:
    async with (
        _origins() as (stable, canary),
        running_proxy(config_dict(_h2c_service(stable.url, canary.url))) as runtime,
        aiohttp.ClientSession() as client,
    ):
        url = f"http://127.0.0.1:{_port(runtime)}/items/7?x=1"
        headers = {"X-Tenant-ID": "t1", "Connection": "keep-alive", "X-Custom": "v"}
        async with client.get(url, headers=headers) as response:
            assert response.status == 200
            assert await response.text() == "stable\n"
            assert response.headers["x-pool"] == "stable"
        body = b"x" * 100_000
        async with client.post(url, data=body, headers=headers) as response:
            assert response.status == 200
        chunks = [b"a" * 5000, b"b" * 7000]

        async def chunked() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        async with client.put(url, data=chunked(), headers=headers) as response:
            assert response.status == 200
    get, post, put = stable.requests
    assert dict(get.fields)[":method"] == "GET"
    assert dict(get.fields)[":path"] == "/items/7?x=1"
    assert dict(get.fields)[":scheme"] == "http"
    assert get.header("x-custom") == "v"
    assert get.header("x-forwarded-for") == "127.0.0.1"
    assert get.header("x-request-id")
    assert get.header("te") == "trailers"
    assert get.header("connection") is None  # no connection-specific field in HTTP/2
    assert post.body == body
    assert post.header("content-length") == "100000"
    assert put.body == b"".join(chunks)
    assert put.header("content-length") is None
    assert stable.connections == 1  # three exchanges, one HTTP/2 connection
    assert not stable.errors
    assert not canary.requests


async def test_many_exchanges_share_connections_up_to_the_stream_limit() -> None:
    def slow(name: str, request: H2Request) -> H2Reply:
        return H2Reply(body=b"ok", delay_s=0.3)  # all 64 are in flight together

    async with _origins(slow) as (stable, canary):
        data = config_dict(_h2c_service(stable.url, canary.url), limits={"pool_h2_max_streams": 8})
        connector = aiohttp.TCPConnector(limit=0)
        async with running_proxy(data) as runtime, aiohttp.ClientSession(connector=connector) as c:
            url = f"http://127.0.0.1:{_port(runtime)}/"

            async def one(i: int) -> int:
                async with c.get(url, headers={"X-Tenant-ID": f"t{i}"}) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(one(i) for i in range(64)))
    assert statuses == [200] * 64
    assert len(stable.requests) == 64
    # 64 at once, 8 streams a connection: 8 connections (a few more if some came late).
    assert 8 <= stable.connections <= 10, stable.connections


async def test_a_client_that_does_not_read_stalls_its_own_stream_only() -> None:
    big = b"z" * (24 * 1024 * 1024)

    def handler(name: str, request: H2Request) -> H2Reply:
        return H2Reply(body=big if request.header(":path") == "/big" else b"small\n")

    async with (
        _origins(handler) as (stable, canary),
        running_proxy(config_dict(_h2c_service(stable.url, canary.url))) as runtime,
    ):
        port = _port(runtime)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**16)
        writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\nX-Tenant-ID: t\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1.0)  # the client reads nothing
        stalled_at = stable.sent
        # The origin got no further than the stream's window and the sockets' buffers.
        assert stalled_at < 8 * 1024 * 1024, stalled_at
        async with aiohttp.ClientSession() as client:
            for _ in range(5):  # other exchanges on the same upstream connection go on
                async with client.get(f"http://127.0.0.1:{port}/other") as response:
                    assert await response.read() == b"small\n"
        assert stable.connections == 1
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        received = 0
        while received < len(big):
            line = await reader.readuntil(b"\r\n")
            size = int(line.strip(), 16)
            if size == 0:
                break
            received += len(await reader.readexactly(size))
            await reader.readexactly(2)
        assert received == len(big)
        writer.close()


async def test_resets_refused_streams_and_goaway_are_counted_or_retried() -> None:
    calls = {"n": 0}

    def handler(name: str, request: H2Request) -> H2Reply:
        path = request.header(":path")
        if path == "/reset":
            return H2Reply(reset=h2.errors.ErrorCodes.INTERNAL_ERROR)
        if path == "/refused":
            calls["n"] += 1
            if calls["n"] == 1:  # not processed: safe to send again
                return H2Reply(reset=h2.errors.ErrorCodes.REFUSED_STREAM)
        return H2Reply(fields=[("x-pool", name)], body=name.encode())

    async with (
        _origins(handler) as (stable, canary),
        running_proxy(config_dict(_h2c_service(stable.url, canary.url, 100))) as runtime,
        aiohttp.ClientSession() as client,
    ):
        base = f"http://127.0.0.1:{_port(runtime)}"
        tenant = {"X-Tenant-ID": "t"}
        async with client.get(f"{base}/warm", headers=tenant) as response:
            assert await response.read() == b"canary"
        async with client.post(f"{base}/reset", data=b"x", headers=tenant) as response:
            assert response.status == 502  # a body went up: never sent again
        async with client.get(f"{base}/refused", headers=tenant) as response:
            assert response.status == 200
            assert await response.read() == b"canary"
        assert calls["n"] == 2
        before = canary.connections
        canary.goaway()
        await asyncio.sleep(0.1)
        async with client.get(f"{base}/after", headers=tenant) as response:
            assert response.status == 200  # on a new connection: the old one went away
        assert canary.connections == before + 1
        text = generate_latest(runtime.registry).decode()
    line = 'rollout_upstream_failures_total{reason="reset",service="shop",variant="canary"}'
    assert f"{line} 1.0" in text, [t for t in text.splitlines() if "failures_total{" in t]


async def test_trailers_of_an_h2_upstream_are_not_relayed_to_an_http1_client() -> None:
    def handler(name: str, request: H2Request) -> H2Reply:
        return H2Reply(body=b"done", trailers=[("x-checksum", "abc")])

    async with (
        _origins(handler) as (stable, canary),
        running_proxy(config_dict(_h2c_service(stable.url, canary.url))) as runtime,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(runtime))
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        reply = await reader.read()
        writer.close()
    assert reply.startswith(b"HTTP/1.1 200")
    assert reply.endswith(b"4\r\ndone\r\n0\r\n\r\n")
    assert b"x-checksum" not in reply.lower()


async def test_h2_over_tls_is_negotiated_by_alpn_and_verified(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    served = ca.issue("origin", ["127.0.0.1"])
    tls = server_context(str(served.cert), str(served.key))
    async with _origins(tls=tls) as (stable, canary):
        svc = service([stable.url], [canary.url], name="shop", steps=[{"percent": 100}])
        svc["upstreams"]["protocol"] = "h2"
        svc["upstream_tls"] = {"ca": str(ca.pem)}
        async with running_proxy(config_dict(svc)) as runtime, aiohttp.ClientSession() as client:
            url = f"http://127.0.0.1:{_port(runtime)}/"
            async with client.get(url, headers={"X-Tenant-ID": "t"}) as response:
                assert await response.read() == b"canary\n"
        assert dict(canary.requests[0].fields)[":scheme"] == "http"  # the client's scheme
        plain = await H2Origin().start()  # no TLS at all: the handshake fails
        try:
            not_tls = plain.url.replace("http:", "https:")
            svc["upstreams"] = {"stable": [stable.url], "canary": [not_tls], "protocol": "h2"}
            async with running_proxy(config_dict(svc)) as runtime:
                async with aiohttp.ClientSession() as client:
                    url = f"http://127.0.0.1:{_port(runtime)}/"
                    async with client.get(url, headers={"X-Tenant-ID": "t"}) as response:
                        # Nothing was sent: the request goes to stable, the failure is the
                        # canary's.
                        assert await response.read() == b"stable\n"
                text = generate_latest(runtime.registry).decode()
                assert 'reason="tls",service="shop",variant="canary"' in text
        finally:
            await plain.close()


_NGINX_CONF = """
worker_processes 1;
daemon off;
pid nginx.pid;
error_log stderr error;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


async def test_nginx_as_an_h2c_upstream(tmp_path: Path) -> None:
    """Interoperability with a widely deployed HTTP/2 server: nginx, h2c by prior knowledge,
    in front of a recording HTTP/1.1 origin."""
    origin = await RecordingUpstream("behind-nginx").start()
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    (tmp_path / "nginx.conf").write_text(_NGINX_CONF.format(port=port, upstream=origin.port))
    proc = await asyncio.create_subprocess_exec(
        NGINX, "-p", f"{tmp_path}/", "-c", "nginx.conf", stderr=asyncio.subprocess.PIPE
    )
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        svc = _h2c_service(url, url.replace("127.0.0.1", "localhost"))
        async with running_proxy(config_dict(svc)) as runtime, aiohttp.ClientSession() as client:
            target = f"http://127.0.0.1:{_port(runtime)}/hello"
            async with client.post(target, data=b"payload", headers={"X-Tenant-ID": "t"}) as r:
                assert r.status == 200
                assert await r.read() == b"behind-nginx\n"
        received = origin.requests[0]
        assert (received.method, received.target, received.body) == ("POST", "/hello", b"payload")
        assert received.header("x-forwarded-for") == "127.0.0.1"
    finally:
        proc.terminate()
        await proc.wait()
        await origin.close()


@pytest.mark.parametrize(
    ("upstreams", "words"),
    [
        ({"stable": ["http://127.0.0.1:9"], "protocol": "h2"}, "h2 needs https:// upstreams"),
        ({"stable": ["https://127.0.0.1:9"], "protocol": "h2c"}, "h2c needs http:// upstreams"),
        ({"stable": ["http://127.0.0.1:9"], "protocol": "http2"}, "must be one of"),
    ],
)
def test_a_protocol_that_does_not_suit_the_upstreams_names_the_key(
    upstreams: dict[str, Any], words: str
) -> None:
    svc = service(["http://127.0.0.1:9"], [], name="shop")
    svc["upstreams"] = upstreams
    with pytest.raises(ConfigError) as caught:
        parse_config(config_dict(svc), {})
    assert caught.value.path == "services[0].upstreams.protocol"
    assert words in caught.value.reason


def test_a_release_on_an_h2c_service_brings_http_upstreams_and_keeps_the_protocol() -> None:
    svc = _h2c_service("http://127.0.0.1:9", "http://127.0.0.1:10")
    shop = parse_config(config_dict(svc), {}).services[0]
    assert shop.upstreams.protocol == "h2c"
    with pytest.raises(ConfigError) as caught:
        start_request({"version": "2", "canary": ["https://127.0.0.1:11"]}, shop)
    assert caught.value.path == "canary"
    assert start_request({"version": "2", "canary": ["http://127.0.0.1:11"]}, shop).canary
