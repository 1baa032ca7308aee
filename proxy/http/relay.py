"""The bytes of one exchange, both ways: the request body up, the response down.

`Relay` is the streaming half of an `Exchange`: it holds the request body until an upstream
connection is attached (pausing the client past a limit), encodes it for the upstream, turns the
upstream's response callbacks into the client's re-framed bytes (`response.py` decides the
framing) or answers in the upstream's place, and applies back-pressure both ways. It never
decides how the exchange starts or ends: admission, retries, failures and `finish` belong to
the `Exchange` subclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxy.errors import HttpError, UpstreamError
from proxy.http import framing
from proxy.http.framing import LAST_CHUNK, encode_chunk
from proxy.http.response import CHUNKED, NO_BODY, response_head, switching_head
from proxy.http.sides import ExchangeSide

if TYPE_CHECKING:
    from proxy.core.servertiming import TimingEntry
    from proxy.http.capture import Capture
    from proxy.http.request import Request
    from proxy.http.sides import ClientSide, UpstreamSide

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
PENDING_LIMIT: Final = 256 * 1024  # request body held before an upstream is attached


class Relay(ExchangeSide):
    """Moves one request up and its response down, with back-pressure both ways."""

    __slots__ = (
        "_deadline",
        "_eof_ends",
        "_framing",
        "_upgrade",
        "capture",
        "client",
        "close_after",
        "conn",
        "finished",
        "generated",
        "grpc",
        "head_ends",
        "informational",
        "out",
        "pending",
        "pending_size",
        "request",
        "request_done",
        "response_started",
        "status",
        "timing",
        "trailers",
        "tunnel",
        "up_out",
        "upstream_keep_alive",
    )

    def __init__(self, client: ClientSide, request: Request) -> None:
        self.client = client
        self.request = request
        self.conn: UpstreamSide | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.up_out: list[bytes] = []
        self.out: list[bytes] = []
        self.request_done = not (request.chunked or request.content_length)  # has no body
        self.response_started = False
        self.informational = False
        self.status = 0
        self.close_after = False
        self.upstream_keep_alive = False
        self.finished = False
        self.generated = False  # the status was produced by the proxy, not the upstream
        self.tunnel = False
        self._framing = NO_BODY
        self._eof_ends = False  # the upstream delimits the response body by closing
        self._deadline = 0.0
        self._upgrade = b""
        # Stable's answer kept for a shadow step's comparison (None: not mirrored).
        self.capture: Capture | None = None
        # The response's Server-Timing entries its checks name (None: not read).
        self.timing: tuple[TimingEntry, ...] | None = None
        # The response's trailer fields (an HTTP/2 upstream's; None: it sent none).
        self.trailers: list[tuple[bytes, bytes]] | None = None
        # A gRPC response's status code (core/grpc.py; -1: not a gRPC response).
        self.grpc = -1
        # The response's head ended its stream (an HTTP/2 upstream's: no body, no trailers).
        self.head_ends = False

    def finish(self, status: int | None = None) -> None:
        """The response is complete (or can go no further): end the exchange."""
        raise NotImplementedError

    # --- request body (from the client) -------------------------------------------------

    def request_body(self, chunk: bytes) -> None:
        """Body bytes as the client sent them (de-chunked): re-framed for an HTTP/1.1
        upstream, as they are for one that frames them itself (HTTP/2); held, as they are,
        until a connection is attached."""
        conn = self.conn
        if conn is not None:
            chunked = self.request.chunked and not conn.framed
            self.up_out.append(encode_chunk(chunk) if chunked else chunk)
            return
        if self.finished:
            return
        self.pending.append(chunk)
        self.pending_size += len(chunk)
        if self.pending_size > PENDING_LIMIT and self.pending_size - len(chunk) <= PENDING_LIMIT:
            self.client.pause_reading_for(self)

    def request_complete(self) -> None:
        self.request_done = True
        conn = self.conn
        if conn is not None and conn.framed:
            self.flush_upstream()
            conn.end_request()
        elif self.request.chunked and conn is not None:
            self.up_out.append(LAST_CHUNK)
        if conn is not None and not self.response_started:
            self._arm(self.client.limits.response_timeout_s)

    def held_body(self, framed: bool) -> None:
        """Move the body held before the connection was attached to what goes up next."""
        if self.request.chunked and not framed:
            self.up_out += [encode_chunk(chunk) for chunk in self.pending]
            if self.request_done:
                self.up_out.append(LAST_CHUNK)
        else:
            self.up_out += self.pending
        self.pending = []

    def continue_now(self) -> None:
        """Tell a client waiting with `Expect: 100-continue` to send its body (an upstream
        that frames the request itself is not asked the question)."""
        self.out.append(_CONTINUE)

    def flush_upstream(self) -> None:
        if self.up_out and self.conn is not None:
            data = self.up_out[0] if len(self.up_out) == 1 else b"".join(self.up_out)
            self.up_out.clear()
            self.conn.write(data)

    def tunnel_up(self, data: bytes) -> None:
        if self.conn is not None:
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
                self._upgrade = switching_head(headers, self.request.request_id)
            self.status = status
            return
        self.status = status
        self.upstream_keep_alive = keep_alive
        self.response_started = True
        capture = self.capture
        if capture is not None:
            capture.head(status, headers)
        client = self.client
        self._deadline = client.loop.time() + client.limits.body_timeout_s
        request = self.request
        close = (
            self.close_after or not request.keep_alive or not self.request_done or client.draining
        )
        head, self._framing, self._eof_ends, self.close_after = response_head(
            status, headers, request, close, client.field_names
        )
        self.out.append(head)
        if self._framing == NO_BODY and request.method == b"HEAD":
            # llhttp cannot be told the request was HEAD: it would wait for a body. The response
            # ends here; the connection is closed rather than pooled.
            self.upstream_keep_alive = False
            self.finish()

    def response_outcome(self, grpc: int, head_ends: bool) -> None:
        self.grpc, self.head_ends = grpc, head_ends

    def response_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """Trailer fields after the body (an HTTP/2 upstream's). Kept for the outcome; not
        relayed to an HTTP/1.1 client, as trailers from HTTP/1.1 upstreams are not."""
        if not self.informational and not self.finished:
            self.trailers = fields

    def response_body(self, body: bytes) -> None:
        if self.informational or self.finished:
            return
        self._deadline = self.client.loop.time() + self.client.limits.body_timeout_s
        self.out.append(encode_chunk(body) if self._framing == CHUNKED else body)
        capture = self.capture
        if capture is not None:
            capture.add(body)

    def response_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.finished:
            return
        if self._framing == CHUNKED:
            self.out.append(LAST_CHUNK)
        self.finish()

    def respond_error(self, error: HttpError) -> None:
        """The proxy answers in the upstream's place (before any response head was sent)."""
        self.status = error.status
        self.generated = True
        self.close_after = (
            self.close_after
            or not self.request.keep_alive  # the client asked for the close (or HTTP/1.0)
            or not self.request_done
            or self.client.draining
        )
        self.out.append(
            framing.error_response(
                error.status,
                error.reason,
                close=self.close_after,
                request_id=self.request.request_id,
            )
        )
        self.finish()

    def flush_client(self) -> None:
        if self.out:
            self.client.write(self.out[0] if len(self.out) == 1 else b"".join(self.out))
            self.out.clear()

    def client_write(self, data: bytes) -> None:
        self.client.write(data)

    # --- timers and back-pressure -------------------------------------------------------

    def _arm(self, timeout: float) -> None:
        self._deadline = self.client.loop.time() + timeout

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
