"""One downstream connection's lifecycle: its exchanges in order, its deadlines, its socket.

`ClientConnection` admits the connection, runs the exchanges of its requests one at a time in
arrival order (pipelined ones wait in a bounded queue), answers a refused request in its turn and
then closes, and enforces the deadline of the phase the connection is in (idle, reading a head,
reading a body, and the whole body's total; none while it only waits for its exchanges, or while
the proxy itself holds the reading), and the send deadline of response bytes the client does not
take (slow read), when the engine's sweeper asks. It owns the socket as the data plane uses it:
writes that stop once closing, reading paused while any owner asks for it, a lingering close,
and a reset when a response must be seen cut. Reading requests off the socket is its subclass's
business (`DownstreamProtocol`); a request costs no timer here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, cast

from proxy.core.penalties import Penalties, barred
from proxy.errors import BadRequest, HttpError, Overloaded
from proxy.http import framing
from proxy.http.sides import ClientSide
from proxy.tls import NO_CERT, peer_names

if TYPE_CHECKING:
    from proxy.config import Http2Config, Limits
    from proxy.dataplane import Router
    from proxy.http.exchange import Exchange, Exchanges
    from proxy.http.fields import FieldNames
    from proxy.http.requestid import RequestIds
    from proxy.http.sides import ExchangeSide
    from proxy.tls import ListenerTls

IDLE: Final = 0
HEAD: Final = 1
BODY: Final = 2
WAIT: Final = 3
_LINGER_S: Final = 2.0
_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
_INT: Final = struct.pack("i", 0)
QUEUE_FULL: Final = object()  # owner of the read pause while the pipelined queue is full


class Listener:
    """What a client connection uses of the listener that accepted it (the `Engine` of
    server.py), declared here so that the connection needs nothing of the server."""

    __slots__ = ()

    loop: asyncio.AbstractEventLoop
    limits: Limits
    generation: int  # of the config its limits come from
    connections: set[ClientConnection]
    penalties: Penalties  # addresses barred for abuse
    draining: bool
    scheme: bytes
    tls: ListenerTls | None
    http2: Http2Config
    router: Router
    exchanges: Exchanges
    field_names: FieldNames
    header_kinds: dict[bytes, int]
    request_ids: RequestIds

    def is_trusted(self, ip: str) -> bool:
        raise NotImplementedError

    def rejected(self, error: HttpError) -> None:
        raise NotImplementedError

    def forget(self, conn: ClientConnection) -> None:
        raise NotImplementedError


class ClientConnection(ClientSide, asyncio.Protocol):
    """One client connection: exchanges in order, deadlines, writes, pauses, closing."""

    def __init__(self, engine: Listener) -> None:
        self.engine = engine
        self.scheme = engine.scheme
        self.field_names = engine.field_names
        self.loop = engine.loop
        self.limits: Limits = engine.limits
        self.generation = engine.generation  # of the config its limits come from
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.peer_bytes = b""  # peer_ip as it is written in X-Forwarded-For
        self.trusted = False
        # The verified client certificate's names (mTLS): {"cn", "dns", "uri"} -> value.
        self.client_cert: Mapping[str, str] = NO_CERT
        self.draining = False
        self.in_feed = False  # a read is being parsed
        self.reading = False  # a request is being read (between its first byte and its end)
        self.phase = IDLE
        self.deadline = 0.0
        self.body_deadline = 0.0  # the whole request body's (BODY phase)
        self._paused_at = 0.0
        # Slow read: what was written may still wait in the proxy's buffer or the kernel's.
        self.unsent = False  # written since the sweeper last saw nothing waiting
        self._written = 0
        self._taken = -1  # bytes the client had taken (acknowledged) at the last look
        self._send_deadline = 0.0
        self._fd = -1
        self.current: Exchange | None = None
        self._parsing: Exchange | None = None  # the exchange whose request is being read
        self._unstarted: Exchange | None = None  # begun during a read: started after it
        # Lists, not a deque and a set: both stay tiny (max_pipelined; a few owners), and an
        # empty list costs 56 bytes where a deque costs 760 and a set 216, on every idle
        # keep-alive connection.
        self._queue: list[Exchange] = []
        self._fatal: HttpError | None = None
        self.closing = False
        self.truncated = False  # the response is cut and delimited by the close: reset instead
        self._pausers: list[object] = []  # who holds the reading paused (each once)
        self._linger_until = 0.0

    # --- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        engine = self.engine
        if len(engine.connections) >= self.limits.max_connections:
            self.transport.abort()
            return
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else ""
        self.peer_bytes = self.peer_ip.encode("ascii")
        self.trusted = engine.is_trusted(self.peer_ip)
        if not self.trusted and barred(engine.penalties, self.peer_ip, self.loop.time()):
            # Its address was barred for abuse (HTTP/2 floods): closed before a byte is read
            # (asyncio's TLS has done the handshake by now, which a bar cannot spare).
            engine.rejected(BadRequest("client address barred after abuse", 429))
            self.transport.abort()
            return
        engine.connections.add(self)
        if engine.tls is not None and engine.tls.config.client_auth != "none":
            self.client_cert = peer_names(transport.get_extra_info("peercert"))
        self.draining = engine.draining
        self.deadline = self.loop.time() + self.limits.idle_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
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

    # --- exchanges, in order ------------------------------------------------------------

    def _begin(self, exchange: Exchange) -> None:
        self.current = exchange
        if exchange is not self._parsing and not self.reading:
            self.phase = WAIT
        if self.in_feed:
            # Started once this read is parsed: a request refused within the same read (a bad
            # chunk, a bad pipelined successor) then never costs an upstream connection.
            self._unstarted = exchange
            return
        self._start(exchange)

    def _start(self, exchange: Exchange) -> None:
        try:
            exchange.start()
        except Overloaded as exc:
            exchange.respond_error(exc)

    def exchange_done(self, exchange: ExchangeSide) -> None:
        """Called by the exchange when it has finished (its response is written)."""
        if exchange is not self.current:
            return
        self.current = None
        if exchange.close_after or self.draining:
            self.close(linger=not self._said_its_last(exchange))
            return
        if self._queue:
            self.resume_reading_for(QUEUE_FULL)
            self._begin(self._queue.pop(0))
        elif self._fatal is not None:
            self._reply_and_close(self._fatal)
        elif self._parsing is None and not self.reading:
            self.phase = IDLE
            self.deadline = self.loop.time() + self.limits.idle_timeout_s

    def _said_its_last(self, exchange: ExchangeSide) -> bool:
        """Has the client ended with `exchange`: its request asked for the close (HTTP/1.0,
        `Connection: close`; not an upgrade, whose client may send the new protocol), it was
        read whole and nothing was read after it? Such a client sends nothing more, so there
        is nothing to linger for (nginx's lingering_close heuristic): the close saves a read
        and a wakeup per connection and frees the socket at once."""
        request = exchange.request
        return (
            not request.keep_alive
            and not request.websocket
            and not self.draining
            and not self.reading
            and self._parsing is None
            and not self._queue
            and self._fatal is None
        )

    def _failed(self) -> bool:
        return self.closing or self._fatal is not None

    def _fail(self, error: HttpError) -> None:
        """A request could not be accepted: answer in order, then close the connection.

        The refused request's exchange, if its head was read, is dropped: a running one is cut
        from its upstream, a waiting one is taken out of the queue and never started, so none of
        its bytes reach an upstream. The requests before it are served first; meanwhile the
        connection reads nothing more and only waits, so no header or body deadline can cut
        their responses. The refusal is reported to the engine once, when it is decided."""
        if self._failed():
            return
        self.engine.rejected(error)
        refused = self._parsing
        self._parsing = None
        self.reading = False
        if refused is not None:
            refused.refused(error.status)
            if refused is self.current:
                self.current = None
            elif refused in self._queue:
                self._queue.remove(refused)
        if self.current is None:
            self._reply_and_close(error)
            return
        self._fatal = error
        self.phase = WAIT
        self.deadline = 0.0
        self.pause_reading_for(self)

    def _reply_and_close(self, error: HttpError) -> None:
        self.write(framing.error_response(error.status, error.reason, close=True))
        self.close()

    # --- deadlines and draining ---------------------------------------------------------

    def check_deadline(self, now: float) -> None:
        """Called by the engine's sweeper about every `sweep` seconds."""
        if self.unsent and self._send_stalled(now):
            # The client has taken nothing of what waits for it for send_timeout, whether the
            # response is still streaming or long complete: reset, which frees the kernel's
            # buffer too (an unfinished exchange is counted as an abort by connection_lost).
            self.abort()
            return
        current = self.current
        if current is not None:
            current.check_deadline(now)
        if self.closing:
            # A client still taking its response is let finish (a stall is cut above).
            linger = self._linger_until
            if linger and now >= linger and not self.unsent and self.transport is not None:
                self.transport.abort()
            return
        phase = self.phase
        if phase == BODY and now >= self.body_deadline and not self._pausers:
            self._body_late("request body not received within body_total_timeout")
            return
        if not self.deadline or now < self.deadline:
            return
        if phase == IDLE:
            self.close()
        elif phase not in (HEAD, BODY) or self._pausers:
            # Waiting for the exchanges, which time themselves; or the proxy, not the client,
            # holds the request up (its upstream, or a full pipelined queue).
            return
        elif phase == HEAD:
            self._fail(BadRequest("request head not received in time", 408))
        else:
            self._body_late("request body not received in time")

    def _body_late(self, reason: str) -> None:
        """The client is too slow with a request body: 408 and close, unless part of the
        response already went out, when no status can follow and the connection is reset.
        Either way the exchange is dropped uncounted (an upstream that got part of the request
        sees its connection reset) and the refusal is counted once, as a 408."""
        error = BadRequest(reason, 408)
        exchange = self._parsing
        if exchange is not None and exchange.response_started and not self._failed():
            self.engine.rejected(error)
            self._parsing = None
            exchange.refused(error.status)
            self.abort()
            return
        self._fail(error)

    def _send_stalled(self, now: float) -> bool:
        """Has the client taken no byte of what waits for it (the transport's buffer and the
        kernel's unacknowledged bytes, which alone can hold megabytes) for send_timeout?"""
        transport = self.transport
        if transport is None or transport.is_closing():
            self.unsent = False  # its socket may be gone, and the number reused
            return False
        waiting = transport.get_write_buffer_size()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                waiting += struct.unpack("i", fcntl.ioctl(self._fd, termios.TIOCOUTQ, _INT))[0]
        if not waiting:
            self.unsent = False
            self._taken = -1
            return False
        taken = self._written - waiting
        if taken != self._taken:
            self._taken = taken
            self._send_deadline = now + self.limits.send_timeout_s
            return False
        return now >= self._send_deadline

    def drain(self) -> None:
        """Stop keeping the connection alive; close it now if it is idle."""
        self.draining = True
        if self.current is None and self.phase == IDLE:
            self.close()

    # --- the socket -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closing:
            transport.write(data)
            self.unsent = True
            self._written += len(data)

    def pause_reading_for(self, owner: object) -> None:
        if owner in self._pausers:
            return
        if not self._pausers and self.transport is not None and not self.closing:
            self.transport.pause_reading()
            self._paused_at = self.loop.time()
        self._pausers.append(owner)

    def resume_reading_for(self, owner: object) -> None:
        if owner not in self._pausers:
            return  # it held nothing (every exchange lets go of the reading when it ends)
        self._pausers.remove(owner)
        if not self._pausers and self.transport is not None and not self.closing:
            self.transport.resume_reading()
            if self.phase in (HEAD, BODY):
                # The request was held up by the proxy: the client's time starts again, and
                # the time held does not count against the whole body either.
                limits, now = self.limits, self.loop.time()
                timeout = limits.header_timeout_s if self.phase == HEAD else limits.body_timeout_s
                self.deadline = now + timeout
                self.body_deadline += now - self._paused_at

    def abort_after_flush(self, *, reset: bool) -> None:
        """The response cannot be completed: end the connection once the exchange is done.
        A response whose length or chunking tells the client it is cut ends with a close; one
        delimited by the close itself (HTTP/1.0) ends with a reset, so that the client cannot
        take the truncated message for a complete one."""
        self.draining = True
        self.truncated = reset

    def start_tunnel(self, exchange: ExchangeSide) -> None:
        """The upstream answered an upgrade with 101 (only HTTP/1.1 relays one)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Reset the connection now (RST, not FIN), discarding what is not sent."""
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    def close(self, *, linger: bool = True) -> None:
        """Close after what was written, lingering: the write side is shut first and what
        the client still sends is read and dropped for a moment, because closing a socket with
        unread input makes the kernel send a reset that can destroy the response in flight
        (a client still uploading a body the upstream already answered). `linger=False`: the
        client sends nothing more, the socket is closed once the response is out."""
        transport = self.transport
        if transport is None or self.closing:
            return
        if self.truncated:
            self.abort()
            return
        self.closing = True
        if not linger or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the peer is gone already (its reset not read yet): nothing to linger for
            transport.abort()
            return
        self._linger_until = self.loop.time() + min(_LINGER_S, self.limits.body_timeout_s)
        self._pausers.clear()
        transport.resume_reading()
