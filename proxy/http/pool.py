"""Upstream connection pools: keep-alive reuse, round-robin, passive health, bounded admission.

An `UpstreamPool` serves one variant of one service (its stable or its canary endpoints). It
admits at most `pool_max_concurrency` exchanges at once, queues up to `pool_queue` more and
refuses the rest at once with 503 (Envoy's overflow semantics). It picks endpoints round-robin,
skipping endpoints ejected after consecutive connect or reset failures; when every endpoint is
ejected it uses them all (a panic mode: a guess beats a certain failure). Each endpoint keeps a
LIFO stack of idle keep-alive connections. The pool decides first and does I/O after: the only
awaiting code is the connect of a new connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from ssl import SSLContext as Tls
from ssl import SSLError
from typing import TYPE_CHECKING

from proxy.errors import Overloaded, UpstreamError
from proxy.http.sides import EndpointSide
from proxy.http.upstream import UpstreamConnection
from proxy.http.upstream_h2 import UpstreamSession
from proxy.tls import h2_negotiated

if TYPE_CHECKING:
    from proxy.config import Limits, Upstream

    # What waits for a connection: an exchange, through the base class the pool sees of it
    # (not a protocol: the compiled build then calls its methods directly).
    from proxy.http.sides import ExchangeSide as Waiter
    from proxy.http.sides import UpstreamSide


class Endpoint(EndpointSide):
    """One upstream address: its idle connections and its passive health."""

    __slots__ = (
        "_failures",
        "authority",
        "connecting",
        "ejected_until",
        "host",
        "idle",
        "limits",
        "port",
        "protocol",
        "scheme",
        "server_name",
        "sessions",
        "tls",
    )

    def __init__(
        self,
        upstream: Upstream,
        limits: Limits,
        tls: Tls | None = None,
        server_name: str = "",
        protocol: str = "http1",
    ) -> None:
        self.host = upstream.host
        self.port = upstream.port
        self.scheme = upstream.scheme
        self.authority = str(upstream).partition("://")[2].encode("ascii")
        # https:// only: the client context, and the name sent as SNI and verified.
        self.tls = tls if upstream.scheme == "https" else None
        self.server_name = server_name or upstream.host
        self.limits = limits
        self.idle: list[UpstreamSide] = []
        # HTTP/2 (`protocol` h2 or h2c): the sessions open, each carrying many streams, and
        # the exchanges waiting for the one being connected.
        self.protocol = protocol
        self.sessions: list[UpstreamSession] = []
        self.connecting: list[Waiter] | None = None
        self._failures = 0
        self.ejected_until = 0.0

    def __repr__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def take_idle(self) -> UpstreamSide | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.usable:
                return conn
        return None

    def release(self, conn: UpstreamSide) -> None:
        if conn.usable and len(self.idle) < self.limits.pool_idle_per_endpoint:
            self.idle.append(conn)
        else:
            conn.close()

    def take_stream(self) -> UpstreamSide | None:
        """A stream of an HTTP/2 session with room for one more (None: every one is full)."""
        for session in self.sessions:
            if session.room > 0:
                return session.stream()
        return None

    def forget(self, conn: UpstreamSide) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def forget_session(self, session: object) -> None:
        if session in self.sessions:
            self.sessions.remove(session)

    def reuse(self, conn: UpstreamSide) -> None:
        """An exchange completed on `conn`: the endpoint answered (its failures are forgotten)
        and the connection is kept for the next exchange when there is room."""
        self._failures = 0
        if conn.framed:  # an HTTP/2 stream ends with its exchange; its session goes on
            conn.done()
            return
        conn.exchange = None
        if conn.usable and len(self.idle) < self.limits.pool_idle_per_endpoint:
            self.idle.append(conn)
        else:
            conn.close()

    def failed(self, now: float) -> None:
        self._failures += 1
        if self._failures >= self.limits.eject_failures:
            self._failures = 0
            self.ejected_until = now + self.limits.eject_s

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        for session in list(self.sessions):
            session.drain()
        self.sessions.clear()


class UpstreamPool:
    """The endpoints of one (service, variant), with admission control."""

    def __init__(
        self,
        upstreams: tuple[Upstream, ...],
        limits: Limits,
        loop: asyncio.AbstractEventLoop,
        tls: Tls | None = None,
        server_name: str = "",
        protocol: str = "http1",
    ) -> None:
        self.endpoints = [Endpoint(u, limits, tls, server_name, protocol) for u in upstreams]
        self.limits = limits
        self._loop = loop
        self._next = 0
        self.in_flight = 0
        self._waiters: deque[Waiter] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    def acquire(self, waiter: Waiter) -> None:
        """Give `waiter` a connection now or later; raise Overloaded when the queue is full."""
        if self.in_flight >= self.limits.pool_max_concurrency:
            if len(self._waiters) >= self.limits.pool_queue:
                raise Overloaded("upstream pool queue is full")
            self._waiters.append(waiter)
            return
        self.in_flight += 1
        self.dispatch(waiter)

    def dispatch(self, waiter: Waiter, *, fresh: bool = False) -> None:
        """Attach an idle connection of the next endpoint, or connect a new one."""
        endpoints = self.endpoints
        # One endpoint is used ejected or not (panic mode): no pick to make.
        endpoint = endpoints[0] if len(endpoints) == 1 else self._pick()
        if endpoint.protocol != "http1":
            self._dispatch_h2(endpoint, waiter, fresh)
            return
        conn = None if fresh else endpoint.take_idle()
        if conn is not None:
            conn.reused = True
            waiter.attach(conn, endpoint)
            return
        task = self._loop.create_task(self._connect(endpoint, waiter))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dispatch_h2(self, endpoint: Endpoint, waiter: Waiter, fresh: bool) -> None:
        """A stream of a session with room; else wait for the session being connected, or
        connect one (`fresh`: a retry, never on the session that failed it)."""
        stream = None if fresh else endpoint.take_stream()
        if stream is not None:
            waiter.attach(stream, endpoint)
            return
        waiting = endpoint.connecting
        if waiting is not None and not fresh and len(waiting) < self.limits.pool_h2_max_streams:
            waiting.append(waiter)
            return
        waiters = [waiter]
        if not fresh:
            endpoint.connecting = waiters
        task = self._loop.create_task(self._connect_h2(endpoint, waiters))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_h2(self, endpoint: Endpoint, waiters: list[Waiter]) -> None:
        tls = endpoint.tls
        limit = self.limits.pool_h2_max_streams
        try:
            async with asyncio.timeout(self.limits.connect_timeout_s):
                transport, session = await self._loop.create_connection(
                    lambda: UpstreamSession(endpoint, limit),
                    endpoint.host,
                    endpoint.port,
                    ssl=tls,
                    server_hostname=endpoint.server_name if tls is not None else None,
                )
            if tls is not None and not h2_negotiated(transport):
                session.close()
                raise UpstreamError("protocol", "the upstream did not agree to HTTP/2 (ALPN)")
        except (OSError, TimeoutError, UpstreamError) as exc:
            if endpoint.connecting is waiters:
                endpoint.connecting = None
            endpoint.failed(self._loop.time())
            error = exc if isinstance(exc, UpstreamError) else _connect_error(exc)
            for waiter in waiters:
                waiter.upstream_failed(error, None)
            return
        if endpoint.connecting is waiters:
            endpoint.connecting = None
        endpoint.sessions.append(session)
        for waiter in waiters:
            if waiter.abandoned:
                continue
            if session.room > 0:
                waiter.attach(session.stream(), endpoint)
            else:
                self._dispatch_h2(endpoint, waiter, False)

    def release_slot(self) -> None:
        """An exchange admitted by `acquire` has ended; admit the next waiter."""
        self.in_flight -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.abandoned:
                self.in_flight += 1
                self.dispatch(waiter)
                return

    def _pick(self) -> Endpoint:
        endpoints = self.endpoints
        count = len(endpoints)
        now = self._loop.time()
        for _ in range(count):
            endpoint = endpoints[self._next % count]
            self._next += 1
            if endpoint.ejected_until <= now:
                return endpoint
        endpoint = endpoints[self._next % count]
        self._next += 1
        return endpoint

    async def _connect(self, endpoint: Endpoint, waiter: Waiter) -> None:
        tls = endpoint.tls
        try:
            async with asyncio.timeout(self.limits.connect_timeout_s):
                if tls is None:
                    _, conn = await self._loop.create_connection(
                        lambda: UpstreamConnection(endpoint), endpoint.host, endpoint.port
                    )
                else:
                    _, conn = await self._loop.create_connection(
                        lambda: UpstreamConnection(endpoint),
                        endpoint.host,
                        endpoint.port,
                        ssl=tls,
                        server_hostname=endpoint.server_name,
                    )
        except (OSError, TimeoutError) as exc:
            # Counted here, once, even when the waiter has gone: the waiter is given no
            # endpoint, so that it does not count the same failure again.
            endpoint.failed(self._loop.time())
            waiter.upstream_failed(_connect_error(exc), None)
            return
        if waiter.abandoned:
            endpoint.release(conn)
            return
        waiter.attach(conn, endpoint)

    def retire(self) -> None:
        """A reload no longer routes here: exchanges in flight (and queued) finish, but no
        connection is kept idle any more, so each closes once its exchange is done."""
        self.limits = retired = dataclasses.replace(self.limits, pool_idle_per_endpoint=0)
        for endpoint in self.endpoints:
            endpoint.limits = retired
            endpoint.close()

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()
        for task in list(self._tasks):
            task.cancel()


def _connect_error(exc: OSError | TimeoutError) -> UpstreamError:
    detail = "timed out" if isinstance(exc, TimeoutError) else str(exc)
    # A certificate that fails verification is its own reason (a wrong CA, name or expiry is
    # a deployment fault, not a host that is down).
    reason = "tls" if isinstance(exc, SSLError) else "connect"
    return UpstreamError(reason, detail, status=502)
