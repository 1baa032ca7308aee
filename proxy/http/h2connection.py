"""One HTTP/2 client connection: the h2 state machine driven by an asyncio protocol.

A TLS connection whose ALPN chose `h2`, or a plain one whose first bytes are the HTTP/2 client
preface (h2c by prior knowledge, when `http2.h2c` is on), is handed over by the HTTP/1.1
protocol (`take_over`) to an `H2ClientConnection`. The h2 library (sans-IO) parses frames,
decodes HPACK within `max_header_list_size`, enforces the stream state machine and validates
header lists; this class turns its events into the engine's own work: every request stream
becomes a `Request` read through the same `RequestHead` rules as HTTP/1.1, routed by the
engine's router and run by an `H2Exchange` against the HTTP/1.1 upstream pools.

What one connection may cost is bounded (RELIABILITY.md: refused before any byte reaches an
upstream):
- streams: at most `max_concurrent_streams` at once, advertised; a stream beyond it is refused
  (RST_STREAM REFUSED_STREAM) before it is routed; h2 itself ends a connection that goes far
  past it;
- exchanges start only once the whole read is handled, so a stream opened and reset in one
  read never reaches an upstream; resets and refused streams are paid from an allowance
  (`max_resets_per_s`), SETTINGS and PING frames from another (`max_control_frames_per_s`):
  either spent, GOAWAY ENHANCE_YOUR_CALM and the connection ends (rapid reset, floods);
  h2 is given a read in slices, so that a read of tiny frames is cut within a slice of its
  allowance running out; the client's address (unless a trusted peer) is then barred for
  `penalty_s`, so that reconnecting does not buy a fresh allowance;
- deadlines are the engine's: idle (no stream open), a request body's (per read and in
  total), the upstream's (the exchange's own), and the send timeout (a stream or the
  connection whose client takes nothing).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from proxy.core.allowance import Allowance, full, spend
from proxy.core.penalties import bar
from proxy.errors import BadRequest, HttpError, Overloaded
from proxy.http import h2codec
from proxy.http.connection import IDLE, WAIT, ClientConnection, Listener
from proxy.http.h2fields import request_of
from proxy.http.h2stream import H2Stream, StreamHost
from proxy.http.head import RequestHead
from proxy.logexchange import stream_exchange

if TYPE_CHECKING:
    import asyncio

    from h2.events import Event

    from proxy.http.exchange import Exchange


PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# h2 parses all it is given before it returns the events, so a read is given to it in slices
# and the allowances are checked between them: a flood of 9-byte frames costs at most a
# slice's worth (455 frames) past its allowance, not a whole read's (a read can be 256 KiB).
_SLICE: Final = 4096


def take_over(old: ClientConnection, transport: asyncio.BaseTransport, data: bytes = b"") -> None:
    """Hand the connection `old` was made for (before it served any request) to HTTP/2;
    `data`: what was already read of it."""
    engine = old.engine
    engine.connections.discard(old)
    old.closing = True  # the HTTP/1.1 protocol has nothing more to do with it
    conn = H2ClientConnection(engine)
    transport.set_protocol(conn)
    conn.connection_made(transport)
    if data:
        conn.data_received(data)


class H2ClientConnection(StreamHost):
    """One HTTP/2 client connection: streams to exchanges, flow control, limits."""

    def __init__(self, engine: Listener) -> None:
        super().__init__(engine)
        self.settings = settings = engine.http2
        self.h2 = h2codec.connection(client_side=False)
        self.head = RequestHead(
            self.limits, engine.header_kinds, engine.request_ids, engine.field_names
        )
        self.streams: dict[int, H2Stream] = {}
        self.write_paused = False
        self.goaway_sent = False
        self._flush_due = False
        now = engine.loop.time()
        self._resets = full(settings.max_resets_per_s, now)
        self._control = full(settings.max_control_frames_per_s, now)

    # --- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self not in self.engine.connections:
            return  # refused: over max_connections
        self.head.trusted = self.trusted
        settings = self.settings
        advertised = {
            SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
            SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_window_size,
            SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
        }
        h2 = self.h2
        h2.local_settings = Settings(client=False, initial_values=advertised)
        h2.max_inbound_frame_size = settings.max_frame_size
        h2.decoder.max_header_list_size = settings.max_header_list_size
        h2.initiate_connection()
        # What h2 itself enforces: streams past the advertised limit are refused here one by
        # one (REFUSED_STREAM); only a client far past it has h2 end the connection.
        hard = {
            **advertised,
            SettingCodes.MAX_CONCURRENT_STREAMS: 2 * settings.max_concurrent_streams,
        }
        h2.local_settings = Settings(client=False, initial_values=hard)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        fresh: list[H2Stream] = []
        if len(data) <= _SLICE:
            if not self._feed(data, fresh):
                return
        else:
            for start in range(0, len(data), _SLICE):
                if not self._feed(data[start : start + _SLICE], fresh):
                    return
        # Exchanges start once the whole read is handled: a stream opened and reset within
        # it never costs an upstream request.
        for stream in fresh:
            exchange = stream.exchange
            if exchange is not None and not stream.local_closed and not exchange.finished:
                self._run(exchange)
        self._update_phase()
        self.flush()

    def _feed(self, data: bytes, fresh: list[H2Stream]) -> bool:
        """Hand h2 one slice of a read and act on its events; False once the connection ends."""
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            # h2 has queued the GOAWAY its error calls for (PROTOCOL_ERROR, COMPRESSION_ERROR,
            # FRAME_SIZE_ERROR, ...): send it and end the connection.
            self.engine.rejected(BadRequest(f"HTTP/2 protocol error: {exc}"))
            self._end()
            return False
        for event in events:
            self._dispatch(event, fresh)
            if self.closing:
                return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        for stream in list(self.streams.values()):
            exchange = stream.exchange
            if exchange is not None and not exchange.finished:
                exchange.client_gone()
        self.streams.clear()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            if stream.buffer:
                stream.pump()
        self.flush()

    # --- events -------------------------------------------------------------------------

    def _dispatch(self, event: Event, fresh: list[H2Stream]) -> None:
        if isinstance(event, RequestReceived):
            stream = self._request(event)
            if stream is not None:
                fresh.append(stream)
            return
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._ack(event.flow_controlled_length or 0, event.stream_id)
            else:
                stream.received(event.data or b"", event.flow_controlled_length or 0)
        elif isinstance(event, StreamEnded | TrailersReceived):
            # Request trailers are read and never forwarded (as for HTTP/1.1, RELIABILITY A8).
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None and isinstance(event, StreamEnded):
                stream.ended()
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.peer_reset()
            self._spend(self._resets, "stream resets")
        elif isinstance(event, WindowUpdated):
            self._window_updated(event.stream_id or 0)
        elif isinstance(event, RemoteSettingsChanged):
            self._spend(self._control, "SETTINGS frames")
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._window_updated(0)
        elif isinstance(event, PingReceived | PriorityUpdated):
            self._spend(self._control, "PING frames")
        elif isinstance(event, ConnectionTerminated):
            self.draining = True  # the client said GOAWAY: no new stream will come
            if not self.streams:
                self._end()

    def _request(self, event: RequestReceived) -> H2Stream | None:
        stream_id = event.stream_id or 0
        if self.goaway_sent or len(self.streams) >= self.settings.max_concurrent_streams:
            with contextlib.suppress(ProtocolError):
                self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            self._spend(self._resets, "refused streams")
            return None
        if self.engine.generation != self.generation:
            self._reconfigured()
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        ended = event.stream_ended is not None
        engine = self.engine
        try:
            request = request_of(self.head, list(event.headers or ()), ended)
            route = engine.router.route(request, stream)
        except HttpError as error:
            self.head.request = None
            engine.rejected(error)
            stream.answer(error.status, error.reason, b"")
            return None
        stream.exchange = stream_exchange(engine.exchanges, stream, request, route)
        if ended:
            stream.remote_closed = True
        return stream

    def _reconfigured(self) -> None:
        """A reloaded config holds from the next stream on (its limits, field kinds, trust)."""
        engine = self.engine
        self.generation = engine.generation
        self.limits = engine.limits
        self.trusted = self.head.trusted = engine.is_trusted(self.peer_ip)
        self.head.reconfigure(engine.limits, engine.header_kinds)

    def _run(self, exchange: Exchange) -> None:
        try:
            exchange.start()
        except Overloaded as exc:
            exchange.respond_error(exc)

    def _window_updated(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.buffer:
                stream.pump()
            return
        for stream in list(self.streams.values()):
            if stream.buffer:
                stream.pump()

    def _ack(self, size: int, stream_id: int) -> None:
        if size:
            with contextlib.suppress(ProtocolError):
                self.h2.acknowledge_received_data(size, stream_id)

    def _spend(self, allowance: Allowance, what: str) -> None:
        if not spend(allowance, self.loop.time()):
            self.calm(what)

    def calm(self, what: str) -> None:
        """The client sends more than it may: GOAWAY ENHANCE_YOUR_CALM, streams cut, close."""
        if self.closing:
            return
        engine = self.engine
        engine.rejected(BadRequest(f"HTTP/2: too many {what}", 429))
        if not self.trusted:
            # Reconnecting would buy a fresh allowance: the address is barred for a while.
            bar(engine.penalties, self.peer_ip, self.loop.time())
        self.h2.data_to_send()  # what this read queued (its acknowledgements) is dropped
        with contextlib.suppress(ProtocolError):
            self.h2.close_connection(
                error_code=ErrorCodes.ENHANCE_YOUR_CALM,
                last_stream_id=self.h2.highest_inbound_stream_id,
            )
        for stream in list(self.streams.values()):
            exchange = stream.exchange
            if exchange is not None and not exchange.finished:
                exchange.client_gone()
        self.streams.clear()
        self._end()

    # --- streams settle -----------------------------------------------------------------

    def settle(self, stream: H2Stream) -> None:
        """A stream may be done (its response sent or reset, its exchange finished)."""
        if stream.done and self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
            self._update_phase()
            if not self.streams and (self.goaway_sent or self.draining):
                self._goaway()
                self.flush()
                self.close()

    def refuse_body(self, stream: H2Stream, status: int, reason: str) -> None:
        """The request body breaks a limit (too large, too late): refused, uncounted."""
        error = BadRequest(reason, status)
        self.engine.rejected(error)
        exchange = stream.exchange
        started = exchange is not None and exchange.response_started
        if exchange is not None:
            exchange.refused(status)
        if started:
            stream.reset(ErrorCodes.CANCEL)
        else:
            stream.answer(status, reason, exchange.request.request_id if exchange else b"")
        self.flush()

    def _update_phase(self) -> None:
        if self.streams:
            self.phase, self.deadline = WAIT, 0.0
        elif self.phase != IDLE:
            self.phase = IDLE
            self.deadline = self.loop.time() + self.limits.idle_timeout_s

    # --- deadlines and draining ---------------------------------------------------------

    def check_deadline(self, now: float) -> None:
        if self.closing:
            super().check_deadline(now)
            return
        send_timeout = self.limits.send_timeout_s
        for stream in list(self.streams.values()):
            exchange = stream.exchange
            if exchange is not None and not exchange.finished:
                exchange.check_deadline(now)
                late = now >= stream.deadline or now >= stream.body_deadline
                if late and not stream.remote_closed and not exchange.finished:
                    self.refuse_body(stream, 408, "request body not received in time")
            if stream.buffer and now - stream.progress_at >= send_timeout:
                stream.abort()  # its client took nothing for send_timeout
        if self.draining and not self.goaway_sent:
            self._goaway()
            if not self.streams:
                self.close()
        if self.phase == IDLE and self.deadline and now >= self.deadline:
            self._goaway()
        self.flush()
        super().check_deadline(now)

    def drain(self) -> None:
        self.draining = True
        self._goaway()
        self.flush()
        if not self.streams:
            self.close()

    def _goaway(self) -> None:
        if not self.goaway_sent:
            self.goaway_sent = True
            with contextlib.suppress(ProtocolError):
                self.h2.close_connection(last_stream_id=self.h2.highest_inbound_stream_id)

    # --- the socket -----------------------------------------------------------------------

    def flush(self) -> None:
        """Send what h2 has queued, once per turn of the event loop: the frames every stream
        made in one turn (responses of many upstream reads) leave in one write, one TLS
        record and one system call instead of one each."""
        if not self._flush_due and not self.closing:
            self._flush_due = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        data = self.h2.data_to_send()
        if data:
            self.write(data)

    def close(self, *, linger: bool = True) -> None:
        self._flush_now()  # what is queued (a GOAWAY, the last frames) goes before the close
        super().close(linger=linger)

    def _end(self) -> None:
        self.close()
