"""Releases through the controller, with a real router and a real state file; time injected."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import Config, parse_config
from proxy.controller import ReleaseConflict
from proxy.core.machine import Event, Status
from proxy.core.routing import Variant
from proxy.releases import StartRequest, start_request
from proxy.store.file import FileStore
from tests.support.proxy import config_dict, service
from tests.test_controller import FakeClock, Harness, started

STABLE, V1, V2 = "http://127.0.0.1:9", "http://127.0.0.1:11", "http://127.0.0.1:12"


def _config(tmp_path: Path, keep: int = 50) -> Config:
    svc = service([STABLE], ["http://127.0.0.1:10"], name="shop", steps=[{"percent": 50}])
    svc["rollout"]["analysis"] = {"min_requests": 50, "guardrail": {"min_requests": 10}}
    data = config_dict(svc, releases={"keep": keep})
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    return parse_config(data, {})


async def _harness(tmp_path: Path, clock: FakeClock, keep: int = 50) -> Harness:
    return await started(_config(tmp_path, keep), clock)


def _start(h: Harness, version: str, canary: str, **extra: object) -> StartRequest:
    service = h.controller.file_service("shop")
    assert service is not None
    body = {"version": version, "canary": [canary], **extra}
    return start_request(body, service)


def _pools(h: Harness) -> tuple[str, str]:
    pools = h.router.pools["shop"]
    stable = pools[Variant.STABLE].endpoints[0]
    canary = pools[Variant.CANARY].endpoints[0]
    return str(stable), str(canary)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_completion_promotes_and_the_next_release_starts_from_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    h = await _harness(tmp_path, clock)
    try:
        release, fresh = await h.controller.start_release("shop", _start(h, "1.0", V1), "ci")
        assert fresh
        assert release.status == "progressing"
        assert release.salt != "test-salt"
        assert _pools(h) == (STABLE, V1)
        assert h.plan().salt == release.salt
        again, fresh = await h.controller.start_release("shop", _start(h, "1.0", V1), "ci")
        assert (again.id, fresh) == (release.id, False)
        with pytest.raises(ReleaseConflict):
            await h.controller.start_release("shop", _start(h, "2.0", V2), "ci")
        await h.controller.apply("shop", Event.PROMOTE, "admin:test")
        book = h.controller.books["shop"]
        done = book.releases[0]
        assert (done.status, book.stable, done.released) == ("completed", (V1,), (STABLE,))
        assert book.active is None
        assert [v["action"] for v in done.verdicts] == ["start", "promote"]
        assert h.controller.rollouts["shop"].idle
        assert not h.plan().active
        assert _pools(h)[0] == V1
        second, _ = await h.controller.start_release("shop", _start(h, "2.0", V2), "ci")
        assert second.stable_before == (V1,)
        assert _pools(h) == (V1, V2)
        assert h.plan().salt != release.salt
    finally:
        await h.controller.close()
    # A restart serves what the store says: v2 in progress from the stable v1.
    h2 = await _harness(tmp_path, clock)
    try:
        assert _pools(h2) == (V1, V2)
        assert h2.controller.rollouts["shop"].state.status is Status.PROGRESSING
        assert h2.controller.books["shop"].current() is not None
    finally:
        await h2.controller.close()


async def test_a_rollback_leaves_stable_and_supersede_is_journaled(
    tmp_path: Path, clock: FakeClock
) -> None:
    h = await _harness(tmp_path, clock, keep=2)
    try:
        await h.controller.start_release("shop", _start(h, "1.0", V1), "ci")
        await h.controller.apply("shop", Event.DEGRADED, "controller", reason="errors up")
        book = h.controller.books["shop"]
        assert (book.releases[0].status, book.stable) == ("rolled_back", ())
        assert "errors up" in book.releases[0].outcome
        assert _pools(h)[0] == STABLE
        await h.controller.start_release("shop", _start(h, "1.1", V1), "ci")
        await h.controller.start_release(
            "shop",
            _start(h, "1.2", V2, supersede=True),
            "ci",
        )
        book = h.controller.books["shop"]
        assert [r.version for r in book.releases] == ["1.2", "1.1"]  # bounded: keep 2
        assert book.releases[1].status == "superseded"
        reasons = [e.reason for e in FileStore(tmp_path / "state.json").entries("shop")]
        assert "superseded by release 1.2" in reasons
        assert _pools(h) == (STABLE, V2)
    finally:
        await h.controller.close()


async def test_a_crash_between_the_rollout_and_the_book_is_finished_on_start(
    tmp_path: Path, clock: FakeClock
) -> None:
    h = await _harness(tmp_path, clock)
    try:
        await h.controller.start_release("shop", _start(h, "1.0", V1), "ci")
        # The rollout completes, but the release book is not written (as a kill -9 would).
        await h.controller._transition("shop", Event.PROMOTE, "admin:test")
    finally:
        await h.controller.close()
    h2 = await _harness(tmp_path, clock)
    try:
        await h2.controller.follow_releases()
        book = h2.controller.books["shop"]
        assert (book.releases[0].status, book.stable) == ("completed", (V1,))
        assert _pools(h2)[0] == V1
    finally:
        await h2.controller.close()
