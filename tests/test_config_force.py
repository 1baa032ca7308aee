"""A service's `force:` block: defaults, the key from the environment, and every bad value
named by its key path."""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxy.config import ConfigError, ForceConfig, parse_config
from proxy.config.changes import describe
from tests.support.proxy import config_dict, service

KEY = "f" * 32


def _config(force: Any, env: dict[str, str] | None = None) -> ForceConfig:
    svc = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], force=force)
    (parsed,) = parse_config(config_dict(svc), env or {}).services
    return parsed.force


def test_without_a_block_forcing_is_off() -> None:
    svc = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"])
    (parsed,) = parse_config(config_dict(svc), {}).services
    assert parsed.force == ForceConfig(enabled=False, trusted=True, key_env=None, key=None)


def test_enabled_trusts_trusted_peers_by_default() -> None:
    assert _config({"enabled": True}) == ForceConfig(enabled=True, trusted=True)


def test_the_token_key_is_read_from_its_variable_and_never_shown() -> None:
    force = _config({"enabled": True, "trusted": False, "key_env": "FORCE_KEY"}, {"FORCE_KEY": KEY})
    assert (force.enabled, force.trusted, force.key_env, force.key) == (
        True,
        False,
        "FORCE_KEY",
        KEY.encode(),
    )
    assert KEY not in repr(force)


def test_a_disabled_block_needs_no_key() -> None:
    force = _config({"enabled": False, "key_env": "FORCE_KEY"})
    assert (force.enabled, force.key) == (False, None)


@pytest.mark.parametrize(
    ("force", "env", "message"),
    [
        ({"enabled": True, "key_env": "FORCE_KEY"}, {}, "environment variable FORCE_KEY is not"),
        ({"enabled": True, "key_env": "FORCE_KEY"}, {"FORCE_KEY": ""}, "FORCE_KEY is not set"),
        ({"enabled": True, "key_env": "FORCE_KEY"}, {"FORCE_KEY": "short"}, "at least 32 are"),
        ({"enabled": True, "key_env": "not a name"}, {}, "an environment variable name"),
        ({"enabled": True, "trusted": False}, {}, "no forced request could ever be honoured"),
        ({"enabled": "yes"}, {}, "services[0].force.enabled"),
        ({"enabled": True, "trusted": 1}, {}, "services[0].force.trusted"),
        ({"enabled": True, "token": "x"}, {}, "services[0].force"),
        ("on", {}, "services[0].force"),
    ],
)
def test_bad_values_name_their_key(force: Any, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        _config(force, env)
    assert str(err.value).startswith("services[0].force")


@pytest.mark.parametrize("missing", [{}, {"FORCE_KEY": "short"}])
def test_key_errors_name_key_env(missing: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as err:
        _config({"enabled": True, "key_env": "FORCE_KEY"}, missing)
    assert err.value.path == "services[0].force.key_env"


def test_the_header_cannot_carry_an_identity() -> None:
    svc = service(
        ["http://127.0.0.1:9"],
        ["http://127.0.0.1:10"],
        identity=[{"header": "X-Rollout-Force", "kind": "user"}],
    )
    with pytest.raises(ConfigError, match="cannot carry an identity"):
        parse_config(config_dict(svc), {})


def test_a_reload_names_a_changed_force_block() -> None:
    before = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"])
    after = service(["http://127.0.0.1:9"], ["http://127.0.0.1:10"], force={"enabled": True})
    old, new = parse_config(config_dict(before), {}), parse_config(config_dict(after), {})
    assert describe(old, new) == ["service svc: force"]
