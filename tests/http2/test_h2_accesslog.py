"""HTTP/2 in the access log: every stream writes the line an HTTP/1.1 request writes, read back
from the log file field by field (curl by prior knowledge and over TLS, a grpcio call with its
gRPC outcome, a refused upstream, a client that resets its stream); with the log off a stream
runs the plain exchange."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import grpc
import orjson

from proxy.http.h2exchange import H2Exchange
from proxy.logexchange import LoggedH2Exchange
from proxy.runtime import Runtime
from tests.http2.conftest import Origin
from tests.http2.test_grpc import Calls
from tests.support.certs import TestCA
from tests.support.grpcserver import echo_pair
from tests.support.h2client import RawH2
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import Received, RecordingUpstream, Reply

H2C = {"enabled": True, "h2c": True}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
FIELDS = {
    "time", "request_id", "client", "scheme", "forwarded_for", "protocol", "method", "path",
    "status", "grpc_status", "outcome", "duration_ms", "bytes_sent", "service", "variant",
    "tier", "step", "generated", "upstream_failure", "rerouted", "forced",
}  # fmt: skip


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _data(upstream: str, log: Path, **top: Any) -> dict[str, Any]:
    svc = service([upstream], [], steps=[{"percent": 0}], name="shop")
    data = config_dict(
        svc, http2=top.pop("http2", H2C), access_log={"enabled": True, "path": str(log)}, **top
    )
    data["trusted_peers"] = []
    return data


async def _curl(*args: str) -> tuple[bytes, str]:
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-v", "--max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err
    return out, err.decode(errors="replace")


def _request_id(verbose: str) -> str:
    found = re.search(r"^< x-request-id: (\S+)", verbose, re.MULTILINE | re.IGNORECASE)
    assert found is not None, verbose
    return found.group(1)


def _served(line: dict[str, Any], status: int = 200) -> None:
    """What every line of a request the stable upstream answered holds."""
    assert set(line) == FIELDS
    assert TIME.match(line["time"]), line["time"]
    assert line["client"] == "127.0.0.1"
    assert line["forwarded_for"] is None
    assert (line["status"], line["outcome"], line["generated"]) == (status, "completed", False)
    assert (line["service"], line["variant"], line["tier"], line["step"]) == (
        "shop",
        "stable",
        "free",
        0,  # the first (and only) step
    )
    assert (line["upstream_failure"], line["rerouted"], line["forced"]) == (None, False, False)
    assert 0 < line["duration_ms"] < 10_000


async def test_an_h2c_stream_writes_the_line_an_http11_request_writes(
    tmp_path: Path, stable: Origin
) -> None:
    log = tmp_path / "access.log"
    async with running_proxy(_data(stable.url, log)) as runtime:
        base = f"http://127.0.0.1:{runtime.data_address[1]}"
        body, verbose = await _curl("--http2-prior-knowledge", f"{base}/big/1000?token=secret")
        assert "< HTTP/2 200" in verbose
        assert body == b"x" * 1000
        _, verbose11 = await _curl("--http1.1", f"{base}/big/10")
    h2, h11 = _lines(log)
    _served(h2)
    assert (h2["protocol"], h2["scheme"], h2["method"]) == ("HTTP/2", "http", "GET")
    assert h2["path"] == "/big/1000"  # no query string
    assert "secret" not in log.read_text()
    assert h2["request_id"] == _request_id(verbose)
    assert h2["bytes_sent"] == 1000  # the response's DATA
    assert h2["grpc_status"] is None
    _served(h11)
    assert (h11["protocol"], h11["scheme"], h11["path"]) == ("HTTP/1.1", "http", "/big/10")
    assert h11["request_id"] == _request_id(verbose11)


async def test_an_h2_stream_over_tls_is_logged_as_https(tmp_path: Path, stable: Origin) -> None:
    ca = TestCA(tmp_path)
    cert = ca.issue("proxy", ["localhost"])
    log = tmp_path / "access.log"
    data = _data(
        stable.url, log, http2={"enabled": True}, tls={"cert": str(cert.cert), "key": str(cert.key)}
    )
    async with running_proxy(data) as runtime:
        port = runtime.data_address[1]
        tls = ("--cacert", str(ca.pem), "--resolve", f"localhost:{port}:127.0.0.1")
        url = f"https://localhost:{port}/big/300"
        body, verbose = await _curl("--http2", *tls, "-X", "DELETE", url)
        assert "< HTTP/2 200" in verbose
        assert len(body) == 300
        _, verbose11 = await _curl("--http1.1", *tls, url)
    h2, h11 = _lines(log)
    _served(h2)
    assert (h2["protocol"], h2["scheme"], h2["method"]) == ("HTTP/2", "https", "DELETE")
    assert (h2["path"], h2["bytes_sent"]) == ("/big/300", 300)
    assert h2["request_id"] == _request_id(verbose)
    _served(h11)
    assert (h11["protocol"], h11["scheme"], h11["method"]) == ("HTTP/1.1", "https", "GET")
    assert h11["request_id"] == _request_id(verbose11)


async def test_an_answer_the_proxy_made_names_the_upstream_failure(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    log = tmp_path / "access.log"
    async with running_proxy(_data(dead, log)) as runtime:
        url = f"http://127.0.0.1:{runtime.data_address[1]}/down"
        body, verbose = await _curl("--http2-prior-knowledge", url)
        assert "< HTTP/2 502" in verbose
    (line,) = _lines(log)
    assert set(line) == FIELDS
    assert (line["protocol"], line["path"], line["status"]) == ("HTTP/2", "/down", 502)
    assert (line["outcome"], line["generated"], line["upstream_failure"]) == (
        "completed",
        True,
        "connect",
    )
    assert line["bytes_sent"] == len(body)  # the proxy's own short body
    assert line["request_id"] == _request_id(verbose)
    assert line["grpc_status"] is None


async def test_a_grpc_call_is_logged_with_its_grpc_outcome(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with echo_pair(grpc.StatusCode.UNAVAILABLE) as (stable, canary):
        svc = service([stable.url], [canary.url], name="shop", steps=[{"percent": 0}])
        svc["identity"] = [{"header": "x-tenant-id", "kind": "tenant"}]
        svc["upstreams"]["protocol"] = "h2c"
        svc["rollout"]["pins"] = {"t-canary": "canary"}
        data = config_dict(svc, http2=H2C, access_log={"enabled": True, "path": str(log)})
        async with running_proxy(data) as runtime:
            target = f"127.0.0.1:{runtime.data_address[1]}"

            def calls() -> tuple[bytes, grpc.StatusCode]:
                with grpc.insecure_channel(target) as channel:
                    ping = Calls(channel).ping
                    answer = ping(b"hi", metadata=(("x-tenant-id", "t-stable"),), timeout=10)
                    try:
                        ping(b"hi", metadata=(("x-tenant-id", "t-canary"),), timeout=10)
                    except grpc.RpcError as error:
                        return answer, error.code()
                    raise AssertionError("the canary answered")

            answer, code = await asyncio.to_thread(calls)
    assert (answer, code) == (b"pong:stable:hi", grpc.StatusCode.UNAVAILABLE)
    ok, failed = _lines(log)
    for line in (ok, failed):
        assert set(line) == FIELDS
        assert (line["protocol"], line["method"], line["path"]) == (
            "HTTP/2",
            "POST",
            "/test.Echo/Ping",
        )
        # The HTTP status stays 200; the outcome counted is the call's grpc-status.
        assert (line["status"], line["outcome"], line["generated"]) == (200, "completed", False)
        assert line["upstream_failure"] is None
    assert (ok["variant"], ok["grpc_status"]) == ("stable", "grpc:OK")
    assert ok["bytes_sent"] == 5 + len(answer)  # one length-prefixed message
    assert (failed["variant"], failed["grpc_status"]) == ("canary", "grpc:UNAVAILABLE")
    assert failed["bytes_sent"] == 0  # a trailers-only answer: no DATA


async def _held_stream(runtime: Runtime, upstream: RecordingUpstream) -> tuple[RawH2, int, Any]:
    """A stream whose upstream has its request and has not answered yet."""
    client = await RawH2.open(runtime.data_address[1])
    sid = client.request("/held?q=1")
    await client.send()
    for _ in range(500):
        if upstream.requests:
            break
        await asyncio.sleep(0.01)
    engine: Any = runtime._engine
    (conn,) = [c for c in engine.connections if hasattr(c, "streams")]
    return client, sid, conn.streams[sid].exchange


async def test_a_reset_stream_is_an_abort_and_the_log_off_runs_the_plain_exchange(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()

    async def held(_: Received) -> Reply:
        await release.wait()
        return Reply()

    upstream = await RecordingUpstream("stable", handler=held).start()
    unlogged = _data(upstream.url, tmp_path / "unused.log")
    del unlogged["access_log"]
    async with running_proxy(unlogged) as runtime:
        client, _, exchange = await _held_stream(runtime, upstream)
        assert type(exchange) is H2Exchange  # no logging subclass, nothing counted
        release.set()
        await client.close()
    release.clear()
    upstream.requests.clear()
    log = tmp_path / "access.log"
    async with running_proxy(_data(upstream.url, log)) as runtime:
        client, sid, exchange = await _held_stream(runtime, upstream)
        assert type(exchange) is LoggedH2Exchange
        client.h2.reset_stream(sid)
        await client.send()
        access_log = runtime.access_log
        assert access_log is not None
        for _ in range(500):
            if access_log.written:
                break
            await asyncio.sleep(0.01)
        release.set()
        await client.close()
    (line,) = _lines(log)
    assert set(line) == FIELDS
    assert (line["protocol"], line["path"], line["status"], line["outcome"]) == (
        "HTTP/2",
        "/held",
        None,
        "aborted",
    )
    assert (line["bytes_sent"], line["generated"], line["variant"]) == (0, False, "stable")
    await upstream.close()


async def test_a_body_refused_on_a_stream_is_logged_as_refused(tmp_path: Path) -> None:
    upstream = await RecordingUpstream("stable").start()
    log = tmp_path / "access.log"
    async with running_proxy(_data(upstream.url, log, limits={"max_body_bytes": 10})) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        sid = client.request("/upload", method="POST", end=False)
        client.h2.send_data(sid, b"x" * 100, end_stream=True)
        await client.send()
        assert await client.until(lambda c: c.ended(sid))
        assert client.status(sid) == 413
        request_id = client.headers(sid)[b"x-request-id"].decode()
        await client.close()
    (line,) = _lines(log)
    assert set(line) == FIELDS
    assert (line["protocol"], line["method"], line["path"]) == ("HTTP/2", "POST", "/upload")
    assert (line["status"], line["outcome"], line["generated"]) == (413, "refused", True)
    assert line["request_id"] == request_id
    assert line["upstream_failure"] is None
    await upstream.close()
