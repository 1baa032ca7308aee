"""An HTTP/2 header list to a `Request` and back: the HTTP/1.1 rules, pure (no sockets)."""

from __future__ import annotations

import pytest

from proxy.config import Limits
from proxy.errors import BadRequest
from proxy.http.fields import FieldNames, header_kinds
from proxy.http.h2fields import request_of, response_fields
from proxy.http.head import RequestHead
from proxy.http.requestid import RequestIds

Fields = list[tuple[bytes, bytes]]
GET: Fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"shop.test"),
               (b":path", b"/a?b=1")]  # fmt: skip


def _head(*, trusted: bool = False, limits: Limits | None = None) -> RequestHead:
    head = RequestHead(limits or Limits(), header_kinds(["x-tenant-id"], []), RequestIds())
    head.trusted = trusted
    return head


def test_the_pseudo_headers_make_the_request_line() -> None:
    request = request_of(_head(), [*GET, (b"accept", b"*/*")], ended=True)
    assert (request.method, request.host, request.path, request.query) == (
        b"GET",
        b"shop.test",
        "/a",
        "b=1",
    )
    assert request.headers == [(b"accept", b"*/*")]
    assert not request.has_body
    assert len(request.request_id) == 32


def test_a_body_of_unknown_length_goes_up_chunked_and_a_known_one_with_its_length() -> None:
    assert request_of(_head(), GET, ended=False).chunked
    sized = request_of(_head(), [*GET, (b"content-length", b"5")], ended=False)
    assert (sized.chunked, sized.content_length) == (False, 5)


def test_identity_and_forwarding_fields_follow_peer_trust() -> None:
    fields = [*GET, (b"x-tenant-id", b"t1"), (b"x-forwarded-for", b"6.6.6.6")]
    untrusted = request_of(_head(), fields, ended=True)
    assert "x-tenant-id" not in untrusted.relevant
    assert untrusted.xff is None
    trusted = request_of(_head(trusted=True), fields, ended=True)
    assert trusted.relevant["x-tenant-id"] == "t1"
    assert trusted.xff == b"6.6.6.6"


def test_split_cookies_are_joined() -> None:
    request = request_of(_head(), [*GET, (b"cookie", b"a=1"), (b"cookie", b"b=2")], ended=True)
    assert request.headers == [(b"cookie", b"a=1; b=2")]


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")], 400),
        (
            [
                (b":method", b"CONNECT"),
                (b":authority", b"a:443"),
                (b":scheme", b"http"),
                (b":path", b"/"),
            ],
            405,
        ),
        (
            [(b":method", b"BREW"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
            501,
        ),
        ([*GET[:3], (b":path", b"/a/../etc")], 400),
        ([*GET[:3], (b":path", b"*")], 400),
        ([*GET, (b"host", b"other.test")], 400),
        ([*GET, (b"connection", b"close")], 400),
        ([*GET, (b"te", b"gzip")], 400),
        ([*GET, (b"x_under", b"1")], 400),
        ([*GET, (b"content-length", b"-1")], 400),
        ([*GET[:2], (b":path", b"/")], 400),  # no :authority and no Host
    ],
)
def test_what_http11_refuses_is_refused(fields: Fields, status: int) -> None:
    with pytest.raises(BadRequest) as err:
        request_of(_head(), fields, ended=False)
    assert err.value.status == status


def test_header_limits_are_the_engine_limits() -> None:
    limits = Limits(max_headers=3)
    with pytest.raises(BadRequest) as err:
        request_of(_head(limits=limits), [*GET, *[(b"x-a", b"1")] * 4], ended=True)
    assert err.value.status == 431


def test_a_response_loses_hop_by_hop_fields_and_gets_the_request_id() -> None:
    upstream = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"x-secret"),
        (b"X-Secret", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"3"),
        (b"X-Request-ID", b"upstream-own"),
    ]
    fields = response_fields(200, upstream, b"rid", FieldNames(), body=True)
    assert fields == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"3"),
        (b"x-request-id", b"rid"),
    ]
    no_body = response_fields(204, upstream, b"rid", FieldNames(), body=False)
    assert (b"content-length", b"3") not in no_body
