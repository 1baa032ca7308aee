"""Access-log lines: the exchange that writes one when it ends, and what a line holds.

With `access_log.enabled` the engine gives every request a `LoggedExchange` instead of a plain
`Exchange` (with logs off nothing here runs, and a request costs nothing more). It counts the
bytes handed to the client, remembers the last upstream failure, and writes one JSON line when
the exchange ends: completed (any status, the proxy's own included), aborted by the client, or
refused by the proxy after its head (a bad body, a body deadline). A WebSocket's line is
written when its tunnel closes. An HTTP/2 stream's exchange is a `LoggedH2Exchange` (chosen
once per stream, `stream_exchange`): the same line, its `protocol` `HTTP/2`, and its
`bytes_sent` the response's DATA (an HPACK header block is no byte count of its own stream).
A gRPC call the upstream answered also names the outcome it was counted as (`grpc_status`).

A line never holds a tenant or user id, a cookie, an Authorization header or a token: the path
is logged without its query string, and the part of it a `path` identity rule reads as the id
is replaced by `{id}`. Requests refused before they were routed (malformed heads, no matching
service) have no exchange: they are counted in `rollout_rejected_requests_total`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Final

import orjson

from proxy.core import grpc
from proxy.core.identity import IdSource
from proxy.http.exchange import Exchange, Exchanges
from proxy.http.h2exchange import H2Exchange
from proxy.http.h2stream import answer_body

if TYPE_CHECKING:
    from proxy.accesslog import AccessLog
    from proxy.config import Config
    from proxy.dataplane import Route
    from proxy.errors import HttpError, UpstreamError
    from proxy.http.h2stream import H2Stream
    from proxy.http.request import Request
    from proxy.http.sides import ClientSide, EndpointSide

COMPLETED: Final = "completed"
ABORTED: Final = "aborted"
REFUSED: Final = "refused"


def path_id_patterns(config: Config) -> dict[str, tuple[re.Pattern[str], ...]]:
    """Per service, the patterns of its `path` identity rules (their `id` group is redacted)."""
    found: dict[str, tuple[re.Pattern[str], ...]] = {}
    for service in config.services:
        patterns = tuple(
            rule.pattern
            for rule in service.identity
            if rule.source is IdSource.PATH and rule.pattern is not None
        )
        if patterns:
            found[service.name] = patterns
    return found


def redact(path: str, patterns: tuple[re.Pattern[str], ...]) -> str:
    for pattern in patterns:
        match = pattern.search(path)
        if match is not None and match.group("id"):
            path = path[: match.start("id")] + "{id}" + path[match.end("id") :]
    return path


class AccessLines:
    """Turns ended exchanges into JSON lines for the writer (`AccessLog`)."""

    __slots__ = ("_second", "_stamp", "log", "patterns", "wall")

    def __init__(
        self,
        log: AccessLog,
        patterns: Mapping[str, tuple[re.Pattern[str], ...]],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.patterns = patterns
        self.wall = wall
        self._second = -1
        self._stamp = ""

    def _time(self) -> str:
        """UTC, ISO 8601 with milliseconds (the seconds' part is formatted once a second)."""
        now = self.wall()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def write(
        self,
        exchange: LoggedExchange | LoggedH2Exchange,
        status: int | None,
        generated: bool,
        outcome: str,
    ) -> None:
        request = exchange.request
        route = exchange.route
        path = request.path
        patterns = self.patterns.get(route.service)
        if patterns is not None:
            path = redact(path, patterns)
        started = exchange.started
        duration = perf_counter() - started if started else 0.0
        code = exchange.grpc  # counted as its grpc-status when the upstream answered 200
        counted = code >= 0 and status == 200 and not generated
        line = {
            "time": self._time(),
            "request_id": request.request_id.decode("ascii"),
            "client": exchange.client.peer_ip,
            "scheme": exchange.client.scheme.decode("ascii"),
            "forwarded_for": None if request.xff is None else request.xff.decode("latin-1"),
            "protocol": "HTTP/" + request.version.decode("ascii"),
            "method": request.method.decode("latin-1"),
            "path": path,
            "status": status,
            "grpc_status": grpc.label(grpc.outcome(code)) if counted else None,
            "outcome": outcome,
            "duration_ms": round(duration * 1000, 3),
            "bytes_sent": exchange.sent,
            "service": route.service,
            "variant": route.variant,
            "tier": route.tier,
            "step": route.step,
            "generated": generated,
            "upstream_failure": exchange.failure,
            "rerouted": exchange.rerouted,
            "forced": route.forced,
        }
        self.log.add(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))


class LoggedExchange(Exchange):
    """An `Exchange` that writes its access-log line when it ends."""

    __slots__ = ("failure", "lines", "sent")

    def __init__(
        self, client: ClientSide, request: Request, route: Route, lines: AccessLines
    ) -> None:
        super().__init__(client, request, route)
        self.lines = lines
        self.sent = 0  # bytes handed to the client connection
        self.failure: str | None = None  # the last upstream failure's reason

    def flush_client(self) -> None:
        for data in self.out:
            self.sent += len(data)
        super().flush_client()

    def client_write(self, data: bytes) -> None:
        self.sent += len(data)
        super().client_write(data)

    def upstream_failed(self, error: UpstreamError, endpoint: EndpointSide | None) -> None:
        if not (self.finished or self.abandoned):
            self.failure = error.reason
        super().upstream_failed(error, endpoint)

    def record(self, status: int, generated: bool = False) -> None:
        super().record(status, generated=generated)
        if status != 101:  # a tunnel's line is written when it closes
            self.lines.write(self, status, generated, COMPLETED)

    def tunnel_closed(self) -> None:
        if not self.finished:
            super().tunnel_closed()
            self.lines.write(self, 101, False, COMPLETED)

    def client_gone(self) -> None:
        if self.finished or self.tunnel:
            super().client_gone()
            return
        super().client_gone()
        self.lines.write(self, self.status or None, False, ABORTED)

    def refused(self, status: int) -> None:
        if not self.finished:
            super().refused(status)
            self.lines.write(self, status, True, REFUSED)


class LoggedH2Exchange(H2Exchange):
    """An HTTP/2 stream's `H2Exchange` that writes its access-log line when it ends (the
    same line as `LoggedExchange`; `sent`: the response's DATA bytes)."""

    __slots__ = ("failure", "lines", "sent")

    def __init__(
        self, stream: H2Stream, request: Request, route: Route, lines: AccessLines
    ) -> None:
        super().__init__(stream, request, route)
        self.lines = lines
        self.sent = 0
        self.failure: str | None = None

    def response_body(self, body: bytes) -> None:
        if not (self.informational or self.finished):
            self.sent += len(body)
        super().response_body(body)

    def respond_error(self, error: HttpError) -> None:
        self.sent += len(answer_body(error.reason))
        super().respond_error(error)

    def upstream_failed(self, error: UpstreamError, endpoint: EndpointSide | None) -> None:
        if not (self.finished or self.abandoned):
            self.failure = error.reason
        super().upstream_failed(error, endpoint)

    def record(self, status: int, generated: bool = False) -> None:
        super().record(status, generated=generated)
        self.lines.write(self, status, generated, COMPLETED)

    def client_gone(self) -> None:
        if self.finished:
            return
        super().client_gone()
        self.lines.write(self, self.status or None, False, ABORTED)

    def refused(self, status: int) -> None:
        if not self.finished:
            super().refused(status)
            self.lines.write(self, status, True, REFUSED)


def stream_exchange(
    exchanges: Exchanges, stream: H2Stream, request: Request, route: Route
) -> H2Exchange:
    """The exchange of an HTTP/2 stream: a logged one when the engine logs (one check per
    stream; with logs off the stream's path is the plain `H2Exchange`'s)."""
    if isinstance(exchanges, LoggedExchanges):
        return LoggedH2Exchange(stream, request, route, exchanges.lines)
    return H2Exchange(stream, request, route)


class LoggedExchanges(Exchanges):
    """The engine's maker of exchanges when access logs are on."""

    __slots__ = ("lines",)

    def __init__(self, lines: AccessLines) -> None:
        self.lines = lines

    def make(self, client: ClientSide, request: Request, route: Route) -> Exchange:
        return LoggedExchange(client, request, route, self.lines)
