"""The `notifications:` section: webhook receivers told about releases.

    notifications:
      - name: team-chat
        format: slack            # slack | cloudevents | json
        url_env: SLACK_WEBHOOK_URL
        events: [rolled_back, completed]   # default: all of proxy.core.notices.EVENTS
        timeout: 5s

The URL is read from the environment variable `url_env` names (a webhook URL holds its
secret); it must be an http:// or https:// URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from proxy.config import reader as read
from proxy.config.model import ReceiverConfig
from proxy.core.notices import EVENTS, FORMATS
from proxy.errors import ConfigError

_KEYS = ("name", "format", "url_env", "events", "timeout", "queue", "attempts", "backoff")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def notifications(value: object, path: str, env: Mapping[str, str]) -> tuple[ReceiverConfig, ...]:
    items = read.sequence(value, path)
    receivers = tuple(receiver(item, read.index(path, i), env) for i, item in enumerate(items))
    seen: dict[str, int] = {}
    for i, found in enumerate(receivers):
        if found.name in seen:
            other = read.index(path, seen[found.name])
            raise ConfigError(
                read.key(read.index(path, i), "name"),
                f"duplicate receiver name {found.name!r} (see {other})",
            )
        seen[found.name] = i
    return receivers


def receiver(value: object, path: str, env: Mapping[str, str]) -> ReceiverConfig:
    data = read.mapping(value, path, _KEYS, required=("name", "format", "url_env"))
    name = read.string(
        data["name"], read.key(path, "name"), _NAME, "a name of letters, digits, -_."
    )
    fmt = read.choice(data["format"], read.key(path, "format"), FORMATS)
    url_path = read.key(path, "url_env")
    url_env = read.env_name(data["url_env"], url_path)
    url = env.get(url_env, "")
    if not url:
        raise ConfigError(url_path, f"environment variable {url_env} is not set (or is empty)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(url_path, f"{url_env} must hold an http:// or https:// URL")
    defaults = ReceiverConfig(name, fmt, url_env, url)
    return ReceiverConfig(
        name=name,
        format=fmt,
        url_env=url_env,
        url=url,
        events=_events(data.get("events"), read.key(path, "events")),
        timeout_s=_seconds(data, path, "timeout", defaults.timeout_s),
        queue=read.integer(data.get("queue", defaults.queue), read.key(path, "queue"), 1, 100000),
        attempts=read.integer(
            data.get("attempts", defaults.attempts), read.key(path, "attempts"), 1, 20
        ),
        backoff_s=_seconds(data, path, "backoff", defaults.backoff_s),
    )


def _seconds(data: Mapping[str, object], path: str, name: str, default: float) -> float:
    return read.duration(data[name], read.key(path, name)) if name in data else default


def _events(value: object, path: str) -> frozenset[str]:
    if value is None:
        return frozenset(EVENTS)
    items = read.sequence(value, path, min_items=1)
    for i, item in enumerate(items):
        if not isinstance(item, str) or item not in EVENTS:
            raise ConfigError(
                read.index(path, i), f"unknown event; expected one of: {', '.join(EVENTS)}"
            )
    return frozenset(str(item) for item in items)
