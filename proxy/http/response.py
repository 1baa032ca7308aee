"""The head of a response as the proxy relays it to its client: pure, no I/O.

An upstream's framing and hop-by-hop fields never cross the proxy (RFC 9110 7.6.1, RFC 9112 6):
`response_head` drops them, with any field the upstream's Connection header names, and writes
the request's X-Request-ID (in place of any the upstream sent) and the proxy's own framing for
the client's HTTP version: `Content-Length` when the length is known, `Transfer-Encoding:
chunked` to an HTTP/1.1 client otherwise, and a closed connection for an HTTP/1.0 client. It
also says how the body that follows must be delimited; moving that body is the exchange's
business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxy.http.fields import (
    R_CONNECTION,
    R_LENGTH,
    R_RELAY,
    R_TE,
    RESPONSE_NOT_RELAYED,
    FieldNames,
)
from proxy.http.framing import (
    CRLF,
    STANDARD_OPTIONS,
    connection_tokens,
    names_no_field,
    status_line,
)

if TYPE_CHECKING:
    from proxy.http.request import Request

# How the response body is delimited towards the client.
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
CLOSE: Final = 3

_UPGRADED: Final = b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
# Hop-by-hop fields, and the upstream's own X-Request-ID (it would contradict the proxy's).
_DROPPED: Final = RESPONSE_NOT_RELAYED


def response_head(
    status: int,
    headers: list[tuple[bytes, bytes]],
    request: Request,
    close: bool,
    names: FieldNames,
) -> tuple[bytes, int, bool, bool]:
    """The final response head for the client of `request`; `close`: the connection must end.

    Returns (head, framing, eof_ends, close): `framing` is one of NO_BODY, LENGTH, CHUNKED and
    CLOSE; `eof_ends` is true when the upstream delimits the body by closing (RFC 9112 6.3
    rule 8); `close` is true when the connection ends after this response (asked by the
    caller, or because the body is delimited by the close). `names`: the listener's table of
    field-name spellings.
    """
    length: bytes | None = None
    chunked = False
    drop = _DROPPED
    parts = [status_line(status)]
    for name, value in headers:
        kind = names.response_kind(name)
        if kind != R_RELAY:
            if kind == R_LENGTH:
                length = value.strip()
            elif kind == R_TE:
                chunked = True
            elif kind == R_CONNECTION and not names_no_field(value):
                named = connection_tokens([value]) - STANDARD_OPTIONS
                if named:
                    drop = drop | named
            continue
        # One line per field: compiled, `%` of bytes is one allocation and three copies, and
        # the join below then takes one item per field instead of four.
        parts.append(b"%b: %b\r\n" % (name, value))
    if drop is not _DROPPED:
        parts = [parts[0], *_without(headers, drop)]
    if request.request_id:
        parts.append(b"X-Request-ID: %b\r\n" % request.request_id)
    framing = _framing(status, length, chunked, request)
    if length is not None and (
        framing == LENGTH or (framing == NO_BODY and length and status != 204)
    ):
        parts.append(b"Content-Length: %b\r\n" % length)
    elif framing == CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    close = close or framing == CLOSE
    if close:
        parts.append(b"Connection: close\r\n")
    elif request.version == b"1.0":
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(CRLF)
    eof_ends = framing != NO_BODY and length is None and not chunked
    return b"".join(parts), framing, eof_ends, close


def _framing(status: int, length: bytes | None, chunked: bool, request: Request) -> int:
    if request.method == b"HEAD" or status in (204, 304):
        return NO_BODY
    if length is not None and not chunked:
        return LENGTH
    return CHUNKED if request.version == b"1.1" else CLOSE


def switching_head(headers: list[tuple[bytes, bytes]], request_id: bytes = b"") -> bytes:
    """The head of an upstream's 101 to a WebSocket upgrade, as relayed to the client."""
    parts = [status_line(101), *_without(headers, _DROPPED)]
    if request_id:
        parts.append(b"X-Request-ID: %b\r\n" % request_id)
    parts.append(_UPGRADED)
    return b"".join(parts)


def _without(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes]) -> list[bytes]:
    """The field lines of `headers` whose name is not in `drop`."""
    return [b"%b: %b\r\n" % (name, value) for name, value in headers if name.lower() not in drop]
