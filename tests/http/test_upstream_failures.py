"""End to end: upstream failures become 502/504 counted against the variant that failed, a
client that hangs up is counted as an abort (never as an upstream failure), and the metrics on
the admin listener equal what was sent."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest

from proxy.runtime import Runtime
from tests.support.client import (
    RawConnection,
    Samples,
    closed_port,
    exchange,
    get,
    scrape,
    series,
    value,
)
from tests.support.promtool import metrics_text, promtool_check
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.servers import ScriptedUpstream, content_length, read_head, reset, target_of
from tests.support.upstream import Received, RecordingUpstream, Reply

TO_CANARY = {"X-Tenant-ID": "beta-corp"}  # pinned to canary below


def pinned_service(stable: list[str], canary: list[str], **extra: Any) -> dict[str, Any]:
    rollout = {"salt": "s", "pins": {"beta-corp": "canary"}, "steps": [{"percent": 0}]}
    return service(stable, canary, rollout=rollout, **extra)


@asynccontextmanager
async def proxy_for(
    stable: list[str], canary: list[str], **limits: Any
) -> AsyncIterator[tuple[Runtime, int]]:
    config = config_dict(pinned_service(stable, canary), limits=limits)
    async with running_proxy(config) as proxy:
        yield proxy, proxy.data_address[1]


def failures(samples: Samples) -> dict[tuple[str, str], float]:
    """(variant, reason) -> count, for every non-zero failure series."""
    return {
        (dict(labels)["variant"], dict(labels)["reason"]): v
        for labels, v in series(samples, "rollout_upstream_failures_total").items()
        if v
    }


def aborts(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["variant"]: v
        for labels, v in series(samples, "rollout_client_aborts_total").items()
        if v
    }


async def test_closed_port_is_a_502_counted_as_connect_against_that_variant() -> None:
    stable = await RecordingUpstream("stable").start()
    dead = [f"http://127.0.0.1:{closed_port()}"]
    # Without a retry budget (test_retry_on_stable.py has the retried case).
    async with proxy_for([stable.url], dead, retry_budget_percent=0) as (proxy, port):
        failed = await exchange(port, get("/", TO_CANARY))
        fine = await exchange(port, get("/"))
        samples = await scrape(proxy)
    await stable.close()
    assert failed.status == 502
    assert fine.status == 200
    assert failures(samples) == {("canary", "connect"): 1}
    labels = {"service": "svc", "tier": "free"}
    assert (
        value(samples, "rollout_requests_total", **labels, variant="canary", status_class="5xx")
        == 1
    )
    assert (
        value(samples, "rollout_requests_total", **labels, variant="stable", status_class="2xx")
        == 1
    )


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    await reader.read()  # never answers; returns when the proxy gives up and closes


async def test_upstream_that_never_answers_is_a_504_after_the_response_timeout() -> None:
    upstream = await ScriptedUpstream(silent).start()
    async with proxy_for([upstream.url], [upstream.url], response_timeout=0.3) as (proxy, port):
        started = time.monotonic()
        response = await exchange(port, get("/"))
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.05)
        samples = await scrape(proxy)
    await upstream.close()
    assert response.status == 504
    assert 0.29 <= elapsed < 1.0, elapsed
    assert failures(samples) == {("stable", "timeout"): 1}
    assert upstream.closed == 1, "the proxy kept the timed-out upstream connection"


async def stall_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    await writer.drain()
    await reader.read()


async def test_upstream_that_stalls_mid_body_is_cut_after_the_body_timeout() -> None:
    upstream = await ScriptedUpstream(stall_mid_body).start()
    async with proxy_for([upstream.url], [upstream.url], body_timeout=0.3) as (proxy, port):
        conn = await RawConnection.open(port)
        await conn.send(get("/"))
        started = time.monotonic()
        with pytest.raises(h11.RemoteProtocolError):
            await conn.response()
        elapsed = time.monotonic() - started
        await conn.close()
        samples = await scrape(proxy)
    await upstream.close()
    assert 0.29 <= elapsed < 1.0, elapsed
    assert failures(samples) == {("stable", "timeout"): 1}


def cut_after(head: bytes, body: bytes, *, rst: bool) -> Any:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head + body)
        await writer.drain()
        await asyncio.sleep(0.05)
        if rst:
            reset(writer)
        else:
            writer.close()

    return script


CUTS = {
    "length, reset": (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x" * 5000, True),
    "length, fin": (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x" * 5000, False),
    "chunked, reset": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"1000\r\n" + b"x" * 4096 + b"\r\n",
        True,
    ),
    "chunked, fin": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"1000\r\n" + b"x" * 4096 + b"\r\n",
        False,
    ),
}


def drain_events(conn: h11.Connection) -> list[object]:
    """Every event h11 can extract; a protocol error ends the list."""
    events: list[object] = []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return [*events, exc]
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return events
        events.append(event)


@pytest.mark.parametrize("case", list(CUTS))
async def test_upstream_cut_mid_body_leaves_the_client_truncated_and_closed(case: str) -> None:
    head, body, rst = CUTS[case]
    upstream = await ScriptedUpstream(cut_after(head, body, rst=rst)).start()
    async with proxy_for([upstream.url], [upstream.url]) as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/"))
        async with asyncio.timeout(5):
            raw = await reader.read()  # everything until the proxy closes
        writer.close()
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "app")]))
        conn.receive_data(raw)
        conn.receive_data(b"")
        events = drain_events(conn)
        samples = await scrape(proxy)
    await upstream.close()
    assert isinstance(events[-1], h11.RemoteProtocolError), events
    assert isinstance(events[0], h11.Response)
    assert events[0].status_code == 200
    assert not any(isinstance(e, h11.EndOfMessage) for e in events)
    assert not raw.endswith(b"0\r\n\r\n")
    assert failures(samples) == {("stable", "reset"): 1}


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"SMTP ready\r\n\r\n",
    ],
    ids=["space-before-colon", "two-lengths", "cl-and-te", "nul", "status", "not-http"],
)
async def test_malformed_upstream_response_is_a_502_counted_as_protocol(reply: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(reply)
        await writer.drain()
        await reader.read()

    upstream = await ScriptedUpstream(script).start()
    async with proxy_for([upstream.url], [upstream.url]) as (proxy, port):
        response = await exchange(port, get("/"))
        samples = await scrape(proxy)
    await upstream.close()
    assert response.status == 502
    assert failures(samples) == {("stable", "protocol"): 1}


async def test_dead_endpoint_is_ejected_and_traffic_flows_to_the_live_one() -> None:
    live = await RecordingUpstream("live").start()
    dead = f"http://127.0.0.1:{closed_port()}"
    limits = {"eject_failures": 3, "eject": "30s"}
    async with proxy_for([dead, live.url], [live.url], **limits) as (proxy, port):
        conn = await RawConnection.open(port)
        statuses = []
        for _ in range(12):
            await conn.send(get("/"))
            statuses.append((await conn.response()).status)
        await conn.close()
        samples = await scrape(proxy)
    await live.close()
    assert statuses == [200] * 12, "a connect failure reached the client"
    assert len(live.requests) == 12
    # Each request tried the dead endpoint (round-robin) until it was ejected, then no more.
    assert failures(samples) == {("stable", "connect"): 3}


async def test_ejected_endpoint_is_tried_again_after_the_ejection() -> None:
    live = await RecordingUpstream("live").start()
    dead = f"http://127.0.0.1:{closed_port()}"
    limits = {"eject_failures": 1, "eject": "300ms"}
    async with proxy_for([dead, live.url], [live.url], **limits) as (proxy, port):
        conn = await RawConnection.open(port)

        async def burst() -> list[int]:
            statuses = []
            for _ in range(4):
                await conn.send(get("/"))
                statuses.append((await conn.response()).status)
            return statuses

        first = await burst()
        ejected = failures(await scrape(proxy))
        await asyncio.sleep(0.4)
        second = await burst()
        await conn.close()
        samples = await scrape(proxy)
    await live.close()
    assert first == second == [200] * 4
    assert ejected == {("stable", "connect"): 1}
    assert failures(samples) == {("stable", "connect"): 2}


async def test_live_endpoints_share_the_traffic_round_robin() -> None:
    one = await RecordingUpstream("one").start()
    two = await RecordingUpstream("two").start()
    async with proxy_for([one.url, two.url], [one.url]) as (_, port):
        conn = await RawConnection.open(port)
        bodies = []
        for _ in range(10):
            await conn.send(get("/"))
            bodies.append((await conn.response()).body)
        await conn.close()
    await one.close()
    await two.close()
    assert bodies == [b"one\n", b"two\n"] * 5
    assert (one.connections, two.connections) == (1, 1)


async def test_full_pool_queue_answers_503_at_once() -> None:
    async def slow(received: Received) -> Reply:
        await asyncio.sleep(0.4)
        return Reply()

    upstream = await RecordingUpstream(handler=slow).start()
    limits = {"pool_max_concurrency": 1, "pool_queue": 1}
    async with proxy_for([upstream.url], [upstream.url], **limits) as (proxy, port):

        async def timed(delay: float) -> tuple[int, float]:
            await asyncio.sleep(delay)
            started = time.monotonic()
            response = await exchange(port, get("/"))
            return response.status, time.monotonic() - started

        # Staggered a little so that the order of arrival is known.
        results = await asyncio.gather(*(timed(0.02 * i) for i in range(4)))
        samples = await scrape(proxy)
    await upstream.close()
    assert [status for status, _ in results] == [200, 200, 503, 503]
    assert all(elapsed < 0.2 for status, elapsed in results if status == 503), results
    assert results[1][1] > 0.6, "the queued request did not wait for the slot"
    assert len(upstream.requests) == 2
    assert failures(samples) == {}


def answering_slowly(head_read: asyncio.Event, *, send_some: bool) -> Any:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        head_read.set()
        if send_some:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 65536)
            await writer.drain()
        await reader.read()  # until the proxy closes the connection

    return script


@pytest.mark.parametrize("when", ["mid-response", "before-response"])
async def test_client_hang_up_is_an_abort_not_an_upstream_failure(when: str) -> None:
    head_read = asyncio.Event()
    upstream = ScriptedUpstream(answering_slowly(head_read, send_some=when == "mid-response"))
    await upstream.start()
    async with proxy_for([upstream.url], [upstream.url]) as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/", TO_CANARY))
        async with asyncio.timeout(5):
            await head_read.wait()
            if when == "mid-response":  # the head and some body arrived
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(1000)
        writer.close()
        async with asyncio.timeout(5):
            await upstream.wait_closed()  # the proxy let go of the upstream connection
        samples = await scrape(proxy)
    await upstream.close()
    assert aborts(samples) == {"canary": 1}
    assert failures(samples) == {}
    assert not any(series(samples, "rollout_requests_total").values())


# --- metric values equal what was sent ------------------------------------------------------


def by_path(received: Received) -> Reply:
    status = {"/ok": 200, "/missing": 404, "/boom": 500, "/moved": 301}[received.target]
    return Reply(status=status, body=b"body")


SENT = [
    # (tenant or None, path, count) -> (variant, tier, status class)
    ("acme", "/ok", 7),
    ("acme", "/missing", 2),
    ("umbrella", "/ok", 5),
    ("umbrella", "/boom", 1),
    ("globex", "/ok", 3),
    ("globex", "/moved", 1),
    (None, "/ok", 4),
]


async def test_metric_values_equal_what_was_sent() -> None:
    upstream = await RecordingUpstream(handler=by_path).start()
    svc = service(
        [upstream.url],
        [upstream.url],
        tiers={"tenants": {"acme": "enterprise", "globex": "enterprise"}, "default": "free"},
        rollout={
            "salt": "s",
            "pins": {"acme": "canary", "umbrella": "canary", "globex": "stable"},
            "steps": [{"percent": 0}],
        },
    )
    async with running_proxy(config_dict(svc)) as proxy:
        conn = await RawConnection.open(proxy.data_address[1])
        for tenant, path, count in SENT:
            headers = {"X-Tenant-ID": tenant} if tenant else {}
            for _ in range(count):
                await conn.send(get(path, headers))
                await conn.response()
        await conn.close()
        samples = await scrape(proxy)
        text = await metrics_text(proxy)
    await upstream.close()
    requests = {
        tuple(dict(labels)[k] for k in ("variant", "tier", "status_class")): v
        for labels, v in series(samples, "rollout_requests_total").items()
        if v
    }
    assert requests == {
        ("canary", "enterprise", "2xx"): 7,
        ("canary", "enterprise", "4xx"): 2,
        ("canary", "free", "2xx"): 5,
        ("canary", "free", "5xx"): 1,
        ("stable", "enterprise", "2xx"): 3,
        ("stable", "enterprise", "3xx"): 1,
        ("stable", "free", "2xx"): 4,
    }
    counts = {
        (dict(labels)["variant"], dict(labels)["tier"]): v
        for labels, v in series(samples, "rollout_request_duration_seconds_count").items()
    }
    assert counts == {
        ("canary", "enterprise"): 9,
        ("canary", "free"): 6,
        ("stable", "enterprise"): 4,
        ("stable", "free"): 4,
    }
    for (variant, tier), observed in counts.items():
        labels = {"service": "svc", "variant": variant, "tier": tier}
        assert (
            value(samples, "rollout_request_duration_seconds_bucket", **labels, le="+Inf")
            == observed
        )
        assert 0 < value(samples, "rollout_request_duration_seconds_sum", **labels) < observed
    assert failures(samples) == {}
    assert aborts(samples) == {}
    assert value(samples, "rollout_step", service="svc") == 0
    assert value(samples, "rollout_canary_percent", service="svc") == 0
    assert not any("acme" in dict(labels).values() for (_, labels) in samples), "raw id as label"
    await promtool_check(text)


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full: a connect to it hangs (the SYN is dropped)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


async def test_connect_timeout_is_a_502_counted_as_connect() -> None:
    with unanswered_port() as port_nobody_accepts:
        dead = f"http://127.0.0.1:{port_nobody_accepts}"
        async with proxy_for([dead], [dead], connect_timeout=0.3) as (proxy, port):
            started = time.monotonic()
            response = await exchange(port, get("/"))
            elapsed = time.monotonic() - started
            samples = await scrape(proxy)
    assert response.status == 502
    assert 0.29 <= elapsed < 1.0, elapsed
    assert failures(samples) == {("stable", "connect"): 1}


def closes_its_first_connection_on_the_second_request() -> Any:
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        while True:
            head = await read_head(reader)
            await reader.readexactly(content_length(head))
            if first and b"/second" in head:
                return  # closed without an answer: the keep-alive race, made certain
            body = target_of(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    return script


@pytest.mark.parametrize(
    ("second", "status"),
    [
        (get("/second"), 200),  # idempotent, no body: retried on a new connection
        (b"POST /second HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nhi", 502),
    ],
    ids=["get-retried", "post-not-retried"],
)
async def test_pooled_connection_closed_by_the_upstream(second: bytes, status: int) -> None:
    upstream = await ScriptedUpstream(closes_its_first_connection_on_the_second_request()).start()
    async with proxy_for([upstream.url], [upstream.url]) as (proxy, port):
        first = await exchange(port, get("/first"))
        response = await exchange(port, second)
        samples = await scrape(proxy)
    await upstream.close()
    assert (first.status, first.body) == (200, b"/first")
    assert response.status == status
    if status == 200:
        assert response.body == b"/second"
    assert upstream.connections == (2 if status == 200 else 1)
    # The race is the upstream's idle close, not a failure, unless the client saw one.
    assert failures(samples) == ({} if status == 200 else {("stable", "reset"): 1})


async def read_until_closed(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(5):
        while await reader.read(65536):
            pass


async def test_upstream_cut_mid_body_is_a_reset_for_an_http10_client() -> None:
    head, body, rst = CUTS["chunked, reset"]
    upstream = await ScriptedUpstream(cut_after(head, body, rst=rst)).start()
    async with proxy_for([upstream.url], [upstream.url]) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            await read_until_closed(reader)
        writer.close()
    await upstream.close()


# --- a side that stops reading is the one blamed ---------------------------------------------

FLOOD = 16 * 1024 * 1024  # far more than the socket buffers between the three parties


async def test_client_that_stops_reading_is_cut_as_an_abort_not_an_upstream_timeout() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % FLOOD)
        for _ in range(FLOOD // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()
        await reader.read()

    upstream = await ScriptedUpstream(flood).start()
    async with proxy_for([upstream.url], [upstream.url], body_timeout=0.3) as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=65536)
        writer.write(get("/"))
        async with asyncio.timeout(5):
            await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(1.0)  # the client stops reading for longer than body_timeout
        received = 0
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(5):
                while chunk := await reader.read(1 << 20):
                    received += len(chunk)
        writer.close()
        async with asyncio.timeout(5):
            await upstream.wait_closed()
        samples = await scrape(proxy)
    await upstream.close()
    assert received < FLOOD, "the stalled client was not cut"
    assert aborts(samples) == {"stable": 1}
    assert failures(samples) == {}


async def test_upstream_that_stops_reading_the_body_is_a_504_not_a_client_408() -> None:
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(3)  # reads nothing of the body for longer than body_timeout

    upstream = await ScriptedUpstream(deaf).start()
    async with proxy_for([upstream.url], [upstream.url], body_timeout=0.3) as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % FLOOD)

        async def send_body() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(FLOOD // 65536):
                    writer.write(b"x" * 65536)
                    await writer.drain()

        sending = asyncio.create_task(send_body())
        async with asyncio.timeout(5):
            status_line = await reader.readline()
        sending.cancel()
        writer.close()
        samples = await scrape(proxy)
    await upstream.close()
    assert status_line.startswith(b"HTTP/1.1 504 "), status_line
    assert failures(samples) == {("stable", "timeout"): 1}
    assert aborts(samples) == {}


# --- a request the proxy refuses is not a client abort ---------------------------------------

CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("parts", "body_timeout", "status"),
    [
        pytest.param((CHUNKED_HEAD, b"5\r\nhello\r\n0x1\r\nx\r\n"), 5.0, 400, id="bad-chunk"),
        pytest.param(
            (b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nab",),
            0.3,
            408,
            id="body-deadline",
        ),
    ],
)
async def test_request_refused_while_its_exchange_exists_is_not_a_client_abort(
    parts: tuple[bytes, ...], body_timeout: float, status: int
) -> None:
    upstream = await RecordingUpstream().start()
    limits = {"body_timeout": body_timeout}
    async with proxy_for([upstream.url], [upstream.url], **limits) as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for part in parts:
            writer.write(part)
            await asyncio.sleep(0.1)  # the head is parsed (its exchange exists) before the rest
        async with asyncio.timeout(5):
            answer = await reader.read()  # the refusal, then the proxy closes the connection
        writer.close()
        samples = await scrape(proxy)
    await upstream.close()
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer
    assert upstream.requests == []
    assert aborts(samples) == {}
    assert failures(samples) == {}
