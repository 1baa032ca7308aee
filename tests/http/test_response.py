"""`response_head`: the upstream's framing and hop-by-hop fields never reach the client; the
proxy writes its own framing for the client's version and says how the body is delimited."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.fields import FieldNames
from proxy.http.framing import HOP_BY_HOP
from proxy.http.request import Request
from proxy.http.response import CHUNKED, CLOSE, LENGTH, NO_BODY, response_head, switching_head


def request(method: bytes = b"GET", version: bytes = b"1.1") -> Request:
    req = Request()
    req.method = method
    req.version = version
    return req


LENGTH_5 = [(b"Content-Length", b"5")]
TE = [(b"Transfer-Encoding", b"chunked")]


@pytest.mark.parametrize(
    ("status", "headers", "req", "framing", "eof_ends", "field"),
    [
        (200, LENGTH_5, request(), LENGTH, False, b"Content-Length: 5\r\n"),
        (200, TE, request(), CHUNKED, False, b"Transfer-Encoding: chunked\r\n"),
        (200, [], request(), CHUNKED, True, b"Transfer-Encoding: chunked\r\n"),
        (200, TE, request(version=b"1.0"), CLOSE, False, None),
        (200, [], request(version=b"1.0"), CLOSE, True, None),
        (200, LENGTH_5, request(b"HEAD"), NO_BODY, False, b"Content-Length: 5\r\n"),
        (204, LENGTH_5, request(), NO_BODY, False, None),
        (304, [], request(), NO_BODY, False, None),
    ],
)
def test_framing_follows_the_clients_version_and_the_response(
    status: int,
    headers: list[tuple[bytes, bytes]],
    req: Request,
    framing: int,
    eof_ends: bool,
    field: bytes | None,
) -> None:
    head, got_framing, got_eof_ends, close = response_head(
        status, headers, req, False, FieldNames()
    )
    assert (got_framing, got_eof_ends) == (framing, eof_ends)
    assert close is (framing == CLOSE)
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert head.endswith(b"\r\n\r\n")
    framing_fields = [
        line
        for line in head.split(b"\r\n")
        if line.lower().startswith((b"content-length", b"transfer-encoding"))
    ]
    assert framing_fields == ([field[:-2]] if field else [])


def test_hop_by_hop_fields_and_those_named_in_connection_are_dropped() -> None:
    headers = [
        (b"X-Keep", b"1"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"s"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Upgrade", b"h2c"),
        (b"Content-Length", b"2"),
    ]
    head, *_ = response_head(200, headers, request(), False, FieldNames())
    assert head == b"HTTP/1.1 200 OK\r\nX-Keep: 1\r\nContent-Length: 2\r\n\r\n"


@pytest.mark.parametrize(
    ("req", "close", "connection"),
    [
        (request(), True, b"Connection: close\r\n"),
        (request(), False, None),
        (request(version=b"1.0"), False, b"Connection: close\r\n"),  # close-delimited
    ],
)
def test_connection_field_says_whether_the_connection_ends(
    req: Request, close: bool, connection: bytes | None
) -> None:
    head, _, _, ends = response_head(200, [], req, close, FieldNames())
    assert ends is (connection is not None)
    assert (b"Connection: close\r\n" in head) is (connection is not None)


def test_an_http10_client_kept_alive_is_told_so() -> None:
    head, framing, _, close = response_head(
        200, LENGTH_5, request(version=b"1.0"), False, FieldNames()
    )
    assert (framing, close) == (LENGTH, False)
    assert b"Connection: keep-alive\r\n" in head


def test_switching_head_relays_end_to_end_fields_and_names_the_upgrade() -> None:
    headers = [(b"Sec-WebSocket-Accept", b"abc"), (b"Connection", b"Upgrade"), (b"Upgrade", b"ws")]
    assert switching_head(headers) == (
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc\r\n"
        b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )


_POOL = [
    b"Connection",
    b"Keep-Alive",
    b"TE",
    b"Trailer",
    b"Upgrade",
    b"Proxy-Connection",
    b"X-Request-ID",
    b"Expect",
    b"Content-Type",
    b"X-Secret",
    b"Server",
    b"Date",
    b"X-A",
]
_NAMES = st.builds(
    lambda name, flips: bytes(
        c ^ 0x20 if chr(c).isalpha() and flip else c
        for c, flip in zip(name, flips + [False] * len(name), strict=False)
    ),
    st.sampled_from(_POOL),
    st.lists(st.booleans(), max_size=20),
)
_CONNECTION_VALUES = st.lists(st.sampled_from([*_POOL, b"close", b"keep-alive"]), max_size=3).map(
    b", ".join
)


@given(
    st.lists(
        st.one_of(
            st.tuples(_NAMES, st.sampled_from([b"v", b"1"])),
            st.tuples(st.just(b"Connection"), _CONNECTION_VALUES),
        ),
        max_size=10,
    )
)
def test_every_field_but_the_hop_by_hop_ones_is_relayed_in_order(
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Whatever the case of the names: the fields kept are those no hop-by-hop rule names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    } - {b"close", b"keep-alive", b"upgrade", b""}
    dropped = HOP_BY_HOP | {b"x-request-id"} | named
    kept = [b"%s: %s\r\n" % (n, v) for n, v in headers if n.lower() not in dropped]
    head, *_ = response_head(200, headers, request(), False, FieldNames())
    lines = head.split(b"\r\n")[1:]
    relayed = [line + b"\r\n" for line in lines if line and not line.startswith(b"Transfer")]
    assert relayed == kept
