"""The h2 library's connection as the proxy drives it: configured for speed where the proxy
already guarantees what h2 would check, and with an HPACK encoder tuned for a proxy.

- Outbound header lists are made by the proxy itself (h2fields.py, upstream_h2.py): names in
  lower case, no connection-specific field, pseudo-fields first, values without surrounding
  whitespace. h2's outbound normalisation and validation (a chain of generators over every
  field of every HEADERS frame) would only repeat that; they are off.
- Inbound header lists: on the server side (client connections) `request_of` checks what
  makes a request malformed (RFC 9113 8.2 and 8.3) in the one pass it makes over the fields
  anyway, answering 400 on that stream where h2 would end the whole connection; on the client
  side (upstream sessions) h2 validates the responses. h2's inbound normalisation only joins
  split Cookie fields, which `request_of` does itself; it is off.
- HPACK literals are sent without Huffman coding: in pure Python the coding costs more CPU
  than the bytes it saves are worth between a proxy and its peers. A field whose value
  changes with nearly every message (`VOLATILE`) is sent as a literal that is never indexed,
  so that it does not churn the dynamic table and push out the fields that do repeat (the
  fields nghttp2 does not index either, and the request id).

This module is interpreted (not compiled with the data plane): its class derives from the
interpreted hpack library's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from h2.config import H2Configuration
from h2.connection import H2Connection
from hpack import Encoder, HeaderTuple, NeverIndexedHeaderTuple

Field = tuple[bytes, bytes]

VOLATILE: Final = frozenset(
    {
        b":path",
        b"age",
        b"content-length",
        b"etag",
        b"if-modified-since",
        b"if-none-match",
        b"last-modified",
        b"location",
        b"set-cookie",
        b"x-forwarded-for",
        b"x-request-id",
    }
)
# Fields kept out of any compression context (h2's own rule, kept when its normalisation is
# off): a shared upstream connection must not let one client probe another's secrets.
SECRET: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie"})


class LiteralEncoder(Encoder):
    """hpack's encoder, with literals never Huffman-coded."""

    def encode(self, headers: Iterable[HeaderTuple | Field], huffman: bool = False) -> bytes:  # type: ignore[override]
        return super().encode(headers, huffman=False)


def connection(*, client_side: bool) -> H2Connection:
    """An h2 connection (server or client side) configured as the module says."""
    conn = H2Connection(
        config=H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=client_side,
            validate_outbound_headers=False,
            normalize_inbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    conn.encoder = LiteralEncoder()
    return conn


def unindexed(name: bytes, value: bytes) -> Field:
    """The field as it should go to the encoder: never indexed when volatile or secret."""
    if name in VOLATILE or name in SECRET:
        return NeverIndexedHeaderTuple(name, value)
    return (name, value)
