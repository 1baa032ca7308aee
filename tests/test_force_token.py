"""`rollout-proxy force-token`: the printed value is a token the proxy honours, for the service,
variant and time asked; without a usable key or with a bad argument it exits 2 and says why."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.core.force import ForcePolicy, forced_variant
from proxy.core.routing import Variant
from proxy.forcetoken import force_token
from tests.support.client import RawConnection, get
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.upstream import RecordingUpstream

ROOT = Path(__file__).resolve().parents[1]
KEY = "c" * 48
TOKENS = ForcePolicy(trusted=False, key=KEY.encode())


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "ROLLOUT_FORCE_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "proxy", "force-token", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**environment, **env},
        cwd=ROOT,
    )


def test_the_printed_value_forces_the_variant_until_the_ttl_ends() -> None:
    before = time.time()
    result = _cli("shop", "canary", "--ttl", "1h", ROLLOUT_FORCE_KEY=KEY)
    assert result.returncode == 0, result.stderr
    value = result.stdout.strip().encode()
    match = re.fullmatch(rb"canary;exp=(\d+);sig=[0-9a-f]{64}", value)
    assert match is not None, value
    assert before + 3600 - 1 <= int(match[1]) <= time.time() + 3600
    assert forced_variant(TOKENS, "shop", value, False, time.time()) is Variant.CANARY
    assert forced_variant(TOKENS, "shop", value, False, before + 3601) is None
    assert forced_variant(TOKENS, "other", value, False, time.time()) is None


def test_the_key_variable_can_be_named() -> None:
    result = _cli("shop", "stable", "--key-env", "SHOP_FORCE_KEY", SHOP_FORCE_KEY=KEY)
    assert result.returncode == 0, result.stderr
    value = result.stdout.strip().encode()
    assert forced_variant(TOKENS, "shop", value, False, time.time()) is Variant.STABLE


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["shop", "canary"], {}, "ROLLOUT_FORCE_KEY is not set"),
        (["shop", "canary"], {"ROLLOUT_FORCE_KEY": "short"}, "at least 32"),
        (["shop", "both"], {"ROLLOUT_FORCE_KEY": KEY}, "VARIANT: must be one of"),
        (["shop", "canary", "--ttl", "200h"], {"ROLLOUT_FORCE_KEY": KEY}, "at most 168h"),
        (["shop", "canary", "--ttl", "soon"], {"ROLLOUT_FORCE_KEY": KEY}, "--ttl: must be"),
    ],
)
def test_bad_arguments_or_no_key_exit_2_saying_why(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = _cli(*args, **env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


async def test_a_minted_token_is_honoured_by_a_running_proxy_from_an_untrusted_peer() -> None:
    stable = await RecordingUpstream("stable").start()
    canary = await RecordingUpstream("canary").start()
    force = {"enabled": True, "trusted": False, "key_env": "SHOP_FORCE_KEY"}
    svc = service([stable.url], [canary.url], name="shop", force=force)
    svc["rollout"]["steps"] = [{"percent": 0, "observe": "1h"}, {"percent": 100}]
    config = config_dict(svc, trusted_peers=["10.9.9.9/32"])
    value = force_token("shop", "canary", "10m", "SHOP_FORCE_KEY", {"SHOP_FORCE_KEY": KEY})
    try:
        async with running_proxy(config, {"SHOP_FORCE_KEY": KEY}) as proxy:
            conn = await RawConnection.open(proxy.data_address[1])
            await conn.send(get("/", {"X-Rollout-Force": value}))
            reply = await conn.response()
            await conn.close()
    finally:
        await stable.close()
        await canary.close()
    assert (reply.status, reply.header("x-pool")) == (200, "canary")
    (seen,) = canary.requests
    assert seen.header("x-rollout-force") is None
