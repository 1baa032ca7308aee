"""`rollout-proxy --help` and each command's help are complete, and errors name the next step."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import cli
from tests.support.proxy import config_dict, running_proxy, service

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    "check",
    "run",
    "demo",
    "status",
    "promote",
    "pause",
    "resume",
    "abort",
    "restart",
    "reload",
    "release",
    "force-token",
]
MUTATIONS = ["promote", "pause", "resume", "abort", "restart", "reload"]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env if env is not None else dict(os.environ),
        cwd=ROOT,
    )


def test_the_commands_are_all_described() -> None:
    # `worker` is started by `run --workers N`, not by people: not listed.
    assert set(_subparsers()) == {*COMMANDS, "worker"}
    result = _cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        # A name longer than the help column is followed by a line break instead of spaces.
        assert re.search(rf"^    {re.escape(command)}\s", result.stdout, re.MULTILINE), command
    assert "examples:" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_names_every_option_its_default_and_an_example(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    text = " ".join(_help(capsys, command).split())  # help wraps lines
    parser = _subparsers()[command]
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text, option
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            default = action.default
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert f"default: {shown}" in text or "else " + shown in text, (action.dest, text)
        if not action.option_strings and action.dest != "help":
            assert isinstance(action.metavar, str), action.dest
            assert action.metavar in text
    assert "example" in text
    assert "environment" in text


@pytest.mark.parametrize("command", ["check", "run"])
def test_config_commands_name_the_variables_a_config_reads(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    text = _help(capsys, command)
    for key in ("admin.token_env", "key_env", "state.url_env"):
        assert key in text


@pytest.mark.parametrize("command", MUTATIONS)
def test_mutations_name_the_token_variable(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    text = _help(capsys, command)
    assert "ROLLOUT_ADMIN_TOKEN" in text
    assert "ROLLOUT_ADMIN_URL" in text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_admin_says_which_url_and_how_to_point_elsewhere() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    result = _cli("status", "--admin", url)
    assert result.returncode == 1
    assert url in result.stderr
    assert "--admin http://HOST:PORT" in result.stderr
    assert "ROLLOUT_ADMIN_URL" in result.stderr
    env = {**os.environ, "ROLLOUT_ADMIN_URL": url}
    assert url in _cli("status", env=env).stderr  # the variable is the default


def test_a_missing_config_file_says_what_to_pass() -> None:
    result = _cli("check", "-c", "no-such-config.yaml")
    assert result.returncode == 2
    assert "no-such-config.yaml" in result.stderr
    assert "-c" in result.stderr
    assert "config/example.yaml" in result.stderr


def test_run_on_a_busy_port_names_the_key_to_change(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "proxy.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{port}\n"
            "admin: {listen: 127.0.0.1:0}\n"
            f"state: {{path: {tmp_path}/state.json}}\n"
            "services:\n"
            "  - name: svc\n"
            "    upstreams: {stable: ['http://127.0.0.1:9']}\n"
            "    rollout: {steps: [{percent: 0}]}\n"
        )
        result = _cli("run", "-c", str(config))
    assert result.returncode == 1
    assert "not started" in result.stderr
    assert "`listen`" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_mutation_without_the_token_says_which_variable_to_set(tmp_path: Path) -> None:
    upstream = "http://127.0.0.1:9"
    data = config_dict(service([upstream], [], steps=[{"percent": 0}]))
    data["admin"]["token_env"] = "PROXY_TOKEN"
    async with running_proxy(data, env={"PROXY_TOKEN": "s3cret-token-value"}) as proxy:
        env = {k: v for k, v in os.environ.items() if k != "ROLLOUT_ADMIN_TOKEN"}
        unset, unknown, unnamed = await asyncio.gather(
            asyncio.to_thread(_cli, "pause", "svc", "--admin", proxy.admin_url, env=env),
            asyncio.to_thread(_cli, "status", "nope", "--admin", proxy.admin_url, env=env),
            asyncio.to_thread(_cli, "pause", "--admin", proxy.admin_url, env=env),
        )
    assert unset.returncode == 1
    assert "401" in unset.stderr
    assert "ROLLOUT_ADMIN_TOKEN is not set" in unset.stderr
    assert "--token-env" in unset.stderr
    assert unknown.returncode == 1
    assert f"rollout-proxy status --admin {proxy.admin_url}" in unknown.stderr
    assert unnamed.returncode == 1
    assert "rollout-proxy status lists them" in unnamed.stderr
