"""The h2 connection as configured (h2codec.py): what h2's outbound checks would do is already
done, literals round-trip, volatile and secret fields stay out of the dynamic table."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from h2.exceptions import ProtocolError
from h2.utilities import (
    HeaderValidationFlags,
    normalize_outbound_headers,
    validate_headers,
    validate_outbound_headers,
)
from hpack import Decoder, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import Limits
from proxy.errors import BadRequest
from proxy.http.fields import FieldNames, header_kinds
from proxy.http.h2codec import SECRET, VOLATILE, LiteralEncoder, connection, unindexed
from proxy.http.h2fields import error_fields, request_of, response_fields
from proxy.http.head import RequestHead
from proxy.http.requestid import RequestIds
from proxy.http.upstream_h2 import request_fields
from tests.http2.test_h2_proxy import H2C, _curl
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.servers import ScriptedUpstream, answering

Fields = list[tuple[bytes, bytes]]
RESPONSE = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=True, is_push_promise=False
)
REQUEST = HeaderValidationFlags(
    is_client=True, is_trailer=False, is_response_header=False, is_push_promise=False
)

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Field names an HTTP/1.1 peer may send (tokens, any case), the hop-by-hop ones among them.
names = st.one_of(
    st.text(_TCHAR, min_size=1, max_size=12).map(str.encode),
    st.sampled_from(
        [b"Connection", b"Keep-Alive", b"Transfer-Encoding", b"Upgrade", b"TE", b"Trailer",
         b"Content-Length", b"Set-Cookie", b"ETag", b"X-Request-ID", b"Proxy-Connection"]
    ),
)  # fmt: skip
# Values as llhttp hands them over: visible bytes, obs-text, inner and trailing spaces/tabs.
values = st.builds(
    lambda inner, tail: inner.strip(b" \t") + tail,
    st.binary(max_size=16).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)),
    st.sampled_from([b"", b" ", b"\t", b" \t "]),
)
upstream_fields = st.lists(st.tuples(names, values), max_size=10)


def _plain(fields: Iterable[tuple[bytes, bytes]]) -> Fields:
    return [(bytes(n), bytes(v)) for n, v in fields]


def _h2_would_send(fields: Fields, flags: HeaderValidationFlags) -> Fields:
    """What h2's own outbound normalisation and validation make of `fields` (raises if it
    refuses them)."""
    return _plain(list(validate_outbound_headers(normalize_outbound_headers(fields, flags), flags)))


@settings(max_examples=300, deadline=None)
@given(upstream_fields, st.sampled_from([200, 204, 404, 503]), st.booleans())
def test_a_response_header_list_is_what_h2_would_have_sent(
    headers: Fields, status: int, body: bool
) -> None:
    fields = response_fields(status, headers, b"id-1", FieldNames(), body=body)
    assert _h2_would_send(fields, RESPONSE) == _plain(fields)


@settings(max_examples=300, deadline=None)
@given(upstream_fields)
def test_a_request_header_list_for_an_h2_upstream_is_what_h2_would_have_sent(
    headers: Fields,
) -> None:
    head = RequestHead(Limits(), header_kinds([], []), RequestIds())
    get = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"shop.test"),
           (b":path", b"/p")]  # fmt: skip
    request = request_of(head, get, ended=True)
    request.headers = [(n, v) for n, v in headers if n.lower() not in (b"te", b"trailer")]
    fields = request_fields(request, b"shop.test", b"127.0.0.1", b"X-Route: r\r\n", b"http")
    assert _h2_would_send(fields, REQUEST) == _plain(fields)


SERVER_RECEIVES = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"shop.test"),
         (b":path", b"/a")]  # fmt: skip
# Fields that make a request malformed in some way, or do not: mixed into a good request.
request_field = st.one_of(
    st.tuples(
        st.sampled_from([b":method", b":path", b":scheme", b":authority", b":status",
                         b":protocol", b":bogus", b":"]),
        st.sampled_from([b"GET", b"/b", b"http", b"shop.test", b"", b"200", b"x y"]),
    ),
    st.tuples(
        st.one_of(
            st.text(_TCHAR.lower(), min_size=1, max_size=8).map(str.encode),
            st.sampled_from([b"", b"X-Up", b"x a", b"x:a", b"x(a)", b"x\x7f", b"\xe9t\xe9",
                             b"connection", b"te", b"upgrade", b"host", b"cookie",
                             b"transfer-encoding", b"keep-alive", b"content-length"]),
        ),
        st.sampled_from([b"1", b"", b" a", b"a ", b"\ta", b"a\x00b", b"a\rb", b"a\nb",
                         b"trailers", b"shop.test", b"other.test", b"\xff", b"a\tb"]),
    ),
)  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), request_field), max_size=4))
def test_whatever_h2_would_refuse_of_a_request_is_refused(
    inserts: list[tuple[int, tuple[bytes, bytes]]],
) -> None:
    fields = list(_BASE)
    for at, field in inserts:
        fields.insert(min(at, len(fields)), field)
    try:
        list(validate_headers(fields, SERVER_RECEIVES))
        h2_refuses = False
    except ProtocolError:
        h2_refuses = True
    head = RequestHead(Limits(), header_kinds([], []), RequestIds())
    try:
        request_of(head, fields, ended=True)
        refused = False
    except BadRequest:
        refused = True
    if h2_refuses:
        assert refused, fields


def test_a_host_field_differing_only_in_case_from_the_authority_is_the_same_host() -> None:
    head = RequestHead(Limits(), header_kinds([], []), RequestIds())
    request = request_of(head, [*_BASE, (b"host", b"Shop.Test")], ended=True)
    assert request.host == b"shop.test"


@given(upstream_fields)
def test_literals_round_trip_and_only_repeating_fields_are_indexed(headers: Fields) -> None:
    encoder, decoder = LiteralEncoder(), Decoder()
    fields = [(b":status", b"200")] + [unindexed(n.lower(), v.strip()) for n, v in headers]
    for _ in range(2):
        decoded = decoder.decode(encoder.encode(fields), raw=True)
        assert _plain(decoded) == _plain(fields)
    # Sent twice, and yet no volatile or secret field entered the dynamic table.
    indexed = {bytes(name) for name, _ in encoder.header_table.dynamic_entries}
    assert not indexed & (VOLATILE | SECRET)


def test_literals_are_not_huffman_coded_and_an_answer_of_the_proxy_keeps_its_id_out() -> None:
    block = LiteralEncoder().encode(error_fields(503, 12, b"abc123"))
    assert b"abc123" in block  # the literal itself, not its Huffman code
    assert b"text/plain; charset=utf-8" in block
    decoded = Decoder().decode(block, raw=True)
    assert NeverIndexedHeaderTuple(b"x-request-id", b"abc123") in decoded


def test_a_connection_checks_what_it_receives_and_sends_as_the_proxy_made_it() -> None:
    for side in (True, False):
        config = connection(client_side=side).config
        # A server's requests are checked by request_of (the property test above).
        assert config.validate_inbound_headers == side
        assert not config.validate_outbound_headers
        assert not config.normalize_outbound_headers
        assert isinstance(connection(client_side=side).encoder, LiteralEncoder)


@pytest.mark.parametrize("value", [b"spaced ", b"tabbed\t", b"both \t "])
async def test_an_upstream_field_with_trailing_whitespace_reaches_an_h2_client_trimmed(
    value: bytes,
) -> None:
    body = b"ok\n"
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Note: " + value + b"\r\n"
        b"Connection: keep-alive, x-hop\r\nX-Hop: gone\r\nSet-Cookie: s=1 \r\n\r\n" + body
    )
    upstream = await ScriptedUpstream(answering(lambda _head: reply)).start()
    try:
        data = config_dict(service([upstream.url], [], steps=[{"percent": 0}]), http2=H2C)
        async with running_proxy(data) as runtime:
            url = f"http://127.0.0.1:{runtime.data_address[1]}/"
            for _ in range(3):  # the dynamic table in use from the second response on
                code, out, err = await asyncio.wait_for(_curl("--http2-prior-knowledge", url), 15)
                assert code == 0, err
                assert out == body
                assert "< HTTP/2 200" in err
                assert f"< x-note: {value.strip().decode()}\r" in err
                assert "< set-cookie: s=1\r" in err
                assert "< x-hop" not in err  # named by Connection: hop-by-hop
    finally:
        await upstream.close()
