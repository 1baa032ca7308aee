"""The `notifications:` section: every mistake names its key; the URL comes from the
environment; a reload that changes only the receivers is a change."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, parse_config
from proxy.config.changes import describe, restart_only
from proxy.core.notices import EVENTS
from tests.support.proxy import config_dict, service

ENV = {"HOOK": "https://hooks.example/T000/B000/XXX", "PLAIN": "http://127.0.0.1:8000/in"}


def _data(*receivers: dict[str, Any]) -> dict[str, Any]:
    svc = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], name="shop")
    return config_dict(svc, notifications=list(receivers))


def _receiver(**extra: Any) -> dict[str, Any]:
    return {"name": "team-chat", "format": "slack", "url_env": "HOOK", **extra}


def test_a_receiver_with_defaults() -> None:
    (hook,) = parse_config(_data(_receiver()), ENV).notifications
    assert (hook.name, hook.format, hook.url_env, hook.url) == (
        "team-chat",
        "slack",
        "HOOK",
        ENV["HOOK"],
    )
    assert hook.events == frozenset(EVENTS)
    assert (hook.timeout_s, hook.queue, hook.attempts, hook.backoff_s) == (5.0, 100, 4, 0.5)
    assert "hooks.example" not in repr(hook)  # the URL holds the webhook's secret


def test_every_setting() -> None:
    data = _data(
        _receiver(
            format="cloudevents",
            events=["rolled_back", "completed"],
            timeout="250ms",
            queue=5,
            attempts=2,
            backoff="1s",
        ),
        {"name": "audit", "format": "json", "url_env": "PLAIN"},
    )
    first, second = parse_config(data, ENV).notifications
    assert (first.format, first.events) == ("cloudevents", frozenset({"rolled_back", "completed"}))
    assert (first.timeout_s, first.queue, first.attempts, first.backoff_s) == (0.25, 5, 2, 1.0)
    assert (second.name, second.url) == ("audit", ENV["PLAIN"])


@pytest.mark.parametrize(
    ("receiver", "env", "path", "reason"),
    [
        (_receiver(colour="red"), ENV, "notifications[0].colour", "unknown key; expected one of"),
        (_receiver(format="teams"), ENV, "notifications[0].format", "must be one of: slack"),
        (_receiver(events=["deployed"]), ENV, "notifications[0].events[0]", "unknown event"),
        (_receiver(events=[]), ENV, "notifications[0].events", "at least 1"),
        (_receiver(url_env="NOPE"), ENV, "notifications[0].url_env", "NOPE is not set"),
        (_receiver(), {"HOOK": ""}, "notifications[0].url_env", "HOOK is not set"),
        (
            _receiver(),
            {"HOOK": "ftp://files.example/x"},
            "notifications[0].url_env",
            "http:// or https:// URL",
        ),
        (_receiver(), {"HOOK": "https://"}, "notifications[0].url_env", "http:// or https://"),
        (_receiver(url_env="1BAD"), ENV, "notifications[0].url_env", "environment variable"),
        (_receiver(timeout="soon"), ENV, "notifications[0].timeout", "must be a duration"),
        (_receiver(queue=0), ENV, "notifications[0].queue", "integer from 1"),
        (_receiver(attempts=50), ENV, "notifications[0].attempts", "integer from 1 to 20"),
        ({"format": "json", "url_env": "HOOK"}, ENV, "notifications[0].name", "is required"),
        (_receiver(name="has space"), ENV, "notifications[0].name", "must be a name"),
    ],
)
def test_a_bad_receiver_names_the_key(
    receiver: dict[str, Any], env: dict[str, str], path: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_data(receiver), env)
    assert err.value.path == path
    assert reason in err.value.reason


def test_names_are_unique_and_the_section_is_a_list() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_data(_receiver(), _receiver(format="json")), ENV)
    assert err.value.path == "notifications[1].name"
    assert "duplicate receiver name 'team-chat' (see notifications[0])" in err.value.reason
    data = _data()
    data["notifications"] = {"name": "x"}
    with pytest.raises(ConfigError) as err:
        parse_config(data, ENV)
    assert (err.value.path, err.value.reason) == ("notifications", "must be a list, not a mapping")


def test_receivers_are_reloadable() -> None:
    data = _data(_receiver())
    old = parse_config(data, ENV)
    assert describe(old, parse_config(data, ENV)) == []
    data["notifications"] = [_receiver(events=["completed"])]
    new = parse_config(data, ENV)
    assert restart_only(old, new) == []
    assert describe(old, new) == ["notifications: changed"]
