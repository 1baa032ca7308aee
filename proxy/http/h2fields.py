"""HTTP/2 header lists to and from the engine's `Request` and response fields: pure, no I/O.

A request stream's header list is read through the same `RequestHead` as an HTTP/1.1 head, field
by field (`on_header`: sizes and counts, underscores, Host, identity and trusted-only fields,
X-Forwarded-* from trusted peers only, X-Request-ID, the force header), then its pseudo-headers
take the place of the request line: `:method` (CONNECT refused, unknown methods 501),
`:path` (origin-form, the same dot-segment and fragment checks), `:authority` (the Host rules;
a Host field that disagrees is refused) and `:scheme` (http or https). What makes an HTTP/2
request malformed (RFC 9113 8.2, 8.3: connection-specific fields, names not in lower case,
NUL, CR or LF in a value or whitespace around it, unknown, repeated or misplaced
pseudo-headers) is refused here too, as a 400 on that stream: the connection's other streams
carry on (tests/http2/test_h2codec.py checks that whatever h2's own validation would refuse
is refused). Cookie fields split by the client are joined for the HTTP/1.1 upstream
(RFC 9113 8.2.3). A body of unknown length goes up chunked.

A response's fields are the upstream's end-to-end ones, lower-cased, without hop-by-hop or
framing fields (but Content-Length, which HTTP/2 allows), plus the request's X-Request-ID.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from proxy.errors import BadRequest
from proxy.http import framing
from proxy.http.fields import R_CONNECTION, R_LENGTH, R_RELAY, FieldNames
from proxy.http.h2codec import unindexed
from proxy.http.request import check_host, invalid_method_status, split_target
from proxy.http.requestid import acceptable

if TYPE_CHECKING:
    from proxy.http.head import RequestHead
    from proxy.http.request import Request

Fields = list[tuple[bytes, bytes]]

# The methods llhttp knows and an upstream is sent (CONNECT is refused as for HTTP/1.1).
_METHODS: Final = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"}
)
_SCHEMES: Final = frozenset({b"http", b"https"})
# RFC 9113 8.2 and 8.3, checked here rather than by h2 (h2codec.py says why): the request
# pseudo-headers (no `:protocol`: no extended CONNECT), field names that are lower-case HTTP
# tokens (as llhttp requires of HTTP/1.1 names; h2 would let `(`, `/` or `@` through, which
# an HTTP/1.1 upstream refuses), values without NUL, CR or LF and without surrounding
# whitespace.
_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path"})
_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+").fullmatch
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z").search
_COOKIE: Final = b"cookie"
_LENGTH: Final = b"content-length"
# Connection-specific fields have no place in HTTP/2 (RFC 9113 8.2.2): refused here, since
# h2 does not validate what the proxy's client connections receive (h2codec.py).
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

# Connection options that never drop a field (the standard ones), nor the length HTTP/2 keeps.
_NAMED_KEPT: Final = framing.STANDARD_OPTIONS | {_LENGTH}

# Fields never relayed as trailers: the framing, connection and routing fields of a head.
_NOT_TRAILERS: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"content-length",
        b"host",
        b"trailer",
    }
)


def request_of(head: RequestHead, fields: Fields, ended: bool) -> Request:
    """The `Request` of one stream's header list (`ended`: it came with END_STREAM, so no
    body follows). Raises BadRequest (with the status HTTP/1.1 would answer) when refused."""
    head.begin()
    request = head.request
    assert request is not None  # begun just now
    pseudo: dict[bytes, bytes] = {}
    cookies: list[bytes] = []
    regular = False  # a regular field came: no pseudo-header may follow
    for name, value in fields:
        if value and _BAD_VALUE(value) is not None:
            raise BadRequest(f"invalid value of {_shown(name)}")
        if name[:1] == b":":
            if regular or name in pseudo or name not in _PSEUDO:
                raise BadRequest(f"unknown, repeated or misplaced pseudo-header {_shown(name)}")
            pseudo[name] = value
            continue
        regular = True
        if _NAME(name) is None:
            raise BadRequest(f"invalid field name {_shown(name)}")
        if name == _COOKIE:
            cookies.append(value)
        elif name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            raise BadRequest(f"connection-specific field {_shown(name)} in HTTP/2")
        elif name == _LENGTH and not value.isdigit():
            # 1*DIGIT (h2 ends the connection over it first; llhttp checks it for HTTP/1.1).
            raise BadRequest("invalid content-length")
        else:
            head.on_header(name, value)
    if cookies:
        head.on_header(b"cookie", b"; ".join(cookies))
    head.request = None
    _request_line(request, pseudo, head.limits.max_uri_bytes)
    _body(request, ended, head.limits.max_body_bytes)
    if not request.request_id or not acceptable(request.request_id):
        request.request_id = head.ids.make()
    request.websocket = False
    request.expect_continue = False  # HTTP/2 clients send the body without waiting
    request.keep_alive = True
    return request


def _shown(name: bytes) -> str:
    return repr(name[:64].decode("latin-1"))


def _request_line(request: Request, pseudo: dict[bytes, bytes], max_uri: int) -> None:
    method, path = pseudo.get(b":method"), pseudo.get(b":path")
    if not method or not path:
        raise BadRequest("missing :method or :path pseudo-header")
    if method == b"CONNECT":
        raise BadRequest("CONNECT is not supported by a reverse proxy", 405)
    if method not in _METHODS:
        raise BadRequest("unknown or malformed method", invalid_method_status(method + b" "))
    request.method = method
    if pseudo.get(b":scheme") not in _SCHEMES:
        raise BadRequest("missing or unsupported :scheme pseudo-header")
    authority = pseudo.get(b":authority")
    if authority is not None:
        check_host(authority)
        if request.host is not None and request.host.lower() != authority.lower():
            raise BadRequest(":authority does not match Host")
        request.host = authority
    if request.host is None:
        raise BadRequest("missing :authority pseudo-header")
    if len(path) > max_uri:
        raise BadRequest("request target too long", 414)
    if path[:1] != b"/":
        raise BadRequest(":path must be a path (origin-form)")
    split_target(request, path)
    request.version = b"2"


def _body(request: Request, ended: bool, limit: int) -> None:
    if request.content_length is not None and request.content_length < 0:
        raise BadRequest("invalid content-length")
    if ended:
        if request.content_length:
            raise BadRequest("content-length on a request without a body")
        return
    if request.content_length is None:
        request.chunked = True  # length unknown: the upstream gets it chunked
    elif limit and request.content_length > limit:
        raise BadRequest("request body too large", 413)


def response_fields(
    status: int, headers: Fields, request_id: bytes, names: FieldNames, *, body: bool
) -> Fields:
    """The HTTP/2 header list of an upstream's final response (`body`: one may follow), in the
    form h2codec.py hands the encoder (lower case, no surrounding whitespace: an HTTP/1.1
    upstream may send it, an HTTP/2 client refuses it)."""
    fields: Fields = [(b":status", b"%d" % status)]
    dropped: frozenset[bytes] = frozenset()
    kind_of = names.response_kind
    for name, value in headers:
        kind = kind_of(name)
        if kind == R_RELAY or (kind == R_LENGTH and body):
            fields.append(unindexed(name.lower(), value.strip(b" \t")))
        elif kind == R_CONNECTION and not framing.names_no_field(value):
            dropped = dropped | (framing.connection_tokens([value]) - _NAMED_KEPT)
    if dropped:
        fields = [field for field in fields if field[0] not in dropped]
    if request_id:
        fields.append(unindexed(b"x-request-id", request_id))
    return fields


def trailer_fields(trailers: Fields | None) -> Fields:
    """An upstream's trailer fields as sent on: lower-case, no pseudo-field, nothing HTTP/2
    forbids in trailers (RFC 9113 8.1: no field that frames or routes the message)."""
    if not trailers:
        return []
    return [
        (name.lower(), value)
        for name, value in trailers
        if not name.startswith(b":") and name.lower() not in _NOT_TRAILERS
    ]


def error_fields(status: int, length: int, request_id: bytes) -> Fields:
    """The header list of an answer the proxy makes itself (a text/plain body of `length`)."""
    fields: Fields = [
        (b":status", b"%d" % status),
        (b"content-type", b"text/plain; charset=utf-8"),
        unindexed(b"content-length", b"%d" % length),
        (b"cache-control", b"no-store"),
    ]
    if request_id:
        fields.append(unindexed(b"x-request-id", request_id))
    return fields
