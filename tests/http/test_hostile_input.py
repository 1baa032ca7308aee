"""Hostile input (RELIABILITY.md 2.3 A-E) against the real proxy over loopback sockets.

Every refused request must get the catalogue's status, then a closed connection, and the
upstream must see nothing at all: no connection and no byte. Every accepted request must reach
the upstream as exactly the well-formed, re-framed request(s) h11 parses from what it received,
with no framing or hop-by-hop field copied across and X-Forwarded-* overwritten for untrusted
peers. The client (127.0.0.1) is untrusted unless a case says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.proxy import config_dict, running_proxy, service
from tests.support.rawhttp import (
    UNTRUSTED,
    Outcome,
    exchange,
    h11_oracle,
    proxy_and_upstream,
)
from tests.support.upstream import Received, RecordingUpstream, Reply

LIMITS: dict[str, Any] = {
    "header_timeout": "2s",
    "max_uri_bytes": 1024,
    "max_header_bytes": 4096,
    "max_headers": 20,
    "max_body_bytes": 1000,
}
HOP_BY_HOP = (
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxy-authorization",
)
UNTRUSTED_ONLY = (b"forwarded", b"x-real-ip")  # dropped from untrusted peers
ONCE: tuple[bytes, ...] = (b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
ONCE += (b"x-rollout-variant", b"x-rollout-step")


def req(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    """A request: start line, fields, empty line, body; every line ends with CRLF."""
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def get(*fields: bytes, target: bytes = b"/") -> bytes:
    return req(b"GET " + target + b" HTTP/1.1", b"Host: a", *fields)


def post(*fields: bytes, body: bytes = b"") -> bytes:
    return req(b"POST / HTTP/1.1", b"Host: a", *fields, body=body)


def chunked(*fields: bytes, body: bytes = b"5\r\nhello\r\n0\r\n\r\n") -> bytes:
    return post(b"Transfer-Encoding: chunked", *fields, body=body)


def echo(received: Received) -> Reply:
    """Upstream handler naming the request, so response order can be checked."""
    return Reply(body=f"{received.method} {received.target}".encode())


# --- refused: status, close, upstream untouched ------------------------------------------------


@dataclass(frozen=True)
class Refused:
    ref: str
    what: str
    raw: bytes
    status: int
    trusted: bool = False

    @property
    def id(self) -> str:
        return f"{self.ref} {self.what}"


REFUSED = [
    # A1 CL.TE / TE.CL: both framings present (RFC 9112 6.3 r3).
    Refused(
        "A1",
        "CL then TE",
        post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\nX"),
        400,
    ),
    Refused(
        "A1",
        "TE then CL",
        post(b"Transfer-Encoding: chunked", b"Content-Length: 6", body=b"0\r\n\r\nX"),
        400,
    ),
    Refused(
        "A1",
        "mixed-case TE and CL",
        post(b"TrAnSfEr-EnCoDiNg: ChUnKeD", b"Content-Length: 4", body=b"0\r\n\r\n"),
        400,
    ),
    Refused(
        "A1",
        "TE gzip and CL",
        post(b"Transfer-Encoding: gzip", b"Content-Length: 4", body=b"abcd"),
        400,
    ),
    # A2 duplicate Content-Length, or a list (RFC 9112 6.3 r5).
    Refused(
        "A2", "CL twice, same", post(b"Content-Length: 1", b"Content-Length: 1", body=b"x"), 400
    ),
    Refused(
        "A2",
        "CL twice, different",
        post(b"Content-Length: 1", b"Content-Length: 2", body=b"xy"),
        400,
    ),
    Refused("A2", "CL list, same", post(b"Content-Length: 2, 2", body=b"xy"), 400),
    Refused("A2", "CL list, different", post(b"Content-Length: 2,3", body=b"xyz"), 400),
    # A3 malformed Content-Length (RFC 9110 8.6: 1*DIGIT).
    *(
        Refused("A3", f"CL {value!r}", post(b"Content-Length: " + value, body=b"hello"), 400)
        for value in (
            b"+5",
            b"-1",
            b"0x10",
            b"1_0",
            b"1.0",
            b"1000 1000",
            b"1 0",
            b"\x11",
            b"5\x00",
            b"",
            b"18446744073709551616",
            "\u0663".encode(),  # ARABIC-INDIC DIGIT THREE
            "\uff15".encode(),  # FULLWIDTH DIGIT FIVE
        )
    ),
    # A4 obfuscated Transfer-Encoding; a final `chunked` after other codings is 501 (RFC 9112 6.1).
    *(
        Refused("A4", f"TE {value!r}", post(b"Transfer-Encoding: " + value, body=b"0\r\n\r\n"), 400)
        for value in (
            b"xchunked",
            b"chunk",
            b"chunked, identity",
            b"chunked,chunked",
            b"identity",
            b"gzip",
            b"chunked; foo=bar",
            b'"chunked"',
            b"\x0bchunked",
            b"chunked\x11",
            b"\x00chunked",
        )
    ),
    Refused(
        "A4", "TE gzip, chunked", post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501
    ),
    Refused(
        "A4",
        "TE twice",
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
    ),
    Refused(
        "A4",
        "TE chunked then identity",
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity", body=b"0\r\n\r\n"),
        400,
    ),
    Refused("A4", "SP before colon", post(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400),
    Refused(
        "A4", "HTAB before colon", post(b"Transfer-Encoding\t: chunked", body=b"0\r\n\r\n"), 400
    ),
    Refused("A4", "underscore name", post(b"Transfer_Encoding: chunked", body=b"0\r\n\r\n"), 400),
    Refused(
        "A4",
        "long s in name",
        post("Tran\u017ffer-Encoding: chunked".encode(), body=b"0\r\n\r\n"),
        400,
    ),
    Refused(
        "A4", "\\x01 before name", post(b"\x01Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400
    ),
    Refused(
        "A4",
        "SP before first field",
        req(b"POST / HTTP/1.1", b" Transfer-Encoding: chunked", b"Host: a", body=b"0\r\n\r\n"),
        400,
    ),
    Refused(
        "A4",
        "folded value",
        post(b"Transfer-Encoding: chunked", b" , identity", body=b"0\r\n\r\n"),
        400,
    ),
    # A5 Transfer-Encoding from an HTTP/1.0 client (RFC 9112 6.1).
    Refused(
        "A5",
        "HTTP/1.0 chunked",
        req(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
    ),
    # A6 chunk-size abuse; head and chunk arrive together, so nothing may reach the upstream.
    *(
        Refused("A6", f"chunk size {size!r}", chunked(body=size + b"\r\nx\r\n0\r\n\r\n"), 400)
        for size in (b"FFFFFFFFFFFFFFFFFFFF", b"0x1", b"0_1", b"-1", b"1 ", b"1\r;a=b", b"", b"g")
    ),
    # A7 chunk extension with a bare LF; chunk data ended by a bare LF.
    Refused("A7", "bare LF in extension", chunked(body=b"1;a=b\nx\r\n0\r\n\r\n"), 400),
    Refused("A7", "bare LF after data", chunked(body=b"1\r\nx\n0\r\n\r\n"), 400),
    # A8 trailers naming framing fields, malformed or oversized trailers.
    Refused(
        "A8",
        "Content-Length trailer",
        chunked(body=b"1\r\nx\r\n0\r\nContent-Length: 5\r\n\r\n"),
        400,
    ),
    Refused(
        "A8",
        "Transfer-Encoding trailer",
        chunked(body=b"1\r\nx\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400,
    ),
    Refused("A8", "SP before colon in trailer", chunked(body=b"1\r\nx\r\n0\r\nX : y\r\n\r\n"), 400),
    Refused(
        "A8",
        "too many trailers",
        chunked(body=b"0\r\n" + b"".join(b"T-%d: y\r\n" % i for i in range(25)) + b"\r\n"),
        431,
    ),
    Refused("A8", "huge trailer", chunked(body=b"0\r\nT: " + b"y" * 5000 + b"\r\n\r\n"), 431),
    # A11 HTTP/1.0 GET, HEAD, DELETE with a body (HAProxy's default).
    *(
        Refused(
            "A11",
            f"HTTP/1.0 {m.decode()} with body",
            req(m + b" / HTTP/1.0", b"Content-Length: 5", body=b"hello"),
            400,
        )
        for m in (b"GET", b"HEAD", b"DELETE")
    ),
    # B1 versions other than HTTP/1.0 and 1.1. llhttp refuses versions it does not know (400);
    # the proxy refuses those llhttp parses but it does not serve (505). B1 allows both.
    Refused("B1", "HTTP/0.9 request line", b"GET /\r\n\r\n", 400),
    Refused("B1", "HTTP/0.9", req(b"GET / HTTP/0.9", b"Host: a"), 505),
    Refused("B1", "missing version", req(b"GET / ", b"Host: a"), 400),
    Refused("B1", "HTTP/2.0", req(b"GET / HTTP/2.0", b"Host: a"), 505),
    Refused("B1", "HTTP/1.2", req(b"GET / HTTP/1.2", b"Host: a"), 400),
    Refused("B1", "HTTP/1.32", req(b"GET / HTTP/1.32", b"Host: a"), 400),
    Refused("B1", "HTTP/3.0", req(b"GET / HTTP/3.0", b"Host: a"), 400),
    Refused("B1", "RTSP/1.0", req(b"GET / RTSP/1.0", b"Host: a"), 505),
    Refused("B1", "ICE/1.0", req(b"GET / ICE/1.0", b"Host: a"), 400),
    Refused("B1", "lower-case http/1.1", req(b"GET / http/1.1", b"Host: a"), 400),
    Refused("B1", "SP after version", req(b"GET / HTTP/1.1 ", b"Host: a"), 400),
    # B2 methods: not a token -> 400; an unknown token (compared case-sensitively) -> 501.
    Refused("B2", "non-token G@T", req(b"G@T / HTTP/1.1", b"Host: a"), 400),
    Refused("B2", "non-token with CTL", req(b"bad_method\x01 / HTTP/1.1", b"Host: a"), 400),
    Refused("B2", "non-token with NUL", req(b"GET\x00 / HTTP/1.1", b"Host: a"), 400),
    Refused("B2", "lower-case get", req(b"get / HTTP/1.1", b"Host: a"), 501),
    Refused("B2", "unknown FOO", req(b"FOO / HTTP/1.1", b"Host: a"), 501),
    Refused("B2", "very long token", req(b"X" * 1000 + b" / HTTP/1.1", b"Host: a"), 501),
    # B3 authority-form: a reverse proxy is not a forward proxy.
    Refused("B3", "CONNECT", req(b"CONNECT a:443 HTTP/1.1", b"Host: a:443"), 405),
    # B4 asterisk-form is never forwarded as a path.
    Refused("B4", "OPTIONS *", req(b"OPTIONS * HTTP/1.1", b"Host: a"), 400),
    Refused("B4", "GET *", req(b"GET * HTTP/1.1", b"Host: a"), 400),
    # B5 absolute-form whose authority disagrees with Host, or is malformed.
    Refused("B5", "authority != Host", get(target=b"http://evil.example/x"), 400),
    Refused("B5", "port != Host port", get(target=b"http://a:81/x"), 400),
    Refused("B5", "userinfo in authority", get(target=b"http://u@a/x"), 400),
    Refused("B5", "no Host", req(b"GET http://a/x HTTP/1.1"), 400),
    # B6 Host: missing, duplicate, empty, userinfo, path, non-ASCII, bad port, spaces.
    Refused("B6", "missing", req(b"GET / HTTP/1.1"), 400),
    Refused("B6", "duplicate", req(b"GET / HTTP/1.1", b"Host: a", b"Host: a"), 400),
    Refused("B6", "duplicate, different", req(b"GET / HTTP/1.1", b"Host: a", b"Host: b"), 400),
    Refused("B6", "empty", req(b"GET / HTTP/1.1", b"Host: "), 400),
    Refused("B6", "userinfo", req(b"GET / HTTP/1.1", b"Host: a@b"), 400),
    Refused("B6", "path", req(b"GET / HTTP/1.1", b"Host: a/b"), 400),
    Refused("B6", "non-ASCII", req(b"GET / HTTP/1.1", "Host: \u00e9.example".encode()), 400),
    Refused("B6", "bad port", req(b"GET / HTTP/1.1", b"Host: a:99999x"), 400),
    Refused("B6", "inner space", req(b"GET / HTTP/1.1", b"Host: a b"), 400),
    # B8 request target longer than max_uri_bytes.
    Refused("B8", "long target", get(target=b"/" + b"a" * 2000), 414),
    # B9 fragment in the target.
    Refused("B9", "fragment", get(target=b"/a#b"), 400),
    # B10 path tricks refused by the one canonicalisation (dot-segments, backslash, NUL).
    *(
        Refused("B10", f"path {path!r}", get(target=path), 400)
        for path in (
            b"/t/a/../b",
            b"/t/a/%2e%2e/b",
            b"/t/a/%2E./b",
            b"/t/./b",
            b"/t/a/..",
            b"/t\\b",
            b"/t%5cb",
            b"/t/%00",
        )
    ),
    # C1 whitespace between field name and colon (RFC 9112 5.1).
    Refused("C1", "SP before colon", get(b"X-A : b"), 400),
    Refused("C1", "HTAB before colon", get(b"X-A\t: b"), 400),
    Refused("C1", "Host with SP before colon", req(b"GET / HTTP/1.1", b"Host : a"), 400),
    # C2 obs-fold (RFC 9112 5.2).
    Refused("C2", "fold with SP", get(b"X-A: a", b" b"), 400),
    Refused("C2", "fold with HTAB", get(b"X-A: a", b"\tb"), 400),
    # C3 CR, LF, NUL and other CTLs in fields; bare CR or LF as line ends (RFC 9112 2.2).
    Refused("C3", "bare CR in value", get(b"X-A: a\rb"), 400),
    Refused("C3", "NUL in value", get(b"X-A: a\x00b"), 400),
    Refused("C3", "\\x01 in value", get(b"X-A: a\x01b"), 400),
    Refused("C3", "DEL in value", get(b"X-A: a\x7fb"), 400),
    Refused("C3", "bare LF ends a field", b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", 400),
    Refused("C3", "bare LF everywhere", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    Refused("C3", "bare CR ends a field", b"GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n", 400),
    Refused("C3", "CR LF split by CR", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\r\n\r\n", 400),
    Refused("C3", "bare CR in target", b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    # C4 field names that are not tokens.
    *(
        Refused("C4", f"name {name!r}", get(name + b": b"), 400)
        for name in (b"X A", b"X@A", b"X(A)", b"X\x80", b"", b":authority", b"\x01X", b"X\x00A")
    ),
    # C5 underscores in field names (CGI maps "_" and "-" to the same variable).
    *(
        Refused("C5", name.decode(), post(name + b": 5", b"Content-Length: 0"), 400)
        for name in (b"X_Tenant_Id", b"Content_Length", b"Transfer_Encoding", b"My_Custom_Header")
    ),
    # C6 too many fields, one oversized field, an oversized head (RFC 6585 5).
    Refused("C6", "too many fields", get(*(b"X-%d: y" % i for i in range(25))), 431),
    Refused("C6", "oversized field", get(b"X-A: " + b"y" * 5000), 431),
    Refused("C6", "oversized head", get(*(b"X-%d: " % i + b"y" * 500 for i in range(10))), 431),
    # C7 a decision-driving field twice (here the trusted tenant header).
    Refused(
        "C7", "tenant header twice", get(b"X-Tenant-ID: a", b"X-Tenant-ID: b"), 400, trusted=True
    ),
    # C10 Connection may not make framing, Host or identity fields hop-by-hop.
    Refused("C10", "Connection names Host", get(b"Connection: close, Host"), 400),
    Refused(
        "C10",
        "Connection names Content-Length",
        post(b"Content-Length: 1", b"Connection: Content-Length", body=b"x"),
        400,
    ),
    Refused(
        "C10", "Connection names Transfer-Encoding", chunked(b"Connection: Transfer-Encoding"), 400
    ),
    Refused(
        "C10",
        "Connection names the tenant header",
        get(b"Connection: X-Tenant-ID", b"X-Tenant-ID: a"),
        400,
    ),
    Refused(
        "C10",
        "Connection names the tenant header, trusted",
        get(b"Connection: x-tenant-id", b"X-Tenant-ID: a"),
        400,
        trusted=True,
    ),
    # D5 declared body larger than max_body_bytes: refused before reading it.
    Refused("D5", "CL over the limit", post(b"Content-Length: 1001", body=b"x" * 1001), 413),
    # E1 unknown expectation; Expect with an oversized body answered without 100 Continue.
    Refused(
        "E1", "unknown expectation", post(b"Expect: magic", b"Content-Length: 1", body=b"x"), 417
    ),
    Refused(
        "E1",
        "100-continue over the limit",
        post(b"Expect: 100-continue", b"Content-Length: 5000"),
        413,
    ),
]


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.id)
async def test_refused(case: Refused) -> None:
    async with proxy_and_upstream(limits=LIMITS, trusted=case.trusted) as (port, upstream):
        outcome = await exchange(port, case.raw)
    assert_refused(outcome, case.status, upstream)


def assert_refused(outcome: Outcome, status: int, upstream: RecordingUpstream) -> None:
    assert outcome.statuses == [status], outcome.raw
    assert outcome.responses[0].header(b"connection") == b"close"
    assert outcome.closed, "the connection must be closed after a refusal"
    assert outcome.rest == b""
    assert upstream.connections == 0, "a refused request must not reach an upstream"
    assert upstream.raw == b""


# --- forwarded: exactly the re-framed request(s) ----------------------------------------------


@dataclass(frozen=True)
class Sent:
    """What h11 must parse from the upstream's bytes for one forwarded request."""

    method: bytes
    target: bytes
    body: bytes = b""
    fields: dict[bytes, bytes | None] = field(default_factory=dict)  # None: must be absent
    framing: bytes | None = None  # b"chunked", or the Content-Length; None: no body framing


@dataclass(frozen=True)
class Forwarded:
    ref: str
    what: str
    raw: bytes
    sent: tuple[Sent, ...]
    trusted: bool = False
    closed: bool = False  # the proxy must close the client connection after the responses
    head: bool = False

    @property
    def id(self) -> str:
        return f"{self.ref} {self.what}"


def one(
    ref: str,
    what: str,
    raw: bytes,
    method: bytes = b"GET",
    target: bytes = b"/",
    *,
    body: bytes = b"",
    framing: bytes | None = None,
    trusted: bool = False,
    closed: bool = False,
    **fields: bytes | None,
) -> Forwarded:
    names = {name.replace("_", "-").lower().encode(): value for name, value in fields.items()}
    sent = Sent(method, target, body, names, framing)
    return Forwarded(ref, what, raw, (sent,), trusted, closed, head=method == b"HEAD")


_SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
_GZIPPED = gzip.compress(b"hello hello hello", mtime=0)

FORWARDED = [
    one(
        "A3",
        "CL with OWS",
        post(b"Content-Length:  5 ", body=b"hello"),
        b"POST",
        body=b"hello",
        framing=b"5",
    ),
    one(
        "A4",
        "TE with HTAB OWS",
        post(b"Transfer-Encoding:\tchunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
        b"POST",
        body=b"hello",
        framing=b"chunked",
    ),
    one(
        "A4",
        "Content-Encoding: chunked is no framing",
        post(b"Content-Encoding: chunked", b"Content-Length: 5", body=b"hello"),
        b"POST",
        body=b"hello",
        framing=b"5",
        content_encoding=b"chunked",
    ),
    one(
        "A6",
        "chunk size with leading zeros",
        chunked(body=b"0005\r\nhello\r\n0\r\n\r\n"),
        b"POST",
        body=b"hello",
        framing=b"chunked",
    ),
    one(
        "A7",
        "chunk extensions dropped",
        chunked(body=b'5;a=b;c="d"\r\nhello\r\n0;x=y\r\n\r\n'),
        b"POST",
        body=b"hello",
        framing=b"chunked",
    ),
    one(
        "A8",
        "Host trailer not merged",
        chunked(body=b"1\r\nx\r\n0\r\nHost: evil\r\n\r\n"),
        b"POST",
        body=b"x",
        framing=b"chunked",
        host=b"a",
    ),
    one(
        "A8",
        "tenant trailer not merged",
        chunked(body=b"1\r\nx\r\n0\r\nX-Tenant-ID: acme\r\n\r\n"),
        b"POST",
        body=b"x",
        framing=b"chunked",
        x_tenant_id=None,
    ),
    one(
        "A8",
        "other trailer not forwarded",
        chunked(body=b"1\r\nx\r\n0\r\nX-T: y\r\n\r\n"),
        b"POST",
        body=b"x",
        framing=b"chunked",
        x_t=None,
    ),
    Forwarded(
        "A8",
        "request after trailers parsed apart",
        chunked(body=b"0\r\nX-T: y\r\n\r\n" + _SMUGGLED),
        (Sent(b"POST", b"/", framing=b"chunked", fields={b"x-t": None}), Sent(b"GET", b"/admin")),
    ),
    Forwarded(
        "A10",
        "smuggling-shaped pipeline",
        chunked(body=b"0\r\n\r\n" + _SMUGGLED),
        (Sent(b"POST", b"/", framing=b"chunked"), Sent(b"GET", b"/admin")),
    ),
    Forwarded(
        "A10",
        "three pipelined",
        get(target=b"/1") + get(target=b"/2") + get(target=b"/3"),
        (Sent(b"GET", b"/1"), Sent(b"GET", b"/2"), Sent(b"GET", b"/3")),
    ),
    Forwarded(
        "A10",
        "CL body then request",
        post(b"Content-Length: 5", body=b"hello") + _SMUGGLED,
        (Sent(b"POST", b"/", b"hello", framing=b"5"), Sent(b"GET", b"/admin")),
    ),
    one(
        "A11", "GET with CL body", get(b"Content-Length: 5") + b"hello", body=b"hello", framing=b"5"
    ),
    one(
        "A11",
        "GET with chunked body",
        get(b"Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n",
        body=b"hello",
        framing=b"chunked",
    ),
    one(
        "A11",
        "HEAD with CL body",
        req(b"HEAD / HTTP/1.1", b"Host: a", b"Content-Length: 5", body=b"hello"),
        b"HEAD",
        body=b"hello",
        framing=b"5",
    ),
    one(
        "A11",
        "HTTP/1.0 GET with CL 0",
        req(b"GET / HTTP/1.0", b"Content-Length: 0"),
        framing=b"0",
        closed=True,
    ),
    one(
        "A11",
        "HTTP/1.0 POST with body",
        req(b"POST / HTTP/1.0", b"Content-Length: 5", body=b"hello"),
        b"POST",
        body=b"hello",
        framing=b"5",
        closed=True,
    ),
    one("B2", "known WebDAV method", req(b"PROPFIND /d HTTP/1.1", b"Host: a"), b"PROPFIND", b"/d"),
    one(
        "B5",
        "absolute-form normalised",
        get(target=b"http://a/x?y=1"),
        target=b"/x?y=1",
        host=b"a",
        x_forwarded_host=b"a",
    ),
    one(
        "B5",
        "absolute-form, https, case",
        req(b"GET https://A/x HTTP/1.1", b"Host: a"),
        target=b"/x",
        host=b"A",
    ),
    one("B5", "absolute-form without path", get(target=b"http://a"), target=b"/", host=b"a"),
    one("B6", "Host with port", req(b"GET / HTTP/1.1", b"Host: a:8080"), host=b"a:8080"),
    one(
        "B7",
        "X-Forwarded-* and Forwarded from untrusted",
        get(
            b"X-Forwarded-For: 6.6.6.6",
            b"X-Forwarded-Host: evil",
            b"X-Forwarded-Proto: https",
            b"Forwarded: for=6.6.6.6;host=evil",
            b"X-Real-IP: 6.6.6.6",
        ),
        x_forwarded_for=b"127.0.0.1",
        x_forwarded_host=b"a",
        x_forwarded_proto=b"http",
    ),
    one(
        "B7",
        "X-Forwarded-* and Forwarded from trusted",
        get(
            b"X-Forwarded-For: 6.6.6.6",
            b"X-Forwarded-Host: front",
            b"X-Forwarded-Proto: https",
            b"Forwarded: for=6.6.6.6",
        ),
        trusted=True,
        x_forwarded_for=b"6.6.6.6, 127.0.0.1",
        x_forwarded_host=b"front",
        x_forwarded_proto=b"https",
        forwarded=b"for=6.6.6.6",
    ),
    *(
        one("B10", f"raw path {path!r} kept", get(target=path), target=path)
        for path in (
            b"//t/b",
            b"/t/a%2fb",
            b"/t;a=b/c",
            b"/t/%c0%ae%c0%ae/b",
            b"/p-%0D-%0a-%09",
            b"/a/.b/..c",
        )
    ),
    one("C3", "HTAB inside a value", get(b"X-A: a\tb"), x_a=b"a\tb"),
    one(
        "C7",
        "untrusted tenant header twice: stripped",
        get(b"X-Tenant-ID: a", b"X-Tenant-ID: b"),
        x_tenant_id=None,
        x_rollout_variant=b"stable",
    ),
    one(
        "C8", "obs-text kept byte for byte", get(b"X-A: caf\xe9 \x85\xff"), x_a=b"caf\xe9 \x85\xff"
    ),
    one("C9", "Connection: close honoured", get(b"Connection: close"), closed=True),
    one(
        "C10",
        "named XFF dropped, then regenerated",
        get(b"Connection: close, X-Forwarded-For", b"X-Forwarded-For: 6.6.6.6"),
        closed=True,
        x_forwarded_for=b"127.0.0.1",
    ),
    one(
        "C10",
        "named custom field dropped",
        get(b"Connection: X-Custom", b"X-Custom: 1", b"X-Kept: 2"),
        x_custom=None,
        x_kept=b"2",
    ),
    one(
        "C10", "Connection: TE, close", get(b"Connection: TE, close", b"TE: trailers"), closed=True
    ),
    one(
        "C11",
        "hop-by-hop set stripped",
        get(
            b"Keep-Alive: timeout=5",
            b"Proxy-Connection: keep-alive",
            b"TE: trailers",
            b"Trailer: X",
            b"Proxy-Authorization: Basic eA==",
            b"Upgrade: foo",
        ),
    ),
    one(
        "C12",
        "XFF list from untrusted overwritten",
        get(b"X-Forwarded-For: 1.1.1.1, 2.2.2.2", b"X-Forwarded-For: 3.3.3.3"),
        x_forwarded_for=b"127.0.0.1",
    ),
    one(
        "C13",
        "proxy-internal fields replaced",
        get(b"X-Rollout-Variant: canary", b"X-Rollout-Step: 9"),
        x_rollout_variant=b"stable",
        x_rollout_step=b"0",
    ),
    one(
        "C14",
        "derived values never reach fields",
        get(b"X-Tenant-ID: a b%0d%0aX-Evil: 1"),
        trusted=True,
        x_evil=None,
        x_tenant_id=b"a b%0d%0aX-Evil: 1",
    ),
    one(
        "D7",
        "compressed body not decoded",
        post(b"Content-Encoding: gzip", b"Content-Length: %d" % len(_GZIPPED), body=_GZIPPED),
        b"POST",
        body=_GZIPPED,
        framing=b"%d" % len(_GZIPPED),
        content_encoding=b"gzip",
    ),
    one(
        "E1",
        "100-continue forwarded",
        post(b"Expect: 100-continue", b"Content-Length: 5", body=b"hello"),
        b"POST",
        body=b"hello",
        framing=b"5",
        expect=b"100-continue",
    ),
    one("E2", "HTTP/1.0 without Host", b"GET /x HTTP/1.0\r\n\r\n", target=b"/x", closed=True),
    one(
        "E2",
        "HTTP/1.0 keep-alive",
        req(b"GET /x HTTP/1.0", b"Connection: keep-alive"),
        target=b"/x",
    ),
    one(
        "E3",
        "WebSocket refused by the upstream",
        get(
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            b"Sec-WebSocket-Version: 13",
        )
        + get(target=b"/after"),
        closed=True,
        connection=b"upgrade",
        upgrade=b"websocket",
    ),
    one(
        "E5",
        "h2c upgrade stripped",
        get(
            b"Connection: Upgrade, HTTP2-Settings",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ),
        http2_settings=None,
    ),
]


@pytest.mark.parametrize("case", FORWARDED, ids=lambda c: c.id)
async def test_forwarded(case: Forwarded) -> None:
    async with proxy_and_upstream(limits=LIMITS, trusted=case.trusted, handler=echo) as (
        port,
        upstream,
    ):
        outcome = await exchange(port, case.raw, responses=len(case.sent), head=case.head)
    assert outcome.statuses == [200] * len(case.sent), outcome.raw
    assert outcome.closed == case.closed, outcome.raw
    if not case.head:
        expected = [f"{s.method.decode()} {s.target.decode()}".encode() for s in case.sent]
        assert [r.body for r in outcome.responses] == expected
    for response in outcome.responses:
        assert (
            response.header(b"transfer-encoding") is None
            or response.header(b"content-length") is None
        )
    assert_upstream_got(upstream, case.sent, trusted=case.trusted)


def assert_upstream_got(
    upstream: RecordingUpstream, sent: Sequence[Sent], *, trusted: bool = False
) -> None:
    """The upstream received exactly `sent`, well-formed, re-framed, and nothing more."""
    assert upstream.protocol_errors == []
    oracle = h11_oracle(bytes(upstream.raw))
    assert oracle.error is None, oracle.error
    assert oracle.leftover == b"", f"bytes after the last request: {oracle.leftover!r}"
    assert len(oracle.requests) == len(sent), bytes(upstream.raw)
    for seen, want in zip(oracle.requests, sent, strict=True):
        assert (seen.method, seen.target, seen.body) == (want.method, want.target, want.body)
        for name in ONCE:
            assert len(seen.values(name)) == 1, (name, seen.headers)
        for name in HOP_BY_HOP:
            if name not in want.fields:
                assert seen.header(name) is None, (name, seen.headers)
        assert seen.header(b"x-rollout-variant") in (b"stable", b"canary")
        te, cl = seen.header(b"transfer-encoding"), seen.header(b"content-length")
        assert te is None or cl is None, "both framings sent upstream"
        assert (te or cl) == want.framing, (te, cl)
        if not trusted:
            assert seen.header(b"x-forwarded-for") == b"127.0.0.1"
            assert all(seen.header(name) is None for name in UNTRUSTED_ONLY), seen.headers
        for name, value in want.fields.items():
            assert seen.header(name) == value, (name, seen.headers)


# --- cases that need their own set-up ----------------------------------------------------------


async def test_a6_bad_chunk_after_the_head_went_up_never_completes_a_request() -> None:
    """A6: when the head was already forwarded, the upstream connection is cut mid-request."""
    async with proxy_and_upstream(limits=LIMITS) as (port, upstream):
        outcome = await exchange(
            port, [chunked(body=b""), b"5\r\nhello\r\n0x1\r\nx\r\n0\r\n\r\n"], gap=0.2
        )
        await asyncio.sleep(0.05)
    assert outcome.statuses == [400]
    assert outcome.closed
    assert upstream.requests == [], "the upstream must never see a complete request"
    oracle = h11_oracle(bytes(upstream.raw))
    assert oracle.requests == []
    assert b"0x1" not in upstream.raw


@pytest.mark.xfail(
    strict=True,
    reason="A7: httptools exposes no chunk-extension callback, so the length of one chunk line "
    "is not bounded; extensions are dropped when re-framing and never buffered",
)
async def test_a7_huge_chunk_extension_is_refused() -> None:
    async with proxy_and_upstream(limits=LIMITS) as (port, upstream):
        outcome = await exchange(
            port, chunked(body=b"1" + b";a=b" * 50_000 + b"\r\nx\r\n0\r\n\r\n")
        )
    assert_refused(outcome, 400, upstream)


async def test_a7_huge_chunk_extension_is_not_forwarded() -> None:
    async with proxy_and_upstream(limits=LIMITS) as (port, upstream):
        outcome = await exchange(
            port, chunked(body=b"1" + b";a=b" * 50_000 + b"\r\nx\r\n0\r\n\r\n")
        )
    assert outcome.statuses == [200]
    assert_upstream_got(upstream, [Sent(b"POST", b"/", b"x", framing=b"chunked")])
    assert len(upstream.raw) < 1024


async def test_a9_many_tiny_chunks_do_not_stall_the_loop() -> None:
    """A9: a body sent as 1-byte chunks is relayed, and the event loop keeps ticking.

    The upstream here only collects bytes (h11 is slow on 64k events); h11 checks them after."""
    size = 64 * 1024
    body = b"1\r\nx\r\n" * size + b"0\r\n\r\n"
    raw = bytearray()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            data = await reader.read(65536)
            if not data:
                return
            raw.extend(data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    try:
        async with running_proxy(config_dict(service([url], [url]))) as proxy:
            task = asyncio.create_task(ticker())
            try:
                outcome = await exchange(proxy.data_address[1], chunked(body=body), wait=10)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        server.close()
    assert outcome.statuses == [200]
    assert max(gaps) < 0.25, f"event loop stalled for {max(gaps):.3f} s"
    (seen,) = h11_oracle(bytes(raw)).requests
    assert seen.body == b"x" * size


async def test_a10_pipelined_queue_is_capped_and_served_in_order() -> None:
    """A10: more pipelined requests than max_pipelined: reading pauses, all answered in order."""
    count = 7
    raw = b"".join(get(target=b"/%d" % i) for i in range(count))
    async with proxy_and_upstream(limits={"max_pipelined": 2}, handler=echo) as (port, upstream):
        outcome = await exchange(port, raw, responses=count)
    assert outcome.statuses == [200] * count
    assert [r.body for r in outcome.responses] == [b"GET /%d" % i for i in range(count)]
    assert not outcome.closed
    assert_upstream_got(upstream, [Sent(b"GET", b"/%d" % i) for i in range(count)])


async def test_a10_a_bad_pipelined_request_is_answered_after_the_good_one() -> None:
    """A10: each pipelined request is judged alone: the first served, the second refused."""
    bad = req(b"POST /2 HTTP/1.1", b"Host: a", b"Content-Length: 1", b"Content-Length: 2")
    async with proxy_and_upstream(handler=echo) as (port, upstream):
        outcome = await exchange(port, get(target=b"/1") + bad + get(target=b"/3"), responses=2)
    assert outcome.statuses == [200, 400]
    assert outcome.closed
    assert_upstream_got(upstream, [Sent(b"GET", b"/1")])


async def test_b6_unknown_virtual_host_is_404() -> None:
    async with proxy_and_upstream(match={"host": "svc.example"}) as (port, upstream):
        outcome = await exchange(port, req(b"GET / HTTP/1.1", b"Host: other.example"))
    assert_refused(outcome, 404, upstream)


async def test_c6_head_dribbled_without_end_is_bounded() -> None:
    """C6: one endless field value must be refused early, not buffered until the deadline."""
    async with proxy_and_upstream(limits={"header_timeout": "5s"}) as (port, upstream):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: ")
        sent = 0
        answered = asyncio.create_task(reader.read(65536))
        with contextlib.suppress(ConnectionError):
            while sent < 64 * 1024 * 1024 and not answered.done():
                writer.write(b"y" * 65536)
                await writer.drain()
                sent += 65536
        try:
            first = await asyncio.wait_for(answered, 2)
        except ConnectionError:
            first = b""  # refused and reset while still sending: the answer may be lost
        writer.close()
    assert sent < 16 * 1024 * 1024, f"{sent} bytes of one field accepted"
    assert first == b"" or first.startswith(b"HTTP/1.1 431 "), first
    assert upstream.connections == 0


async def test_c7_duplicate_authorization_with_a_jwt_rule_is_refused() -> None:
    identity = [{"jwt_claim": "sub", "kind": "user", "algorithms": ["HS256"], "key_env": "K"}]
    env = {"K": "k" * 32}
    async with proxy_and_upstream(env=env, identity=identity) as (port, upstream):
        outcome = await exchange(port, get(b"Authorization: Bearer a", b"Authorization: Bearer b"))
    assert_refused(outcome, 400, upstream)


async def test_d3_slow_body_gets_408_and_the_upstream_request_is_cut() -> None:
    limits = {"body_timeout": "0.3s"}
    async with proxy_and_upstream(limits=limits) as (port, upstream):
        start = time.monotonic()
        outcome = await exchange(port, post(b"Content-Length: 10", body=b"ab"), wait=3)
        elapsed = time.monotonic() - start
        await asyncio.sleep(0.05)
    assert outcome.statuses == [408]
    assert outcome.closed
    assert elapsed < 0.3 + 0.6
    assert upstream.requests == []


async def test_d6_chunked_body_over_the_limit_is_413() -> None:
    body = b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n"
    async with proxy_and_upstream(limits=LIMITS) as (port, upstream):
        outcome = await exchange(port, chunked(body=body))
    assert_refused(outcome, 413, upstream)


async def test_d8_connections_beyond_the_cap_are_closed() -> None:
    async with proxy_and_upstream(limits={"max_connections": 2}) as (port, upstream):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.05)
        extra = await exchange(port, get(), wait=1)
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.05)
        after = await exchange(port, get())
    assert extra.responses == []
    assert extra.closed
    assert after.statuses == [200]
    assert len(upstream.requests) == 1


async def test_d9_pool_overflow_is_an_immediate_503() -> None:
    release = asyncio.Event()

    async def slow(received: Received) -> Reply:
        await release.wait()
        return Reply()

    limits = {"pool_max_concurrency": 1, "pool_queue": 0}
    async with proxy_and_upstream(limits=limits, handler=slow) as (port, upstream):
        first = asyncio.create_task(exchange(port, get(target=b"/1")))
        await asyncio.sleep(0.1)
        start = time.monotonic()
        second = await exchange(port, get(target=b"/2"))
        elapsed = time.monotonic() - start
        release.set()
        assert (await first).statuses == [200]
    assert second.statuses == [503]
    assert elapsed < 0.5
    assert [r.target for r in upstream.requests] == ["/1"]


async def test_e3_websocket_switches_only_after_the_upstreams_101() -> None:
    """E3: bytes sent right behind the upgrade request reach the upstream only after its 101."""
    got: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        got.append(head)
        await asyncio.sleep(0.1)
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        )
        data = await reader.read(100)
        got.append(data)
        writer.write(b"pong:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    upgrade = get(
        b"Connection: Upgrade",
        b"Upgrade: websocket",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version: 13",
    )
    data = config_dict(service([url], [url]), trusted_peers=UNTRUSTED)
    try:
        async with running_proxy(data) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_address[1])
            writer.write(upgrade + b"ping")
            answer = b""
            while not answer.endswith(b"pong:ping"):
                chunk = await asyncio.wait_for(reader.read(1000), 3)
                assert chunk, answer
                answer += chunk
            writer.close()
    finally:
        server.close()
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert b"ping" not in got[0]
    assert got[1] == b"ping"
