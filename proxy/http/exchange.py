"""One request/response exchange: the per-request context tying a client to an upstream.

Phases (pingora's habit): admitted by the pool -> attached to an upstream connection -> request
head and body streamed up -> response head re-framed and streamed down -> finished. Every way out
goes through `finish`, which releases the pool slot, pools or closes the upstream connection,
records the outcome once, and hands the client connection back to its downstream protocol.

Errors are tagged by source: an upstream that fails is counted against the route's variant; a
client that goes away is counted as an abort and never as an upstream failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.errors import HttpError, UpstreamError
from proxy.http import framing
from proxy.http.framing import CRLF, HOP_BY_HOP, LAST_CHUNK, encode_chunk

if TYPE_CHECKING:
    from proxy.dataplane import Route
    from proxy.http.downstream import DownstreamProtocol
    from proxy.http.pool import Endpoint
    from proxy.http.request import Request
    from proxy.http.upstream import UpstreamConnection

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STANDARD_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})
_PENDING_LIMIT = 256 * 1024

# How the response body is delimited towards the client.
_NONE, _LENGTH, _CHUNKED, _CLOSE = 0, 1, 2, 3


class Exchange:
    """Moves one request up and its response down, with back-pressure both ways."""

    __slots__ = (
        "_deadline",
        "_eof_ends",
        "_framing",
        "_upgrade",
        "abandoned",
        "admitted",
        "client",
        "close_after",
        "conn",
        "endpoint",
        "finished",
        "generated",
        "informational",
        "out",
        "pending",
        "pending_size",
        "request",
        "request_done",
        "response_started",
        "retried",
        "route",
        "started",
        "status",
        "tunnel",
        "up_out",
        "upstream_keep_alive",
    )

    def __init__(self, client: DownstreamProtocol, request: Request, route: Route) -> None:
        self.client = client
        self.request = request
        self.route = route
        self.conn: UpstreamConnection | None = None
        self.endpoint: Endpoint | None = None
        self.started = 0.0
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.up_out: list[bytes] = []
        self.out: list[bytes] = []
        self.request_done = not request.has_body
        self.response_started = False
        self.informational = False
        self.status = 0
        self.close_after = False
        self.upstream_keep_alive = False
        self.finished = False
        self.generated = False  # the status was produced by the proxy, not the upstream
        self.abandoned = False
        self.admitted = False
        self.retried = False
        self.tunnel = False
        self._framing = _NONE
        self._eof_ends = False  # the upstream delimits the response body by closing
        self._deadline = 0.0
        self._upgrade = b""

    # --- start and attach -------------------------------------------------------------

    def start(self, now: float) -> None:
        """Ask the route's pool for a connection (raises Overloaded when it cannot queue)."""
        self.started = now
        self.route.pool.acquire(self)
        self.admitted = True

    def attach(self, conn: UpstreamConnection, endpoint: Endpoint) -> None:
        if self.finished or self.abandoned:
            endpoint.release(conn)
            return
        self.conn = conn
        self.endpoint = endpoint
        conn.exchange = self
        self.up_out.append(self._request_head())
        self.up_out.extend(self.pending)
        self.pending = []
        if self.pending_size > _PENDING_LIMIT:
            self.client.resume_reading_for(self)
        self.pending_size = 0
        if self.request_done:
            self._arm(self.client.limits.response_timeout_s)
        if not self.client.in_feed:
            self.flush_upstream()

    def endpoint_authority(self) -> bytes:
        endpoint = self.endpoint
        return b"" if endpoint is None else endpoint.authority

    def _request_head(self) -> bytes:
        request = self.request
        client = self.client
        parts = [request.method, b" ", request.target, b" HTTP/1.1\r\nHost: "]
        # An HTTP/1.0 request may come without Host: the upstream then gets its own authority.
        parts.append(request.host or self.endpoint_authority())
        parts.append(CRLF)
        for name, value in request.headers:
            parts += (name, b": ", value, CRLF)
        parts.append(client.forwarded_headers(request))
        parts.append(self.route.extra)
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

    # --- request body (from the client) -------------------------------------------------

    def request_body(self, chunk: bytes) -> None:
        data = encode_chunk(chunk) if self.request.chunked else chunk
        if self.conn is not None:
            self.up_out.append(data)
            return
        if self.finished:
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > _PENDING_LIMIT and self.pending_size - len(data) <= _PENDING_LIMIT:
            self.client.pause_reading_for(self)

    def request_complete(self) -> None:
        self.request_done = True
        if self.request.chunked:
            self.request_body_end()
        if self.conn is not None and not self.response_started:
            self._arm(self.client.limits.response_timeout_s)

    def request_body_end(self) -> None:
        if self.conn is not None:
            self.up_out.append(LAST_CHUNK)
        elif not self.finished:
            self.pending.append(LAST_CHUNK)

    def flush_upstream(self) -> None:
        if self.up_out and self.conn is not None:
            data = self.up_out[0] if len(self.up_out) == 1 else b"".join(self.up_out)
            self.up_out.clear()
            self.conn.write(data)

    # --- response (from the upstream) ---------------------------------------------------

    def response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        if status < 200:
            self.informational = True
            if status == 100 and self.request.expect_continue and not self.request_done:
                self.out.append(_CONTINUE)
            elif status == 101:
                if not self.request.websocket:
                    raise UpstreamError("protocol", "101 to a request that asked for no upgrade")
                self._upgrade = self._switching_head(headers)
            self.status = status
            return
        self.status = status
        self.upstream_keep_alive = keep_alive
        self.response_started = True
        self._arm(self.client.limits.body_timeout_s)
        self.out.append(self._response_head(status, headers))
        if self._framing == _NONE and self.request.method == b"HEAD":
            # llhttp cannot be told the request was HEAD: it would wait for a body. The response
            # ends here; the connection is closed rather than pooled.
            self.upstream_keep_alive = False
            self.finish()

    def _response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        length: bytes | None = None
        chunked = False
        drop = HOP_BY_HOP
        parts = [framing.status_line(status)]
        for name, value in headers:
            lower = name.lower()
            if lower in drop:
                if lower == b"content-length":
                    length = value.strip()
                elif lower == b"transfer-encoding":
                    chunked = True
                elif lower == b"connection":
                    named = framing.connection_tokens([value]) - _STANDARD_OPTIONS
                    if named:
                        drop = drop | named
                continue
            parts += (name, b": ", value, CRLF)
        if drop is not HOP_BY_HOP:
            parts = [parts[0], *_without(parts[1:], drop)]
        parts.append(self._framing_header(status, length, chunked))
        self.close_after = self.close_after or self._must_close()
        if self.close_after:
            parts.append(b"Connection: close\r\n")
        elif self.request.version == b"1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(CRLF)
        return b"".join(parts)

    def _framing_header(self, status: int, length: bytes | None, chunked: bool) -> bytes:
        request = self.request
        if request.method == b"HEAD" or status in (204, 304):
            self._framing = _NONE
            return b"Content-Length: %s\r\n" % length if length and status != 204 else b""
        self._eof_ends = length is None and not chunked
        if length is not None and not chunked:
            self._framing = _LENGTH
            return b"Content-Length: %s\r\n" % length
        if request.version == b"1.1":
            self._framing = _CHUNKED
            return b"Transfer-Encoding: chunked\r\n"
        self._framing = _CLOSE
        self.close_after = True
        return b""

    def _must_close(self) -> bool:
        client = self.client
        return not self.request.keep_alive or not self.request_done or client.draining

    def response_body(self, body: bytes) -> None:
        if self.informational or self.finished:
            return
        self._deadline = self.client.loop.time() + self.client.limits.body_timeout_s
        self.out.append(encode_chunk(body) if self._framing == _CHUNKED else body)

    def response_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.finished:
            return
        if self._framing == _CHUNKED:
            self.out.append(LAST_CHUNK)
        self.finish()

    def flush_client(self) -> None:
        if self.out:
            self.client.write(self.out[0] if len(self.out) == 1 else b"".join(self.out))
            self.out.clear()

    def client_write(self, data: bytes) -> None:
        self.client.write(data)

    # --- WebSocket and other upgrades ---------------------------------------------------

    def switch_protocols(self, rest: bytes) -> None:
        """The upstream answered 101: relay its head, then bytes both ways until either closes."""
        if self.status != 101 or not self.request.websocket or self.conn is None:
            self.upstream_failed(UpstreamError("protocol", "unexpected upgrade"), self.endpoint)
            return
        self._cancel_timer()
        self.tunnel = True
        self.response_started = True
        self.out.append(self._upgrade)
        if rest:
            self.out.append(rest)
        self.flush_client()
        self.client.start_tunnel(self)
        self.record(101)

    @staticmethod
    def _switching_head(headers: list[tuple[bytes, bytes]]) -> bytes:
        parts = [framing.status_line(101)]
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                parts += (name, b": ", value, CRLF)
        parts.append(b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        return b"".join(parts)

    def tunnel_up(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.write(data)

    def tunnel_closed(self) -> None:
        """Either side of a tunnel closed: close the other, once."""
        if self.finished:
            return
        self.finished = True
        self._release_slot()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.client.close()

    # --- failures -----------------------------------------------------------------------

    def upstream_failed(self, error: UpstreamError, endpoint: Endpoint | None) -> None:
        if self.finished or self.abandoned:
            return
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        now = self.client.loop.time()
        if endpoint is not None and error.reason in ("connect", "reset"):
            endpoint.failed(now)
        recorder = self.route.recorder
        recorder.failed(self.route, error.reason)
        if self._may_retry(error):
            self.retried = True
            self.route.pool.dispatch(self, fresh=True)
            return
        if self.tunnel:
            self.tunnel_closed()
            return
        if self.response_started:
            # Too late for a status: the client must see a truncated message, never a clean end.
            self.out.clear()
            self.close_after = True
            self.client.abort_after_flush(reset=self._framing == _CLOSE)
            self.finish(status=502 if error.reason != "timeout" else 504)
            return
        self.respond_error(error)

    def _may_retry(self, error: UpstreamError) -> bool:
        """Retry once: a connect failure (nothing was sent) or a reused connection the
        upstream had closed, for a request that is idempotent and had no body."""
        if self.retried or self.response_started or self.tunnel:
            return False
        if error.reason == "connect":
            return len(self.route.pool.endpoints) > 1
        return (
            error.reason == "reset"
            and self.request.idempotent
            and not self.request.has_body
            and self.status == 0
        )

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        """The upstream closed the connection while this exchange used it."""
        if self.finished:
            return
        if self.tunnel:
            self.tunnel_closed()
            return
        if self.response_started and self._eof_ends and exc is None:
            # A close-delimited response (RFC 9112 6.3 rule 8) ends with the upstream's FIN.
            self.conn = None
            self.response_complete()
            self.flush_client()
            return
        reused = conn.reused
        self.conn = None
        detail = str(exc) if exc else "connection closed before the response completed"
        error = UpstreamError("reset", detail)
        if not reused or self.response_started or self.status:
            self.upstream_failed(error, conn.endpoint)
        elif self._may_retry(error):
            # A pooled connection the upstream closed while idle (the keep-alive race): neither
            # the endpoint's fault nor a failure of the variant when the request is sent again.
            self.retried = True
            self.route.pool.dispatch(self, fresh=True)
            return
        else:
            self.upstream_failed(error, None)
        self.flush_client()

    def respond_error(self, error: HttpError) -> None:
        self.status = error.status
        self.generated = True
        self.close_after = self.close_after or not self.request_done or self.client.draining
        self.out.append(framing.error_response(error.status, error.reason, close=self.close_after))
        self.finish()

    def client_gone(self) -> None:
        """The client connection is lost before the exchange finished."""
        if self.finished:
            return
        self.abandoned = True
        if self.tunnel:
            self.tunnel_closed()
            return
        self.route.recorder.aborted(self.route)
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        self.finished = True
        self._cancel_timer()
        self._release_slot()

    # --- timers and back-pressure ---------------------------------------------------------

    def _arm(self, timeout: float) -> None:
        self._deadline = self.client.loop.time() + timeout

    def check_deadline(self, now: float) -> None:
        """Called by the engine's sweeper; a passed deadline is an upstream timeout, unless
        the upstream is silent only because the proxy stopped reading it for the client."""
        if not self._deadline or now < self._deadline or self.finished:
            return
        conn = self.conn
        if conn is not None and conn.paused and self.response_started:
            # The client has not read for a whole body timeout: it is cut as a client that
            # went away (connection_lost -> client_gone counts the abort), not blamed upstream.
            self._cancel_timer()
            self.client.abort()
            return
        self.upstream_failed(UpstreamError("timeout", "upstream did not answer in time"), None)
        self.flush_client()

    def _cancel_timer(self) -> None:
        self._deadline = 0.0

    def client_pause_reading(self) -> None:
        """The upstream does not take what is written to it: stop reading the client."""
        self.client.pause_reading_for(self)
        if not self.request_done and not self.response_started and not self.tunnel:
            # An upstream that stops taking the request body is timed like a silent one.
            self._arm(self.client.limits.body_timeout_s)

    def client_resume_reading(self) -> None:
        self.client.resume_reading_for(self)
        if not self.request_done and not self.response_started and not self.tunnel:
            self._cancel_timer()

    # --- the one way out ------------------------------------------------------------------

    def _release_slot(self) -> None:
        if self.admitted:
            self.admitted = False
            self.route.pool.release_slot()

    def finish(self, status: int | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        # Reading may be paused for this exchange's upstream back-pressure; once it is over,
        # nothing else would resume it.
        self.client.resume_reading_for(self)
        self._cancel_timer()
        conn = self.conn
        if conn is not None:
            self.conn = None
            if self.upstream_keep_alive and self.request_done and conn.usable:
                conn.detach()
                if self.endpoint is not None:
                    self.endpoint.succeeded()
                    self.endpoint.release(conn)
            else:
                conn.close()
        self._release_slot()
        self.flush_client()
        final = status if status is not None else self.status
        if final:
            self.record(final, generated=status is not None or self.generated)
        self.client.exchange_done(self)

    def record(self, status: int, *, generated: bool = False) -> None:
        """Count the outcome once: metrics, and the rollout analysis as evidence."""
        duration = self.client.loop.time() - self.started
        self.route.recorder.completed(self.route, status, duration, self.request, generated)


def _without(parts: list[bytes], drop: frozenset[bytes]) -> list[bytes]:
    """Remove (name, ": ", value, CRLF) quadruples whose name is in `drop`."""
    kept: list[bytes] = []
    for i in range(0, len(parts) - 3, 4):
        if parts[i].lower() not in drop:
            kept += parts[i : i + 4]
    return kept
