"""One request/response exchange: the per-request context tying a client to an upstream.

Phases (pingora's habit): admitted by the pool -> attached to an upstream connection -> request
head and body streamed up -> response head re-framed and streamed down -> finished. Every way out
goes through `finish`, which releases the pool slot, pools or closes the upstream connection,
records the outcome once, and hands the client connection back to its downstream protocol.
Moving the bytes is the `Relay` base class's business; this module owns phases and failures.

Errors are tagged by source: an upstream that fails is counted against the route's variant; a
client that goes away is counted as an abort and never as an upstream failure; a request the
proxy refuses (`refused`) is neither.

A canary attempt that failed where sending it again is safe (a connect failure: nothing was
sent; or an idempotent request without a body that got no response byte) is sent again to
stable while the service's retry budget allows (`_fall_back`). The failed attempt is recorded
first as what it was, a failed canary request (metrics and the analysis' evidence), so a retry
never hides a broken canary; the stable answer is counted in the metrics only.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from proxy.core.grpc import outcome as grpc_outcome
from proxy.core.servertiming import fields_of, parse, without
from proxy.errors import Overloaded, UpstreamError
from proxy.http.relay import PENDING_LIMIT, Relay
from proxy.http.request import upstream_head
from proxy.http.response import CLOSE

if TYPE_CHECKING:
    from proxy.dataplane import Route
    from proxy.http.request import Request
    from proxy.http.sides import ClientSide, EndpointSide, UpstreamSide


class Exchange(Relay):
    """One request's way through the proxy, from admission to its recorded outcome."""

    __slots__ = ("abandoned", "admitted", "endpoint", "rerouted", "retried", "route", "started")

    def __init__(self, client: ClientSide, request: Request, route: Route) -> None:
        Relay.__init__(self, client, request)
        self.route = route
        self.endpoint: EndpointSide | None = None
        self.started = 0.0
        self.abandoned = False
        self.admitted = False
        self.retried = False
        self.rerouted = False  # a failed canary attempt was sent again to stable
        tap = route.shadow
        if tap is not None:  # a shadow step: is this request mirrored to the canary?
            self.capture = tap.capture(request)

    # --- start and attach -------------------------------------------------------------

    def start(self) -> None:
        """Ask the route's pool for a connection (raises Overloaded when it cannot queue)."""
        # The request's duration is timed with a high-resolution clock: the event loop's
        # (uvloop) counts whole milliseconds, which would quantise every latency the metrics
        # and the analysis see (deadlines are fine with it).
        self.started = perf_counter()
        route = self.route
        route.budget.deposit()
        route.pool.acquire(self)
        self.admitted = True

    def attach(self, conn: UpstreamSide, endpoint: EndpointSide) -> None:
        if self.finished or self.abandoned:
            endpoint.release(conn)
            return
        self.conn = conn
        self.endpoint = endpoint
        conn.exchange = self
        client = self.client
        request, scheme = self.request, client.scheme
        if conn.framed:  # an HTTP/2 stream sends the head itself
            try:
                conn.start(request, endpoint.authority, client.peer_bytes, self.route.extra, scheme)
            except UpstreamError as error:
                self.upstream_failed(error, None)
                self.flush_client()
                return
            if request.expect_continue and not self.request_done:
                self.continue_now()
        else:
            self.up_out.append(
                upstream_head(
                    request, endpoint.authority, client.peer_bytes, self.route.extra, scheme
                )
            )
        if self.pending or (request.chunked and self.request_done):
            self.held_body(conn.framed)  # body bytes that arrived before the connection
            if self.pending_size > PENDING_LIMIT:
                client.resume_reading_for(self)
            self.pending_size = 0
        if self.request_done:
            self._arm(client.limits.response_timeout_s)
            if conn.framed:
                self.flush_upstream()
                conn.end_request()
        if not client.in_feed:
            self.flush_upstream()
            self.flush_client()

    def response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        """Read the Server-Timing metrics the route's checks name (and strip the header
        when configured) before the head is relayed."""
        route = self.route
        if status >= 200 and (route.timing is not None or route.strip_timing):
            if route.timing is not None:
                self.timing = parse(fields_of(headers), route.timing)
            if route.strip_timing:
                headers = without(headers)
        Relay.response_head(self, status, headers, keep_alive)

    # --- WebSocket and other upgrades ---------------------------------------------------

    def switch_protocols(self, rest: bytes) -> None:
        """The upstream answered 101: relay its head, then bytes both ways until either closes."""
        if self.status != 101 or not self.request.websocket or self.conn is None:
            self.upstream_failed(UpstreamError("protocol", "unexpected upgrade"), self.endpoint)
            return
        self._cancel_timer()
        self.tunnel = True
        self.response_started = True
        self.out.append(self._upgrade)
        if rest:
            self.out.append(rest)
        self.flush_client()
        self.client.start_tunnel(self)
        self.record(101)

    def tunnel_closed(self) -> None:
        """Either side of a tunnel closed: close the other, once."""
        if self.finished:
            return
        self.finished = True
        self._release_slot()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.client.close()

    # --- failures -----------------------------------------------------------------------

    def upstream_failed(self, error: UpstreamError, endpoint: EndpointSide | None) -> None:
        if self.finished or self.abandoned:
            return
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        now = self.client.loop.time()
        if endpoint is not None and error.reason in ("connect", "reset"):
            endpoint.failed(now)
        recorder = self.route.recorder
        recorder.failed(self.route, error.reason)
        if self._may_retry(error):
            self.retried = True
            self.route.pool.dispatch(self, fresh=True)
            return
        if self._may_fall_back(error):
            self._fall_back()
            return
        if self.tunnel:
            self.tunnel_closed()
            return
        if self.response_started:
            # Too late for a status: the client must see a truncated message, never a clean end.
            self.out.clear()
            self.close_after = True
            self.client.abort_after_flush(reset=self._framing == CLOSE)
            self.finish(status=502 if error.reason != "timeout" else 504)
            return
        self.respond_error(error)

    def _may_retry(self, error: UpstreamError) -> bool:
        """Retry once: a connect failure (nothing was sent) or a reused connection the
        upstream had closed, for a request that is idempotent and had no body."""
        if self.retried or self.response_started or self.tunnel:
            return False
        if error.reason in ("connect", "tls"):  # nothing was sent
            return len(self.route.pool.endpoints) > 1
        return (
            error.reason == "reset"
            and self.request.idempotent
            and not self.request.has_body
            and self.status == 0
        )

    def _may_fall_back(self, error: UpstreamError) -> bool:
        """May this failed canary attempt go to stable? Only if no response byte came back,
        and either nothing was sent (connect) or sending it again is safe (RFC 9110 9.2.2:
        idempotent, and no body that is gone); then only within the retry budget."""
        route = self.route
        if route.fallback is None or self.response_started or self.tunnel or self.status:
            return False
        request = self.request
        safe = error.reason in ("connect", "tls") or (
            error.reason == "reset" and request.idempotent and not request.has_body
        )
        if not safe:
            return False
        allowed = route.budget.withdraw()
        route.recorder.retried(route, allowed)
        return allowed

    def _fall_back(self) -> None:
        """Record the failed canary attempt, then send the request to the stable pool."""
        canary = self.route
        stable = canary.fallback
        assert stable is not None
        duration = perf_counter() - self.started
        canary.recorder.completed(canary, 502, duration, self.request, True)
        self._release_slot()
        self.route = stable
        self.rerouted = True
        try:
            stable.pool.acquire(self)
        except Overloaded as exc:
            self.respond_error(exc)
            return
        self.admitted = True

    def upstream_lost(self, conn: UpstreamSide, exc: Exception | None) -> None:
        """The upstream closed the connection while this exchange used it."""
        if self.finished:
            return
        if self.tunnel:
            self.tunnel_closed()
            return
        if self.response_started and self._eof_ends and exc is None:
            # A close-delimited response (RFC 9112 6.3 rule 8) ends with the upstream's FIN.
            self.conn = None
            self.response_complete()
            self.flush_client()
            return
        reused = conn.reused
        self.conn = None
        detail = str(exc) if exc else "connection closed before the response completed"
        error = UpstreamError("reset", detail)
        if not reused or self.response_started or self.status:
            self.upstream_failed(error, conn.endpoint)
        elif self._may_retry(error):
            # A pooled connection the upstream closed while idle (the keep-alive race): neither
            # the endpoint's fault nor a failure of the variant when the request is sent again.
            self.retried = True
            self.route.pool.dispatch(self, fresh=True)
            return
        else:
            self.upstream_failed(error, None)
        self.flush_client()

    def client_gone(self) -> None:
        """The client connection is lost before the exchange finished: counted as an abort."""
        if self.finished:
            return
        self.abandoned = True
        if self.tunnel:
            self.tunnel_closed()
            return
        self.route.recorder.aborted(self.route)
        self._drop()

    def refused(self, status: int) -> None:
        """The proxy refused the request after its head (a bad body, a body deadline): the
        exchange is dropped uncounted; the client gets the refusal (`status`) from its
        connection."""
        if self.finished:
            return
        self.abandoned = True
        self._drop()

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        self.finished = True
        self._cancel_timer()
        self._release_slot()

    def check_deadline(self, now: float) -> None:
        """Called by the engine's sweeper; a passed deadline is an upstream timeout, unless
        the upstream is silent only because the proxy stopped reading it for the client."""
        if not self._deadline or now < self._deadline or self.finished:
            return
        conn = self.conn
        if conn is not None and conn.paused and self.response_started:
            # The client has not read for a whole body timeout: it is cut as a client that
            # went away (connection_lost -> client_gone counts the abort), not blamed upstream.
            self._cancel_timer()
            self.client.abort()
            return
        self.upstream_failed(UpstreamError("timeout", "upstream did not answer in time"), None)
        self.flush_client()

    # --- the one way out ------------------------------------------------------------------

    def _release_slot(self) -> None:
        if self.admitted:
            self.admitted = False
            self.route.pool.release_slot()

    def finish(self, status: int | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        # Reading may be paused for this exchange's upstream back-pressure; once it is over,
        # nothing else would resume it.
        self.client.resume_reading_for(self)
        self._deadline = 0.0  # no deadline once finished
        conn = self.conn
        if conn is not None:
            self.conn = None
            endpoint = self.endpoint
            if (
                self.upstream_keep_alive
                and self.request_done
                and conn.usable
                and endpoint is not None
            ):
                endpoint.reuse(conn)
            else:
                conn.close()
        self._release_slot()
        self.flush_client()
        final = status if status is not None else self.status
        if final:
            self.record(final, status is not None or self.generated)
        if self.capture is not None:
            self._shadow(status)
        self.client.exchange_done(self)

    def _shadow(self, status: int | None) -> None:
        """Hand stable's captured answer to the mirror, if the upstream answered it whole."""
        capture, self.capture = self.capture, None
        if (
            capture is None
            or status is not None
            or self.generated
            or self.rerouted
            or self.abandoned
            or self.route.canary
            or capture.status < 200
        ):
            return
        endpoint = self.endpoint
        served = f"{endpoint.host}:{endpoint.port}" if endpoint is not None else ""
        capture.hand_over(self.request, served, self.route.tier)

    def record(self, status: int, generated: bool = False) -> None:
        """Count the outcome once: metrics, and the rollout analysis as evidence. A gRPC
        call the upstream answered is counted as its `grpc-status` (core/grpc.py)."""
        duration = perf_counter() - self.started
        route = self.route
        counted = status
        if self.grpc >= 0 and status == 200 and not generated:
            counted = grpc_outcome(self.grpc)
        route.recorder.completed(
            route,
            counted,
            duration,
            self.request,
            generated,
            evidence_too=not self.rerouted,
            timing=self.timing,
        )


class Exchanges:
    """Makes the exchange of each request; the access log's subclass makes logged ones.

    A class with a method rather than a callable, so that the compiled request path calls it
    directly instead of through a generic call.
    """

    __slots__ = ()

    def make(self, client: ClientSide, request: Request, route: Route) -> Exchange:
        return Exchange(client, request, route)
