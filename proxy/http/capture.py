"""Shadow capture: stable's answer kept as it streams to the client, for a shadow step.

A stable route of a service in a shadow step carries a `ShadowTap`. For each request it serves,
the tap decides once (`capture`) whether the request is mirrored: a configured method, no
request body, and in the step's sample by a hash of the request id (`mirrors`). Only then is a
`Capture` made; it keeps the status, the configured headers and up to `max_body` bytes of the
decoded body while the relay forwards them (never delaying them). When the exchange ends well,
the capture becomes a `ShadowCopy` handed to the tap's sink, which must never block (a bounded
queue that drops and counts when full). A body over the cap is kept by its length only and
marked too large: it is not compared.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.core.shadow import Answer, mirrors, shadow_headers

if TYPE_CHECKING:
    from proxy.config import ServiceConfig
    from proxy.http.request import Request


@dataclass(frozen=True, slots=True)
class ShadowCopy:
    """A request to replay on the canary, and stable's answer to it (None: too large)."""

    service: ServiceConfig
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    request_id: str
    id_hash: int
    served_by: str  # the stable endpoint that answered, as host:port
    stable: Answer | None
    tier: str = "default"  # the request's tier: the shadow check judges per route and tier


class ShadowSink:
    """Where finished captures go (the mirror): `submit` must return at once."""

    __slots__ = ()

    def submit(self, copy: ShadowCopy) -> None:
        raise NotImplementedError


class ShadowTap:
    """A shadow step's sampling rule on one service's stable routes."""

    __slots__ = ("headers", "max_body", "methods", "sample", "service", "sink")

    def __init__(self, service: ServiceConfig, sample: float, sink: ShadowSink) -> None:
        shadow = service.rollout.shadow
        self.service = service
        self.sample = sample
        self.sink = sink
        self.methods = shadow.methods
        self.headers = frozenset(name.encode("ascii") for name in shadow.headers)
        self.max_body = shadow.max_body

    def capture(self, request: Request) -> Capture | None:
        """A capture for `request` when it is mirrored, else None (nothing else is done)."""
        if request.has_body or request.websocket:
            return None
        method = request.method.decode("ascii", "replace")
        if method not in self.methods:
            return None
        digest = hashlib.blake2b(request.request_id, digest_size=8).digest()
        if not mirrors(method, self.methods, self.sample, int.from_bytes(digest, "big")):
            return None
        return Capture(self)


class Capture:
    """Stable's answer to one mirrored request, as far as it went to the client."""

    __slots__ = ("body", "headers", "is_json", "size", "status", "tap", "too_large")

    def __init__(self, tap: ShadowTap) -> None:
        self.tap = tap
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.is_json = False
        self.body: list[bytes] = []
        self.size = 0
        self.too_large = False

    def head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        wanted = self.tap.headers
        kept = []
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-type":
                self.is_json = b"json" in value.lower()
            if lowered in wanted:
                kept.append((lowered.decode("latin-1"), value.decode("latin-1")))
        self.headers = sorted(kept)

    def add(self, body: bytes) -> None:
        """Body bytes as they go to the client (decoded: no chunk framing)."""
        self.size += len(body)
        if self.too_large:
            return
        if self.size > self.tap.max_body:
            self.too_large = True
            self.body = []
            return
        self.body.append(body)

    def hand_over(self, request: Request, served_by: str, tier: str = "default") -> None:
        """The exchange ended well: give the copy to the sink (never blocks)."""
        tap = self.tap
        answer = None
        if not self.too_large:
            answer = Answer(self.status, tuple(self.headers), b"".join(self.body), self.is_json)
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers]
        if request.host:
            headers.append(("host", request.host.decode("latin-1")))
        request_id = request.request_id.decode("latin-1")
        headers.append(("x-request-id", request_id))
        tap.sink.submit(
            ShadowCopy(
                service=tap.service,
                method=request.method.decode("ascii", "replace"),
                target=request.target.decode("latin-1"),
                headers=tuple(shadow_headers(headers)),
                request_id=request_id,
                id_hash=request.bucket,
                served_by=served_by,
                stable=answer,
                tier=tier,
            )
        )
