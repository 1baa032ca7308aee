"""The HTTP side of the prometheus checks against a real `prometheus` (and against servers that
misbehave): values, Prometheus's own errors, no series, a hung server, a refused connection,
an answer that is not JSON or is too large. Every failure is a reason, never an exception."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from proxy.config.model import Upstream, UpstreamsConfig
from proxy.core.promql import PromCheck
from proxy.promquery import MAX_ANSWER_BYTES, PromReader, instances
from tests.support.prometheus import PaymentsApp, PrometheusServer


def _check(url: str, timeout_s: float = 2.0) -> PromCheck:
    bad = 'sum(payment_failures_total{version="{{variant}}"})'
    return PromCheck("payments", url, "PROM_URL", bad, bad, timeout_s=timeout_s)


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[tuple[PrometheusServer, PaymentsApp]]:
    app = await PaymentsApp("v1", fail_every=2).start()
    server = await PrometheusServer(tmp_path, [app.instance]).start()
    try:
        yield server, app
    finally:
        await server.stop()
        await app.close()


@pytest.fixture
async def reader() -> AsyncIterator[PromReader]:
    reading = PromReader()
    yield reading
    await reading.close()


async def test_values_errors_and_empty_answers_from_a_real_prometheus(
    prometheus: tuple[PrometheusServer, PaymentsApp], reader: PromReader
) -> None:
    server, app = prometheus
    for _ in range(4):
        await app.pay(None)  # type: ignore[arg-type]  # the handler does not read the request
    await server.scraped()
    check = _check(server.url)
    got = await reader.query(check, 'sum(payment_attempts_total{version="v1"})')
    assert got == {"": 4.0}
    by_series = await reader.query(check, 'payment_failures_total{version="v1"}')
    assert isinstance(by_series, dict)
    assert list(by_series.values()) == [2.0]
    assert "version=v1" in next(iter(by_series))
    syntax = await reader.query(check, "sum(payment_attempts_total{")
    assert isinstance(syntax, str)
    assert syntax.startswith("prometheus answered bad_data: ")
    empty = await reader.query(check, 'sum(payment_attempts_total{version="v9"})')
    assert empty == "the query returned no series"


async def test_a_hung_server_is_a_timeout_within_the_checks_timeout(reader: PromReader) -> None:
    async def hang(reader_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        got = await reader.query(_check(f"http://127.0.0.1:{port}", 0.3), "up")
        assert got == "timed out after 0.3s"
        assert time.monotonic() - started < 1.5
    finally:
        server.close()


async def test_a_refused_connection_is_no_data(reader: PromReader) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    got = await reader.query(_check(f"http://127.0.0.1:{port}"), "up")
    assert isinstance(got, str)
    assert got.startswith("ClientConnectorError: ")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>proxy error</html>", "the answer (HTTP 200) is not JSON"),
        (b" " * (MAX_ANSWER_BYTES + 10), "the answer is larger than 1,048,576 bytes"),
    ],
)
async def test_an_answer_that_is_not_prometheus_json_is_no_data(
    reader: PromReader, body: bytes, reason: str
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/api/v1/query", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        assert await reader.query(_check(f"http://127.0.0.1:{port}"), "up") == reason
    finally:
        await runner.cleanup()


def test_instances_are_the_host_port_of_each_pool() -> None:
    pools = UpstreamsConfig(
        stable=(Upstream("10.0.0.1", 80), Upstream("10.0.0.2", 8080, "https")),
        canary=(Upstream("::1", 81),),
    )
    assert instances(pools, "stable") == ["10.0.0.1:80", "10.0.0.2:8080"]
    assert instances(pools, "canary") == ["[::1]:81"]
