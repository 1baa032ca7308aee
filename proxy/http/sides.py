"""What each part of the engine sees of the others: the base classes they talk through.

An exchange (`exchange.py`, with its `relay.py` base) is one request, its route and its outcome;
it knows nothing of how its client or its upstream frame bytes. It talks to its client through
`ClientSide`, to its upstream connection through `UpstreamSide` and to the endpoint that
connection belongs to through `EndpointSide`; the connections and the pool talk back to it
through `ExchangeSide`. The HTTP/1.1 connections (`connection.py` and `downstream.py` on the
client side, `upstream.py` on the upstream side), the pool's `Endpoint` and the `Relay` subclass
these. This module imports no other module of the engine, so none of them imports another
through it.

Base classes rather than `typing.Protocol`s: the compiled build then reads their attributes
and calls their methods natively (a protocol's attribute is a generic lookup). The attributes
are declared here and, but for `UpstreamSide`'s, stored by the subclasses (`__slots__ = ()`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Mapping

    from proxy.config import Limits
    from proxy.errors import UpstreamError
    from proxy.http.fields import FieldNames
    from proxy.http.request import Request


class ExchangeSide:
    """What the connections on both sides and the pool call on an exchange."""

    __slots__ = ()

    request: Request
    out: list[bytes]  # bytes for the client, written by `flush_client`
    tunnel: bool  # an upgraded connection: bytes are relayed as they are, both ways
    close_after: bool  # the client connection closes once this exchange's response is out
    abandoned: bool  # its client went away, or the proxy refused its request
    grpc: int  # a gRPC response's status code (core/grpc.py; -1: not a gRPC response)
    head_ends: bool  # the response's head ended its stream (an HTTP/2 upstream's)

    # --- from the pool

    def attach(self, conn: UpstreamSide, endpoint: EndpointSide) -> None:
        raise NotImplementedError

    def upstream_failed(self, error: UpstreamError, endpoint: EndpointSide | None) -> None:
        raise NotImplementedError

    # --- from the upstream connection

    def response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        raise NotImplementedError

    def response_body(self, body: bytes) -> None:
        raise NotImplementedError

    def response_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def response_outcome(self, grpc: int, head_ends: bool) -> None:
        """Before `response_head`, from an HTTP/2 upstream: the gRPC status (-1: not gRPC)
        and whether the head ended the stream."""
        raise NotImplementedError

    def response_complete(self) -> None:
        raise NotImplementedError

    def switch_protocols(self, rest: bytes) -> None:
        raise NotImplementedError

    def upstream_lost(self, conn: UpstreamSide, exc: Exception | None) -> None:
        raise NotImplementedError

    def client_write(self, data: bytes) -> None:
        raise NotImplementedError

    def flush_client(self) -> None:
        raise NotImplementedError

    def client_pause_reading(self) -> None:
        raise NotImplementedError

    def client_resume_reading(self) -> None:
        raise NotImplementedError

    # --- from the client connection

    def tunnel_up(self, data: bytes) -> None:
        raise NotImplementedError


class ClientSide:
    """What an exchange (and routing) uses of the client it answers."""

    __slots__ = ()

    loop: asyncio.AbstractEventLoop
    limits: Limits
    scheme: bytes  # of the listener: X-Forwarded-Proto when no trusted peer says
    field_names: FieldNames  # the header-name table the response is framed with
    draining: bool
    in_feed: bool  # a read is being parsed: writes upstream wait for its end
    peer_ip: str
    peer_bytes: bytes  # peer_ip as it is written in X-Forwarded-For
    trusted: bool
    client_cert: Mapping[str, str]  # the verified client certificate's names (mTLS)

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def pause_reading_for(self, owner: object) -> None:
        raise NotImplementedError

    def resume_reading_for(self, owner: object) -> None:
        raise NotImplementedError

    def exchange_done(self, exchange: ExchangeSide) -> None:
        raise NotImplementedError

    def start_tunnel(self, exchange: ExchangeSide) -> None:
        raise NotImplementedError

    def abort_after_flush(self, *, reset: bool) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def close(self, *, linger: bool = True) -> None:
        raise NotImplementedError


class UpstreamSide:
    """What an exchange and its endpoint use of a connection to an upstream (they set some
    of these attributes, so this class holds their slots)."""

    __slots__ = ("endpoint", "exchange", "framed", "paused", "reused", "usable")

    exchange: ExchangeSide | None  # the exchange using it (None: idle)
    endpoint: EndpointSide
    reused: bool  # it served an exchange before this one
    usable: bool  # open and in a state to carry another request
    paused: bool  # reading paused because the client is not reading
    # False: the exchange writes the request's HTTP/1.1 bytes. True (an HTTP/2 stream): the
    # connection frames it, from `start`, `write` of body bytes and `end_request`.
    framed: bool

    def start(
        self, request: Request, authority: bytes, peer: bytes, extra: bytes, scheme: bytes
    ) -> None:
        """Send the request head (`framed` connections only)."""
        raise NotImplementedError

    def end_request(self) -> None:
        """The request body is complete (`framed` connections only)."""
        raise NotImplementedError

    def done(self) -> None:
        """The exchange is over with a complete response (`framed` connections only)."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class EndpointSide:
    """What an exchange and an upstream connection use of the endpoint it belongs to."""

    __slots__ = ()

    host: str
    port: int
    authority: bytes  # host:port as the Host header says it

    def release(self, conn: UpstreamSide) -> None:
        raise NotImplementedError

    def reuse(self, conn: UpstreamSide) -> None:
        raise NotImplementedError

    def forget(self, conn: UpstreamSide) -> None:
        raise NotImplementedError

    def failed(self, now: float) -> None:
        raise NotImplementedError

    def forget_session(self, session: object) -> None:
        """An HTTP/2 session to this endpoint takes no new stream any more."""
        raise NotImplementedError
