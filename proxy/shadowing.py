"""The shadow mirror: stable's captured answers replayed on the canary and compared.

The I/O shell around proxy/core/shadow.py. The data plane hands each captured answer to
`Shadowing.submit` (a bounded queue: never blocks, drops and counts when full). One background
task takes them in order and starts a comparison per copy while fewer than the service's
`max_concurrency` are in flight to the canary (beyond it the copy is dropped and counted). A
comparison sends the copy to a canary endpoint, reads up to `max_body` bytes, fingerprints both
answers and records the paths the canary alone changes, per route. A share of the copies
(`noise_sample`, by a hash of the request id; and every copy of a route until it has learned
its noise from 3 pairs) is also sent to stable a second time (another stable endpoint when
there are several, falling back to the one that answered) and the paths that differ between
the two stable answers are that route's noise, learned before the copy is compared. Every
comparison is handed to `evidence` (the controller's analysis feed) and counted in
`rollout_shadow_requests_total`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from functools import partial
from typing import Final

import aiohttp

from proxy.config import ServiceConfig, Upstream
from proxy.core.shadow import (
    Answer,
    RouteTally,
    bounded_route,
    fingerprint,
    generalize,
    mismatches,
    record,
    route_of,
    teach,
)
from proxy.errors import ProxyError
from proxy.http.capture import ShadowCopy, ShadowSink
from proxy.metrics import Metrics
from proxy.tasks import stop_tasks

QUEUE: Final = 1024  # captured answers waiting for the mirror
LEARN_FIRST: Final = 3  # copies of a new route always also sent to stable again
TIMEOUT_S: Final = 10.0  # a mirrored request, whole
CONNECT_S: Final = 3.0
_READ: Final = 65536
MAX_PATHS: Final = 256  # differing field paths tallied per route
MAX_NOISE: Final = 4096  # noise paths learned per route (then no more are learned)
OTHER_PATH: Final = "other"
_log = logging.getLogger(__name__)

# (service, route, the paths the canary alone changed, the request's id hash, its tier)
Compared = Callable[[str, str, tuple[str, ...], int, str], None]


class TooLarge(ProxyError):
    """An answer over `max_body`: it is not compared."""


class Shadowing(ShadowSink):
    """The mirror of one runtime: its queue, its comparisons in flight, its route tallies."""

    def __init__(self, metrics: Metrics, *, queue: int = QUEUE) -> None:
        self.metrics = metrics
        self.queue: asyncio.Queue[ShadowCopy] = asyncio.Queue(queue)
        self.evidence: Compared | None = None
        self.tallies: dict[str, dict[str, RouteTally]] = {}
        self._taught: dict[tuple[str, str], int] = {}
        self._inflight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._turn = 0
        self._session: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None

    # --- the data plane's side: never blocks ---------------------------------------------

    def submit(self, copy: ShadowCopy) -> None:
        try:
            self.queue.put_nowait(copy)
        except asyncio.QueueFull:
            self.metrics.shadow(copy.service.name, "dropped_queue")

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S, connect=CONNECT_S)
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            # Each copy carries its own client's cookies, and only those: a jar would add the
            # cookies earlier answers set (another user's session) to every later copy.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        tasks = set(self._tasks)
        if self._runner is not None:
            tasks.add(self._runner)
            self._runner = None
        await stop_tasks(tasks, 1.0)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def in_flight(self, service: str) -> int:
        return self._inflight.get(service, 0)

    # --- the mirror -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            copy = await self.queue.get()
            name = copy.service.name
            if copy.stable is None:
                self.metrics.shadow(name, "dropped_too_large")
                continue
            if self._inflight.get(name, 0) >= copy.service.rollout.shadow.max_concurrency:
                self.metrics.shadow(name, "dropped_concurrency")
                continue
            self._inflight[name] = self._inflight.get(name, 0) + 1
            task = asyncio.get_running_loop().create_task(self._compare(copy, copy.stable))
            self._tasks.add(task)
            task.add_done_callback(partial(self._done, service=name))

    def _done(self, task: asyncio.Task[None], *, service: str) -> None:
        self._tasks.discard(task)
        self._inflight[service] -= 1
        if not task.cancelled() and (error := task.exception()) is not None:
            # _compare counts the failures it expects; anything else is a bug worth seeing.
            _log.error("shadow comparison of %s failed", service, exc_info=error)
            self.metrics.shadow(service, "failed")

    def _route(self, service: str, target: str) -> str:
        routes = self.tallies.setdefault(service, {})
        return bounded_route(frozenset(routes), route_of(target.partition("?")[0]))

    async def _compare(self, copy: ShadowCopy, stable: Answer) -> None:
        service = copy.service
        name, shadow = service.name, service.rollout.shadow
        route = self._route(name, copy.target)
        learn = self._taught.get((name, route), 0) < LEARN_FIRST or _picked(
            copy.request_id, shadow.noise_sample
        )
        canary = self._fetch(copy, self._canary(service), shadow.max_body)
        self.metrics.shadow(name, "mirrored")
        try:
            if learn:
                self.metrics.shadow(name, "noise")
                second = self._stable_again(copy, shadow.max_body)
                canary_answer, stable_again = await asyncio.gather(canary, second)
            else:
                canary_answer, stable_again = await canary, None
        except TooLarge:
            self.metrics.shadow(name, "dropped_too_large")
            return
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.metrics.shadow(name, "failed")
            return
        self._tally(name, route, stable, canary_answer, stable_again, copy)

    def _tally(
        self,
        name: str,
        route: str,
        stable: Answer,
        canary: Answer,
        stable_again: Answer | None,
        copy: ShadowCopy,
    ) -> None:
        routes = self.tallies.setdefault(name, {})
        tally = routes.get(route, RouteTally())
        first = fingerprint(stable)
        if stable_again is not None:
            if len(tally.noise) < MAX_NOISE:
                tally = teach(tally, first, fingerprint(stable_again))
            self._taught[(name, route)] = self._taught.get((name, route), 0) + 1
        differing = mismatches(tally.noise, first, fingerprint(canary))
        routes[route] = record(tally, _bounded(tally, differing))
        self.metrics.shadow(name, "compared")
        if differing:
            self.metrics.shadow(name, "mismatched")
        if self.evidence is not None:
            self.evidence(name, route, differing, copy.id_hash, copy.tier)

    def _canary(self, service: ServiceConfig) -> Upstream:
        endpoints = service.upstreams.canary
        self._turn += 1
        return endpoints[self._turn % len(endpoints)]

    async def _stable_again(self, copy: ShadowCopy, max_body: int) -> Answer:
        """Stable's second answer: from another stable endpoint when there is one, else (or
        when that one fails) from the endpoint that gave the first."""
        stable = copy.service.upstreams.stable
        other = _other(copy.service, copy.served_by)
        served = next((u for u in stable if _hostport(u) == copy.served_by), None)
        if served is None or served == other:
            return await self._fetch(copy, other, max_body)
        try:
            return await self._fetch(copy, other, max_body)
        except (aiohttp.ClientError, TimeoutError):
            return await self._fetch(copy, served, max_body)

    async def _fetch(self, copy: ShadowCopy, upstream: Upstream, max_body: int) -> Answer:
        session = self._session
        if session is None:
            raise aiohttp.ClientError("the mirror is closed")
        url = f"{upstream}{copy.target}"
        wanted = copy.service.rollout.shadow.headers
        async with session.request(
            copy.method, url, headers=list(copy.headers), allow_redirects=False
        ) as response:
            chunks: list[bytes] = []
            size = 0
            while chunk := await response.content.read(_READ):
                size += len(chunk)
                if size > max_body:
                    raise TooLarge(url)
                chunks.append(chunk)
            headers = tuple(
                sorted((n, response.headers[n]) for n in wanted if n in response.headers)
            )
            is_json = "json" in response.headers.get("content-type", "").lower()
            return Answer(response.status, headers, b"".join(chunks), is_json)


def _bounded(tally: RouteTally, differing: tuple[str, ...]) -> tuple[str, ...]:
    """The paths a route's tally counts: past MAX_PATHS distinct ones (a body keyed by ids),
    a new path is counted as OTHER_PATH, so the tally stays bounded and the mismatch counted."""
    if len(tally.paths) < MAX_PATHS:
        return differing
    known = {path for path, _ in tally.paths}
    return tuple(p if generalize(p) in known else OTHER_PATH for p in differing)


def _picked(request_id: str, percent: float) -> bool:
    """Is this copy in the `percent` also sent to stable again (by its id, not its routing)?"""
    digest = hashlib.blake2b(request_id.encode("latin-1"), digest_size=8, person=b"noise")
    return int.from_bytes(digest.digest(), "big") % 10_000 < percent * 100.0


def _hostport(upstream: Upstream) -> str:
    return f"{upstream.host}:{upstream.port}"


def _other(service: ServiceConfig, served_by: str) -> Upstream:
    """A stable endpoint other than the one that answered, when there is one."""
    endpoints = service.upstreams.stable
    for upstream in endpoints:
        if _hostport(upstream) != served_by:
            return upstream
    return endpoints[0]
