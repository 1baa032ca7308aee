"""Hostile HTTP/2 input against the real proxy, each sent raw (frames built by the h2 library
as a client, or by hyperframe where h2 would refuse to build them): every case is bounded,
answered or cut, and whatever is refused never reaches the upstream (RELIABILITY.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

from tests.http2.conftest import Origin
from tests.support.client import scrape, value
from tests.support.h2client import RawH2
from tests.support.proxy import config_dict, running_proxy, service

_GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]


def _data(stable: Origin, limits: dict[str, Any] | None = None, **http2: Any) -> dict[str, Any]:
    data = config_dict(service([stable.url], [], steps=[{"percent": 0}]))
    data["http2"] = {"enabled": True, "h2c": True, **http2}
    if limits:
        data["limits"] = limits
    return data


async def _refused_connection(client: RawH2) -> int | None:
    """Read until the proxy ends the connection; its GOAWAY's error code."""
    await client.until(lambda c: c.eof or c.goaway() is not None)
    await client.until(lambda c: c.eof, within=5)
    assert client.eof  # the connection is closed
    return client.goaway()


async def test_streams_beyond_the_limit_are_refused(stable: Origin) -> None:
    async with running_proxy(_data(stable, max_concurrent_streams=4)) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        # Opened before the proxy's SETTINGS are read: a client that ignores the limit.
        ids = [client.request("/slow") for _ in range(7)]
        await client.send()
        assert await client.until(lambda c: all(c.ended(s) for s in ids))
        refused = [s for s in ids if client.reset_code(s) == ErrorCodes.REFUSED_STREAM]
        assert refused == ids[4:]
        assert [client.status(s) for s in ids[:4]] == [200] * 4
        assert len(stable.seen) == 4  # a refused stream never reached the upstream
        await client.close()


async def test_a_header_list_over_the_limit_ends_the_connection(stable: Origin) -> None:
    async with running_proxy(_data(stable, max_header_list_size=4096)) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        client.request("/", extra=[(b"x-big", b"v" * 6000)])
        await client.send()
        assert await _refused_connection(client) == ErrorCodes.ENHANCE_YOUR_CALM
        assert stable.seen == []


async def test_an_hpack_bomb_is_stopped_at_the_header_list_size(stable: Origin) -> None:
    async with running_proxy(_data(stable, max_header_list_size=16384)) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        # One 4 KiB field goes into the dynamic table, then is referenced by index: a few
        # bytes on the wire each, 4 KiB each once decoded.
        client.request("/", extra=[(b"x-bomb", b"b" * 4000)])
        first = client.h2.data_to_send()
        client.request("/", extra=[(b"x-bomb", b"b" * 4000)] * 100)
        bomb = client.h2.data_to_send()
        assert len(bomb) < 1000  # 400 KB of fields in under 1 KB
        await client.send(first + bomb)
        assert await _refused_connection(client) == ErrorCodes.ENHANCE_YOUR_CALM
        assert len(stable.seen) <= 1  # the first request, at most; never the bomb
        assert all(len(s["headers"]) < 20 for s in stable.seen)


async def test_rapid_reset_is_bounded_and_ends_with_enhance_your_calm(stable: Origin) -> None:
    config = _data(stable, max_resets_per_s=50, max_concurrent_streams=10)
    async with running_proxy(config) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        opened = 0
        while not client.eof and client.goaway() is None and opened < 5000:
            for _ in range(20):
                stream_id = client.request("/slow")
                client.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
                opened += 1
            await client.send()
            await client.read(0.01)
        assert await _refused_connection(client) == ErrorCodes.ENHANCE_YOUR_CALM
        assert opened < 5000  # cut long before the client was done
        await asyncio.sleep(0.2)
        # Streams opened and reset in the same read never start; the rest are bounded by the
        # reset allowance (one second's worth) and the stream limit.
        assert len(stable.seen) <= 50 + 10


async def test_a_continuation_flood_ends_the_connection(stable: Origin) -> None:
    async with running_proxy(_data(stable)) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        block = Encoder().encode(_GET)
        frames = [HeadersFrame(1, data=block[:5]).serialize()]
        frames += [ContinuationFrame(1, data=b"").serialize() for _ in range(1000)]
        await client.send(b"".join(frames))
        assert await _refused_connection(client) is not None
        assert stable.seen == []


async def test_settings_and_ping_floods_end_the_connection(stable: Origin) -> None:
    for frame in (SettingsFrame(0).serialize(), PingFrame(0, opaque_data=b"12345678").serialize()):
        async with running_proxy(_data(stable, max_control_frames_per_s=50)) as runtime:
            client = await RawH2.open(runtime.data_address[1])
            await client.send(frame * 2000)
            assert await _refused_connection(client) == ErrorCodes.ENHANCE_YOUR_CALM
            # Each answered frame costs an acknowledgement: far fewer than sent went out.
            assert len(client.events) < 200


async def test_a_read_is_parsed_in_slices_so_a_flood_is_cut_within_one(
    stable: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed: list[int] = []  # what the proxy's connections gave h2 to parse, call by call
    receive = H2Connection.receive_data

    def spy(self: H2Connection, data: bytes) -> list[Any]:
        if not self.config.client_side:
            handed.append(len(data))
        return receive(self, data)

    monkeypatch.setattr(H2Connection, "receive_data", spy)
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    async with running_proxy(_data(stable, max_control_frames_per_s=50)) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        await client.send(ping * 20000)  # 340 KB of PINGs in one write
        assert await _refused_connection(client) == ErrorCodes.ENHANCE_YOUR_CALM
    assert max(handed) <= 4096
    # Cut in the slice where the 51st PING is: the preface, SETTINGS and 51 PINGs fit in 2.
    assert sum(handed) <= 2 * 4096, handed


def _untrusted(data: dict[str, Any]) -> dict[str, Any]:
    data["trusted_peers"] = []  # the test's own address, 127.0.0.1, may be barred
    return data


async def _closed_at_accept_h2(port: int) -> None:
    client = await RawH2.open(port)
    stream_id = client.request("/")
    await client.send()
    await client.until(lambda c: c.eof or c.ended(stream_id), within=3)
    assert client.eof
    assert client.events == []  # not even the proxy's SETTINGS: nothing was read or sent


async def _closed_at_accept_http11(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    try:
        answer = await asyncio.wait_for(reader.read(), 3)
    except ConnectionError:
        answer = b""
    writer.close()
    assert answer == b""


async def _served_on_a_new_connection(port: int) -> None:
    client = await RawH2.open(port)
    stream_id = client.request("/")
    await client.send()
    assert await client.until(lambda c: c.ended(stream_id))
    assert client.status(stream_id) == 200
    await client.close()


async def test_a_flooding_address_is_barred_for_the_penalty_then_served(stable: Origin) -> None:
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    config = _untrusted(_data(stable, max_control_frames_per_s=50, penalty="600ms"))
    async with running_proxy(config) as runtime:
        port = runtime.data_address[1]
        loop = asyncio.get_running_loop()
        client = await RawH2.open(port)
        await client.send(ping * 2000)
        assert await _refused_connection(client) == ErrorCodes.ENHANCE_YOUR_CALM
        barred_at = loop.time()
        # Reconnecting buys no fresh allowance: closed at accept, HTTP/2 and HTTP/1.1 alike.
        await _closed_at_accept_h2(port)
        await _closed_at_accept_http11(port)
        assert loop.time() - barred_at < 0.6  # both were tried within the bar
        assert stable.seen == []
        await asyncio.sleep(0.7)  # the bar has ended
        await _served_on_a_new_connection(port)
        samples = await scrape(runtime)
    # The flood's calm, and the two connections refused at accept.
    assert value(samples, "rollout_rejected_requests_total", status="429") == 3


@pytest.mark.parametrize(
    ("trusted", "penalty"), [(["127.0.0.0/8"], "10s"), ([], 0)], ids=["trusted", "off"]
)
async def test_a_trusted_peer_or_a_zero_penalty_is_never_barred(
    stable: Origin, trusted: list[str], penalty: Any
) -> None:
    config = _data(stable, max_control_frames_per_s=50, penalty=penalty)
    config["trusted_peers"] = trusted
    async with running_proxy(config) as runtime:
        port = runtime.data_address[1]
        client = await RawH2.open(port)
        await client.send(SettingsFrame(0).serialize() * 2000)
        assert await _refused_connection(client) == ErrorCodes.ENHANCE_YOUR_CALM
        await _served_on_a_new_connection(port)


async def test_a_zero_window_reader_stalls_its_stream_only_and_is_cut(stable: Origin) -> None:
    limits = {"body_timeout": "1s", "send_timeout": "1s"}
    async with running_proxy(_data(stable, limits)) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        client.auto_ack = False
        client.h2.increment_flow_control_window(16 * 1024 * 1024)  # the connection's only
        await client.send()
        stalled = client.request("/big/4000000")
        await client.send()
        await client.until(lambda c: c.status(stalled) is not None)
        other = client.request("/seen")
        await client.send()
        # The other stream is answered while the first waits for a window that never opens.
        assert await client.until(lambda c: c.ended(other))
        assert client.status(other) == 200
        assert await client.until(lambda c: c.ended(stalled), within=10)
        assert client.reset_code(stalled) == ErrorCodes.CANCEL
        assert len(client.bodies.get(stalled, b"")) <= 65535  # only the stream's window
        assert not client.eof  # the connection lives on
        again = client.request("/seen")
        await client.send()
        assert await client.until(lambda c: c.ended(again))
        await client.close()


async def test_a_stream_that_never_sends_its_body_is_timed_out(stable: Origin) -> None:
    async with running_proxy(_data(stable, {"body_timeout": "1s"})) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        sid = client.request("/echo", method="POST", end=False)
        client.h2.send_data(sid, b"part")
        await client.send()
        assert await client.until(lambda c: c.ended(sid), within=10)
        assert client.status(sid) == 408
        assert not client.eof
        await client.close()


async def test_invalid_pseudo_headers_are_refused(stable: Origin) -> None:
    cases = [
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],  # no :path
        [*_GET, (b":bogus", b"x")],  # unknown pseudo-header
        [(b":method", b"GET"), (b"x-a", b"1"), (b":path", b"/"), (b":scheme", b"http")],
        [*_GET, (b":path", b"/again")],  # duplicate
        [*_GET, (b":protocol", b"websocket")],  # extended CONNECT is not supported
        [*_GET, (b":status", b"200")],  # a response's
    ]
    async with running_proxy(_data(stable)) as runtime:
        for fields in cases:
            await _refused_on_its_stream(runtime.data_address[1], fields)
    assert {seen["path"] for seen in stable.seen} == {"/after"}  # the refused ones: never


async def _refused_on_its_stream(port: int, fields: list[tuple[bytes, bytes]]) -> None:
    """A malformed request is answered 400 on its own stream (RFC 9113 8.1.1: a stream error,
    which a server may answer first); the connection's next stream is served."""
    client = await RawH2.open(port)
    client.h2.send_headers(1, fields, end_stream=True)
    await client.send()
    assert await client.until(lambda c: c.ended(1)), fields
    assert client.status(1) == 400, fields
    sid = client.request("/after")
    await client.send()
    assert await client.until(lambda c: c.ended(sid)), fields
    assert client.status(sid) == 200
    assert not client.eof
    await client.close()


async def test_a_path_with_dot_segments_gets_400_as_over_http11(stable: Origin) -> None:
    async with running_proxy(_data(stable)) as runtime:
        client = await RawH2.open(runtime.data_address[1])
        sid = client.request("/a/../b")
        await client.send()
        assert await client.until(lambda c: c.ended(sid))
        assert client.status(sid) == 400
        assert not client.eof
        assert stable.seen == []
        await client.close()


async def test_a_connection_specific_header_is_refused(stable: Origin) -> None:
    malformed = [
        (b"connection", b"keep-alive"), (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"),
        (b"te", b"gzip"), (b"keep-alive", b"5"), (b"proxy-connection", b"x"),
        (b"X-Upper", b"1"), (b"x-a b", b"1"), (b"x-a(b)", b"1"), (b"", b"empty name"),
        (b"x-nul", b"a\x00b"), (b"x-lf", b"a\nb"), (b"x-cr", b"a\rb"),
        (b"x-space", b" lead"), (b"x-tab", b"trail\t"),
    ]  # fmt: skip
    async with running_proxy(_data(stable)) as runtime:
        for field in malformed:
            await _refused_on_its_stream(runtime.data_address[1], [*_GET, field])
    assert {seen["path"] for seen in stable.seen} == {"/after"}  # the upstream saw none


async def test_an_h2c_upgrade_on_http11_stays_stripped_with_h2c_on(stable: Origin) -> None:
    async with running_proxy(_data(stable)) as runtime:
        reader, writer = await asyncio.open_connection("127.0.0.1", runtime.data_address[1])
        writer.write(
            b"GET /seen HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.1 200 ")  # never 101: no tunnel past the proxy
        names = {name.lower() for name, _ in stable.seen[0]["headers"]}
        assert not names & {"upgrade", "http2-settings"}
