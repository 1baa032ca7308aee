"""proxy/reload.py on an in-process Runtime started from a file, against a real upstream:
each result, what it changes (nothing, unless applied), its line and its metrics."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import generate_latest

from proxy.config import load_config
from proxy.runtime import Runtime
from tests.support.client import RawConnection
from tests.support.proxy import config_dict, service
from tests.support.servers import NameUpstream


def _data(tmp_path: Path, stable: str, canary: str) -> dict[str, Any]:
    svc = service([stable], [canary], name="shop", steps=[{"percent": 0}, {"percent": 100}])
    data = config_dict(svc)
    data["state"] = {"backend": "file", "path": str(tmp_path / "state.json")}
    return data


class Running:
    def __init__(self, runtime: Runtime, path: Path, data: dict[str, Any]) -> None:
        self.runtime = runtime
        self.path = path
        self.data = data

    def write(self, data: dict[str, Any] | str) -> None:
        self.path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))

    def changed(self, **top: Any) -> dict[str, Any]:
        data = copy.deepcopy(self.data)
        data.update(top)
        return data

    async def get(self) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.runtime.data_url + "/x", headers={"X-Tenant-ID": "t"}) as reply,
        ):
            return await reply.text()

    def metrics(self) -> str:
        return generate_latest(self.runtime.registry).decode()


@pytest.fixture
async def running(
    tmp_path: Path, upstreams: tuple[NameUpstream, NameUpstream]
) -> AsyncIterator[Running]:
    stable, canary = upstreams
    data = _data(tmp_path, stable.url, canary.url)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    runtime = Runtime(load_config(path, {}), env={}, config_path=str(path))
    await runtime.start()
    try:
        yield Running(runtime, path, data)
    finally:
        await runtime.stop(drain_s=0.5, notice_s=0.0)


async def test_the_same_file_again_is_unchanged(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await running.runtime.reloader.reload("api")
    assert (result.result, result.changes, result.ok) == ("unchanged", (), True)
    assert "rollout-proxy: reload (api): unchanged: nothing changed" in capsys.readouterr().err


async def test_an_invalid_file_names_the_key_and_changes_nothing(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    config = running.runtime.config
    bad = running.changed()
    bad["services"][0]["rollout"]["steps"] = [{"percent": 0}, {"percent": "lots"}]
    running.write(bad)
    result = await running.runtime.reloader.reload("SIGHUP")
    assert result.result == "invalid"
    assert result.key == "services[0].rollout.steps[1].percent"
    assert result.error == f"{result.key}: {result.reason}"
    assert running.runtime.config is config
    line = capsys.readouterr().err
    assert f"reload (SIGHUP): invalid: {result.key}" in line
    assert "still serving the config loaded before" in line
    text = running.metrics()
    assert 'rollout_config_reload_total{result="invalid"} 1.0' in text
    assert "rollout_config_last_reload_successful 0.0" in text
    assert (await running.get()).startswith("stable")
    assert running.runtime.reloader.status()["last_reload"]["key"] == result.key


async def test_broken_yaml_names_the_line(running: Running) -> None:
    running.write("listen: [\n")
    result = await running.runtime.reloader.reload("api")
    assert result.result == "invalid"
    assert result.key == str(running.path)
    assert result.reason is not None
    assert "line 2" in result.reason


async def test_a_new_listen_address_is_refused(running: Running) -> None:
    running.write(running.changed(listen="127.0.0.1:1"))
    result = await running.runtime.reloader.reload("api")
    assert result.result == "refused"
    assert result.error is not None
    assert result.error.startswith("listen: changed, and needs a restart")
    assert (await running.get()).startswith("stable")


async def test_a_new_step_applies_at_once(running: Running) -> None:
    moved = running.changed()
    moved["services"][0]["rollout"]["steps"] = [{"percent": 100}]
    running.write(moved)
    loaded_before = running.runtime.reloader.counts.last_success
    result = await running.runtime.reloader.reload("api")
    assert result.result == "applied"
    assert result.changes == (
        "service shop: rollout",
        "service shop: rollout spec changed: at version 2",
    )
    assert (await running.get()).startswith("canary")
    text = running.metrics()
    assert 'rollout_config_reload_total{result="applied"} 1.0' in text
    assert "rollout_config_last_reload_successful 1.0" in text
    assert running.runtime.reloader.counts.last_success >= loaded_before


async def test_a_store_that_refuses_the_new_rollout_changes_nothing(
    running: Running, tmp_path: Path
) -> None:
    (tmp_path / "state.json.tmp").mkdir()  # the store's next write fails
    moved = running.changed()
    moved["services"][0]["rollout"]["steps"] = [{"percent": 100}]
    running.write(moved)
    config = running.runtime.config
    result = await running.runtime.reloader.reload("api")
    assert result.result == "failed"
    assert result.error is not None
    assert "cannot write" in result.error
    assert running.runtime.config is config
    assert (await running.get()).startswith("stable")


async def test_a_proxy_not_started_from_a_file_has_nothing_to_reload(
    tmp_path: Path, upstreams: tuple[NameUpstream, NameUpstream]
) -> None:
    stable, canary = upstreams
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(_data(tmp_path, stable.url, canary.url)))
    runtime = Runtime(load_config(path, {}), env={})
    result = await runtime.reloader.reload("api")
    assert result.result == "refused"
    assert result.error == "this proxy was not started from a config file: nothing to reload"


async def test_an_open_connection_takes_new_limits_at_its_next_request(running: Running) -> None:
    port = int(running.runtime.data_url.rsplit(":", 1)[1])
    conn = await RawConnection.open(port)
    fields = "".join(f"X-Extra-{i}: {i}\r\n" for i in range(8))
    request = f"GET /x HTTP/1.1\r\nHost: app\r\nX-Tenant-ID: t\r\n{fields}\r\n".encode()
    await conn.send(request)
    assert (await conn.response()).status == 200
    running.write(running.changed(limits={"max_headers": 5}))
    assert (await running.runtime.reloader.reload("api")).result == "applied"
    assert conn.reusable
    await conn.send(request)
    assert (await conn.response()).status == 431  # the same connection, the new limit
    await conn.close()
