"""HTTP/2 through the real proxy to real HTTP/1.1 origins: curl over h2c and TLS (test CA),
the same request rules and identity handling as HTTP/1.1, the canary/stable split in the
metrics, many streams on one connection, large bodies both ways, and a slow reader that
stalls its own stream only, with bounded buffering."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import orjson
import yaml
from h2.events import DataReceived
from prometheus_client import generate_latest

from proxy.config import load_config
from proxy.http.h2connection import H2ClientConnection
from proxy.http.h2stream import HIGH_WATER
from proxy.runtime import Runtime
from tests.http2.conftest import Origin
from tests.support.certs import TestCA
from tests.support.h2client import RawH2
from tests.support.proxy import config_dict, running_proxy, service

H2C = {"enabled": True, "h2c": True}


def _data(stable: Origin, canary: Origin | None = None, **top: Any) -> dict[str, Any]:
    if canary is None:
        svc = service([stable.url], [], steps=[{"percent": 0}])
    else:
        svc = service([stable.url], [canary.url], steps=[{"percent": 10}])
        svc["rollout"]["pins"] = {"tenant-a": "canary", "tenant-b": "stable"}
    data = config_dict(svc, http2=top.pop("http2", H2C), **top)
    data["trusted_peers"] = []  # the test client is an untrusted peer
    return data


async def _curl(*args: str) -> tuple[int, bytes, str]:
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-v", "--max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    return process.returncode or 0, out, err.decode(errors="replace")


def _engine_h2(runtime: Runtime) -> list[H2ClientConnection]:
    engine: Any = runtime._engine
    return [c for c in engine.connections if isinstance(c, H2ClientConnection)]


async def test_curl_h2c_prior_knowledge_and_http11_share_the_listener(stable: Origin) -> None:
    async with running_proxy(_data(stable)) as runtime:
        url = f"http://127.0.0.1:{runtime.data_address[1]}/seen?q=1"
        code, out, err = await _curl("--http2-prior-knowledge", "-H", "X-Tenant-ID: t", url)
        assert code == 0, err
        assert "< HTTP/2 200" in err
        seen = orjson.loads(out)
        assert seen["path"] == "/seen?q=1"
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["host"] == f"127.0.0.1:{runtime.data_address[1]}"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert "x-tenant-id" not in headers  # an identity field from an untrusted peer
        assert len(headers["x-request-id"]) == 32
        code, out, err = await _curl("--http1.1", url)
        assert code == 0, err
        assert "< HTTP/1.1 200" in err
        assert orjson.loads(out)["path"] == "/seen?q=1"
        # Without h2c a preface is not HTTP/2: HTTP/1.1 refuses it as before.
    async with running_proxy(_data(stable, http2={"enabled": True})) as runtime:
        url = f"http://127.0.0.1:{runtime.data_address[1]}/seen"
        code, _, err = await _curl("--http2-prior-knowledge", url)
        assert "HTTP/2 200" not in err


async def test_curl_http2_over_tls_with_a_test_ca(tmp_path: Path, stable: Origin) -> None:
    ca = TestCA(tmp_path)
    cert = ca.issue("proxy", ["localhost", "127.0.0.1"])
    data = _data(stable, http2={"enabled": True})
    data["tls"] = {"cert": str(cert.cert), "key": str(cert.key)}
    async with running_proxy(data) as runtime:
        port = runtime.data_address[1]
        url = f"https://localhost:{port}/seen"
        resolve = f"localhost:{port}:127.0.0.1"
        code, out, err = await _curl("--http2", "--cacert", str(ca.pem), "--resolve", resolve, url)
        assert code == 0, err
        assert "ALPN: server accepted h2" in err or "ALPN, server accepted to use h2" in err
        assert "< HTTP/2 200" in err
        headers = {k.lower(): v for k, v in orjson.loads(out)["headers"]}
        assert headers["x-forwarded-proto"] == "https"
        # A client offering only http/1.1 still gets it.
        code, out, err = await _curl(
            "--http1.1", "--cacert", str(ca.pem), "--resolve", resolve, url
        )
        assert code == 0, err
        assert "< HTTP/1.1 200" in err


async def test_untrusted_forwarding_and_force_headers_are_not_believed(stable: Origin) -> None:
    async with running_proxy(_data(stable)) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        sid = client.request(
            "/seen",
            extra=[
                (b"x-forwarded-for", b"6.6.6.6"),
                (b"x-request-id", b"chosen-by-client-0000000000000000"),
                (b"x-rollout-force", b"canary"),
                (b"cookie", b"a=1"),
                (b"cookie", b"b=2"),
            ],
        )
        await client.send()
        assert await client.until(lambda c: c.ended(sid))
        assert client.status(sid) == 200
        seen = orjson.loads(bytes(client.bodies[sid]))
        headers: dict[str, list[str]] = {}
        for name, value in seen["headers"]:
            headers.setdefault(name.lower(), []).append(value)
        assert headers["x-forwarded-for"] == ["127.0.0.1"]
        assert headers["x-request-id"] != ["chosen-by-client-0000000000000000"]
        assert "x-rollout-force" not in headers
        assert headers["cookie"] == ["a=1; b=2"]  # joined for HTTP/1.1 (RFC 9113 8.2.3)
        assert client.headers(sid)[b"x-request-id"] == headers["x-request-id"][0].encode()
        await client.close()


async def test_a_canary_stable_split_over_h2_shows_in_the_metrics_per_variant(
    stable: Origin, canary: Origin
) -> None:
    data = _data(stable, canary)
    data["trusted_peers"] = ["127.0.0.1/32"]  # the tenant header is believed
    async with running_proxy(data) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        ids = {}
        for tenant in ("tenant-a", "tenant-b") * 5:
            sid = client.request("/seen", extra=[(b"x-tenant-id", tenant.encode())])
            ids[sid] = tenant
        await client.send()
        assert await client.until(lambda c: all(c.ended(s) for s in ids))
        for sid, tenant in ids.items():
            assert client.status(sid) == 200
            origin = client.headers(sid)[b"x-origin"].decode()
            assert origin == ("canary" if tenant == "tenant-a" else "stable")
        assert len(canary.seen) == 5
        assert len(stable.seen) == 5
        await client.close()
        registry = runtime.registry
        for variant in ("canary", "stable"):
            labels = {"service": "svc", "variant": variant, "tier": "free", "status_class": "2xx"}
            assert registry.get_sample_value("rollout_requests_total", labels) == 5, (
                generate_latest(registry).decode()
            )


async def test_a_canary_failure_over_h2_is_counted_against_the_canary(
    stable: Origin, canary: Origin
) -> None:
    data = _data(stable, canary)
    data["trusted_peers"] = ["127.0.0.1/32"]
    async with running_proxy(data) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        ids = [client.request("/fail", extra=[(b"x-tenant-id", b"tenant-a")]) for _ in range(3)]
        await client.send()
        assert await client.until(lambda c: all(c.ended(s) for s in ids))
        assert [client.status(s) for s in ids] == [503] * 3
        await client.close()
        labels = {"service": "svc", "tier": "free", "status_class": "5xx"}
        count = runtime.registry.get_sample_value
        assert count("rollout_requests_total", {**labels, "variant": "canary"}) == 3
        assert count("rollout_requests_total", {**labels, "variant": "stable"}) is None
        assert len(canary.seen) == 3
        # ... and as evidence: the rollout's analysis counts them as the canary's errors.
        controller: Any = runtime.controller
        rollout = controller.rollouts["svc"]
        assessment = rollout.analysis.assess(controller.clock.monotonic())
        errors = next(c for c in assessment.checks if c.check == "errors")
        assert (errors.canary.requests, errors.canary.events) == (3, 3)


async def test_many_streams_on_one_connection(stable: Origin) -> None:
    async with running_proxy(_data(stable)) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        ids = []
        for rounds in range(3):
            batch = [client.request(f"/seen?n={rounds}-{i}") for i in range(90)]
            await client.send()
            assert await client.until(lambda c, b=batch: all(c.ended(s) for s in b))  # type: ignore[misc]
            ids += batch
        assert [client.status(s) for s in ids] == [200] * 270
        assert len(stable.seen) == 270
        assert len(_engine_h2(runtime)) == 1  # one connection carried them all
        await client.close()


async def test_large_bodies_both_ways_with_a_slow_reader(stable: Origin) -> None:
    size = 3 * 1024 * 1024
    async with running_proxy(_data(stable)) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        client.auto_ack = False  # the client reads slowly: it opens its windows late
        client.h2.increment_flow_control_window(2 * size)  # connection window: no limit here
        await client.send()
        sid = client.request("/echo", method="POST", end=False)
        await client.send()
        payload = bytes(range(256)) * (size // 256)
        sent = 0
        while sent < size:  # the upload, within the proxy's windows
            room = min(client.h2.local_flow_control_window(sid), client.h2.max_outbound_frame_size)
            if room <= 0:
                await client.read(1.0)
                continue
            client.h2.send_data(sid, payload[sent : sent + room])
            sent += room
            await client.send()
        client.h2.end_stream(sid)
        await client.send()
        # A second stream is answered while the first waits for its reader.
        other = client.request("/seen")
        await client.send()
        largest = 0
        while not client.ended(sid):
            events = await client.read(0.05)
            got = sum(
                len(e.data or b"")
                for e in events
                if isinstance(e, DataReceived) and e.stream_id == sid
            )
            for conn in _engine_h2(runtime):
                for stream in conn.streams.values():
                    largest = max(largest, stream.buffered)
            if got:
                await asyncio.sleep(0.01)  # slow
                client.h2.acknowledge_received_data(got, sid)
                await client.send()
            assert not client.eof
        assert client.ended(other)
        assert client.status(other) == 200
        assert client.status(sid) == 200
        assert bytes(client.bodies[sid]) == payload
        assert stable.seen[0]["body"] == size
        assert stable.seen[0]["chunked"]  # no content-length: sent up chunked
        assert largest <= HIGH_WATER + 256 * 1024  # held back, never the whole body
        await client.close()


async def test_a_reload_turning_http2_on_makes_new_tls_connections_offer_h2(
    tmp_path: Path, stable: Origin
) -> None:
    ca = TestCA(tmp_path)
    cert = ca.issue("proxy", ["localhost", "127.0.0.1"])
    data = _data(stable, http2={"enabled": False})
    data["tls"] = {"cert": str(cert.cert), "key": str(cert.key)}
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    runtime = Runtime(load_config(path, {}), env={}, config_path=str(path))
    await runtime.start()
    try:
        client = ssl.create_default_context(cafile=str(ca.pem))
        client.set_alpn_protocols(["h2", "http/1.1"])

        async def alpn() -> str | None:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", runtime.data_address[1], ssl=client, server_hostname="localhost"
            )
            chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            writer.close()
            return str(chosen) if chosen else None

        assert await alpn() == "http/1.1"
        path.write_text(yaml.safe_dump(dict(data, http2={"enabled": True})))
        result = await runtime.reloader.reload("api")
        assert result.ok, result
        assert await alpn() == "h2"
        h2 = await RawH2.open(runtime.data_address[1], tls=client)
        sid = h2.request("/seen")
        await h2.send()
        assert await h2.until(lambda c: c.ended(sid))
        assert h2.status(sid) == 200
        await h2.close()
    finally:
        await runtime.stop(drain_s=0.5, notice_s=0.0)
