"""The one exception hierarchy of rollout-proxy.

Every error the proxy raises on purpose derives from `ProxyError`. Errors that end an HTTP
exchange carry the status they map to and where they came from (pingora's habit): an error from
the client (`downstream`) is never counted against an upstream, and an error from an upstream is
counted against the variant that failed.
"""

from __future__ import annotations

from enum import StrEnum


class Source(StrEnum):
    """Who caused an error."""

    DOWNSTREAM = "downstream"
    UPSTREAM = "upstream"
    INTERNAL = "internal"


class ProxyError(Exception):
    """Root of every error raised by rollout-proxy."""


class ConfigError(ProxyError):
    """A configuration value is wrong; `path` names the key (`services[0].rollout.salt`)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class HttpError(ProxyError):
    """An exchange ends with `status`, sent by the proxy itself."""

    status: int = 500
    source: Source = Source.INTERNAL

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status


class BadRequest(HttpError):
    """The client sent something we refuse to forward (400, 414, 431, 501, 505 ...)."""

    status = 400
    source = Source.DOWNSTREAM


class NoRoute(HttpError):
    """No service matches the request."""

    status = 404
    source = Source.DOWNSTREAM


class Overloaded(HttpError):
    """A bounded queue is full: answered fast with 503 instead of queueing without end."""

    status = 503
    source = Source.INTERNAL


class UpstreamError(HttpError):
    """The upstream failed; `reason` is one of connect, tls, timeout, reset, protocol."""

    status = 502
    source = Source.UPSTREAM

    def __init__(self, reason: str, detail: str = "", status: int | None = None) -> None:
        super().__init__(reason, 504 if reason == "timeout" and status is None else status)
        self.detail = detail


class StateError(ProxyError):
    """Rollout state could not be read or written."""


class StaleVersion(StateError):
    """A conditional change named a version the rollout is no longer at."""


class StoreUnavailable(StateError):
    """The state store cannot be reached or written now (Redis away, a full disk): nothing
    changed, and the same call may succeed later."""


class NoPromData(ProxyError):
    """A Prometheus query gave no usable value (an error answer, no series, a timeout): the
    check it belongs to has no data, which blocks advancing and never rolls back."""
