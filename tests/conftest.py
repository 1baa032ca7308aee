"""Fixtures shared across the suite: real servers the tests start on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.redis import RedisServer
from tests.support.servers import NameUpstream


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A real redis-server of this test's own (resumed and killed at the end)."""
    server = await RedisServer(tmp_path).start()
    yield server
    server.resume()
    await server.kill()


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[NameUpstream, NameUpstream]]:
    """Two name-echoing upstreams: (stable, canary)."""
    stable = await NameUpstream("stable").start()
    canary = await NameUpstream("canary").start()
    yield stable, canary
    await stable.close()
    await canary.close()
