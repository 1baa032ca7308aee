"""One keep-alive connection to an upstream endpoint, parsing responses with llhttp.

The connection belongs to an `Endpoint` while idle and to one `Exchange` while busy. It turns
parser callbacks into calls on the exchange and never decides anything itself: whether it may be
reused, how a failure is reported and what the client sees are the exchange's business.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, cast

import httptools

from proxy.errors import UpstreamError
from proxy.http.sides import UpstreamSide

if TYPE_CHECKING:
    from proxy.http.sides import EndpointSide, ExchangeSide

# The largest response head taken (502 beyond): nginx refuses one larger than its
# proxy_buffer_size (4 or 8 KiB); this lets big cookie and policy fields through. Without a
# bound, llhttp would hand over a field of any size, grown read after read.
MAX_RESPONSE_HEAD: Final = 65536


class UpstreamConnection(UpstreamSide, asyncio.Protocol):
    """A client connection to an upstream, driven by the exchange it is attached to."""

    __slots__ = (
        "_ended",
        "_final",
        "_head_size",
        "_headers",
        "_in_head",
        "_parser",
        "transport",
    )

    def __init__(self, endpoint: EndpointSide) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.exchange: ExchangeSide | None = None
        self.reused = False
        self.usable = False
        self.paused = False  # reading paused because the client is not reading
        # False: the exchange writes the request's HTTP/1.1 bytes. True (an HTTP/2 stream):
        # the connection frames it, from `start`, `write` of body bytes and `end_request`.
        self.framed = False
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        # `_in_head`: the bytes read are (the rest of) a response head, `_head_size` of them
        # so far; `_final`: the last head was a final (not 1xx) one; `_ended`: a final
        # response ended in the read being parsed.
        self._in_head = True
        self._head_size = 0
        self._final = False
        self._ended = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.usable = True

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle connection would poison the next response: drop the connection.
            self.close()
            return
        if exchange.tunnel:
            exchange.client_write(data)
            return
        parser = self._parser
        assert parser is not None  # let go of only once the connection is lost
        self._ended = False
        if self._in_head:
            self._head_size += len(data)
        try:
            parser.feed_data(data)
            if self._in_head and self._head_size > MAX_RESPONSE_HEAD:
                raise UpstreamError("protocol", "response head too large")
        except httptools.HttpParserUpgrade as upgrade:
            exchange.switch_protocols(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            error = exc.__context__
            if not isinstance(error, UpstreamError):
                raise
            self._failed(error)
        except httptools.HttpParserError as exc:
            self._failed(UpstreamError("protocol", str(exc)))
        except UpstreamError as error:
            self._failed(error)
        if exchange.out:
            exchange.flush_client()

    def _failed(self, error: UpstreamError) -> None:
        """The upstream broke the protocol. The exchange that gets the error is the one
        attached now: within a read, the connection may have gone to a queued exchange."""
        self.usable = False
        exchange = self.exchange
        if exchange is None:
            self.close()
        else:
            exchange.upstream_failed(error, self.endpoint)

    def connection_lost(self, exc: Exception | None) -> None:
        # The parser and this connection hold each other: let go of it, so that the
        # connection is freed at once instead of by the cycle collector.
        self._parser = None
        self.usable = False
        self.endpoint.forget(self)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client_pause_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client_resume_reading()

    # httptools callbacks (no on_message_begin: one callback less per response; the fields
    # are emptied when a message completes)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # this is its own callback
        status = parser.get_status_code()
        self._final = status >= 200
        self._in_head = not self._final
        self._head_size = 0
        if self.exchange is not None:
            if self._ended:
                # The head began in the read that ended the previous response: bytes the
                # exchange now attached did not ask for.
                raise UpstreamError("protocol", "response after the end of the response")
            self.exchange.response_head(status, self._headers, parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        self._headers = []  # with any trailer fields, which are never forwarded
        self._ended = self._final
        self._in_head = True
        if self.exchange is not None:
            self.exchange.response_complete()

    # used by the exchange and the pool

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.usable = False
        self.exchange = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once, discarding unsent data (the exchange is abandoned)."""
        self.usable = False
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()
