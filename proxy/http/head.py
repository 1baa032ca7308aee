"""The request head being parsed on one downstream connection, field by field.

`RequestHead` receives llhttp's `on_url` and `on_header` callbacks directly (the connection wires
them to it), bounds the head's size across reads, acts on each field by its kind (`fields.py`),
drops the fields named in Connection, and turns the head into a checked `Request` when it is
complete. It raises `BadRequest` for what it refuses and never touches the transport, the router
or an exchange: those are the connection's business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxy.errors import BadRequest
from proxy.http import framing
from proxy.http.fields import (
    H_CONNECTION,
    H_DROP_UNTRUSTED,
    H_EXPECT,
    H_FORCE,
    H_HOST,
    H_LENGTH,
    H_RELEVANT,
    H_REQUEST_ID,
    H_TE,
    H_TRUSTED_ONLY,
    H_UPGRADE,
    H_XFF,
    H_XFH,
    H_XFP,
    FieldNames,
    forwarded,
)
from proxy.http.request import (
    Request,
    check_host,
    check_request_line,
    check_transfer_encoding,
    split_target,
)
from proxy.http.requestid import INVALID, RequestIds, acceptable

if TYPE_CHECKING:
    import httptools

    from proxy.config import Limits

# Fields a client may not declare hop-by-hop through Connection (RFC 9110 7.6.1; RELIABILITY C10).
_PROTECTED: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})
# RELIABILITY A11 (HAProxy's default): no body on these methods from an HTTP/1.0 client.
_NO_BODY_10: Final = frozenset({b"GET", b"HEAD", b"DELETE"})
_UNDERSCORE: Final = ord("_")  # an int needle: see request.py


class RequestHead:
    """One connection's head parser state, reset by `begin` for each request.

    `chunk` is the connection's latest read. `chunks` holds the reads the current head spans
    (for the request-line check), `extra` the bytes read since the head began (bounded by
    `too_large`, because httptools buffers a field until it ends). `scan`/`scan_chunk`
    remember where the previous request line ended within a read, so that a pipelined
    request's line is sought after it.
    """

    __slots__ = (
        "cap",
        "chunk",
        "chunks",
        "connection_tokens",
        "count",
        "extra",
        "host_checked",
        "ids",
        "kinds",
        "limits",
        "max_header_bytes",
        "max_headers",
        "names",
        "parser",
        "request",
        "scan",
        "scan_chunk",
        "scan_start",
        "size",
        "trusted",
        "url",
    )

    # Set by the connection once it has created it; None once the connection is lost.
    parser: httptools.HttpRequestParser | None

    def __init__(
        self,
        limits: Limits,
        kinds: dict[bytes, int],
        ids: RequestIds,
        names: FieldNames | None = None,
    ) -> None:
        self.names = names or FieldNames()
        self.ids = ids  # makes the X-Request-ID of a request that brings none to keep
        self.limits = limits
        self.max_headers = limits.max_headers
        self.max_header_bytes = limits.max_header_bytes
        self.kinds = kinds
        self.host_checked: bytes | None = None  # the last Host value that passed `check_host`
        self.trusted = False
        self.request: Request | None = None  # the head being parsed (None once complete)
        self.url = b""
        self.size = 0
        self.count = 0
        self.connection_tokens: list[bytes] = []
        self.chunk = b""
        self.chunks: list[bytes] = []
        self.extra = 0
        self.cap = limits.max_uri_bytes + limits.max_header_bytes + 4096
        self.scan_chunk = b""
        self.scan = 0
        self.scan_start = 0

    def reconfigure(self, limits: Limits, kinds: dict[bytes, int]) -> None:
        """A reloaded config: its limits and field kinds hold from the next message on."""
        self.limits = limits
        self.max_headers = limits.max_headers
        self.max_header_bytes = limits.max_header_bytes
        self.kinds = kinds
        self.cap = limits.max_uri_bytes + limits.max_header_bytes + 4096

    def begin(self) -> None:
        """A message begins in the latest read."""
        self.request = Request()
        self.url = b""
        self.size = 0
        self.count = 0
        self.connection_tokens = []
        chunk = self.chunk
        self.scan_start = self.scan if chunk is self.scan_chunk else 0
        self.chunks = [chunk]
        self.extra = 0

    def more(self, data: bytes) -> None:
        """A read arrived while the head is incomplete."""
        self.chunks.append(data)
        self.extra += len(data)

    def forget_read(self) -> None:
        """The latest read is parsed. Unless a head is still incomplete, let go of its bytes:
        an idle keep-alive connection would otherwise keep its last read alive (up to a whole
        read buffer of a request body)."""
        if self.request is None:
            self.chunk = self.scan_chunk = b""
            self.chunks.clear()

    def too_large(self) -> bool:
        return self.extra > self.cap

    def message_bytes(self) -> bytes:
        """The message being parsed, from where its request line is sought (exact for the
        first request of a read; for a later one the status may be 400 rather than 501, the
        request is refused either way)."""
        chunks = self.chunks
        head = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return head[self.scan_start :].lstrip(b"\r\n")

    # --- httptools callbacks (wired by the connection) ----------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_uri_bytes:
            raise BadRequest("request target too long", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count += 1
        self.size += len(name) + len(value) + 4
        if self.count > self.max_headers or self.size > self.max_header_bytes:
            raise BadRequest("request header fields too large", 431)
        if _UNDERSCORE in name:
            raise BadRequest("underscore in a header field name")
        request = self.request
        if request is None:
            # A trailer field (after the head): checked by llhttp and bounded above, never
            # merged into the request and never forwarded (RELIABILITY A8).
            return
        lower = self.names.lower(name)
        kind = self.kinds.get(lower)
        if kind is None:
            request.headers.append((name, value))
        else:
            self._special_header(request, kind, lower, name, value)

    def _special_header(
        self, request: Request, kind: int, lower: bytes, name: bytes, value: bytes
    ) -> None:
        if kind == H_HOST:
            if request.host is not None:
                raise BadRequest("duplicate Host header")
            # A keep-alive client sends the same Host on every request: checked once.
            if value != self.host_checked:
                self.host_checked = check_host(value)
            request.host = value
        elif kind in (H_TRUSTED_ONLY, H_RELEVANT):
            self._relevant(request, kind, lower, name, value)
        elif kind == H_LENGTH:
            request.content_length = int(value)
        elif kind == H_TE:
            request.chunked = True
            parser = self.parser
            assert parser is not None  # a field is parsed by it
            http10 = parser.get_http_version() == "1.0"
            check_transfer_encoding(value, b"1.0" if http10 else b"1.1")
        elif kind == H_EXPECT:
            if value.strip().lower() != b"100-continue":
                raise BadRequest("unsupported expectation", 417)
            request.expect_continue = True
        elif kind in (H_XFF, H_XFP, H_XFH):
            if self.trusted:
                forwarded(request, kind, value)
        elif kind == H_UPGRADE:
            request.websocket = value.strip().lower() == b"websocket"
        elif kind == H_CONNECTION:
            self.connection_tokens.append(value)
        elif kind == H_DROP_UNTRUSTED and self.trusted:
            request.headers.append((name, value))
        elif kind == H_REQUEST_ID and self.trusted:
            # Sent twice: neither is kept (checked, or replaced, when the head is complete).
            request.request_id = INVALID if request.request_id else value or INVALID
        elif kind == H_FORCE:
            # Never forwarded; read by the router (sent twice: neither is honoured).
            request.force = b"" if request.force is not None else value

    def _relevant(
        self, request: Request, kind: int, lower: bytes, name: bytes, value: bytes
    ) -> None:
        if kind == H_TRUSTED_ONLY and not self.trusted:
            return  # identity and tier headers from untrusted peers are stripped and ignored
        key = lower.decode("latin-1")
        text = value.decode("latin-1")
        previous = request.relevant.get(key)
        if previous is not None:
            if key != "cookie":
                raise BadRequest(f"duplicate {name.decode('latin-1')} header")
            text = previous + "; " + text
        request.relevant[key] = text
        request.headers.append((name, value))

    # --- the complete head --------------------------------------------------------------

    def complete(self, draining: bool) -> Request:
        """The head is complete: check it as a whole and hand over the request to forward."""
        request = self.request
        assert request is not None
        parser = self.parser
        assert parser is not None
        request.method = parser.get_method()
        self._check_line(request)
        if request.method == b"CONNECT":
            raise BadRequest("CONNECT is not supported by a reverse proxy", 405)
        if request.host is None and request.version == b"1.1":
            raise BadRequest("missing Host header")
        split_target(request, self.url)
        self._check_body(request)
        if not request.request_id or not acceptable(request.request_id):
            request.request_id = self.ids.make()
        if self.connection_tokens:
            self._drop_connection_options(request)
        if not (request.websocket and parser.should_upgrade() and request.method == b"GET"):
            request.websocket = False
        # An upgrade the upstream refuses ends the connection: what the client sent after the
        # request was meant for the new protocol (RELIABILITY E3).
        request.keep_alive = parser.should_keep_alive() and not draining and not request.websocket
        self.request = None
        return request

    def _check_line(self, request: Request) -> None:
        chunks = self.chunks
        head = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        end = check_request_line(head, self.scan_start, request.method, self.url)
        request.version = head[end - 5 : end - 2]
        if len(chunks) == 1:
            self.scan_chunk = head
            self.scan = end

    def _drop_connection_options(self, request: Request) -> None:
        """Fields named in Connection are hop-by-hop too (RFC 9110 7.6.1)."""
        values = self.connection_tokens
        if len(values) == 1 and framing.names_no_field(values[0]):
            return  # the usual `Connection: close` or `keep-alive`, which names no field
        named = framing.connection_tokens(values) - framing.STANDARD_OPTIONS
        if not named:
            return
        kinds = self.kinds
        if named & _PROTECTED or any(kinds.get(n) in (H_TRUSTED_ONLY, H_RELEVANT) for n in named):
            raise BadRequest("Connection names a framing, Host or identity field")
        request.headers = [(n, v) for n, v in request.headers if n.lower() not in named]

    def _check_body(self, request: Request) -> None:
        limit = self.limits.max_body_bytes
        if limit and request.content_length is not None and request.content_length > limit:
            raise BadRequest("request body too large", 413)
        if request.version == b"1.0" and request.method in _NO_BODY_10 and request.has_body:
            raise BadRequest("body on an HTTP/1.0 GET, HEAD or DELETE request")
        if request.content_length is None and not request.chunked:
            request.content_length = None
