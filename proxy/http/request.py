"""A parsed request head, the strict checks it must pass, and the head forwarded upstream.

llhttp (through httptools) already refuses most ambiguous framing: CL+TE, duplicate or malformed
Content-Length, obfuscated Transfer-Encoding, bare CR/LF, obs-fold, whitespace before the colon,
control characters. The checks here cover what it lets through (RELIABILITY.md A-E): versions
other than HTTP/1.0 and 1.1, underscores in field names, Host rules, target forms, dot-segments,
and transfer codings other than a lone `chunked`. `upstream_head` writes what the upstream gets:
the end-to-end fields, X-Forwarded-*, X-Request-ID and the proxy's own framing. Pure functions;
no I/O.
"""

from __future__ import annotations

import re
from typing import Final

from proxy.errors import BadRequest
from proxy.http.framing import CRLF

_HOST_RE: Final = re.compile(
    rb"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?\Z"
)
_VERSIONS: Final = (b"HTTP/1.1\r\n", b"HTTP/1.0\r\n")
_DOT_SEGMENT_RE: Final = re.compile(rb"(?:^|/)(?:\.|%2e){1,2}(?:/|\?|$)", re.IGNORECASE)
_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# Single bytes as ints: `int in bytes` is a plain byte search, while a bytes needle is first
# tried as an int by CPython (building and dropping a TypeError), several times slower.
_HASH: Final = ord("#")
_DOT: Final = ord(".")
_PERCENT: Final = ord("%")
_BACKSLASH: Final = ord("\\")
_QUESTION: Final = ord("?")


class Request:
    """One request head, as the proxy will forward it (end-to-end fields only)."""

    __slots__ = (
        "bucket",
        "chunked",
        "content_length",
        "expect_continue",
        "force",
        "headers",
        "host",
        "keep_alive",
        "method",
        "path",
        "query",
        "relevant",
        "request_id",
        "target",
        "version",
        "websocket",
        "xff",
        "xfh",
        "xfp",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.path = ""
        self.query = ""
        self.version = b"1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None
        self.expect_continue = False
        self.websocket = False
        self.relevant: dict[str, str] = {}
        self.bucket = -1  # the routing bucket of its id (-1: not hashed)
        # X-Request-ID: a trusted peer's, else the proxy's own (set when the head is complete).
        self.request_id = b""
        # X-Forwarded-* as sent by a trusted peer (None otherwise: they are then overwritten).
        self.xff: bytes | None = None
        self.xfp: bytes | None = None
        self.xfh: bytes | None = None
        # X-Rollout-Force as sent (None: absent); the router decides whether it is honoured.
        self.force: bytes | None = None

    @property
    def has_body(self) -> bool:
        """True when a body follows the head (possibly empty when chunked)."""
        return self.chunked or bool(self.content_length)

    @property
    def idempotent(self) -> bool:
        """RFC 9110 9.2.2: the methods that may be retried automatically."""
        return self.method in (b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE")


def check_request_line(head: bytes, start: int, method: bytes, url: bytes) -> int:
    """Find `METHOD SP target SP HTTP/1.x CRLF` at or after `start`; return the index past it.

    llhttp also accepts `RTSP/` and `ICE/` versions and repeated spaces; we do not.
    """
    prefix = method + b" " + url + b" "
    # The line nearly always opens the head: `startswith` compiles to a memcmp, where `find`
    # with a start is a method call and a search.
    index = 0 if start == 0 and head.startswith(prefix) else head.find(prefix, start)
    if index < 0:
        raise BadRequest("malformed request line")
    version_at = index + len(prefix)
    if head[version_at : version_at + 10] not in _VERSIONS:
        raise BadRequest("unsupported HTTP version", 505)
    return version_at + 10


def check_host(value: bytes) -> bytes:
    """A Host value: reg-name or IP literal with an optional port; no userinfo, path or spaces."""
    if not _HOST_RE.match(value):
        raise BadRequest("invalid Host header")
    return value


def split_target(request: Request, url: bytes) -> None:
    """Validate the request target and set `path`, `query` (and `host` for absolute-form)."""
    if url.startswith(b"/"):
        raw = url
    elif url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
        raw = _absolute_to_origin(request, url)
    else:
        # asterisk-form (OPTIONS *) and anything else: never forwarded as a path.
        raise BadRequest("request target must be origin-form (/path)")
    if _HASH in raw:
        raise BadRequest("fragment in request target")
    # Most targets have no query: `in` compiles to a byte search, `partition` to a method call.
    path = raw
    if _QUESTION in raw:
        path, _, query = raw.partition(b"?")
        request.query = query.decode("latin-1")
    if (_DOT in path or _PERCENT in path or _BACKSLASH in path) and _unsafe_path(path):
        raise BadRequest("path with dot-segments, backslash or NUL")
    request.target = raw
    request.path = path.decode("latin-1")


def _absolute_to_origin(request: Request, url: bytes) -> bytes:
    """RFC 9112 3.2.2: the target's authority wins over Host; they must agree here."""
    rest = url.split(b"://", 1)[1]
    slash = rest.find(b"/")
    authority, raw = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    if b"?" in authority:
        authority, query = authority.split(b"?", 1)
        raw = b"/?" + query
    check_host(authority)
    if request.host is not None and request.host.lower() != authority.lower():
        raise BadRequest("absolute-form target does not match Host")
    request.host = authority
    return raw


def _unsafe_path(path: bytes) -> bool:
    lowered = path.lower()
    return (
        b"\\" in path
        or b"%00" in path
        or b"%5c" in lowered
        or _DOT_SEGMENT_RE.search(path) is not None
    )


def check_transfer_encoding(value: bytes, version: bytes) -> None:
    """Only a lone `chunked` is accepted.

    RFC 9112 6.3: a request whose final coding is not `chunked` has no determinable length ->
    400 (`xchunked`, `chunked, identity`, `gzip`, parameters). Well-formed codings applied
    before a final `chunked` (`gzip, chunked`) are valid but not implemented -> 501 (6.1).
    """
    if version == b"1.0":
        raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
    codings = [coding.strip(b" \t").lower() for coding in value.split(b",")]
    if codings == [b"chunked"]:
        return
    if codings[-1] != b"chunked" or not all(_TOKEN_RE.match(c) for c in codings[:-1]):
        raise BadRequest("invalid Transfer-Encoding")
    if b"chunked" in codings[:-1]:
        raise BadRequest("chunked applied more than once")
    raise BadRequest("unsupported transfer coding", 501)


def invalid_method_status(head: bytes) -> int:
    """Status for a method llhttp does not know: 501 for a token (RFC 9110 9.1), else 400."""
    method = head.split(b" ", 1)[0]
    return 501 if _TOKEN_RE.match(method) else 400


def upstream_head(
    request: Request, authority: bytes, peer: bytes, extra: bytes, scheme: bytes = b"http"
) -> bytes:
    """The head sent upstream; `extra`: the route's own fields, `authority`: the upstream's,
    `peer`: the client's address (ASCII), `scheme`: the listener's (http or https)."""
    host = request.host
    # An HTTP/1.0 request may come without Host: the upstream then gets its own authority.
    sent_host: bytes = host or authority
    # One `%` per line: compiled, that is one allocation and a copy per piece, and the join
    # below then takes one item per field.
    parts = [b"%b %b HTTP/1.1\r\nHost: %b\r\n" % (request.method, request.target, sent_host)]
    for name, value in request.headers:
        parts.append(b"%b: %b\r\n" % (name, value))
    # X-Forwarded-*: the peer appended to a trusted peer's chain, else the proxy's own view;
    # and the request's id.
    xff = request.xff
    chain: bytes = peer if xff is None else b"%b, %b" % (xff, peer)
    proto: bytes = request.xfp or scheme
    forwarded_host: bytes = request.xfh or host or b""
    parts.append(
        b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\n"
        b"X-Request-ID: %b\r\n%b" % (chain, proto, forwarded_host, request.request_id, extra)
    )
    if request.websocket:
        parts.append(b"Connection: upgrade\r\nUpgrade: websocket\r\n")
    if request.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif request.content_length is not None:
        parts.append(b"Content-Length: %d\r\n" % request.content_length)
    if request.expect_continue:
        parts.append(b"Expect: 100-continue\r\n")
    parts.append(CRLF)
    return b"".join(parts)
