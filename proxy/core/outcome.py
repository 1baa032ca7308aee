"""Outcome: classify a finished exchange for metrics and rollout analysis.

Only what the upstream did counts against a variant: a client that hangs up is never an upstream
error, and a request the proxy refused itself (bad input, overload) never reached an upstream.

Classification, first match wins:
1. `client_aborted`                  -> CLIENT_ABORT (the client left; nobody is blamed)
2. `failure` (connect|timeout|reset|protocol) -> UPSTREAM_ERROR (locally detected failure)
3. `status` is None                  -> REJECTED (the proxy answered without an upstream response)
4. `status` >= 500                   -> UPSTREAM_ERROR (the upstream answered 5xx)
5. otherwise                         -> OK (1xx-4xx from the upstream: it did its job)

`status` is the status the upstream sent, not one the proxy generated (pass None for those).
Pure: no I/O.
"""

from __future__ import annotations

from enum import StrEnum

FAILURE_REASONS = frozenset({"connect", "timeout", "reset", "protocol"})
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


class Outcome(StrEnum):
    """How an exchange ended, from the point of view of the upstream's health."""

    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"
    CLIENT_ABORT = "client_abort"
    REJECTED = "rejected"


def status_class(status: int) -> str:
    """`"1xx"` .. `"5xx"`; a status outside 100..599 is counted as "5xx" (a bounded label)."""
    return _STATUS_CLASSES.get(status // 100, "5xx")


def classify(status: int | None, failure: str | None, client_aborted: bool) -> Outcome:
    """The outcome of one exchange (rules in the module docstring)."""
    if client_aborted:
        return Outcome.CLIENT_ABORT
    if failure is not None:
        if failure not in FAILURE_REASONS:
            raise ValueError(f"unknown upstream failure {failure!r}")
        return Outcome.UPSTREAM_ERROR
    if status is None:
        return Outcome.REJECTED
    return Outcome.UPSTREAM_ERROR if status >= 500 else Outcome.OK
