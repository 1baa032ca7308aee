"""The `http2:` block of the configuration: HTTP/2 on the data listener and its limits.

Off by default. `enabled: true` makes a TLS listener offer `h2` before `http/1.1` by ALPN;
`h2c: true` (which needs `enabled`) makes a plain listener take HTTP/2 by prior knowledge as
well as HTTP/1.1. The limits bound what one client connection may cost (RELIABILITY.md):
streams at once, the decoded header list, the request-body window per stream, and the rates
of stream resets (rapid reset) and of SETTINGS/PING frames (floods) before the connection is
ended with GOAWAY ENHANCE_YOUR_CALM, and how long its address is then refused (`penalty`).
"""

from __future__ import annotations

from dataclasses import replace

from proxy.config import reader as read
from proxy.config.model import Http2Config
from proxy.errors import ConfigError

_KEYS = (
    "enabled",
    "h2c",
    "max_concurrent_streams",
    "max_header_list_size",
    "initial_window_size",
    "max_frame_size",
    "max_resets_per_s",
    "max_control_frames_per_s",
    "penalty",
)
# (low, high) of each integer key; the frame and window bounds are RFC 9113's (6.5.2).
_RANGES = {
    "max_concurrent_streams": (1, 10000),
    "max_header_list_size": (1024, 16 * 1024 * 1024),
    "initial_window_size": (1024, 2**31 - 1),
    "max_frame_size": (16384, 2**24 - 1),
    "max_resets_per_s": (1, 100000),
    "max_control_frames_per_s": (1, 100000),
}
_PENALTY_MAX_S = 3600.0


def http2(value: object, path: str) -> Http2Config:
    """`http2: {enabled, h2c, max_concurrent_streams, max_header_list_size, ...}`."""
    data = read.mapping(value, path, _KEYS)
    enabled = read.boolean(data.get("enabled", False), read.key(path, "enabled"))
    h2c = read.boolean(data.get("h2c", False), read.key(path, "h2c"))
    numbers = {
        name: read.integer(data[name], read.key(path, name), low, high)
        for name, (low, high) in _RANGES.items()
        if name in data
    }
    penalty = data.get("penalty")
    if h2c and not enabled:
        raise ConfigError(read.key(path, "h2c"), "needs http2.enabled: true")
    config = Http2Config(enabled, h2c, **numbers)
    if penalty is None:
        return config
    return replace(config, penalty_s=_penalty(penalty, read.key(path, "penalty")))


def _penalty(value: object, path: str) -> float:
    seconds = read.duration(value, path, allow_zero=True)
    if seconds > _PENALTY_MAX_S:
        raise ConfigError(path, "must be at most 1h (a bar outlasting that is a firewall's job)")
    return seconds
