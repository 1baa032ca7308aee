"""One HTTP/2 stream as its exchange's client: request body in, response out, flow control.

To the engine's `Exchange` a stream is what an HTTP/1.1 connection is to it: the peer's
address and trust, the limits, the reading it may pause (here: the stream's receive window,
never the connection's) and where the response goes (here: HEADERS and DATA frames of this
stream). Back-pressure both ways:

- request body: DATA is acknowledged (the window reopened, `acknowledge_received_data`) as it
  is handed to the upstream; while the exchange pauses the reading (the upstream does not take
  the body, or no upstream connection is attached past the pending limit) it is not, so a
  client can never send more than the window the proxy holds;
- response body: DATA goes out within the client's window for the stream and the connection;
  what does not fit waits here, and past `HIGH_WATER` bytes the upstream connection is no
  longer read (it resumes below `LOW_WATER`). A client that opens no window stalls its own
  stream only, and is cut after the engine's timeouts.

The connection (`H2ClientConnection`) owns the h2 state machine and the socket; a stream calls
it and never writes to the transport itself.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Final

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

from proxy.http.connection import ClientConnection
from proxy.http.h2fields import error_fields

if TYPE_CHECKING:
    from h2.connection import H2Connection

    from proxy.http.exchange import Exchange
    from proxy.http.fields import FieldNames
    from proxy.http.sides import ExchangeSide

HIGH_WATER: Final = 256 * 1024  # response bytes held for a stream before its upstream waits
LOW_WATER: Final = 64 * 1024


def answer_body(reason: str) -> bytes:
    """The body of an answer the proxy makes itself (`H2Stream.answer`)."""
    return reason.encode("utf-8", "replace") + b"\n"


class StreamHost(ClientConnection):
    """What a stream uses of the HTTP/2 connection it belongs to (`H2ClientConnection` in
    h2connection.py), declared here so that the stream needs nothing of that module."""

    h2: H2Connection
    write_paused: bool  # the transport's buffer is full: DATA waits

    def settle(self, stream: H2Stream) -> None:
        raise NotImplementedError

    def refuse_body(self, stream: H2Stream, status: int, reason: str) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError


class H2Stream(ClientConnection):
    """A request stream: the client connection its exchange sees (a `ClientConnection` with
    no transport of its own), and the stream's send buffer."""

    def __init__(self, conn: StreamHost, stream_id: int) -> None:
        super().__init__(conn.engine)
        self.conn = conn
        self.id = stream_id
        self.limits = conn.limits
        self.generation = conn.generation
        self.names: FieldNames = conn.engine.field_names
        self.peer_ip = conn.peer_ip
        self.peer_bytes = conn.peer_bytes
        self.trusted = conn.trusted
        self.client_cert = conn.client_cert
        self.draining = conn.draining
        self.exchange: Exchange | None = None
        self.buffer: deque[bytes] = deque()
        self.buffered = 0
        self.ending = False  # END_STREAM goes once the buffer is sent
        self.trailers: list[tuple[bytes, bytes]] = []  # ... on the trailers, when there are
        self.local_closed = False  # our side is done (ended or reset)
        self.remote_closed = False  # the client's side is done (ended or reset)
        self.body_size = 0
        now = self.loop.time()
        self.deadline = now + self.limits.body_timeout_s
        self.body_deadline = now + self.limits.body_total_timeout_s
        self.progress_at = now
        self._pausers: list[object] = []
        self._unacked = 0
        self._held = False  # the upstream connection's reading is paused for this stream

    @property
    def done(self) -> bool:
        exchange = self.exchange
        return self.local_closed and (exchange is None or exchange.finished)

    # --- the request body, from the client ----------------------------------------------

    def received(self, data: bytes, flow_length: int) -> None:
        """DATA of this stream (`flow_length`: what it cost of the window, with padding)."""
        exchange = self.exchange
        if exchange is None or exchange.finished or self.local_closed:
            self._ack(flow_length)  # nobody takes it: only the connection's window is reopened
            return
        self.body_size += len(data)
        limit = self.limits.max_body_bytes
        if limit and self.body_size > limit:
            self.conn.refuse_body(self, 413, "request body too large")
            return
        self.deadline = self.loop.time() + self.limits.body_timeout_s
        if data:
            exchange.request_body(data)
            exchange.flush_upstream()
        if self._pausers:
            self._unacked += flow_length
        else:
            self._ack(flow_length)

    def ended(self) -> None:
        """The client ended its side (END_STREAM)."""
        self.remote_closed = True
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.request_complete()
            exchange.flush_upstream()
        self.conn.settle(self)

    def _ack(self, size: int) -> None:
        if size:
            with contextlib.suppress(ProtocolError):  # a stream closed meanwhile
                self.conn.h2.acknowledge_received_data(size, self.id)

    def pause_reading_for(self, owner: object) -> None:
        if owner not in self._pausers:
            self._pausers.append(owner)

    def resume_reading_for(self, owner: object) -> None:
        if owner not in self._pausers:
            return
        self._pausers.remove(owner)
        if not self._pausers and self._unacked:
            size, self._unacked = self._unacked, 0
            self._ack(size)
            self.conn.flush()

    # --- the response, to the client ------------------------------------------------------

    def send_headers(self, fields: list[tuple[bytes, bytes]], *, end: bool) -> None:
        if self.local_closed:
            return
        try:
            self.conn.h2.send_headers(self.id, fields, end_stream=end)
        except ProtocolError:
            self.reset(ErrorCodes.INTERNAL_ERROR)
            return
        self.progress_at = self.loop.time()
        if end:
            self._closed_locally()

    def send(self, data: bytes) -> None:
        if self.local_closed or not data:
            return
        self.buffer.append(data)
        self.buffered += len(data)
        self.pump()

    def end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """END_STREAM once the buffer is sent: on a HEADERS frame of `trailers` if given (an
        HTTP/2 upstream's, gRPC's status among them), else on an empty DATA frame."""
        if not self.local_closed:
            self.ending = True
            self.trailers = trailers or []
            self.pump()

    def answer(self, status: int, reason: str, request_id: bytes) -> None:
        """An answer the proxy makes itself, as HTTP/1.1 would (a short text/plain body)."""
        body = answer_body(reason)
        self.send_headers(error_fields(status, len(body), request_id), end=False)
        self.send(body)
        self.end()

    def pump(self) -> None:
        """Send what the client's windows allow; hold or release the upstream's reading."""
        conn = self.conn
        h2 = conn.h2
        sent = 0
        while self.buffer and not conn.write_paused and not self.local_closed:
            room = min(h2.local_flow_control_window(self.id), h2.max_outbound_frame_size)
            if room <= 0:
                break
            chunk = self.buffer[0]
            if len(chunk) > room:
                piece, self.buffer[0] = chunk[:room], chunk[room:]
            else:
                piece = self.buffer.popleft()
            h2.send_data(self.id, piece)
            sent += len(piece)
        if sent:
            self.buffered -= sent
            self.progress_at = self.loop.time()
        if self.ending and not self.buffer and not self.local_closed:
            if self.trailers:
                self.send_headers(self.trailers, end=True)
                return
            h2.end_stream(self.id)
            self._closed_locally()
            return
        self._hold(self.buffered > HIGH_WATER if not self._held else self.buffered > LOW_WATER)

    def _hold(self, hold: bool) -> None:
        if hold == self._held:
            return
        exchange = self.exchange
        upstream = exchange.conn if exchange is not None else None
        self._held = hold
        if upstream is None:
            return
        if hold:
            upstream.pause_reading()
        else:
            upstream.resume_reading()

    def release_upstream(self) -> None:
        """The exchange ends: its upstream connection is read again before it is let go."""
        self._hold(False)

    def flush(self) -> None:
        self.conn.flush()

    def _closed_locally(self) -> None:
        self.local_closed = True
        self.buffer.clear()
        self.buffered = 0
        if not self.remote_closed:
            # The response is complete before the request: the client need send no more
            # (RFC 9113 8.1), and the stream's window costs nothing further.
            self.remote_closed = True
            with contextlib.suppress(ProtocolError):
                self.conn.h2.reset_stream(self.id, ErrorCodes.NO_ERROR)
        self.conn.settle(self)

    # --- what the exchange may ask of its client ----------------------------------------

    def reset(self, code: int = ErrorCodes.CANCEL) -> None:
        """Reset the stream now (RST_STREAM), dropping what waits to be sent."""
        if not self.local_closed or not self.remote_closed:
            with contextlib.suppress(ProtocolError):
                self.conn.h2.reset_stream(self.id, code)
        self.local_closed = self.remote_closed = True
        self.buffer.clear()
        self.buffered = 0
        self._hold(False)
        self.conn.settle(self)

    def abort(self) -> None:
        """The client is cut (it has not read for a whole body timeout): counted as gone."""
        exchange = self.exchange
        self.reset(ErrorCodes.CANCEL)
        if exchange is not None:
            exchange.client_gone()
        self.conn.settle(self)
        self.conn.flush()

    def abort_after_flush(self, *, reset: bool) -> None:
        """The response cannot be completed: the client must see the stream cut."""
        self.reset(ErrorCodes.INTERNAL_ERROR)

    def close(self, *, linger: bool = True) -> None:
        self.reset(ErrorCodes.CANCEL)

    def exchange_done(self, exchange: ExchangeSide) -> None:
        self.conn.settle(self)

    def peer_reset(self) -> None:
        """The client reset the stream: an unfinished exchange is an abort."""
        self.local_closed = self.remote_closed = True
        self.buffer.clear()
        self.buffered = 0
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.client_gone()
        self._hold(False)
        self.conn.settle(self)
