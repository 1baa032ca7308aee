"""Typed, path-aware readers for configuration values (YAML data -> Python values).

Every reader takes the raw value and its key path (`services[0].rollout.steps[2].percent`) and
either returns a checked value or raises ConfigError(path, reason). Nothing here knows the shape
of the whole configuration; proxy/config/__init__.py and proxy/config/services.py do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from proxy.config.model import Address, Upstream
from proxy.errors import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_PORT = re.compile(r"(\[[^\]]*\]|[^:\[\]]*):(\d{1,5})")


def key(path: str, name: str) -> str:
    """The path of key `name` inside the mapping at `path`."""
    return f"{path}.{name}" if path else name


def index(path: str, i: int) -> str:
    """The path of item `i` of the list at `path`."""
    return f"{path}[{i}]"


def _kind(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a mapping", type(None): "empty"})
    return names.get(type(value), type(value).__name__)


def mapping(
    value: object, path: str, allowed: Collection[str], required: Collection[str] = ()
) -> Mapping[str, object]:
    """`value` as a mapping with string keys drawn from `allowed`, all `required` present."""
    if not isinstance(value, dict):
        raise ConfigError(path, f"must be a mapping, not {_kind(value)}")
    for name in value:
        if not isinstance(name, str):
            raise ConfigError(key(path, str(name)), "keys must be strings (quote it)")
        if name not in allowed:
            expected = ", ".join(sorted(allowed))
            raise ConfigError(key(path, name), f"unknown key; expected one of: {expected}")
    for name in required:
        if name not in value:
            raise ConfigError(key(path, name), "is required")
    return value


def string_keys(value: object, path: str) -> Mapping[str, object]:
    """A mapping whose keys are user-chosen names (tenant ids): any string key is allowed."""
    if not isinstance(value, dict):
        raise ConfigError(path, f"must be a mapping, not {_kind(value)}")
    for name in value:
        if not isinstance(name, str):
            raise ConfigError(key(path, str(name)), "keys must be strings (quote it)")
    return value


def sequence(value: object, path: str, *, min_items: int = 0) -> list[object]:
    """`value` as a list with at least `min_items` items."""
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list, not {_kind(value)}")
    if len(value) < min_items:
        raise ConfigError(path, f"must list at least {min_items} item(s)")
    return value


def string(value: object, path: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    """A non-empty string, fully matching `pattern` when given (`what` describes the pattern)."""
    if not isinstance(value, str):
        hint = " (quote it)" if isinstance(value, bool | int | float) else ""
        raise ConfigError(path, f"must be a string, not {_kind(value)}{hint}")
    if not value:
        raise ConfigError(path, "must not be empty")
    if pattern is not None and not pattern.fullmatch(value):
        raise ConfigError(path, f"must be {what}, got {value!r}")
    return value


def boolean(value: object, path: str) -> bool:
    """`true` or `false` (YAML's booleans; not `yes`/`no` strings, not numbers)."""
    if not isinstance(value, bool):
        raise ConfigError(path, f"must be true or false, not {_kind(value)}")
    return value


def choice(value: object, path: str, options: Collection[str]) -> str:
    """One of `options` (exact, case-sensitive)."""
    if not isinstance(value, str) or value not in options:
        raise ConfigError(path, f"must be one of: {', '.join(options)}")
    return value


def number(value: object, path: str, low: float, high: float) -> float:
    """A number (int or float, not a boolean) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(path, f"must be a number from {low:g} to {high:g}")
    if not low <= value <= high:
        raise ConfigError(path, f"must be a number from {low:g} to {high:g}")
    return float(value)


def integer(value: object, path: str, low: int, high: int = 2**31 - 1) -> int:
    """An integer (not a boolean) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(path, f"must be an integer from {low} to {high}")
    return value


def duration(value: object, path: str, *, allow_zero: bool = False) -> float:
    """Seconds from "250ms", "5s", "2m", "1h", or a plain number of seconds."""
    reason = 'must be a duration like "250ms", "5s", "2m", "1h" or a number of seconds'
    if isinstance(value, bool):
        raise ConfigError(path, reason)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match[1]) * _UNITS[match[2]]
    else:
        raise ConfigError(path, reason)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigError(path, "must be a positive duration" + ("" if allow_zero else " (> 0)"))
    return seconds


def env_name(value: object, path: str) -> str:
    """The name of an environment variable."""
    return string(value, path, _ENV_NAME, "an environment variable name")


def host(value: str, path: str) -> str:
    """A host name (lower-cased) or IP literal (IPv6 without brackets)."""
    try:
        return str(ip_address(value))
    except ValueError:
        pass
    lowered = value.lower()
    if not _HOSTNAME.fullmatch(lowered):
        raise ConfigError(path, f"{value!r} is not a valid host name or IP address")
    return lowered


def _host_port(text: str, path: str, form: str) -> tuple[str, int]:
    match = _HOST_PORT.fullmatch(text)
    if match is None:
        raise ConfigError(path, f"must be {form} (IPv6 in brackets), got {text!r}")
    raw_host, port = match[1], int(match[2])
    if raw_host.startswith("["):
        raw_host = raw_host[1:-1]
        if ":" not in raw_host:
            raise ConfigError(path, "only IPv6 addresses go in brackets")
    elif ":" in raw_host or not raw_host:
        raise ConfigError(path, f"must be {form} (IPv6 in brackets), got {text!r}")
    if port > 65535:
        raise ConfigError(path, f"port {port} is not in 0..65535")
    return host(raw_host, path), port


def address(value: object, path: str) -> Address:
    """A listening address "host:port"; "[::1]:8080" for IPv6; port 0 picks a free port."""
    text = string(value, path)
    return Address(*_host_port(text, path, '"host:port"'))


def upstream(value: object, path: str) -> Upstream:
    """An upstream URL "http://host:port" or "https://host:port" (no path, query, user info;
    the port defaults to 80 or 443)."""
    text = string(value, path)
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ConfigError(path, f'must be a URL like "http://127.0.0.1:9001", got {text!r}')
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(path, f"scheme must be http or https, got {scheme!r}")
    rest = rest.removesuffix("/")
    if any(c in rest for c in "/?#@"):
        raise ConfigError(path, f"must be {scheme}://host:port with no path, query or user info")
    if rest.endswith("]") or (":" not in rest and "[" not in rest):
        rest += ":443" if scheme == "https" else ":80"
    found_host, port = _host_port(rest, path, f'"{scheme}://host:port"')
    if port == 0:
        raise ConfigError(path, "port must be from 1 to 65535")
    return Upstream(found_host, port, scheme)


def network(value: object, path: str) -> IPv4Network | IPv6Network:
    """A CIDR network ("10.0.0.0/8"); a bare address means just that address."""
    text = string(value, path)
    try:
        return ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(path, f"must be an IP network like 10.0.0.0/8: {exc}") from None
