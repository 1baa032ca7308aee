"""What each request header field is to the proxy: its kind, looked up by lower-cased name.

A field of no kind is forwarded as it is. The kinds name the others: framing and Host (checked,
then written by the proxy itself), hop-by-hop and rollout fields (dropped), X-Forwarded-* and
Forwarded/X-Real-IP (believed only from trusted peers), identity fields (read for routing, only
from trusted peers), routing-relevant fields (read for routing) and X-Request-ID (kept only
from trusted peers, written by the proxy); X-Rollout-Force is kept aside for routing and never
forwarded. `header_kinds` builds the table once per listener;
`RequestHead` acts on each kind as the head is parsed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from proxy.http.framing import HOP_BY_HOP

if TYPE_CHECKING:
    from proxy.http.request import Request

H_HOST: Final = 0
H_LENGTH: Final = 1
H_TE: Final = 2
H_CONNECTION: Final = 3
H_UPGRADE: Final = 4
H_EXPECT: Final = 5
H_DROP: Final = 6
H_XFF: Final = 7
H_XFP: Final = 8
H_XFH: Final = 9
H_TRUSTED_ONLY: Final = 10
H_RELEVANT: Final = 11
H_DROP_UNTRUSTED: Final = 12
H_REQUEST_ID: Final = 13
H_FORCE: Final = 14


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
        b"x-rollout-force": H_FORCE,
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


# What a response field is to the proxy (`FieldNames.response_kind`): relayed as it is, or one
# of the fields the proxy reads (framing, Connection) or drops (the other hop-by-hop fields, and
# the upstream's X-Request-ID, which would contradict the one the proxy returns).
R_RELAY: Final = 0
R_LENGTH: Final = 1
R_TE: Final = 2
R_CONNECTION: Final = 3
R_DROP: Final = 4
_RESPONSE_KINDS: Final[dict[bytes, int]] = {
    **dict.fromkeys(HOP_BY_HOP, R_DROP),
    b"x-request-id": R_DROP,
    b"content-length": R_LENGTH,
    b"transfer-encoding": R_TE,
    b"connection": R_CONNECTION,
}
# Every response field that is not relayed as it is, lower-cased.
RESPONSE_NOT_RELAYED: Final = frozenset(_RESPONSE_KINDS)


def _first_letters_by_length(names: frozenset[bytes]) -> list[int]:
    """For each name length, a mask of the names' first letters: bit `byte & 31`, the same for
    both cases of a letter."""
    masks = [0] * (max(len(name) for name in names) + 1)
    for name in names:
        masks[len(name)] |= 1 << (name[0] & 31)
    return masks


# A response field whose name differs in length or first letter from every name not relayed
# (Server, Date, Content-Type...) is relayed with no lookup: a lookup hashes the name, a new
# object in every response, and that costs more than the rest of the field's relay. The test
# is native integer work once compiled.
_MAY_NOT_RELAY: Final = _first_letters_by_length(RESPONSE_NOT_RELAYED)

# Spellings a `FieldNames` table holds before it starts again.
_SPELLINGS_MAX: Final = 512


class FieldNames:
    """Field names lower-cased through a table of the spellings seen. Clients and upstreams
    spell a name the same way every time, so a name costs one lookup instead of a `lower()`,
    whose new object would be hashed again in every table it is looked up in. Bounded: a peer
    sending endless spellings only makes it start again."""

    __slots__ = ("_response", "_seen")

    def __init__(self) -> None:
        self._seen: dict[bytes, bytes] = {}
        self._response: dict[bytes, int] = {}

    def lower(self, name: bytes) -> bytes:
        lower = self._seen.get(name)
        if lower is None:
            lower = name.lower()
            if len(self._seen) >= _SPELLINGS_MAX:
                self._seen.clear()
            self._seen[name] = lower
        return lower

    def response_kind(self, name: bytes) -> int:
        """What a response field named `name` is (R_*): one lookup for a spelling seen before."""
        size = len(name)
        if not 0 < size < len(_MAY_NOT_RELAY) or not _MAY_NOT_RELAY[size] >> (name[0] & 31) & 1:
            return R_RELAY
        kind = self._response.get(name)
        if kind is None:
            kind = _RESPONSE_KINDS.get(name.lower(), R_RELAY)
            if len(self._response) >= _SPELLINGS_MAX:
                self._response.clear()
            self._response[name] = kind
        return kind
