"""proxy/http/downstream.py and upstream.py: a closed connection is freed as it closes.

Each connection and its parser hold each other (the parser calls the connection back). Left
as a cycle, every closed connection would wait for the cycle collector, whose runs grow with
the rate of new connections (the churn benchmark showed them).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.client import exchange, get
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.servers import ScriptedUpstream, read_head

# The objects of a connection, as the cycle collector would name them.
CONNECTION_OBJECTS = {
    "DownstreamProtocol",
    "RequestHead",
    "HttpRequestParser",
    "UpstreamConnection",
    "HttpResponseParser",
}


async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An origin that closes after each response: every request costs an upstream connection."""
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()


@contextmanager
def cycle_garbage() -> Iterator[list[object]]:
    """What the cycle collector finds in the block (nothing is collected while it runs)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[object] = []
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_closed_connections_leave_nothing_to_the_cycle_collector() -> None:
    upstream = await ScriptedUpstream(answer_and_close).start()
    try:
        async with running_proxy(config_dict(service([upstream.url], [upstream.url]))) as proxy:
            port = proxy.data_address[1]
            engine = proxy._engine
            assert engine is not None
            await exchange(port, get("/"))  # the listener's own first-use objects
            with cycle_garbage() as garbage:
                for n in range(20):
                    response = await exchange(port, get("/", {"X-Tenant-ID": f"t{n}"}))
                    assert response.status == 200
                async with asyncio.timeout(5):
                    await upstream.wait_closed(21)
                    while engine.connections:  # noqa: ASYNC110 - the engine has no event for it
                        await asyncio.sleep(0.01)
            left = {type(thing).__name__ for thing in garbage} & CONNECTION_OBJECTS
            assert not left, f"freed only by the cycle collector: {sorted(left)}"
    finally:
        await upstream.close()
