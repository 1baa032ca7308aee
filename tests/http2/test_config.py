"""The `http2:` block: defaults, bounds, and a bad value refused naming its key (also on a
reload, which then changes nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import ConfigError, Http2Config, load_config, parse_config
from proxy.core.allowance import full, spend
from proxy.runtime import Runtime
from tests.support.proxy import config_dict, service


def _data(**http2: Any) -> dict[str, Any]:
    data = config_dict(service(["http://127.0.0.1:9"], [], steps=[{"percent": 0}]))
    if http2:
        data["http2"] = http2
    return data


def test_http2_is_off_by_default() -> None:
    config = parse_config(_data(), {})
    assert config.http2 == Http2Config()
    assert not config.http2.enabled
    assert not config.http2.h2c


def test_http2_limits_are_read() -> None:
    config = parse_config(
        _data(enabled=True, h2c=True, max_concurrent_streams=7, max_header_list_size=4096), {}
    )
    assert config.http2.enabled
    assert config.http2.h2c
    assert config.http2.max_concurrent_streams == 7
    assert config.http2.max_header_list_size == 4096
    assert config.http2.penalty_s == 10.0  # the default


def test_the_penalty_is_a_duration_and_zero_turns_it_off() -> None:
    assert parse_config(_data(enabled=True, penalty="250ms"), {}).http2.penalty_s == 0.25
    assert parse_config(_data(enabled=True, penalty=0), {}).http2.penalty_s == 0.0


@pytest.mark.parametrize(
    ("http2", "path", "reason"),
    [
        ({"enabled": "yes"}, "http2.enabled", "true or false"),
        ({"h2c": True}, "http2.h2c", "needs http2.enabled"),
        ({"enabled": True, "max_concurrent_streams": 0}, "http2.max_concurrent_streams", "1 to"),
        ({"enabled": True, "max_frame_size": 1000}, "http2.max_frame_size", "integer from 16384"),
        ({"enabled": True, "max_header_list_size": 10}, "http2.max_header_list_size", "from 1024"),
        ({"enabled": True, "streams": 5}, "http2.streams", "unknown key"),
        ({"enabled": True, "penalty": "soon"}, "http2.penalty", "duration"),
        ({"enabled": True, "penalty": "2h"}, "http2.penalty", "at most 1h"),
    ],
)
def test_a_bad_http2_value_names_its_key(http2: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_data(**http2), {})
    assert err.value.path == path
    assert reason in err.value.reason


async def test_a_bad_http2_value_on_reload_names_its_key_and_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "proxy.yaml"
    data = _data(enabled=True, h2c=True)
    path.write_text(yaml.safe_dump(data))
    runtime = Runtime(load_config(path, {}), env={}, config_path=str(path))
    await runtime.start()
    try:
        path.write_text(yaml.safe_dump(dict(data, http2={"enabled": True, "max_resets_per_s": 0})))
        result = await runtime.reloader.reload("api")
        assert result.result == "invalid"
        assert result.key == "http2.max_resets_per_s"
        assert runtime.config.http2 == Http2Config(enabled=True, h2c=True)
    finally:
        await runtime.stop(drain_s=0.5, notice_s=0.0)


@given(
    rate=st.integers(1, 50),
    gaps=st.lists(st.floats(0.0, 0.2, allow_nan=False), min_size=1, max_size=300),
)
def test_an_allowance_pays_for_at_most_its_rate_per_second_plus_the_burst(
    rate: int, gaps: list[float]
) -> None:
    now = 0.0
    allowance = full(rate, now)
    paid = 0
    for gap in gaps:
        now += gap
        paid += spend(allowance, now)
    assert paid <= rate + rate * now + 1e-6
    assert paid >= min(len(gaps), rate)  # the burst is always there
