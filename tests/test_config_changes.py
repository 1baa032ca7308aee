"""proxy/config/changes.py: what a reload may change, and the changes in words."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxy.config import Config, parse_config
from proxy.config.changes import describe, restart_only
from tests.support.proxy import config_dict, service


def _data() -> dict[str, Any]:
    data = config_dict(service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], name="shop"))
    data["state"] = {"backend": "file", "path": "/tmp/rollout-changes/state.json"}
    return data


def _config(data: dict[str, Any]) -> Config:
    return parse_config(copy.deepcopy(data), {})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("listen", "127.0.0.1:8081"),
        ("admin", {"listen": "127.0.0.1:9091"}),
        ("state", {"backend": "file", "path": "/tmp/elsewhere.json"}),
        ("access_log", {"enabled": True}),
    ],
)
def test_each_restart_only_key_is_named_with_what_to_do(key: str, value: object) -> None:
    data = _data()
    changed = {**data, key: value}
    (message,) = restart_only(_config(data), _config(changed))
    assert message.startswith(f"{key}: changed, and needs a restart (")
    assert "restart the proxy to apply it" in message


def test_what_a_reload_may_change_is_not_refused() -> None:
    data = _data()
    changed = copy.deepcopy(data)
    changed["limits"] = {"idle_timeout": "5s"}
    changed["trusted_peers"] = []
    changed["services"][0]["upstreams"]["stable"] = ["http://127.0.0.1:11"]
    assert restart_only(_config(data), _config(changed)) == []
    assert describe(_config(data), _config(changed)) == [
        "service shop: stable upstreams",
        "trusted_peers: changed",
        "limits: changed",
    ]


def test_nothing_changed_says_nothing() -> None:
    assert describe(_config(_data()), _config(_data())) == []


def test_service_changes_are_named_by_part() -> None:
    data = _data()
    changed = copy.deepcopy(data)
    svc = changed["services"][0]
    svc["rollout"]["salt"] = "new"
    svc["rollout"]["analysis"] = {"min_requests": 77}
    svc["upstreams"]["canary"] = ["http://127.0.0.1:12"]
    svc["tiers"] = {"tenants": {"acme": "gold"}, "default": "free"}
    extra = service(["http://127.0.0.1:13"], [], name="cart", match={"path_prefix": "/c"})
    extra["rollout"]["steps"] = [{"percent": 0}]
    changed["services"].append(extra)
    assert describe(_config(data), _config(changed)) == [
        "service cart: added",
        "service shop: tiers, canary upstreams, analysis, rollout",
    ]
    assert describe(_config(changed), _config(data))[0] == "service cart: removed"


def test_a_new_matching_order_is_a_change() -> None:
    data = _data()
    data["services"][0]["match"] = {"path_prefix": "/a"}
    other = service(["http://127.0.0.1:13"], [], name="cart", match={"path_prefix": "/c"})
    other["rollout"]["steps"] = [{"percent": 0}]
    data["services"].append(other)
    swapped = {**data, "services": list(reversed(data["services"]))}
    assert describe(_config(data), _config(swapped)) == ["services: reordered (matching order)"]
