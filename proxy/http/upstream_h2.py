"""HTTP/2 to upstreams (`upstreams.protocol: h2` over TLS with ALPN, `h2c` by prior knowledge).

The `h2` library is the frame, HPACK and stream state machine; this module drives it from one
asyncio.Protocol per upstream connection (`UpstreamSession`) and gives each exchange a stream of it
(`UpstreamStream`), which the exchange uses as it uses an HTTP/1.1 connection: the stream writes the
request head as HEADERS, the body as DATA within the peer's flow-control window, and turns
the response's events into the same `response_head` / `response_body` / `response_trailers` /
`response_complete` calls.

Back-pressure, per stream: DATA the upstream sends is acknowledged (its window reopened) only
while the exchange's client takes it; a slow client stalls its own stream (the upstream stops
at the stream window), never the connection. Request DATA waits for the window; past
`PENDING_LIMIT` held, the exchange stops reading its client.

A session opens at most `max_streams` streams at once (the lower of the upstream's
SETTINGS_MAX_CONCURRENT_STREAMS and `limits.h2_max_streams`); the endpoint opens another
session when every one is full. After GOAWAY, or once the connection is lost, a session takes
no new stream; its streams above the last one the upstream processed fail as `reset`
(nothing was processed: safe to retry).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final, cast

import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from proxy.core import grpc
from proxy.errors import UpstreamError
from proxy.http import h2codec
from proxy.http.h2codec import unindexed
from proxy.http.sides import UpstreamSide

if TYPE_CHECKING:
    from proxy.http.request import Request
    from proxy.http.sides import EndpointSide

PENDING_LIMIT: Final = 256 * 1024  # request DATA held for the window before back-pressure
# Request fields HTTP/2 forbids (RFC 9113 8.2.2); the HTTP/1.1 framing fields are already gone.
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)
_WINDOW: Final = 1 << 20  # our receive window per stream (the connection's is grown to match)


def extra_fields(extra: bytes) -> list[tuple[bytes, bytes]]:
    """A route's own fields (`Name: value\\r\\n` lines) as HTTP/2 fields."""
    fields = []
    for line in extra.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            fields.append((name.strip().lower(), value.strip()))
    return fields


def request_fields(
    request: Request, authority: bytes, peer: bytes, extra: bytes, scheme: bytes
) -> list[tuple[bytes, bytes]]:
    """The HEADERS of `request` for an HTTP/2 upstream: what `upstream_head` sends an HTTP/1.1
    one (the same end-to-end fields, X-Forwarded-*, X-Request-ID, the route's fields), with
    the pseudo-fields first, names in lower case and values without surrounding whitespace
    (an HTTP/1.1 client may send it; h2codec.py says why h2 does not check these)."""
    host = request.host or authority
    fields = [
        (b":method", request.method),
        (b":scheme", b"https" if scheme == b"https" else b"http"),
        (b":authority", host),
        unindexed(b":path", request.target),
    ]
    for name, value in request.headers:
        lowered = name.lower()
        if lowered not in _CONNECTION_SPECIFIC:
            fields.append(unindexed(lowered, value.strip(b" \t")))
    xff = request.xff
    fields += [
        unindexed(b"x-forwarded-for", peer if xff is None else b"%b, %b" % (xff, peer)),
        (b"x-forwarded-proto", request.xfp or scheme),
        (b"x-forwarded-host", request.xfh or request.host or b""),
        unindexed(b"x-request-id", request.request_id),
        # The proxy takes trailers (gRPC's status travels in them); the only TE allowed in h2.
        (b"te", b"trailers"),
    ]
    fields += extra_fields(extra)
    if request.content_length is not None and not request.chunked:
        fields.append(unindexed(b"content-length", b"%d" % request.content_length))
    return fields


class UpstreamStream(UpstreamSide):
    """One request on an `UpstreamSession`, seen by its exchange as its upstream connection."""

    __slots__ = ("_held", "_out", "_out_size", "_unacked", "ended", "session", "sid")

    def __init__(self, session: UpstreamSession, endpoint: EndpointSide) -> None:
        self.endpoint = endpoint
        self.exchange = None
        self.reused = session.used
        self.usable = True
        self.paused = False
        self.framed = True
        self.session = session
        self.sid = 0
        self.ended = False  # the request's END_STREAM has been sent
        self._out: list[bytes] = []  # request DATA waiting for the window
        self._out_size = 0
        self._held = False  # the exchange's client is paused for this stream's DATA
        self._unacked = 0  # response DATA not yet acknowledged (paused)

    # --- the request --------------------------------------------------------------------

    def start(
        self, request: Request, authority: bytes, peer: bytes, extra: bytes, scheme: bytes
    ) -> None:
        """Send the request's HEADERS (with END_STREAM when it has no body)."""
        if request.websocket:
            raise UpstreamError("protocol", "no WebSocket upgrade over an HTTP/2 upstream")
        fields = request_fields(request, authority, peer, extra, scheme)
        self.sid = self.session.open(self, fields, end=not request.has_body)
        self.ended = not request.has_body

    def write(self, data: bytes) -> None:
        """Request body bytes: sent as DATA as far as the window allows, the rest held."""
        if not data or self.ended:
            return
        self._out.append(data)
        self._out_size += len(data)
        self.flush()

    def end_request(self) -> None:
        """The request body is complete: END_STREAM once its DATA has gone."""
        if not self.ended:
            self._out.append(b"")  # the end marker, sent after the DATA before it
            self.ended = True
            self.flush()

    def flush(self) -> None:
        """Send held DATA within the flow-control windows; resume the client when drained."""
        session = self.session
        while self._out and self.sid and not session.closed:
            data = self._out[0]
            if not data:
                self._out.pop(0)
                session.end_stream(self.sid)
                continue
            room = session.window(self.sid)
            if room <= 0:
                break
            piece = data[:room]
            if len(piece) < len(data):
                self._out[0] = data[room:]
            else:
                self._out.pop(0)
            self._out_size -= len(piece)
            session.send_data(self.sid, piece)
        session.send()
        exchange = self.exchange
        if exchange is None:
            return
        if self._out_size > PENDING_LIMIT and not self._held:
            self._held = True
            exchange.client_pause_reading()
        elif self._out_size <= PENDING_LIMIT and self._held:
            self._held = False
            exchange.client_resume_reading()

    # --- back-pressure of the response --------------------------------------------------

    def received(self, length: int) -> None:
        """`length` flow-controlled bytes of response DATA were handed to the exchange."""
        if self.paused:
            self._unacked += length
        else:
            self.session.acknowledge(self.sid, length)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self._unacked:
            length, self._unacked = self._unacked, 0
            self.session.acknowledge(self.sid, length)
            self.session.send()

    # --- the end ------------------------------------------------------------------------

    def done(self) -> None:
        """The exchange is over with a complete response: the stream is closed already (or
        is reset if the request body was not all sent)."""
        self.exchange = None
        self.session.forget(self, reset=not self.ended or bool(self._out))

    def close(self) -> None:
        self.usable = False
        self.exchange = None
        self.session.forget(self, reset=True)

    def abort(self) -> None:
        self.close()


class UpstreamSession(asyncio.Protocol):
    """One HTTP/2 connection to an upstream endpoint, carrying many exchanges' streams."""

    def __init__(self, endpoint: EndpointSide, max_streams: int) -> None:
        self.endpoint = endpoint
        self.limit = max_streams
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, UpstreamStream] = {}
        self.reserved = 0  # streams handed out and not yet opened
        self.closed = False
        self.used = False  # a stream was opened on it before (a failure may be a stale peer)
        self._send_due = False
        self.h2 = h2codec.connection(client_side=True)

    # --- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        h2conn = self.h2
        h2conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        h2conn.initiate_connection()
        h2conn.increment_flow_control_window(_WINDOW * 16)
        self.send()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(UpstreamError("protocol", f"HTTP/2: {exc}"))
            return
        for event in events:
            self._event(event)
        self.send()
        for stream in list(self.streams.values()):
            exchange = stream.exchange
            if exchange is not None and exchange.out:
                exchange.flush_client()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.endpoint.forget_session(self)
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.usable = False
            exchange = stream.exchange
            if exchange is not None:
                stream.exchange = None
                exchange.upstream_lost(stream, exc)
                exchange.flush_client()

    def pause_writing(self) -> None:
        for stream in self.streams.values():
            if stream.exchange is not None:
                stream.exchange.client_pause_reading()

    def resume_writing(self) -> None:
        for stream in self.streams.values():
            if stream.exchange is not None:
                stream.exchange.client_resume_reading()

    # --- events -------------------------------------------------------------------------

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self._response(event.stream_id, event.headers, event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            self._data(event)
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.exchange is not None:
                trailers = _fields(event.headers)
                exchange = stream.exchange
                if exchange.grpc >= 0:
                    for name, value in trailers:
                        if name == b"grpc-status":
                            exchange.response_outcome(grpc.parse_status(value), False)
                exchange.response_trailers(trailers)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.exchange is not None:
                stream.exchange.response_complete()
        elif isinstance(event, h2.events.StreamReset):
            self._reset(event.stream_id, event.error_code)
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_opened(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._window_opened(0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event.last_stream_id or 0)

    def _response(self, sid: int, headers: list[tuple[bytes, bytes]], ends: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.exchange is None:
            return
        status, fields, code = 0, [], -1
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif not name.startswith(b":"):
                fields.append((name, value))
                if name == b"content-type" and grpc.is_grpc(value) and code < 0:
                    code = grpc.UNKNOWN  # until its grpc-status says otherwise
                elif name == b"grpc-status":
                    code = grpc.parse_status(value)  # a trailers-only response
        if status >= 200:
            stream.exchange.response_outcome(code, ends)
            stream.exchange.response_head(status, fields, True)

    def _data(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        length = event.flow_controlled_length
        if stream is None or stream.exchange is None:
            self.h2.acknowledge_received_data(length, event.stream_id)
            return
        if event.data:  # an empty DATA frame (END_STREAM alone) is no chunk of the body
            stream.exchange.response_body(event.data)
        stream.received(length)

    def _reset(self, sid: int, code: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        stream.usable = False
        exchange, stream.exchange = stream.exchange, None
        if exchange is not None:
            name = _error_name(code)
            if code == h2.errors.ErrorCodes.REFUSED_STREAM:
                # RFC 9113 8.7: not processed; as a connection the upstream closed before reading.
                exchange.upstream_lost(stream, None)
            else:
                exchange.upstream_failed(UpstreamError("reset", f"stream reset: {name}"), None)
            exchange.flush_client()

    def _window_opened(self, sid: int) -> None:
        if sid:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.flush()
            return
        for stream in list(self.streams.values()):
            stream.flush()

    def _goaway(self, last: int) -> None:
        """GOAWAY: no new streams; those above `last` were not processed."""
        self.closed = True
        self.endpoint.forget_session(self)
        for sid in [s for s in self.streams if s > last]:
            stream = self.streams.pop(sid)
            stream.usable = False
            exchange, stream.exchange = stream.exchange, None
            if exchange is not None:
                exchange.upstream_lost(stream, None)
                exchange.flush_client()
        if not self.streams:
            self._close_transport()

    def _fail_all(self, error: UpstreamError) -> None:
        self.closed = True
        self.endpoint.forget_session(self)
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.usable = False
            exchange, stream.exchange = stream.exchange, None
            if exchange is not None:
                exchange.upstream_failed(error, self.endpoint)
                exchange.flush_client()
        if self.transport is not None:
            self.transport.abort()

    # --- used by streams and the endpoint -----------------------------------------------

    @property
    def room(self) -> int:
        """How many more streams this session may carry now."""
        if self.closed:
            return 0
        limit = min(self.limit, self.h2.remote_settings.max_concurrent_streams)
        return limit - len(self.streams) - self.reserved

    def stream(self) -> UpstreamStream:
        """A stream for one exchange (opened when it sends its head)."""
        self.reserved += 1
        return UpstreamStream(self, self.endpoint)

    def open(self, stream: UpstreamStream, fields: list[tuple[bytes, bytes]], *, end: bool) -> int:
        self.reserved = max(0, self.reserved - 1)
        if self.closed:
            raise UpstreamError("reset", "HTTP/2 connection going away")
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, fields, end_stream=end)
        self.streams[sid] = stream
        self.used = True
        self.send()
        return sid

    def window(self, sid: int) -> int:
        try:
            return min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
        except h2.exceptions.StreamClosedError:
            return 0

    def send_data(self, sid: int, data: bytes) -> None:
        self.h2.send_data(sid, data)

    def end_stream(self, sid: int) -> None:
        self.h2.end_stream(sid)

    def acknowledge(self, sid: int, length: int) -> None:
        if length and self.live:
            self.h2.acknowledge_received_data(length, sid)

    def forget(self, stream: UpstreamStream, *, reset: bool) -> None:
        """`stream`'s exchange is over: reset it if it is still open, and give back the
        connection window its unacknowledged DATA holds."""
        if stream.sid == 0:
            self.reserved = max(0, self.reserved - 1)
        elif self.streams.pop(stream.sid, None) is not None and self.live:
            held, stream._unacked = stream._unacked, 0
            if held:  # on a closed stream, h2 opens the connection's window only
                self.h2.acknowledge_received_data(held, stream.sid)
            if reset:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.h2.reset_stream(stream.sid, h2.errors.ErrorCodes.CANCEL)
            self.send()
        if self.closed and not self.streams:
            self._close_transport()

    @property
    def live(self) -> bool:
        """The connection is up (it may still be taking no new stream, after GOAWAY)."""
        return self.transport is not None and not self.transport.is_closing()

    def send(self) -> None:
        """Send what h2 has queued, once per turn of the event loop: the streams' HEADERS,
        DATA and acknowledgements of one turn leave in one write."""
        if not self._send_due and self.transport is not None:
            self._send_due = True
            asyncio.get_running_loop().call_soon(self._send_now)

    def _send_now(self) -> None:
        self._send_due = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close_transport(self) -> None:
        if self.transport is not None:
            self._send_now()  # what is queued (resets, acknowledgements) goes first
            self.transport.close()

    def drain(self) -> None:
        """Take no new stream; close once the streams in flight are done."""
        self.closed = True
        if not self.streams:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            self._close_transport()


def _fields(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in headers if not n.startswith(b":")]


def _error_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)
