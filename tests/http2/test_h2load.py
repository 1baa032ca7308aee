"""h2load (nghttp2's HTTP/2 load tool) through the proxy: many streams on a few connections,
over h2c to HTTP/1.1 origins and over h2c end to end to an HTTP/2 origin, every response a 200
and counted in the metrics. Bounded: 2,000 requests."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest
from prometheus_client import generate_latest

from tests.http2.conftest import Origin
from tests.support.h2server import H2Origin
from tests.support.proxy import config_dict, running_proxy, service

H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"  # .ci/run installs nghttp2-client


async def _h2load(port: int) -> str:
    proc = await asyncio.create_subprocess_exec(
        H2LOAD, "-n", "2000", "-c", "4", "-m", "50", f"http://127.0.0.1:{port}/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode()


def _succeeded(report: str) -> tuple[int, int]:
    found = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", report)
    codes = re.search(r"status codes: (\d+) 2xx", report)
    assert found is not None, report
    assert codes is not None, report
    return int(found.group(1)), int(codes.group(1))


@pytest.mark.parametrize("upstream", ["http1", "h2c"])
async def test_h2load_streams_through_the_proxy(
    stable: Origin, canary: Origin, upstream: str
) -> None:
    origins = [await H2Origin().start(), await H2Origin().start()] if upstream == "h2c" else []
    urls = [o.url for o in origins] or [stable.url, canary.url]
    svc = service([urls[0]], [urls[1]], name="shop", steps=[{"percent": 50}])
    if upstream == "h2c":
        svc["upstreams"]["protocol"] = "h2c"
    data = config_dict(svc, http2={"enabled": True, "h2c": True})
    try:
        async with running_proxy(data) as runtime:
            report = await _h2load(runtime.data_address[1])
            text = generate_latest(runtime.registry).decode()
    finally:
        for origin in origins:
            await origin.close()
    assert _succeeded(report) == (2000, 2000), report
    pattern = r'rollout_requests_total\{service="shop",status_class="2xx",[^}]*\} (\S+)'
    counted = re.findall(pattern, text)
    assert sum(float(v) for v in counted) == 2000
