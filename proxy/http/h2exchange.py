"""The exchange of one HTTP/2 stream: the HTTP/1.1 `Exchange` with HTTP/2 framing downstream.

Everything but the response's framing is the HTTP/1.1 exchange's: admission, the upstream
pools (HTTP/1.1 upstreams), the request head and body sent up, retries and the canary's
fall-back, failures, deadlines, metrics and evidence. Where the HTTP/1.1 exchange writes
response bytes (a status line and fields, chunks, an error page), this one hands its stream a
header list and DATA: the stream (`H2Stream`, its client) sends them within the peer's flow
control window and holds the upstream's reading while it cannot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.core.servertiming import fields_of, parse, without
from proxy.errors import UpstreamError
from proxy.http.exchange import Exchange
from proxy.http.h2fields import response_fields, trailer_fields
from proxy.http.response import LENGTH, NO_BODY

if TYPE_CHECKING:
    from proxy.dataplane import Route
    from proxy.errors import HttpError
    from proxy.http.h2stream import H2Stream
    from proxy.http.request import Request


class H2Exchange(Exchange):
    """One stream's request through the proxy; its response goes back as HEADERS and DATA."""

    __slots__ = ("stream",)

    def __init__(self, stream: H2Stream, request: Request, route: Route) -> None:
        Exchange.__init__(self, stream, request, route)
        self.stream = stream  # the client, as its own type

    def response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        if status < 200:
            if status == 101:
                raise UpstreamError("protocol", "101 to a request that asked for no upgrade")
            self.informational = True  # 100 and 103 are not relayed
            self.status = status
            return
        route = self.route
        if route.timing is not None or route.strip_timing:
            if route.timing is not None:
                self.timing = parse(fields_of(headers), route.timing)
            if route.strip_timing:
                headers = without(headers)
        self.status = status
        self.upstream_keep_alive = keep_alive
        self.response_started = True
        if self.capture is not None:
            self.capture.head(status, headers)
        stream = self.stream
        self._deadline = stream.loop.time() + stream.limits.body_timeout_s
        head = self.request.method == b"HEAD"
        # `head_ends`: an HTTP/2 upstream's HEADERS ended its stream (gRPC's trailers-only
        # answer): so does this one, its grpc-status in the head.
        body = not head and status not in (204, 304) and not self.head_ends
        self._framing = LENGTH if body else NO_BODY
        self._eof_ends = body and not any(
            n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers
        )
        fields = response_fields(status, headers, self.request.request_id, stream.names, body=body)
        stream.send_headers(fields, end=not body)
        if head:
            # llhttp cannot be told the request was HEAD: it would wait for a body. The
            # response ends here; the upstream connection is closed rather than pooled.
            self.upstream_keep_alive = False
            self.finish()

    def response_body(self, body: bytes) -> None:
        if self.informational or self.finished:
            return
        stream = self.stream
        self._deadline = stream.loop.time() + stream.limits.body_timeout_s
        stream.send(body)
        if self.capture is not None:
            self.capture.add(body)

    def response_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.finished:
            return
        if self._framing != NO_BODY:
            self.stream.end(trailer_fields(self.trailers))
        self.finish()

    def respond_error(self, error: HttpError) -> None:
        """The proxy answers in the upstream's place (before any response head was sent)."""
        self.status = error.status
        self.generated = True
        self.stream.answer(error.status, error.reason, self.request.request_id)
        self.finish()

    def flush_client(self) -> None:
        self.out.clear()  # nothing is framed as HTTP/1.1 bytes here
        self.stream.flush()

    def finish(self, status: int | None = None) -> None:
        # A stream holding the upstream's reading (its client's window was shut) lets go of
        # it before the connection is pooled or closed.
        self.stream.release_upstream()
        Exchange.finish(self, status)
