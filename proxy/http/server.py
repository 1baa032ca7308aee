"""The data-plane listener: accepts connections, checks their deadlines, drains them.

One `Engine` per listening socket. It owns what every downstream connection shares: the limits,
the router, the table of header names that need special handling, the trusted-peer check, the
maker of request ids, the maker of each request's exchange (`exchanges`: plain ones, or
ones that also write access logs), the set of live connections, and one sweeper timer
that enforces every connection's deadline (a per-request timer would cost more than the
request).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from proxy.core.penalties import Penalties
from proxy.http.connection import ClientConnection, Listener
from proxy.http.downstream import DownstreamProtocol
from proxy.http.exchange import Exchanges
from proxy.http.fields import FieldNames, header_kinds
from proxy.http.requestid import RequestIds

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.dataplane import Router
    from proxy.errors import HttpError
    from proxy.tls import ListenerTls

_TRUST_CACHE_SIZE = 4096


class Engine(Listener):
    """Shared state of one data-plane listener."""

    def __init__(
        self,
        config: Config,
        router: Router,
        loop: asyncio.AbstractEventLoop,
        *,
        identity_headers: Iterable[str] = (),
        relevant_headers: Iterable[str] = (),
        on_reject: Callable[[HttpError], None] | None = None,
        exchanges: Exchanges | None = None,
    ) -> None:
        self.loop = loop
        self.router = router
        self.field_names = FieldNames()
        self.request_ids = RequestIds()
        self.exchanges = exchanges or Exchanges()
        self.connections: set[ClientConnection] = set()
        self.penalties = Penalties(config.http2.penalty_s)
        self.draining = False
        self.scheme = b"http"  # of this listener: X-Forwarded-Proto when no trusted peer says
        self.tls: ListenerTls | None = None
        self._trust_cache: dict[str, bool] = {}
        self._on_reject = on_reject
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_closed: asyncio.Event | None = None
        # Each reload is a generation: a connection takes the new limits, field kinds and
        # peer trust at its next request (in-flight requests keep what they started with).
        self.generation = 0
        self.reconfigure(config, identity_headers, relevant_headers)

    def reconfigure(
        self, config: Config, identity_headers: Iterable[str], relevant_headers: Iterable[str]
    ) -> None:
        """Serve `config`'s limits, trusted peers and header kinds from the next request on."""
        self.limits = limits = config.limits
        self.http2 = config.http2
        self.penalties.seconds = config.http2.penalty_s  # bars already set keep their end
        self.header_kinds = header_kinds(identity_headers, relevant_headers)
        self._trusted = config.trusted_peers
        self._trust_cache = {}
        shortest = min(
            limits.header_timeout_s,
            limits.idle_timeout_s,
            limits.body_timeout_s,
            limits.body_total_timeout_s,
            limits.response_timeout_s,
            limits.send_timeout_s,
        )
        self.sweep_s = max(0.02, min(0.5, shortest / 10))
        self.generation += 1

    def is_trusted(self, ip: str) -> bool:
        cached = self._trust_cache.get(ip)
        if cached is None:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                cached = False
            else:
                cached = any(address in network for network in self._trusted)
            if len(self._trust_cache) >= _TRUST_CACHE_SIZE:
                self._trust_cache.clear()
            self._trust_cache[ip] = cached
        return cached

    def rejected(self, error: HttpError) -> None:
        if self._on_reject is not None:
            self._on_reject(error)

    async def start(
        self, host: str, port: int, *, reuse_port: bool = False, tls: ListenerTls | None = None
    ) -> tuple[str, int]:
        """Listen on host:port (0 picks a free port); return the bound address. `reuse_port`:
        share the port with other processes' listeners (the kernel spreads connections);
        `tls`: terminate TLS (X-Forwarded-Proto is then https), certificates reloadable."""
        self.tls = tls
        self.scheme = b"https" if tls is not None else b"http"
        context = tls.context if tls is not None else None
        self._server = await self.loop.create_server(
            lambda: DownstreamProtocol(self),
            host,
            port,
            backlog=4096,
            reuse_address=True,
            reuse_port=reuse_port or None,
            ssl=context,
            ssl_handshake_timeout=self.limits.header_timeout_s if tls is not None else None,
        )
        self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)
        # Untyped here: uvloop's server gives its sockets as a list where typeshed says a
        # tuple, which the compiled build would check and refuse.
        server: Any = self._server
        sockname = server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check_deadline(now)
        self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)

    def forget(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def announce_drain(self) -> None:
        """Draining is coming: keep accepting and serving, but end every connection after its
        current response (`Connection: close`), without closing idle ones yet (a client may
        be sending on them right now)."""
        self.draining = True
        for conn in self.connections:
            conn.draining = True

    async def drain(self, grace_s: float) -> int:
        """Stop accepting, let in-flight exchanges finish; return how many were cut."""
        self.draining = True
        self._all_closed = asyncio.Event()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.drain()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._all_closed.wait()
        cut = len(self.connections)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        return cut

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self.router.close()
