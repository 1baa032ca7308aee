"""Hypothesis fuzzing (bounded examples, no deadline) of what hostile input reaches first:

- the config loader: any YAML-ish value anywhere in a valid config gives a Config or a
  ConfigError naming a key, never another exception;
- identity extraction: any headers, cookies, query and path give a subject whose id is
  acceptable (strict charset, bounded) or none, never an exception;
- the request head, end to end: any header block sent to a running proxy process gets a
  well-formed response (h11 parses it) with a status the proxy may answer, never a 5xx, and
  the proxy lives on.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import parse_config
from proxy.core.identity import RequestView, accept_id, subject_for
from proxy.errors import ConfigError
from tests.support.proxy import config_dict, service

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.yaml"
ENV = {"JWT_KEY": "k" * 32}

yamlish = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))


BASE = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
PATHS = list(_paths(BASE))[1:]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATHS), yamlish)
def test_any_value_anywhere_in_the_config_is_a_config_or_a_config_error(
    path: tuple[Any, ...], value: Any
) -> None:
    data = copy.deepcopy(BASE)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    error: ConfigError | None = None
    try:
        parse_config(data, ENV)
    except ConfigError as exc:
        error = exc
    assert error is None or error.path, f"no key named for {path} = {value!r}: {error}"


@settings(max_examples=100, deadline=None)
@given(yamlish)
def test_any_document_is_a_config_or_a_config_error(value: Any) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(value, ENV)


IDENTITY_SERVICE = parse_config(copy.deepcopy(BASE), ENV).services[0]
hostile = st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from("=;,/\\.%\x00\r\n \t"), max_size=60
)


@settings(max_examples=120, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["x-tenant-id", "cookie", "authorization", "x-tier", "x-user-id"]),
        hostile,
    ),
    hostile,
    hostile,
    st.booleans(),
)
def test_identity_extraction_never_fails_and_yields_only_acceptable_ids(
    headers: dict[str, str], path: str, query: str, trusted: bool
) -> None:
    view = RequestView("/" + path, query, headers, "203.0.113.9", trusted)
    subject = subject_for(IDENTITY_SERVICE.identity_policy, view)
    if subject.key is not None and subject.key != view.peer_ip:
        assert accept_id(subject.key) == subject.key


ANSWERS = {200, 400, 404, 405, 408, 413, 414, 417, 431, 501, 505}
field_bytes = st.binary(max_size=12) | st.sampled_from(
    [b"Transfer-Encoding", b"Content-Length", b"X-Tenant-ID", b"Host", b"Connection", b"Expect",
     b"X_Tenant_Id", b"chunked", b"close", b"100-continue", b" ", b":", b"\t", b"\r", b"\n",
     b"\x00", b"5", b"-1", b",", b"\x80"]
)  # fmt: skip


@pytest.fixture(scope="module")
def proxy_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    directory = tmp_path_factory.mktemp("fuzz")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    origin = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.origin", "stable"],
        stdout=subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip
    assert origin.stdout is not None
    upstream = f"http://127.0.0.1:{int(origin.stdout.readline())}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = config_dict(service([upstream], [upstream]), listen=f"127.0.0.1:{port}")
    data["limits"] = {"header_timeout": 0.3, "body_timeout": 0.3}
    data["state"] = {"backend": "file", "path": str(directory / "state.json")}
    (directory / "proxy.yaml").write_text(yaml.safe_dump(data))
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy", "run", "-c", str(directory / "proxy.yaml")],
        stderr=subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proxy.stderr is not None
    assert b"data plane on" in proxy.stderr.readline()
    yield port
    assert proxy.poll() is None, "the proxy died"
    proxy.kill()
    origin.kill()
    proxy.wait()
    origin.wait()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(field_bytes, field_bytes, field_bytes), max_size=5), field_bytes)
def test_any_header_block_gets_a_well_formed_answer(
    proxy_port: int, fields: list[tuple[bytes, bytes, bytes]], body: bytes
) -> None:
    head = b"POST /f HTTP/1.1\r\nHost: app\r\n"
    head += b"".join(a + b + c + b"\r\n" for a, b, c in fields)
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
        # No half-close: a client's FIN is taken as the client going away.
        sock.sendall(head + b"\r\n" + body)
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="POST", target="/f", headers=[("Host", "app")]))
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(sock.recv(65536))
                continue
            assert not isinstance(event, h11.ConnectionClosed), "closed without an answer"
            if isinstance(event, h11.Response):
                assert event.status_code in ANSWERS, (event.status_code, head)
                return
