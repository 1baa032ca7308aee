"""The client side of the data plane: one protocol instance per downstream connection.

`DownstreamProtocol` reads requests off its connection with llhttp (httptools): the head field by
field through its `RequestHead` (`head.py`), then asks the router where the request goes and
hands it to an `Exchange`, whose body it feeds as it arrives (bounded in size, each read
renewing the body deadline). It maps parser errors to refusals and relays the bytes of a
WebSocket upgrade once the upstream's 101 has come. Running the exchanges in order, deadlines,
refusals and the socket are its `ClientConnection` base's (`connection.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import httptools

from proxy.errors import BadRequest, HttpError
from proxy.http import h2connection
from proxy.http.connection import BODY, HEAD, IDLE, QUEUE_FULL, WAIT, ClientConnection
from proxy.http.head import RequestHead
from proxy.http.request import invalid_method_status
from proxy.tls import h2_negotiated

if TYPE_CHECKING:
    import asyncio

    from proxy.http.connection import Listener
    from proxy.http.sides import ExchangeSide

_UPGRADE_PENDING: Final = object()  # owner of the read pause while an upgrade awaits the 101


class DownstreamProtocol(ClientConnection):
    """One client connection: parse, route, run exchanges in order, enforce deadlines."""

    def __init__(self, engine: Listener) -> None:
        super().__init__(engine)
        self.head = head = RequestHead(
            self.limits, engine.header_kinds, engine.request_ids, engine.field_names
        )
        # httptools looks its callbacks up once, by name: the head's fields go straight to it.
        self.on_url = head.on_url
        self.on_header = head.on_header
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        head.parser = self._parser
        self._body_size = 0
        self._tunnel: ExchangeSide | None = None
        self._early: list[bytes] = []
        self._upgraded = False
        # When the read being parsed arrived: the parser's callbacks set their deadlines from
        # it (every one of them runs inside `data_received`) instead of asking the loop each.
        self._read_at = 0.0
        self._fresh = False  # h2c is on and the bytes so far may begin the preface
        self._held = b""  # those bytes (a proper prefix of the preface), until it is told

    # --- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.head.trusted = self.trusted
        http2 = self.engine.http2
        if http2.enabled and self.engine.tls is not None and not self.closing:
            if h2_negotiated(transport):
                self._parser = self.head.parser = None
                h2connection.take_over(self, transport)
        elif http2.h2c:
            self._fresh = True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # The parser holds this protocol and its head (their callbacks) and they hold it: let
        # go of it, so that a closed connection is freed at once instead of by the cycle
        # collector, whose runs would otherwise grow with the rate of new connections.
        self._parser = self.head.parser = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self._fresh:
            data = self._h2c(data)
            if not data:
                return
        if self._tunnel is not None:
            self._tunnel.tunnel_up(data)
            return
        if self._upgraded:
            self._early.append(data)
            return
        head = self.head
        if self.phase == HEAD:
            head.more(data)
        head.chunk = data
        self._read_at = self.loop.time()
        self.in_feed = True
        parser = self._parser
        assert parser is not None  # it is let go of only once the connection is lost
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            error = exc.__context__
            if not isinstance(error, HttpError):
                raise
            self._fail(error)
        except httptools.HttpParserInvalidMethodError:
            status = invalid_method_status(head.message_bytes())
            self._fail(BadRequest("unknown or malformed method", status))
        except httptools.HttpParserError as exc:
            self._fail(BadRequest(f"malformed request: {exc}"))
        finally:
            self.in_feed = False
        if self.phase == HEAD and head.too_large() and not self._failed():
            # httptools buffers a field until it ends: bound the head across reads (C6).
            self._fail(BadRequest("request header fields too large", 431))
        unstarted = self._unstarted
        if unstarted is not None:
            self._unstarted = None
            if unstarted is self.current:
                self._start(unstarted)
        head.forget_read()
        current = self.current
        if current is not None and current.up_out:
            current.flush_upstream()

    def _h2c(self, data: bytes) -> bytes:
        """h2c by prior knowledge: the client preface as the connection's first bytes, in
        one read or several. Bytes that may still begin it are held (fewer than its 24, and
        within `header_timeout` of the first: the deadline closes a connection that stalls);
        once it is whole, HTTP/2 takes every byte read. Returns what HTTP/1.1 reads instead:
        all bytes so far, as one, from the first that differs (b"": held or handed over)."""
        preface = h2connection.PREFACE
        held = self._held + data if self._held else data
        if held.startswith(preface) and self.transport is not None:
            self._fresh, self._held = False, b""
            self._parser = self.head.parser = None
            h2connection.take_over(self, self.transport, held)
            return b""
        if len(held) < len(preface) and preface.startswith(held):
            if not self._held:
                self.deadline = self.loop.time() + self.limits.header_timeout_s
            self._held = held
            return b""
        self._fresh, self._held = False, b""
        return held

    # --- httptools callbacks (on_url and on_header are the head's) ----------------------

    def on_message_begin(self) -> None:
        if self.engine.generation != self.generation:
            self._reconfigured()
        self.head.begin()
        self.reading = True
        self._body_size = 0
        self.phase = HEAD
        self.deadline = self._read_at + self.limits.header_timeout_s

    def _reconfigured(self) -> None:
        """The config was reloaded since the last request: this one and the next are read
        under the new one (its limits, its field kinds, its trusted peers)."""
        engine = self.engine
        self.generation = engine.generation
        self.limits = engine.limits
        self.trusted = self.head.trusted = engine.is_trusted(self.peer_ip)
        self.head.reconfigure(engine.limits, engine.header_kinds)

    def on_headers_complete(self) -> None:
        request = self.head.complete(self.draining)
        self.phase = BODY
        now = self._read_at
        self.deadline = now + self.limits.body_timeout_s
        self.body_deadline = now + self.limits.body_total_timeout_s
        engine = self.engine
        exchange = engine.exchanges.make(self, request, engine.router.route(request, self))
        self._parsing = exchange
        if self.current is None:
            self._begin(exchange)
        else:
            self._queue.append(exchange)
            if len(self._queue) >= self.limits.max_pipelined:
                self.pause_reading_for(QUEUE_FULL)

    def on_body(self, body: bytes) -> None:
        limit = self.limits.max_body_bytes
        if limit:
            self._body_size += len(body)
            if self._body_size > limit:
                raise BadRequest("request body too large", 413)
        self.deadline = self._read_at + self.limits.body_timeout_s
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
            self.deadline = self._read_at + self.limits.idle_timeout_s
        self.reading = False

    # --- upgrades -----------------------------------------------------------------------

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

    def start_tunnel(self, exchange: ExchangeSide) -> None:
        """Called by the exchange on the upstream's 101: relay bytes both ways from now on."""
        self._tunnel = exchange
        self.phase = WAIT
        self.deadline = 0.0
        for data in self._early:
            exchange.tunnel_up(data)
        self._early.clear()
        self.resume_reading_for(_UPGRADE_PENDING)
