"""The client side of the data plane: one protocol instance per downstream connection.

It parses requests with llhttp (httptools), applies the strict checks of `request.py`, asks the
router where each request goes, and runs exchanges one at a time in arrival order (pipelined
requests wait in a bounded queue; their bodies are held only up to a small limit, then reading
pauses). Timeouts are deadlines checked by the engine's sweeper, so a request costs no timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from proxy.errors import BadRequest, HttpError, Overloaded
from proxy.http import framing
from proxy.http.exchange import Exchange
from proxy.http.request import (
    Request,
    check_host,
    check_request_line,
    check_transfer_encoding,
    invalid_method_status,
    split_target,
)

if TYPE_CHECKING:
    from proxy.config import Limits
    from proxy.http.server import Engine

# What on_header must do with a field, by lower-cased name (absent: forward as is).
(
    H_HOST,
    H_LENGTH,
    H_TE,
    H_CONNECTION,
    H_UPGRADE,
    H_EXPECT,
    H_DROP,
    H_XFF,
    H_XFP,
    H_XFH,
    H_TRUSTED_ONLY,
    H_RELEVANT,
    H_DROP_UNTRUSTED,
) = range(13)

IDLE, HEAD, BODY, WAIT = range(4)
_LINGER_S = 2.0
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
_STANDARD_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})
# Fields a client may not declare hop-by-hop through Connection (RFC 9110 7.6.1; RELIABILITY C10).
_PROTECTED = frozenset({b"host", b"content-length", b"transfer-encoding"})
# RELIABILITY A11 (HAProxy's default): no body on these methods from an HTTP/1.0 client.
_NO_BODY_10 = frozenset({b"GET", b"HEAD", b"DELETE"})
# Owners of read pauses: the pipelined queue is full; an upgrade awaits the upstream's 101.
_QUEUE_FULL = object()
_UPGRADE_PENDING = object()


class DownstreamProtocol(asyncio.Protocol):
    """One client connection: parse, route, run exchanges in order, enforce deadlines."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loop = engine.loop
        self.limits: Limits = engine.limits
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.trusted = False
        self.draining = False
        self.in_feed = False
        self._parser = httptools.HttpRequestParser(self)
        self._request: Request | None = None
        self._url = b""
        self._head_size = 0
        self._header_count = 0
        self._body_size = 0
        self._connection_tokens: list[bytes] = []
        self._head_chunks: list[bytes] = []
        self._head_extra = 0
        self._head_cap = self.limits.max_uri_bytes + self.limits.max_header_bytes + 4096
        self._unstarted: Exchange | None = None
        self._chunk = b""
        self._scan_chunk = b""
        self._scan = 0
        self._scan_start = 0
        self.current: Exchange | None = None
        self._parsing: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._fatal: HttpError | None = None
        self._pausers: set[object] = set()
        self._closing = False
        self._linger_until = 0.0
        self._truncated = False
        self._tunnel: Exchange | None = None
        self._early: list[bytes] = []
        self._upgraded = False
        self.phase = IDLE
        self.deadline = 0.0

    # --- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        engine = self.engine
        if len(engine.connections) >= self.limits.max_connections:
            self.transport.abort()
            return
        engine.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else ""
        self.trusted = engine.is_trusted(self.peer_ip)
        self.draining = engine.draining
        self.deadline = self.loop.time() + self.limits.idle_timeout_s

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._tunnel is not None:
            self._tunnel.tunnel_up(data)
            return
        if self._upgraded:
            self._early.append(data)
            return
        if self.phase == HEAD:
            self._head_chunks.append(data)
            self._head_extra += len(data)
        self._chunk = data
        self.in_feed = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            error = exc.__context__
            if not isinstance(error, HttpError):
                raise
            self._fail(error)
        except httptools.HttpParserInvalidMethodError:
            status = invalid_method_status(self._message_bytes())
            self._fail(BadRequest("unknown or malformed method", status))
        except httptools.HttpParserError as exc:
            self._fail(BadRequest(f"malformed request: {exc}"))
        finally:
            self.in_feed = False
        if self.phase == HEAD and self._head_extra > self._head_cap and not self._failed():
            # httptools buffers a field until it ends: bound the head across reads (C6).
            self._fail(BadRequest("request header fields too large", 431))
        unstarted = self._unstarted
        if unstarted is not None:
            self._unstarted = None
            if unstarted is self.current:
                self._start(unstarted)
        current = self.current
        if current is not None:
            current.flush_upstream()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.engine.forget(self)
        for exchange in (self.current, *self._queue):
            if exchange is not None:
                exchange.client_gone()
        self.current = None
        self._queue.clear()

    def pause_writing(self) -> None:
        conn = self.current.conn if self.current is not None else None
        if conn is not None:
            conn.pause_reading()

    def resume_writing(self) -> None:
        conn = self.current.conn if self.current is not None else None
        if conn is not None:
            conn.resume_reading()

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = Request()
        self._url = b""
        self._head_size = 0
        self._header_count = 0
        self._body_size = 0
        self._connection_tokens = []
        chunk = self._chunk
        self._scan_start = self._scan if chunk is self._scan_chunk else 0
        self._head_chunks = [chunk]
        self._head_extra = 0
        self.phase = HEAD
        self.deadline = self.loop.time() + self.limits.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_uri_bytes:
            raise BadRequest("request target too long", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers or (
            self._head_size > self.limits.max_header_bytes
        ):
            raise BadRequest("request header fields too large", 431)
        if b"_" in name:
            raise BadRequest("underscore in a header field name")
        if self._parsing is not None:
            # A trailer field (after the head): checked by llhttp and bounded above, never
            # merged into the request and never forwarded (RELIABILITY A8).
            return
        lower = name.lower()
        kind = self.engine.header_kinds.get(lower)
        request = self._request
        assert request is not None
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
            request.host = check_host(value)
        elif kind == H_LENGTH:
            request.content_length = int(value)
        elif kind == H_TE:
            request.chunked = True
        elif kind == H_EXPECT:
            if value.strip().lower() != b"100-continue":
                raise BadRequest("unsupported expectation", 417)
            request.expect_continue = True
        elif kind in (H_XFF, H_XFP, H_XFH):
            if self.trusted:
                self._forwarded(request, kind, value)
        elif kind in (H_TRUSTED_ONLY, H_RELEVANT):
            self._relevant(request, kind, lower, name, value)
        elif kind == H_UPGRADE:
            request.websocket = value.strip().lower() == b"websocket"
        elif kind == H_CONNECTION:
            self._connection_tokens.append(value)
        elif kind == H_DROP_UNTRUSTED and self.trusted:
            request.headers.append((name, value))
        if kind == H_TE:
            check_transfer_encoding(value, b"1.0" if self._is_http10() else b"1.1")

    def _is_http10(self) -> bool:
        return self._parser.get_http_version() == "1.0"

    @staticmethod
    def _forwarded(request: Request, kind: int, value: bytes) -> None:
        if kind == H_XFF:
            request.xff = value if request.xff is None else request.xff + b", " + value
        elif kind == H_XFP:
            request.xfp = value
        else:
            request.xfh = value

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

    def on_headers_complete(self) -> None:
        request = self._request
        assert request is not None
        parser = self._parser
        request.method = parser.get_method()
        self._check_line(request)
        if request.method == b"CONNECT":
            raise BadRequest("CONNECT is not supported by a reverse proxy", 405)
        if request.host is None and request.version == b"1.1":
            raise BadRequest("missing Host header")
        split_target(request, self._url)
        self._check_body(request)
        if self._connection_tokens:
            self._drop_connection_options(request)
        if not (request.websocket and parser.should_upgrade() and request.method == b"GET"):
            request.websocket = False
        # An upgrade the upstream refuses ends the connection: what the client sent after the
        # request was meant for the new protocol (RELIABILITY E3).
        request.keep_alive = (
            parser.should_keep_alive() and not self.draining and not request.websocket
        )
        self.phase = BODY
        self.deadline = self.loop.time() + self.limits.body_timeout_s
        exchange = Exchange(self, request, self.engine.router.route(request, self))
        self._parsing = exchange
        if self.current is None:
            self._begin(exchange)
        else:
            self._queue.append(exchange)
            if len(self._queue) >= self.limits.max_pipelined:
                self.pause_reading_for(_QUEUE_FULL)

    def _check_line(self, request: Request) -> None:
        chunks = self._head_chunks
        head = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        end = check_request_line(head, self._scan_start, request.method, self._url)
        request.version = head[end - 5 : end - 2]
        if len(chunks) == 1:
            self._scan_chunk = head
            self._scan = end

    def _drop_connection_options(self, request: Request) -> None:
        """Fields named in Connection are hop-by-hop too (RFC 9110 7.6.1)."""
        named = framing.connection_tokens(self._connection_tokens) - _STANDARD_OPTIONS
        kinds = self.engine.header_kinds
        if named & _PROTECTED or any(kinds.get(n) in (H_TRUSTED_ONLY, H_RELEVANT) for n in named):
            raise BadRequest("Connection names a framing, Host or identity field")
        if named:
            request.headers = [(n, v) for n, v in request.headers if n.lower() not in named]

    def _check_body(self, request: Request) -> None:
        limit = self.limits.max_body_bytes
        if limit and request.content_length is not None and request.content_length > limit:
            raise BadRequest("request body too large", 413)
        if request.version == b"1.0" and request.method in _NO_BODY_10 and request.has_body:
            raise BadRequest("body on an HTTP/1.0 GET, HEAD or DELETE request")
        if request.content_length is None and not request.chunked:
            request.content_length = None

    def on_body(self, body: bytes) -> None:
        limit = self.limits.max_body_bytes
        if limit:
            self._body_size += len(body)
            if self._body_size > limit:
                raise BadRequest("request body too large", 413)
        self.deadline = self.loop.time() + self.limits.body_timeout_s
        if self._parsing is not None:
            self._parsing.request_body(body)

    def on_message_complete(self) -> None:
        exchange = self._parsing
        self._parsing = None
        if exchange is not None:
            exchange.request_complete()
        if self.current is not None:
            self.phase = WAIT
        elif self._fatal is None:
            self.phase = IDLE
            self.deadline = self.loop.time() + self.limits.idle_timeout_s
        self._request = None

    # --- exchanges ----------------------------------------------------------------------

    def _begin(self, exchange: Exchange) -> None:
        self.current = exchange
        if exchange is not self._parsing and self._request is None:
            self.phase = WAIT
        if self.in_feed:
            # Started once this read is parsed: a request refused within the same read (a bad
            # chunk, a bad pipelined successor) then never costs an upstream connection.
            self._unstarted = exchange
            return
        self._start(exchange)

    def _start(self, exchange: Exchange) -> None:
        try:
            exchange.start(self.loop.time())
        except Overloaded as exc:
            exchange.respond_error(exc)

    def exchange_done(self, exchange: Exchange) -> None:
        """Called by the exchange when it has finished (its response is written)."""
        if exchange is not self.current:
            return
        self.current = None
        if exchange.close_after or self.draining:
            self.close()
            return
        if self._queue:
            self.resume_reading_for(_QUEUE_FULL)
            self._begin(self._queue.popleft())
        elif self._fatal is not None:
            self._reply_and_close(self._fatal)
        elif self._parsing is None and self._request is None:
            self.phase = IDLE
            self.deadline = self.loop.time() + self.limits.idle_timeout_s

    def _message_bytes(self) -> bytes:
        """The message being parsed, from where its request line is sought (exact for the
        first request of a read; for a later one the status may be 400 rather than 501, the
        request is refused either way)."""
        chunks = self._head_chunks
        head = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return head[self._scan_start :].lstrip(b"\r\n")

    def _failed(self) -> bool:
        return self._closing or self._fatal is not None

    def _fail(self, error: HttpError) -> None:
        """A request could not be accepted: answer in order, then close the connection."""
        if self._parsing is not None and self._parsing is self.current:
            self._parsing.client_gone()
            self.current = None
        self._parsing = None
        if self.current is None:
            self._reply_and_close(error)
        else:
            self._fatal = error
            self.pause_reading_for(self)

    def _reply_and_close(self, error: HttpError) -> None:
        self.engine.rejected(error)
        self.write(framing.error_response(error.status, error.reason, close=True))
        self.close()

    def _upgrade(self, rest: bytes) -> None:
        exchange = self.current
        if exchange is None or not exchange.request.websocket:
            # An upgrade we do not relay (h2c ...) is ignored: the bytes are plain HTTP.
            if rest:
                self.data_received(rest)
            return
        self._upgraded = True
        self.pause_reading_for(_UPGRADE_PENDING)  # hold at most one read until the 101
        if rest:
            self._early.append(rest)

    def start_tunnel(self, exchange: Exchange) -> None:
        self._tunnel = exchange
        self.phase = WAIT
        self.deadline = 0.0
        for data in self._early:
            exchange.tunnel_up(data)
        self._early.clear()
        self.resume_reading_for(_UPGRADE_PENDING)

    # --- used by exchanges and the engine -----------------------------------------------

    def forwarded_headers(self, request: Request) -> bytes:
        peer = self.peer_ip.encode("ascii")
        xff = peer if request.xff is None else request.xff + b", " + peer
        proto = request.xfp or b"http"
        host = request.xfh or request.host or b""
        return b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n" % (
            xff,
            proto,
            host,
        )

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self._closing:
            transport.write(data)

    def pause_reading_for(self, owner: object) -> None:
        if not self._pausers and self.transport is not None and not self._closing:
            self.transport.pause_reading()
        self._pausers.add(owner)

    def resume_reading_for(self, owner: object) -> None:
        self._pausers.discard(owner)
        if not self._pausers and self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def abort_after_flush(self, *, reset: bool) -> None:
        """The response cannot be completed: end the connection once the exchange is done.
        A response whose length or chunking tells the client it is cut ends with a close; one
        delimited by the close itself (HTTP/1.0) ends with a reset, so that the client cannot
        take the truncated message for a complete one."""
        self.draining = True
        self._truncated = reset

    def abort(self) -> None:
        """Reset the connection now (RST, not FIN), discarding what is not sent."""
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    def close(self) -> None:
        """Close after what was written, lingering: the write side is shut first and what
        the client still sends is read and dropped for a moment, because closing a socket with
        unread input makes the kernel send a reset that can destroy the response in flight
        (a client still uploading a body the upstream already answered)."""
        transport = self.transport
        if transport is None or self._closing:
            return
        if self._truncated:
            self.abort()
            return
        self._closing = True
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._linger_until = self.loop.time() + min(_LINGER_S, self.limits.body_timeout_s)
        self._pausers.clear()
        transport.resume_reading()

    def check_deadline(self, now: float) -> None:
        """Called by the engine's sweeper about every `sweep` seconds."""
        current = self.current
        if current is not None:
            current.check_deadline(now)
        if self._closing:
            if self._linger_until and now >= self._linger_until and self.transport is not None:
                self.transport.abort()
            return
        if not self.deadline or now < self.deadline:
            return
        phase = self.phase
        if phase == IDLE:
            self.close()
        elif phase == HEAD and self.current is None:
            self._reply_and_close(BadRequest("request head not received in time", 408))
        elif phase == BODY and self._parsing is not None and self._parsing in self._pausers:
            return  # the body waits for its upstream, which the exchange times itself
        elif phase == BODY and self._parsing is not None:
            self._parsing.client_gone()
            if self.current is self._parsing:
                self.current = None
            self._parsing = None
            self._reply_and_close(BadRequest("request body not received in time", 408))
        elif phase in (HEAD, BODY):
            self.close()

    def drain(self) -> None:
        """Stop keeping the connection alive; close it now if it is idle."""
        self.draining = True
        if self.current is None and self.phase == IDLE:
            self.close()
