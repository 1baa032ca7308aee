"""X-Request-ID: every forwarded request carries exactly one, the client gets the same one back,
and the access log line names it. A trusted peer's well-formed id is kept; anything else is
replaced by the proxy's own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.http.requestid import RequestIds
from tests.support.client import Response, exchange, get
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.rawhttp import UNTRUSTED
from tests.support.upstream import Received, RecordingUpstream, Reply

GENERATED = re.compile(r"[0-9a-f]{32}\Z")


async def _through_proxy(
    tmp_path: Path,
    heads: list[bytes],
    *,
    trusted: bool,
    upstream_reply: Reply | None = None,
) -> tuple[list[Response], list[Received], list[dict[str, Any]]]:
    """Send each head on its own connection; (responses, what the upstream got, log lines)."""
    upstream = await RecordingUpstream(
        "stable", handler=(lambda _: upstream_reply) if upstream_reply else None
    ).start()
    log = tmp_path / "access.log"
    config = config_dict(
        service([upstream.url], [], steps=[{"percent": 0}]),
        trusted_peers=["127.0.0.1/32"] if trusted else UNTRUSTED,
        access_log={"enabled": True, "path": str(log)},
    )
    try:
        async with running_proxy(config) as proxy:
            responses = [await exchange(proxy.data_address[1], head) for head in heads]
    finally:
        await upstream.close()
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    return responses, upstream.requests, lines


def _ids(received: Received) -> list[str]:
    return [value for name, value in received.headers if name == "x-request-id"]


def _response_ids(response: Response) -> list[str]:
    return [value for name, value in response.headers if name == "x-request-id"]


async def test_an_untrusted_peers_id_is_replaced_and_the_same_id_is_seen_everywhere(
    tmp_path: Path,
) -> None:
    heads = [get("/a", {"X-Request-ID": "chosen-by-the-client"}), get("/b")]
    responses, received, lines = await _through_proxy(tmp_path, heads, trusted=False)
    seen = []
    for response, request, line in zip(responses, received, lines, strict=True):
        (upstream_id,) = _ids(request)
        assert GENERATED.match(upstream_id), upstream_id
        assert _response_ids(response) == [upstream_id]
        assert line["request_id"] == upstream_id
        seen.append(upstream_id)
    assert len(set(seen)) == 2


async def test_a_trusted_peers_id_is_kept(tmp_path: Path) -> None:
    kept = "edge-7f3a:01HZX.b_c~" + "x" * 107  # 128 visible ASCII characters: the longest kept
    responses, received, lines = await _through_proxy(
        tmp_path, [get("/", {"X-Request-ID": kept})], trusted=True
    )
    assert _ids(received[0]) == [kept]
    assert _response_ids(responses[0]) == [kept]
    assert lines[0]["request_id"] == kept


@pytest.mark.parametrize(
    "head",
    [
        get("/", {"X-Request-ID": "x" * 129}),  # too long
        get("/", {"X-Request-ID": "has space"}),
        get("/", {"X-Request-ID": "caf\xe9"}),  # not ASCII
        get("/", {"X-Request-ID": ""}),
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Request-ID: one\r\nX-Request-ID: two\r\n\r\n",
    ],
    ids=["too-long", "space", "non-ascii", "empty", "twice"],
)
async def test_a_malformed_id_from_a_trusted_peer_is_replaced(tmp_path: Path, head: bytes) -> None:
    responses, received, lines = await _through_proxy(tmp_path, [head], trusted=True)
    (upstream_id,) = _ids(received[0])
    assert GENERATED.match(upstream_id), upstream_id
    assert _response_ids(responses[0]) == [upstream_id]
    assert lines[0]["request_id"] == upstream_id


async def test_the_upstreams_own_id_in_its_response_is_replaced(tmp_path: Path) -> None:
    reply = Reply(headers=[("X-Request-ID", "made-up-by-the-upstream")])
    responses, received, _ = await _through_proxy(
        tmp_path, [get("/")], trusted=False, upstream_reply=reply
    )
    assert _response_ids(responses[0]) == _ids(received[0])


async def test_a_response_the_proxy_makes_carries_the_id(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    config = config_dict(
        service(["http://127.0.0.1:9"], [], steps=[{"percent": 0}]),  # nothing listens there
        access_log={"enabled": True, "path": str(log)},
    )
    async with running_proxy(config) as proxy:
        response = await exchange(proxy.data_address[1], get("/", {"X-Request-ID": "trace-1"}))
    assert response.status == 502
    assert _response_ids(response) == ["trace-1"]
    (line,) = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert (line["request_id"], line["status"], line["generated"]) == ("trace-1", 502, True)
    assert line["upstream_failure"] == "connect"


def test_ids_made_by_one_process_are_32_hex_digits_and_never_repeat() -> None:
    ids = RequestIds()
    made = [ids.make() for _ in range(10_000)]
    assert all(GENERATED.match(i.decode()) for i in made)
    assert len(set(made)) == len(made)


def test_two_processes_make_different_ids() -> None:
    first, second = RequestIds(), RequestIds()
    assert {first.make() for _ in range(100)}.isdisjoint({second.make() for _ in range(100)})


def test_ids_count_up_by_one_across_the_blocks_of_formatted_digits() -> None:
    ids = RequestIds(prefix=b"0" * 16)
    counters = [int(ids.make()[16:], 16) for _ in range(1_000)]
    assert counters == list(range(1 << 60, (1 << 60) + 1_000))
