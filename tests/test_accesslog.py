"""Access logs: one JSON line per ended exchange, with no ids, cookies or tokens in it, written
off the event loop; a sink that cannot be written or keeps no pace costs lines, never requests."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.accesslog import AccessLog
from proxy.http.exchange import Exchanges
from tests.support.client import RawConnection, exchange, get
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import Received, RecordingUpstream, Reply

SECRETS = ("tenant-secret-41", "cookie-secret-42", "jwt-secret-43", "query-secret-44", "path-45")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _logged(*services: dict[str, Any], path: Path) -> dict[str, Any]:
    return config_dict(*services, access_log={"enabled": True, "path": str(path)})


async def test_a_line_per_exchange_with_its_fields_and_no_ids_or_credentials(
    tmp_path: Path,
) -> None:
    stable = await RecordingUpstream("stable").start()
    canary = await RecordingUpstream("canary").start()
    log = tmp_path / "access.log"
    identity = [
        {"header": "X-Tenant-ID", "kind": "tenant"},
        {"path": "^/t/(?P<id>[^/]+)/", "kind": "user"},
    ]
    svc = service(
        [stable.url], [canary.url], steps=[{"tiers": ["paid"]}], identity=identity, name="shop"
    )
    svc["tiers"] = {"tenants": {SECRETS[0]: "paid"}, "default": "free"}
    svc["rollout"]["baseline"] = 0  # straight to the first step
    head = get(
        f"/t/{SECRETS[4]}/orders?token={SECRETS[3]}",
        {
            "X-Tenant-ID": SECRETS[0],
            "Cookie": f"uid={SECRETS[1]}",
            "Authorization": f"Bearer {SECRETS[2]}",
        },
    )
    async with running_proxy(_logged(svc, path=log)) as proxy:
        conn = await RawConnection.open(proxy.data_address[1])
        await conn.send(head)
        await conn.response()
        await conn.close()
        raw = bytes(await _raw_response(proxy.data_address[1], get("/plain")))
    text = log.read_text()
    for secret in SECRETS:
        assert secret not in text
    first, second = _lines(log)
    assert TIME.match(first["time"]), first["time"]
    assert first["method"] == "GET"
    assert first["path"] == "/t/{id}/orders"
    assert (first["status"], first["outcome"], first["generated"]) == (200, "completed", False)
    assert (first["service"], first["variant"], first["tier"], first["step"]) == (
        "shop",
        "canary",
        "paid",
        0,
    )
    assert first["client"] == "127.0.0.1"
    assert first["upstream_failure"] is None
    assert first["bytes_sent"] > 0
    assert 0 <= first["duration_ms"] < 5000
    assert (second["path"], second["variant"], second["tier"]) == ("/plain", "stable", "free")
    assert second["bytes_sent"] == len(raw)  # every byte the client got, head and body
    await stable.close()
    await canary.close()


async def _raw_response(port: int, head: bytes) -> bytearray:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head[:-2] + b"Connection: close\r\n\r\n")
    data = bytearray()
    while chunk := await asyncio.wait_for(reader.read(65536), 5):
        data += chunk
    writer.close()
    return data


async def test_a_client_that_goes_away_is_logged_as_an_abort(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow(_: Received) -> Reply:
        await release.wait()
        return Reply()

    upstream = await RecordingUpstream("stable", handler=slow).start()
    log = tmp_path / "access.log"
    async with running_proxy(
        _logged(service([upstream.url], [], steps=[{"percent": 0}]), path=log)
    ) as proxy:
        conn = await RawConnection.open(proxy.data_address[1])
        await conn.send(get("/slow"))
        await _until(lambda: bool(upstream.raw))
        await conn.close()
        access_log = proxy.access_log
        assert access_log is not None
        await _until(lambda: access_log.written == 1)
        release.set()
    (line,) = _lines(log)
    assert (line["path"], line["outcome"], line["status"]) == ("/slow", "aborted", None)
    await upstream.close()


async def test_logs_off_costs_nothing_on_the_request_path() -> None:
    upstream = await RecordingUpstream("stable").start()
    async with running_proxy(
        config_dict(service([upstream.url], [], steps=[{"percent": 0}]))
    ) as proxy:
        engine = proxy._engine
        assert engine is not None
        # the plain maker of exchanges, no logging subclass
        assert type(engine.exchanges) is Exchanges
        assert proxy.access_log is None
        assert (await exchange(proxy.data_address[1], get("/"))).status == 200
    await upstream.close()


async def test_a_path_that_cannot_be_written_is_said_once_and_requests_go_on(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    upstream = await RecordingUpstream("stable").start()
    log = tmp_path / "missing-dir" / "access.log"
    async with running_proxy(
        _logged(service([upstream.url], [], steps=[{"percent": 0}]), path=log)
    ) as proxy:
        port = proxy.data_address[1]
        for _ in range(3):
            assert (await exchange(port, get("/lost"))).status == 200
        access_log = proxy.access_log
        assert access_log is not None
        await _until(lambda: access_log.dropped == 3)
        log.parent.mkdir()  # the cause is gone: the log resumes by itself
        assert (await exchange(port, get("/kept"))).status == 200
        await _until(lambda: access_log.written == 1)
    assert [line["path"] for line in _lines(log)] == ["/kept"]
    err = capfd.readouterr().err
    assert err.count("cannot write to") == 1, err
    assert f"cannot write to {log}" in err
    assert "again (3 line(s) dropped so far)" in err
    await upstream.close()


async def test_a_rotated_file_is_created_anew(tmp_path: Path) -> None:
    upstream = await RecordingUpstream("stable").start()
    log = tmp_path / "access.log"
    config = _logged(service([upstream.url], [], steps=[{"percent": 0}]), path=log)
    async with running_proxy(config) as proxy:
        access_log = proxy.access_log
        assert access_log is not None
        port = proxy.data_address[1]
        assert (await exchange(port, get("/before"))).status == 200
        await _until(lambda: access_log.written == 1)
        log.rename(tmp_path / "access.log.1")  # what logrotate does
        assert (await exchange(port, get("/after"))).status == 200
        await _until(lambda: access_log.written == 2)
    assert [line["path"] for line in _lines(tmp_path / "access.log.1")] == ["/before"]
    assert [line["path"] for line in _lines(log)] == ["/after"]
    await upstream.close()


async def test_standard_output(capfd: pytest.CaptureFixture[str]) -> None:
    upstream = await RecordingUpstream("stable").start()
    config = config_dict(
        service([upstream.url], [], steps=[{"percent": 0}]),
        access_log={"enabled": True, "path": "-"},
    )
    async with running_proxy(config) as proxy:
        response = await exchange(proxy.data_address[1], get("/out"))
    out = capfd.readouterr().out
    (line,) = [orjson.loads(text) for text in out.splitlines() if text.startswith("{")]
    assert line["path"] == "/out"
    assert [line["request_id"]] == [v for n, v in response.headers if n == "x-request-id"]
    await upstream.close()


async def test_a_sink_that_does_not_keep_up_never_blocks_the_loop(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A pipe nobody reads: the writer thread blocks, the loop does not; lines beyond the
    bound are dropped, said once; once the reader comes the rest is written."""
    read_end, write_end = os.pipe()
    loop = asyncio.get_running_loop()
    log = AccessLog(f"/proc/self/fd/{write_end}", loop, flush_bytes=4096, max_bytes=256 * 1024)
    log.start()
    line = b'{"path":"/x"}' + b" " * 86 + b"\n"  # 100 bytes
    worst = 0.0
    for _ in range(40):  # 4 MB offered against a 64 KiB pipe and a 256 KiB buffer
        began = time.perf_counter()
        for _ in range(1000):
            log.add(line)
        worst = max(worst, time.perf_counter() - began)
        slept = time.perf_counter()
        await asyncio.sleep(0.005)
        worst = max(worst, time.perf_counter() - slept - 0.005)
    assert log.dropped > 0
    assert worst < 0.25, f"the loop was held {worst:.3f} s"
    drained = bytearray()
    reader = threading.Thread(target=_drain, args=(read_end, drained), daemon=True)
    reader.start()
    await log.close()
    os.close(write_end)
    reader.join(5)
    assert len(drained) == log.written * len(line)
    assert log.written + log.dropped == 40_000
    err = capfd.readouterr().err
    assert err.count("does not keep up") == 1, err


def _drain(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 65536):
        into += chunk
    os.close(fd)
