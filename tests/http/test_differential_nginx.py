"""The request-smuggling corpus sent through the proxy and through nginx (nginx-light), each in
front of a recording upstream of its own, on loopback.

A request is *forwarded* by a front-end when its upstream received bytes on the connection;
*refused* when it answered a 4xx/5xx itself and its upstream received nothing. Every entry
where the two differ must be listed below with its reason: LOOSER (we forward what nginx
refuses: each one a finding, justified) or STRICTER (we refuse what nginx forwards; the
corpus test, test_corpus.py, holds the proxy's side of those). An unlisted difference, or a
listed entry that no longer differs, fails the test. One nginx and one proxy serve all of
the corpus, a few entries at a time, so the run stays within seconds.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.http.test_corpus import ENTRIES, Entry
from tests.support.proxy import config_dict, running_proxy, service
from tests.support.rawhttp import exchange
from tests.support.upstream import RecordingUpstream

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CONCURRENCY = 8

# We forward, nginx refuses: (nginx's status, why forwarding is right or harmless).
LOOSER: dict[str, tuple[int, str]] = {
    "more-compliant-tests: Large Size OK": (
        413,
        "a size limit, not framing: nginx's client_max_body_size defaults to 1 MiB, ours "
        "(limits.max_body_bytes) to none; the body is well framed and streamed, never held",
    ),
}

_LOOKALIKE = (
    400,
    "RELIABILITY A4: nginx forwards a look-alike of a framing field as an "
    "ordinary field; a server behind it that normalises the name would frame by it",
)
_UNDERSCORE = (
    400,
    "RELIABILITY C5: nginx drops a field with `_` and forwards the rest; "
    "a CGI-style server maps `_` to `-`, so we refuse the request",
)
_CTL = (400, "RFC 9110 5.5 / RELIABILITY C3: a CTL in a field value; nginx passes it on")
_HTTP09 = (400, "RFC 9112 2.3: an HTTP/0.9 request line; nginx serves it as 0.9")

# We refuse, nginx forwards: (our status, why).
STRICTER: dict[str, tuple[int, str]] = {
    "acceptable: Empty version, which means HTTP/0.9": _HTTP09,
    "uri-specific-test-cases: \\n in URI": _HTTP09,
    "ambiguous: Content-Length with arbitrary non-ASCII chars": _LOOKALIKE,
    "ambiguous: Transfer-Encoding Latin Small Letter Dotless I": _LOOKALIKE,
    "ambiguous: Transfer-Encoding Latin Small Letter Long S": _LOOKALIKE,
    "ambiguous: Transfer-Encoding with a UTF8 delimiter": _LOOKALIKE,
    "ambiguous: Transfer-Encoding with arbitrary non-ASCII chars": _LOOKALIKE,
    "ambiguous: Transfer-Encoding with multiple delimiters": _LOOKALIKE,
    "ambiguous: Content_Length with underscore.": _UNDERSCORE,
    "ambiguous: Transfer_Encoding with underscore.": _UNDERSCORE,
    "rfc-compliant: Valid custom header with underscore in name": _UNDERSCORE,
    "rfc-compliant: Valid custom header with tchar in name and obs-text": _UNDERSCORE,
    "bad-header-characters: Some-Header: \\x01value": _CTL,
    "bad-header-characters: Some-Header: value\\x01": _CTL,
    # \x01 in a field value (the entries test that it is not hidden by the rest).
    "edge-cases: Bad URI does not shadow essential ambiguous headers": _CTL,
    "edge-cases: Non-compliant customer header does not shadow ambiguous Content-Length "
    "for HEAD": _CTL,
    "edge-cases: Non-compliant customer header does not shadow ambiguous Transfer-Encoding "
    "for GET": _CTL,
    "rfc-compliant: Compliant URL": (
        400,
        "RELIABILITY B9: a fragment (`#`) in the target is refused, never forwarded",
    ),
    "rfc-compliant: International in URI": (
        400,
        "RFC 9112 3.2: raw non-ASCII is not a URI character (nginx forwards it; the "
        "recording upstream, h11, refuses it too)",
    ),
}

_CONF = """
worker_processes 1;
daemon off;
master_process off;
pid nginx.pid;
error_log stderr crit;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def nginx_in_front_of(upstream: int, prefix: Path) -> AsyncIterator[int]:
    """nginx on a free loopback port, proxying to `upstream`; its port."""
    (prefix / "tmp").mkdir(parents=True)
    for _ in range(5):
        port = _free_port()
        (prefix / "nginx.conf").write_text(_CONF.format(port=port, upstream=upstream))
        proc = await asyncio.create_subprocess_exec(
            NGINX, "-p", f"{prefix}/", "-c", "nginx.conf", "-e", "stderr",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        if await _listening(port, proc):
            break
        await _stop(proc)
    else:
        raise AssertionError("nginx did not start (5 attempts)")
    try:
        yield port
    finally:
        await _stop(proc)


async def _listening(port: int, proc: asyncio.subprocess.Process) -> bool:
    for _ in range(100):
        if proc.returncode is not None:
            return False
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return True
    return False


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        async with asyncio.timeout(10):
            await proc.wait()


@dataclass(frozen=True)
class Seen:
    forwarded: bool
    status: int  # the first status the client got (0: none)


async def _through(port: int, upstream: RecordingUpstream, entry: Entry) -> Seen:
    before = len(upstream.raw)
    outcome = await exchange(port, entry.raw, head=entry.method == b"HEAD", wait=1.0)
    status = outcome.responses[0].status if outcome.responses else 0
    return Seen(len(upstream.raw) > before, status)


async def _run(
    ours: int, theirs: int, mine: RecordingUpstream, nginx: RecordingUpstream
) -> dict[str, tuple[Seen, Seen]]:
    """Each entry through both, one at a time per front-end so that an upstream connection
    can be told apart; the two front-ends run side by side."""
    results: dict[str, tuple[Seen, Seen]] = {}
    for entry in ENTRIES:
        a, b = await asyncio.gather(_through(ours, mine, entry), _through(theirs, nginx, entry))
        results[entry.id] = (a, b)
    return results


async def test_we_forward_nothing_nginx_refuses_unless_listed(tmp_path: Path) -> None:
    mine = await RecordingUpstream("stable").start()
    theirs = await RecordingUpstream("stable").start()
    data = config_dict(service([mine.url], [mine.url]))
    try:
        async with (
            running_proxy(data) as proxy,
            nginx_in_front_of(theirs.port, tmp_path / "nginx") as nginx_port,
        ):
            results = await _run(proxy.data_address[1], nginx_port, mine, theirs)
    finally:
        await mine.close()
        await theirs.close()
    looser = {k: v for k, v in results.items() if v[0].forwarded and not v[1].forwarded}
    stricter = {k: v for k, v in results.items() if not v[0].forwarded and v[1].forwarded}
    for name, (a, b) in sorted(looser.items()):
        print(f"LOOSER {name!r}: ours {a}, nginx {b}")
    for name, (a, b) in sorted(stricter.items()):
        print(f"STRICTER {name!r}: ours {a}, nginx {b}")
    assert set(looser) == set(LOOSER), sorted(set(looser) ^ set(LOOSER))
    assert set(stricter) == set(STRICTER), sorted(set(stricter) ^ set(STRICTER))
    for name, (status, _) in LOOSER.items():
        assert results[name][1].status == status, (name, results[name])
    for name, (status, _) in STRICTER.items():
        assert results[name][0].status == status, (name, results[name])
