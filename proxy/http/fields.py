"""What each request header field is to the proxy: its kind, looked up by lower-cased name.

A field of no kind is forwarded as it is. The kinds name the others: framing and Host (checked,
then written by the proxy itself), hop-by-hop and rollout fields (dropped), X-Forwarded-* and
Forwarded/X-Real-IP (believed only from trusted peers), identity fields (read for routing, only
from trusted peers), routing-relevant fields (read for routing) and X-Request-ID (kept only
from trusted peers, written by the proxy). `header_kinds` builds the table once per listener;
`RequestHead` acts on each kind as the head is parsed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.http.request import Request

(
    H_HOST,
    H_LENGTH,
    H_TE,
    H_CONNECTION,
    H_UPGRADE,
    H_EXPECT,
    H_DROP,
    H_XFF,
    H_XFP,
    H_XFH,
    H_TRUSTED_ONLY,
    H_RELEVANT,
    H_DROP_UNTRUSTED,
    H_REQUEST_ID,
) = range(14)


def header_kinds(identity_headers: Iterable[str], relevant: Iterable[str]) -> dict[bytes, int]:
    """Lower-cased field name -> its kind (an identity field wins over a relevant one)."""
    kinds = {
        b"host": H_HOST,
        b"content-length": H_LENGTH,
        b"transfer-encoding": H_TE,
        b"connection": H_CONNECTION,
        b"upgrade": H_UPGRADE,
        b"expect": H_EXPECT,
        b"keep-alive": H_DROP,
        b"proxy-connection": H_DROP,
        b"te": H_DROP,
        b"trailer": H_DROP,
        b"proxy-authorization": H_DROP,
        b"x-rollout-variant": H_DROP,
        b"x-rollout-step": H_DROP,
        b"x-forwarded-for": H_XFF,
        b"x-forwarded-proto": H_XFP,
        b"x-forwarded-host": H_XFH,
        b"forwarded": H_DROP_UNTRUSTED,
        b"x-real-ip": H_DROP_UNTRUSTED,
        b"x-request-id": H_REQUEST_ID,
    }
    for name in relevant:
        kinds.setdefault(name.encode("latin-1"), H_RELEVANT)
    for name in identity_headers:
        kinds[name.encode("latin-1")] = H_TRUSTED_ONLY
    return kinds


def forwarded(request: Request, kind: int, value: bytes) -> None:
    """An X-Forwarded-* field from a trusted peer: kept, to be extended (XFF) or relayed."""
    if kind == H_XFF:
        request.xff = value if request.xff is None else request.xff + b", " + value
    elif kind == H_XFP:
        request.xfp = value
    else:
        request.xfh = value
