"""Outcome labels: the status class of a response and the reasons an upstream can fail.

What counts against a variant is decided where the exchange ends (a client that hangs up is an
abort, never an upstream error; a request the proxy refused never reached an upstream) and, for
the analysis, by `analysis.classify_status`. This module only names the bounded label values.
Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

from proxy.core import grpc

FAILURE_REASONS: Final = frozenset({"connect", "tls", "timeout", "reset", "protocol"})
_STATUS_CLASSES: Final = {n: f"{n}xx" for n in range(1, 6)}


def status_class(status: int) -> str:
    """`"1xx"` .. `"5xx"`, or `grpc:<NAME>` for a gRPC call's outcome (core/grpc.py); any
    other status is counted as "5xx" (a bounded label)."""
    found = _STATUS_CLASSES.get(status // 100)
    if found is not None:
        return found
    return grpc.label(status) or "5xx"
