"""kill -9 of the proxy at random moments while releases start, advance, complete, roll back
and supersede one another, from CI-like calls and from the controller itself.

Load flows all along, so the controller advances (and completes) releases on its own between
the calls. In every round a call is sent at a random moment and the proxy is killed at another,
often while that call is being written. After each kill the state file must read (never torn),
and the release books must hold together: no release lost, at most one in progress, its rollout
of the same release, and the stable pool exactly what the last ended release made it. The
restarted proxy must then serve that stable pool, finish a release whose rollout ended just
before the kill, and go on. Rounds: 12 (ROLLOUT_SOAK=1: 100).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp

from proxy.store.file import FileStore
from proxy.store.records import ReleaseBook
from tests.faults.harness import load, origin, report, trials
from tests.support.client import bodies_for, get
from tests.support.process import ProxyProcess
from tests.test_releases_process import _config

TOKEN = "kill9-releases-token"
STEPS = [{"percent": 30, "observe": "150ms"}, {"percent": 100, "observe": "150ms"}]
OVER = ("completed", "rolled_back", "aborted", "superseded")


async def _call(
    session: aiohttp.ClientSession, proxy: ProxyProcess, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    url = f"{proxy.admin_url}/api/v1/services/shop{path}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with session.request(method, url, json=body, headers=headers) as reply:
        return reply.status, await reply.json()


def _check_book(book: ReleaseBook | None, before: ReleaseBook | None, file_stable: str) -> None:
    """The invariants of a release book left by a kill."""
    if book is None:
        assert before is None, "the release book was lost"
        return
    ids = [r.id for r in book.releases]
    assert len(ids) == len(set(ids)), ids
    if before is not None:
        assert book.version >= before.version
        assert {r.id for r in before.releases} <= set(ids), "a release was lost"
    if book.active is not None:
        current = book.current()
        assert current is not None, "the release in progress is not in the book"
        assert current.status not in OVER, current
    for release in book.releases:
        if release.id != book.active:
            assert release.status in OVER, release
    # The stable pool is what the last ended release made it: its own hosts when it completed,
    # else the pool it started from.
    ended = [r for r in book.releases if r.id != book.active]
    stable = book.stable or (file_stable,)
    if ended:
        last = ended[0]  # newest first
        want = last.canary if last.status == "completed" else last.stable_before
        assert stable == tuple(want), (stable, last)
    else:
        assert stable == (file_stable,)


async def _served_stable(
    session: aiohttp.ClientSession, proxy: ProxyProcess, names: dict[str, str]
) -> tuple[str, ...]:
    """The stable pool the proxy says it serves, checked against the traffic when no
    release runs (then every user is on stable)."""
    status, shown = await _call(session, proxy, "GET", "/releases")
    assert status == 200, shown
    stable = tuple(shown["stable"])
    if shown["release"] is None:
        port = int(proxy.data_url.rsplit(":", 1)[1])
        bodies = await bodies_for(port, [get("/", {"X-Tenant-ID": f"u{i}"}) for i in range(40)])
        assert {b.split()[0].decode() for b in bodies} == {names[stable[0]]}
    return stable


async def _served_as_stored(
    session: aiohttp.ClientSession, proxy: ProxyProcess, store: FileStore,
    names: dict[str, str], file_stable: str,
) -> ReleaseBook | None:  # fmt: skip
    """The book, once the stable pool the proxy serves is the one the state file holds. Load
    flows, so the controller may end a release between the two reads: they are read again
    until they agree, for at most 3 s."""
    deadline = time.monotonic() + 3.0
    while True:
        stable = await _served_stable(session, proxy, names)
        book = store.read_books().get("shop")
        stored = (book.stable if book else ()) or (file_stable,)
        if stable == stored or time.monotonic() > deadline:
            assert stable == stored, "the proxy serves another stable pool than it stored"
            return book
        await asyncio.sleep(0.05)


async def _settled(
    session: aiohttp.ClientSession, proxy: ProxyProcess, store: FileStore
) -> ReleaseBook | None:
    """The book once a release whose rollout ended before the kill has been ended too."""
    deadline = time.monotonic() + 3.0
    while True:
        book = store.read_books().get("shop")
        _, status = await _call(session, proxy, "GET", "")
        over = status.get("status") in ("completed", "rolled_back")
        if book is None or book.active is None or not over or time.monotonic() > deadline:
            assert not (book and book.active and over), "a finished rollout's release stays open"
            return book
        await asyncio.sleep(0.05)


async def _act(
    session: aiohttp.ClientSession, proxy: ProxyProcess, rng: random.Random, version: str,
    book: ReleaseBook | None, pools: list[str],
) -> str:  # fmt: skip
    """One random call of CI or of a person: start the next release (superseding one in
    progress at times), promote, or abort. Returns what it sent."""
    stable = (book.stable if book and book.stable else (pools[0],))[0]
    running = book is not None and book.active is not None
    choice = rng.choice(["start", "promote", "abort", "supersede"] if running else ["start"])
    if choice in ("start", "supersede"):
        body = {"version": version, "canary": [p for p in pools if p != stable][:1],
                "steps": STEPS, "supersede": choice == "supersede"}  # fmt: skip
        await _call(session, proxy, "POST", "/releases", body)
    else:
        await _call(session, proxy, "POST", f"/{choice}", {})
    return choice


async def test_kill_9_at_random_moments_keeps_releases_and_the_stable_pool(
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    first, second = await origin("blue"), await origin("green")
    names = {first.url: "blue", second.url: "green"}
    pools = [first.url, second.url]
    data = _config(tmp_path, first.url)
    env = {"ADMIN_TOKEN": TOKEN}
    store = FileStore(tmp_path / "state.json")
    rounds = trials(12, 100)
    traffic = None
    before: ReleaseBook | None = None
    kills_in_a_call = 0
    sent: list[str] = []
    async with aiohttp.ClientSession() as session:
        try:
            for n in range(rounds):
                proxy = await ProxyProcess(data, tmp_path, env).start()
                try:
                    if traffic is None:
                        traffic = await load(
                            proxy.data_url, tmp_path / "load.json", "--concurrency", "4",
                            "--duration", "600", "--ids", "1000",
                        )  # fmt: skip
                        await traffic.started()
                    book = await _settled(session, proxy, store)
                    _check_book(book, before, first.url)
                    book = await _served_as_stored(session, proxy, store, names, first.url)
                    call = asyncio.ensure_future(_act(session, proxy, rng, f"v{n}", book, pools))
                    await asyncio.sleep(rng.choice([0.0, 0.005, 0.01, 0.2, 0.5]))
                    kills_in_a_call += not call.done()
                    if call.done():
                        sent.append(call.result())
                        await asyncio.sleep(rng.uniform(0.0, 0.6))  # the controller moves it
                finally:
                    await proxy.kill()
                store.read()  # raises if torn or corrupt
                before = store.read_books().get("shop")
                _check_book(before, None, first.url)
        finally:
            if traffic is not None:
                await traffic.kill()
            await first.kill()
            await second.kill()
    final = before.releases if before else ()
    outcomes = sorted({r.status for r in final})
    report(
        "kill -9 during releases",
        rounds=rounds,
        kills_during_a_call=kills_in_a_call,
        calls=sorted(sent),
        releases=len(final),
        outcomes=outcomes,
    )
    assert len(final) >= rounds // 3, "few releases were started: the drill tested little"
    assert "completed" in outcomes, "no release completed: promotion went untested"
