"""Releases of a service declared with a blue/green pair of pools: a release without upstreams
of its own runs on the idle pool, completion flips which pool is stable, and the store's
record of that survives a restart. Real router and state file; time injected."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import Config, parse_config
from proxy.core.machine import Event
from proxy.errors import ConfigError
from proxy.releases import drift_of, start_request
from tests.support.proxy import config_dict, service
from tests.test_controller import FakeClock, Harness, started
from tests.test_releases import _pools

BLUE, GREEN = "http://127.0.0.1:21", "http://127.0.0.1:22"


def _data(tmp_path: Path) -> dict[str, object]:
    svc = service([BLUE], [], name="shop", steps=[{"percent": 50}])
    svc["upstreams"] = {"blue": [BLUE], "green": [GREEN], "live": "blue"}
    data = config_dict(svc)
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    return data


def _config(tmp_path: Path) -> Config:
    return parse_config(_data(tmp_path), {})


async def _release(h: Harness, version: str) -> None:
    svc = h.controller.file_service("shop")
    assert svc is not None
    await h.controller.start_release("shop", start_request({"version": version}, svc), "ci")


def test_a_pair_serves_the_live_pool_as_stable_and_the_other_as_canary(tmp_path: Path) -> None:
    upstreams = _config(tmp_path).services[0].upstreams
    assert [str(u) for u in upstreams.stable] == [BLUE]
    assert [str(u) for u in upstreams.canary] == [GREEN]


@pytest.mark.parametrize(
    ("upstreams", "key"),
    [
        ({"blue": [BLUE], "green": [GREEN]}, "upstreams.live"),
        ({"blue": [BLUE], "live": "blue"}, "upstreams.green"),
        ({"blue": [BLUE], "green": [GREEN], "live": "red"}, "upstreams.live"),
        ({"stable": [BLUE], "blue": [BLUE], "green": [GREEN], "live": "blue"}, "upstreams.stable"),
    ],
)
def test_a_bad_pair_names_the_key(tmp_path: Path, upstreams: dict[str, object], key: str) -> None:
    data = _data(tmp_path)
    data["services"][0]["upstreams"] = upstreams  # type: ignore[index]
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {})
    assert caught.value.path.endswith(key)


def test_a_release_of_a_pair_takes_no_upstreams_of_its_own(tmp_path: Path) -> None:
    svc = _config(tmp_path).services[0]
    with pytest.raises(ConfigError) as caught:
        start_request({"version": "1", "canary": [GREEN]}, svc)
    assert caught.value.path == "canary"


async def test_completion_flips_the_pair_and_a_rollback_does_not(tmp_path: Path) -> None:
    clock = FakeClock()
    h = await started(_config(tmp_path), clock)
    try:
        await _release(h, "1.0")
        book = h.controller.books["shop"]
        assert book.releases[0].color == "green"
        assert _pools(h) == (BLUE, GREEN)
        await h.controller.apply("shop", Event.PROMOTE, "admin:test")
        book = h.controller.books["shop"]
        assert (book.live, book.releases[0].released) == ("green", (BLUE,))
        assert "green pool is stable" in (drift_of(h.controller.file_service("shop"), book) or "")  # type: ignore[arg-type]
        await _release(h, "2.0")
        assert h.controller.books["shop"].releases[0].color == "blue"
        assert _pools(h) == (GREEN, BLUE)
        await h.controller.apply("shop", Event.DEGRADED, "controller", reason="errors up")
        assert h.controller.books["shop"].live == "green"
    finally:
        await h.controller.close()
    # A restart keeps the store's record of which pool is stable.
    h2 = await started(_config(tmp_path), clock)
    try:
        assert h2.controller.books["shop"].live == "green"
        await _release(h2, "3.0")
        assert _pools(h2) == (GREEN, BLUE)
    finally:
        await h2.controller.close()
