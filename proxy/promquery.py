"""Reads the prometheus checks' counters: instant queries against each check's server.

Once per analysis interval the controller's loop calls `PromReader.read` before it takes its
verdicts: for every rollout whose step is judged (progressing, not idle, not the baseline
period nor a shadow step), four instant queries per check (`/api/v1/query`: bad and total of
stable and canary, promql.render), all at once, each bounded by the check's `timeout`. So a
tick is delayed by at most the largest timeout; the data plane never waits for any of it (it
runs on the same event loop, only awaiting). Answers go to the step's analysis
(countcheck.PromChecks), which judges them; an error, an empty answer or a timeout is recorded
as the check's missing data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiohttp
import orjson

from proxy.config import UpstreamsConfig
from proxy.core.countcheck import PromChecks, Read
from proxy.core.machine import Status
from proxy.core.promql import KINDS, VARIANTS, PromCheck, parse_result, render
from proxy.errors import NoPromData
from proxy.rollout import Rollout

MAX_ANSWER_BYTES = 1 << 20  # a larger answer is no data (too many series for a ratio)


def instances(pools: UpstreamsConfig, variant: str) -> list[str]:
    """The host:port of each upstream of the variant's pool, as Prometheus labels instances."""
    pool = pools.canary if variant == "canary" else pools.stable
    return [f"[{u.host}]:{u.port}" if ":" in u.host else f"{u.host}:{u.port}" for u in pool]


def judged(rollout: Rollout) -> bool:
    """Is this rollout's step judged by its checks now (so its counters are worth reading)?"""
    return (
        rollout.state.status is Status.PROGRESSING
        and not rollout.idle
        and not rollout.in_baseline
        and rollout.analysis.shadow.tolerance == 0.0
        and bool(rollout.analysis.prometheus.checks)
    )


class PromReader:
    """The HTTP side of the prometheus checks (one client session, opened when first used)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def read(self, rollouts: Iterable[Rollout]) -> None:
        """One look for every check of every judged rollout (concurrently, time-bounded)."""
        jobs = [
            self._read_check(rollout.config.upstreams, check, rollout.analysis.prometheus)
            for rollout in rollouts
            if judged(rollout)
            for check in rollout.analysis.config.prometheus
        ]
        if jobs:
            await asyncio.gather(*jobs)

    async def _read_check(self, pools: UpstreamsConfig, check: PromCheck, into: PromChecks) -> None:
        keys = [(variant, kind) for variant in VARIANTS for kind in KINDS]
        reads = await asyncio.gather(*(self._read(pools, check, v, k) for v, k in keys))
        into.record(check.name, dict(zip(keys, reads, strict=True)))

    async def _read(
        self, pools: UpstreamsConfig, check: PromCheck, variant: str, kind: str
    ) -> Read:
        hosts = instances(pools, variant)
        if check.by_instances and not hosts:
            return f"the {variant} pool has no upstreams"
        query = render(check.bad if kind == "bad" else check.total, check.label(variant), hosts)
        return await self.query(check, query)

    async def query(self, check: PromCheck, query: str) -> Read:
        """One instant query against the check's server, within its timeout: the value of
        each series, or why there is none."""
        try:
            async with asyncio.timeout(check.timeout_s):
                return parse_result(await self._get(check.url, query))
        except TimeoutError:
            return f"timed out after {check.timeout_s:g}s"
        except NoPromData as exc:
            return str(exc)
        except (aiohttp.ClientError, orjson.JSONDecodeError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]

    async def _get(self, url: str, query: str) -> object:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.get(f"{url}/api/v1/query", params={"query": query}) as answer:
            body = bytearray()
            async for chunk in answer.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise NoPromData(f"the answer is larger than {MAX_ANSWER_BYTES:,} bytes")
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                raise NoPromData(f"the answer (HTTP {answer.status}) is not JSON") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
