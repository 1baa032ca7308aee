"""Start the real proxy in-process on loopback, from a config written as a Python dict."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from proxy.config import parse_config
from proxy.runtime import Runtime


def service(
    stable: list[str],
    canary: list[str],
    *,
    name: str = "svc",
    steps: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A service section with sensible test defaults (tenant id from X-Tenant-ID)."""
    section: dict[str, Any] = {
        "name": name,
        "identity": [{"header": "X-Tenant-ID", "kind": "tenant"}],
        "tiers": {"tenants": {}, "default": "free"},
        "upstreams": {"stable": stable, "canary": canary},
        "rollout": {"salt": "test-salt", "steps": steps or [{"percent": 10}]},
    }
    section.update(extra)
    return section


def config_dict(*services: dict[str, Any], **top: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "state": {"backend": "file", "path": f"{tempfile.mkdtemp(prefix='rollout-test-')}/s.json"},
        "trusted_peers": ["127.0.0.1/32"],
        "services": list(services),
    }
    data.update(top)
    return data


@asynccontextmanager
async def running_proxy(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> AsyncIterator[Runtime]:
    """A started Runtime for `data`; stopped (drained briefly) on exit."""
    environment = dict(env or {})
    runtime = Runtime(parse_config(copy.deepcopy(dict(data)), environment), env=environment)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop(drain_s=0.5, notice_s=0.0)
