"""gRPC outcomes: a call's status from its `grpc-status` field, as a label and an error class.

A gRPC call answers HTTP 200 and carries its real outcome in the `grpc-status` trailer (or in
the head of a trailers-only response). The proxy counts such a response as the status
`STATUS_BASE + code`: its label (`status_class`) is `grpc:<NAME>` (17 bounded values), and the
analysis counts it as an error when its label is among the service's `error_statuses`
(`DEFAULT_ERRORS` unless configured). A gRPC response without a status is `UNKNOWN`, as gRPC
clients report it; a value that is not a code is `UNKNOWN` too. An HTTP status other than 200
keeps its HTTP class (a 503 is a 5xx, whatever the call). Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

# The canonical codes, by number (grpc/doc/statuscodes.md).
CODES: Final = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
UNKNOWN: Final = 2
STATUS_BASE: Final = 1000  # a gRPC outcome is counted as STATUS_BASE + its code
LABELS: Final = tuple(f"grpc:{name}" for name in CODES)
# The codes that say the server failed (not the caller): errors unless configured otherwise.
DEFAULT_ERRORS: Final = frozenset(
    f"grpc:{name}" for name in ("UNKNOWN", "DEADLINE_EXCEEDED", "INTERNAL", "UNAVAILABLE")
)


_SUFFIXED: Final = (b"application/grpc+", b"application/grpc;")


def is_grpc(content_type: bytes) -> bool:
    """`application/grpc`, with or without a `+format` suffix or parameters."""
    value = content_type.lower()
    return value == b"application/grpc" or value.startswith(
        (b"application/grpc+", b"application/grpc;")
    )


def parse_status(value: bytes) -> int:
    """A `grpc-status` value as a code (`UNKNOWN` when it is not one)."""
    text = value.strip()
    if text.isdigit() and len(text) <= 2 and int(text) < len(CODES):
        return int(text)
    return UNKNOWN


def outcome(code: int) -> int:
    """The status a gRPC call with this code is counted as."""
    return STATUS_BASE + (code if 0 <= code < len(CODES) else UNKNOWN)


def label(status: int) -> str | None:
    """`grpc:<NAME>` for a status made by `outcome`, else None."""
    code = status - STATUS_BASE
    return LABELS[code] if 0 <= code < len(CODES) else None
