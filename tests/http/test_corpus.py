"""The aws/http-desync-guardian request corpus, sent through the real proxy over loopback.

Each YAML entry becomes exact bytes (a character up to U+00FF is that byte, as the corpus means
obs-text; anything above is UTF-8), with `Host: localhost` added to HTTP/1.1 requests that lack
one and a small body matching the framing a compliant reader would apply. Per tier:
- Severe: a 4xx, then the connection closed; the upstream sees no connection and no byte.
- Ambiguous: refused the same way, or forwarded re-framed: the upstream then receives one
  request h11 accepts, with the body that was sent, and nothing more.
- Acceptable, Compliant: forwarded and answered, except where the proxy is deliberately
  stricter (STRICTER below, each with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.rawhttp import Outcome, exchange, h11_oracle, proxy_and_upstream
from tests.support.upstream import RecordingUpstream

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
CORPUS = SHARED / "corpora" / "http-desync-guardian"
CHUNKED_BODY = b"5\r\nhello\r\n0\r\n\r\n"
REFUSALS = frozenset(range(400, 500)) | {501, 505}

_UNDERSCORE = (400, "RELIABILITY C5: `_` in a field name is refused (CGI maps it to `-`)")
_SPACE_BEFORE_COLON = (400, "RFC 9112 5.1: whitespace before the colon MUST be rejected with 400")
_CTL_IN_NAME = (400, "RFC 9110 5.1: a field name is a token; C4 refuses anything else")
_CTL_IN_VALUE = (400, "RFC 9110 5.5 / RELIABILITY C3: CTLs other than HTAB in a value")
_VERSION = (505, "RELIABILITY B1: only HTTP/1.0 and 1.1 are served")
_VERSION_400 = (400, "RELIABILITY B1: llhttp refuses this version outright")
_TE_CODINGS = (501, "RFC 9112 6.1 / RELIABILITY A4: codings before `chunked` are not implemented")
_TE_PARAMS = (400, "RFC 9112 7: `chunked` has no parameters; A4 accepts only a lone `chunked`")

# Compliant or Acceptable entries the proxy refuses on purpose: (status, why).
STRICTER: dict[str, tuple[int, str]] = {
    "acceptable: No TE/CL headers, some others are non-compliant": _SPACE_BEFORE_COLON,
    "acceptable: TE and some others are non-compliant": _SPACE_BEFORE_COLON,
    "acceptable: CL and some others are non-compliant": _SPACE_BEFORE_COLON,
    "acceptable: A non-essential header with a non-printable character (x01)": _CTL_IN_NAME,
    "acceptable: Non-RFC, but OK HTTP/0.9": _VERSION,
    "acceptable: Empty version, which means HTTP/0.9": (
        400,
        "RFC 9112 2.3: an HTTP/0.9 request line (no version) is not HTTP/1.x",
    ),
    "acceptable: Unknown but OK HTTP/1.2": _VERSION_400,
    "bad-header-characters: Some-Header\\x01": _CTL_IN_NAME,
    "bad-header-characters: \\x01Some-Header": _CTL_IN_NAME,
    "bad-header-characters: Some-Header: \\x01value": _CTL_IN_VALUE,
    "bad-header-characters: Some-Header: value\\x01": _CTL_IN_VALUE,
    "more-compliant-tests: Correct TE OK": _TE_CODINGS,
    "more-compliant-tests: Transfer-Encoding: identity and chunked OK": _TE_CODINGS,
    "more-compliant-tests: Multiple transfer encoding headers in a single request OK": (
        400,
        "RFC 9112 6.3: each Transfer-Encoding line must end in `chunked` (A4: one coding)",
    ),
    "more-compliant-tests: TE with custom parameters OK": _TE_PARAMS,
    "rfc-compliant: Valid custom header with tchar in name and obs-text": _UNDERSCORE,
    "rfc-compliant: Valid custom header with underscore in name": _UNDERSCORE,
    "rfc-compliant: Different Transfer-Encoding headers": (
        400,
        "RFC 9112 6.3: each Transfer-Encoding line must end in `chunked` (A4: one coding)",
    ),
    "rfc-compliant: Different Transfer-Encoding headers combined": _TE_CODINGS,
    "rfc-compliant: Transfer-Encoding with a param: chunked;custom_param": (
        400,
        "RFC 9112 6.3: each Transfer-Encoding line must end in `chunked` (A4: one coding)",
    ),
    "rfc-compliant: Compliant URL": (
        400,
        "RELIABILITY B9: a fragment (`#`) in the target is refused, never forwarded",
    ),
    "rfc-compliant: International in URI": (
        400,
        "RFC 9112 3.2: raw non-ASCII is not a URI character (llhttp and h11 both refuse it)",
    ),
    "rfc-compliant: Empty URI": (400, "RFC 9112 3: the request-target is not optional"),
    "uri-specific-test-cases: Extra spaces in version": (
        400,
        "RFC 9112 3: the request line ends right after the version",
    ),
    "uri-specific-test-cases: [space] in URI": (
        400,
        "RFC 9112 3.2: an unencoded space ends the target; the rest is not a version",
    ),
}


@dataclass(frozen=True)
class Entry:
    id: str
    tier: str
    method: bytes
    raw: bytes
    body: bytes  # the body a compliant reader would take from `raw`


def _bytes(text: Any) -> bytes:
    """A corpus string as bytes: U+0000..U+00FF as that byte, anything above as UTF-8."""
    return b"".join(bytes([ord(c)]) if ord(c) < 256 else c.encode("utf-8") for c in str(text))


def _body(fields: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """(bytes to send after the head, body as a compliant reader decodes it)."""
    te = [v for n, v in fields if n.lower() == b"transfer-encoding"]
    cl = [v.strip(b" \t") for n, v in fields if n.lower() == b"content-length"]
    if te:
        return CHUNKED_BODY, b"hello"
    if len(cl) == 1 and cl[0].isdigit() and len(cl[0]) <= 7:  # larger ones are refused
        return b"x" * int(cl[0]), b"x" * int(cl[0])
    return b"", b""


def build(entry: dict[str, Any]) -> tuple[bytes, bytes]:
    """The raw request of a corpus entry and the body it carries."""
    method, uri, version = (_bytes(entry[k]) for k in ("method", "uri", "version"))
    fields = [(_bytes(h["name"]), _bytes(h["value"])) for h in entry.get("headers") or []]
    if version == b"HTTP/1.1" and not any(n.lower() == b"host" for n, _ in fields):
        fields.insert(0, (b"Host", b"localhost"))
    line = method + b" " + uri + (b" " + version if version else b"")
    head = line + b"\r\n" + b"".join(n + b":" + v + b"\r\n" for n, v in fields) + b"\r\n"
    wire, body = _body(fields)
    return head + wire, body


def load() -> list[Entry]:
    entries: list[Entry] = []
    seen: set[str] = set()
    for path in sorted(CORPUS.glob("*.yaml")):
        for item in yaml.safe_load(path.read_text(encoding="utf-8")) or []:
            name = f"{path.stem}: {item['name']}"
            ident, n = name, 1
            while ident in seen:
                n += 1
                ident = f"{name} #{n}"
            seen.add(ident)
            raw, body = build(item)
            tier = item["expected"]["tier"]
            entries.append(Entry(ident, tier, _bytes(item["method"]), raw, body))
    return entries


ENTRIES = load() if CORPUS.is_dir() else []


def test_corpus_is_present() -> None:
    assert CORPUS.is_dir(), f"the shared corpus is missing: expected it at {CORPUS.resolve()}"
    assert len(ENTRIES) > 100
    unknown = set(STRICTER) - {e.id for e in ENTRIES}
    assert not unknown, f"STRICTER names entries the corpus does not have: {unknown}"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
async def test_corpus_entry(entry: Entry) -> None:
    async with proxy_and_upstream() as (port, upstream):
        outcome = await exchange(port, entry.raw, head=entry.method == b"HEAD")
    stricter = STRICTER.get(entry.id)
    if stricter is not None:
        assert entry.tier in ("Compliant", "Acceptable")
        assert_refused(outcome, upstream, stricter[0])
    elif entry.tier == "Severe":
        assert_refused(outcome, upstream)
    elif entry.tier == "Ambiguous":
        if outcome.statuses == [200]:
            assert_forwarded(outcome, upstream, entry)
        else:
            assert_refused(outcome, upstream, allowed=REFUSALS)
    else:
        assert entry.tier in ("Compliant", "Acceptable"), entry.tier
        assert_forwarded(outcome, upstream, entry)


def assert_refused(
    outcome: Outcome,
    upstream: RecordingUpstream,
    status: int = 0,
    allowed: frozenset[int] = frozenset(range(400, 500)),
) -> None:
    assert len(outcome.responses) == 1, outcome.raw
    if status:
        assert outcome.status == status, outcome.raw
    else:
        assert outcome.status in allowed, outcome.raw
    assert outcome.responses[0].header(b"connection") == b"close"
    assert outcome.closed, "the connection must be closed after a refusal"
    assert upstream.connections == 0, "a refused request must not reach an upstream"
    assert upstream.raw == b""


def assert_forwarded(outcome: Outcome, upstream: RecordingUpstream, entry: Entry) -> None:
    assert outcome.statuses == [200], outcome.raw
    assert upstream.protocol_errors == []
    oracle = h11_oracle(bytes(upstream.raw))
    assert oracle.error is None, oracle.error
    assert oracle.leftover == b""
    (seen,) = oracle.requests
    assert seen.method == entry.method
    assert seen.body == entry.body
    te, cl = seen.values(b"transfer-encoding"), seen.values(b"content-length")
    assert not (te and cl), "both framings sent upstream"
    assert te in ([], [b"chunked"])
