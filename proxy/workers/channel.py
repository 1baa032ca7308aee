"""Messages between the supervisor and a worker: one kind byte, a 4-byte length, a payload.

CONFIG    supervisor -> worker   {"generation", "text": the config's YAML, "plans": as PLAN};
                                 the first message, and each reload's
RELOADED  worker -> supervisor   {"generation", "error": null or why it could not apply it}
PLAN      supervisor -> worker   {service: [spec hash, version, step index, active]}
READY     worker -> supervisor   {"pid": ...} once its listener is up
EVIDENCE  worker -> supervisor   an evidence batch (proxy/fleet/batch.py)
METRICS   worker -> supervisor   Metrics.export() of the worker
"""

from __future__ import annotations

import asyncio
import struct

CONFIG = b"C"
RELOADED = b"L"
PLAN = b"P"
DRAIN = b"D"
FLUSH = b"F"
READY = b"R"
EVIDENCE = b"E"
METRICS = b"M"

_HEAD = struct.Struct("!cI")
MAX_MESSAGE = 64 * 1024 * 1024


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(kind, len(payload)) + payload


async def receive(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """The next message, or None when the other side has gone (end of stream)."""
    try:
        head = await reader.readexactly(_HEAD.size)
        kind, length = _HEAD.unpack(head)
        if length > MAX_MESSAGE:
            raise ValueError(f"message of {length} bytes")
        return kind, await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
