"""A pipelined request refused while an earlier one is still running, over loopback sockets.

The refused request is never started: none of its bytes reach an upstream. The client gets the
earlier responses whole and in order, then the refusal, then the close, however long the earlier
exchange runs: while it runs the connection only waits, so the refused request's header and body
deadlines cannot cut it. The refusal is counted in `rollout_rejected_requests_total` and never
as a client abort.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from proxy.runtime import Runtime
from tests.support.client import scrape, series, value
from tests.support.promtool import metrics_text, promtool_check
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.rawhttp import UNTRUSTED, Outcome, exchange, h11_oracle
from tests.support.upstream import Received, RecordingUpstream, Reply

SLOW_S = 1.0  # how long the upstream takes to answer the first request
TIMEOUT = "0.3s"  # header and body timeouts, well under SLOW_S
LIMITS: dict[str, Any] = {
    "header_timeout": TIMEOUT,
    "body_timeout": TIMEOUT,
    "max_header_bytes": 4096,
    "max_body_bytes": 1000,
}


def req(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


FIRST = req(b"GET /first HTTP/1.1", b"Host: a")
CHUNKED = req(b"POST /refused HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked")


async def slow_first(received: Received) -> Reply:
    if received.target == "/first":
        await asyncio.sleep(SLOW_S)
    return Reply(body=f"{received.method} {received.target}".encode())


@asynccontextmanager
async def slow_proxy(**limits: Any) -> AsyncIterator[tuple[Runtime, RecordingUpstream]]:
    upstream = await RecordingUpstream(handler=slow_first).start()
    data = config_dict(
        service([upstream.url], [upstream.url]),
        limits={**LIMITS, **limits},
        trusted_peers=UNTRUSTED,
    )
    try:
        async with running_proxy(data) as proxy:
            yield proxy, upstream
    finally:
        await upstream.close()
        await asyncio.sleep(0.01)


def assert_first_then_refused(outcome: Outcome, status: int, upstream: RecordingUpstream) -> None:
    """The first response complete, then the refusal, then the close; the upstream got exactly
    the first request."""
    assert outcome.statuses == [200, status], outcome.raw
    first, refusal = outcome.responses
    assert first.body == b"GET /first"
    assert first.header(b"connection") != b"close"
    assert refusal.header(b"connection") == b"close"
    assert outcome.rest == b""
    assert outcome.closed, "the connection must be closed after the refusal"
    assert upstream.protocol_errors == []
    oracle = h11_oracle(bytes(upstream.raw))
    assert oracle.error is None, oracle.error
    assert oracle.leftover == b"", f"bytes after the first request: {oracle.leftover!r}"
    assert [(r.method, r.target) for r in oracle.requests] == [(b"GET", b"/first")]
    assert [r.target for r in upstream.requests] == ["/first"]
    assert b"/refused" not in upstream.raw


# The requests are sent in parts 0.1 s apart (each part is a read of its own), so that the
# refused one is refused while the first request's exchange is running upstream.
BAD_CHUNK = (FIRST + CHUNKED + b"5\r\nhello\r\n", b"0x1\r\nx\r\n")
BIG_CHUNK = (FIRST + CHUNKED, b"400\r\n" + b"x" * 1024 + b"\r\n")
BAD_HEAD = (
    FIRST,
    req(b"POST /refused HTTP/1.1", b"Host: a", b"Content-Length: 1", b"Content-Length: 2"),
)
BIG_HEAD = (FIRST, b"GET /refused HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 5000 + b"\r\nX: 1\r\n")
SLOW_BODY = (FIRST + req(b"POST /refused HTTP/1.1", b"Host: a", b"Content-Length: 10", body=b"ab"),)
SLOW_HEAD = (FIRST + b"GET /refused HTTP/1.1\r\nHost: a\r\n",)


async def refused_behind_first(parts: tuple[bytes, ...], status: int, **limits: Any) -> None:
    """Send `parts`; the first response, then the refusal `status`, then the close, and the
    refusal counted as such (not as a client abort)."""
    async with slow_proxy(**limits) as (proxy, upstream):
        outcome = await exchange(proxy.data_address[1], parts, responses=2, gap=0.1, wait=5)
        await asyncio.sleep(0.05)  # the upstream connection, if any, has seen what it will
        samples = await scrape(proxy)
    assert_first_then_refused(outcome, status, upstream)
    assert value(samples, "rollout_rejected_requests_total", status=str(status)) == 1
    assert not any(series(samples, "rollout_client_aborts_total").values())
    assert not any(series(samples, "rollout_upstream_failures_total").values())


@pytest.mark.parametrize(
    ("parts", "status"),
    [pytest.param(BAD_CHUNK, 400, id="bad-chunk"), pytest.param(BIG_CHUNK, 413, id="too-large")],
)
async def test_body_refused_while_waiting_is_never_started(
    parts: tuple[bytes, ...], status: int
) -> None:
    """A request whose body is refused while it waits in the queue is taken out of it: it is
    never started after the first, so none of its bytes reach the upstream."""
    await refused_behind_first(parts, status, header_timeout="10s", body_timeout="10s")


async def test_body_deadline_of_a_waiting_request_is_answered_after_the_first_response() -> None:
    """The 408 of a waiting request's body waits for the first response to be complete."""
    await refused_behind_first(SLOW_BODY, 408)


@pytest.mark.parametrize(
    ("parts", "status"),
    [
        pytest.param(BAD_CHUNK, 400, id="bad-chunk"),
        pytest.param(BIG_CHUNK, 413, id="body-too-large"),
        pytest.param(BAD_HEAD, 400, id="bad-head"),
        pytest.param(BIG_HEAD, 431, id="head-too-large"),
    ],
)
async def test_refusal_waits_behind_a_request_slower_than_the_read_deadlines(
    parts: tuple[bytes, ...], status: int
) -> None:
    """Once a request is refused the connection only waits for the one running before it:
    the refused request's header and body deadlines, long passed, cut nothing."""
    await refused_behind_first(parts, status)


async def test_head_deadline_behind_a_running_request_is_answered_after_its_response() -> None:
    """A pipelined head not received in time is refused with 408 in its turn, not by cutting
    the connection under the response of the request before it."""
    await refused_behind_first(SLOW_HEAD, 408)


async def test_refused_request_behind_several_is_answered_after_all_of_them() -> None:
    """Requests queued before the refused one are all served, in order, before the refusal."""
    second = req(b"GET /second HTTP/1.1", b"Host: a")
    parts = (FIRST + second + CHUNKED + b"5\r\nhello\r\n", b"0x1\r\nx\r\n")
    async with slow_proxy() as (proxy, upstream):
        outcome = await exchange(proxy.data_address[1], parts, responses=3, gap=0.1, wait=5)
    assert outcome.statuses == [200, 200, 400], outcome.raw
    assert [r.body for r in outcome.responses[:2]] == [b"GET /first", b"GET /second"]
    assert outcome.closed
    oracle = h11_oracle(bytes(upstream.raw))
    assert oracle.error is None, oracle.error
    assert oracle.leftover == b""
    assert [r.target for r in oracle.requests] == [b"/first", b"/second"]


async def test_body_held_back_by_a_full_queue_is_not_timed() -> None:
    """A body the proxy stopped reading (the pipelined queue is full) is not the client's
    delay: it is read once the queue has room, and the request is served."""
    post = req(b"POST /third HTTP/1.1", b"Host: a", b"Content-Length: 5")
    second = req(b"GET /second HTTP/1.1", b"Host: a")
    parts = (FIRST + second + post, b"hello")
    async with slow_proxy(max_pipelined=2) as (proxy, upstream):
        outcome = await exchange(proxy.data_address[1], parts, responses=3, gap=0.1, wait=5)
    assert outcome.statuses == [200, 200, 200], outcome.raw
    assert [r.body for r in outcome.responses] == [b"GET /first", b"GET /second", b"POST /third"]
    assert not outcome.closed
    assert [(r.target, r.body) for r in upstream.requests] == [
        ("/first", b""),
        ("/second", b""),
        ("/third", b"hello"),
    ]


async def test_refusal_metric_passes_promtool() -> None:
    async with slow_proxy() as (proxy, _):
        port = proxy.data_address[1]
        await exchange(port, req(b"GET / HTTP/1.1", b"Host: a", b"Content-Length: x"))
        await exchange(port, req(b"GET / HTTP/1.1", b"Host: a", b"X-Big: " + b"y" * 5000))
        await exchange(
            port, req(b"GET / HTTP/1.1", b"Host: a", b"Content-Length: 1", b"Content-Length: 1")
        )
        samples = await scrape(proxy)
        text = await metrics_text(proxy)
    rejected = {
        dict(labels)["status"]: count
        for labels, count in series(samples, "rollout_rejected_requests_total").items()
    }
    assert rejected == {"400": 2, "431": 1}
    await promtool_check(text)
