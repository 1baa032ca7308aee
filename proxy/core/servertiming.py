"""Server-Timing: the W3C response header a service uses to say where its time went.

Grammar (W3C Server Timing, section 3):

    Server-Timing             = #server-timing-metric
    server-timing-metric      = metric-name *( OWS ";" OWS server-timing-param )
    metric-name               = token
    server-timing-param       = server-timing-param-name OWS "=" OWS server-timing-param-value
    server-timing-param-name  = token
    server-timing-param-value = token / quoted-string

So `db;dur=12.5, cache;desc="miss, cold"` is two entries. Several header fields are one list
(RFC 9110 5.3). Parameter names are case-insensitive and may come in any order; as the spec's
processing model says, the first `dur` and the first `desc` of an entry count and the others are
ignored, and a `dur` that is no number is 0. A malformed entry (no token for a name, a parameter
without `=`, an unterminated quoted string, stray bytes) is skipped up to the next comma outside
quotes, never raising: the parser runs on the request path.

Bounded: at most `MAX_BYTES` bytes of the fields are read (the rest is ignored) and at most
`MAX_ENTRIES` entries are parsed per response. Only entries whose name is in `wanted` (the
metrics some check names) are kept. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from math import isfinite
from typing import Final, NamedTuple

MAX_ENTRIES: Final = 32  # entries parsed per response
MAX_BYTES: Final = 4096  # bytes of Server-Timing fields read per response
HEADER: Final = b"server-timing"

_TCHAR: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_OWS: Final = " \t"


class TimingEntry(NamedTuple):
    """One Server-Timing metric: its name, `dur` (milliseconds; None: absent), `desc`. A named
    tuple: made on the request path, where a frozen dataclass costs several times more."""

    name: str
    dur: float | None = None
    desc: str | None = None


def fields_of(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The values of the Server-Timing fields among a response's headers."""
    return [value for name, value in headers if len(name) == 13 and name.lower() == HEADER]


def without(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers less the Server-Timing fields (the same list when it has none)."""
    if not any(len(name) == 13 and name.lower() == HEADER for name, _ in headers):
        return headers
    return [(n, v) for n, v in headers if not (len(n) == 13 and n.lower() == HEADER)]


def parse(
    values: Iterable[bytes],
    wanted: frozenset[str] | None = None,
    *,
    max_entries: int = MAX_ENTRIES,
    max_bytes: int = MAX_BYTES,
) -> tuple[TimingEntry, ...]:
    """The entries of the Server-Timing field values, in order; `wanted`: keep only these
    names (None: every name). Each field is scanned on its own (an unterminated quoted string
    spoils its field only). Never raises."""
    found: list[TimingEntry] = []
    left = max_bytes
    for value in values:
        if left <= 0 or len(found) >= max_entries:
            break
        text = _bounded(value, left)
        left -= len(value) + 1
        entries = _split(text) if '"' not in text else _scan(text)
        for entry in entries[: max_entries - len(found)]:
            if wanted is None or entry.name in wanted:
                found.append(entry)
    return tuple(found)


def _scan(text: str) -> list[TimingEntry]:
    """The well-formed entries of one field, by the grammar (quoted strings allowed)."""
    entries: list[TimingEntry] = []
    scanner = _Scanner(text)
    while not scanner.done():
        entry = scanner.entry()
        if entry is None or not scanner.end_of_entry():
            scanner.skip_entry()
        else:
            entries.append(entry)
    return entries


def _split(text: str) -> list[TimingEntry]:
    """`_scan` for a field without quoted strings (the common case), by splitting: the same
    entries, a few times faster."""
    entries: list[TimingEntry] = []
    for part in text.split(","):
        name, *params = part.split(";")
        name = name.strip(_OWS)
        if not name or not _TCHAR.issuperset(name):
            continue
        dur: float | None = None
        desc: str | None = None
        for param in params:
            key, eq, raw = param.partition("=")
            key, raw = key.strip(_OWS).lower(), raw.strip(_OWS)
            if not eq or not key or not raw or not _TCHAR.issuperset(key + raw):
                break
            if key == "dur" and dur is None:
                dur = _number(raw)
            elif key == "desc" and desc is None:
                desc = raw
        else:
            entries.append(TimingEntry(name, dur, desc))
    return entries


def _bounded(value: bytes, left: int) -> str:
    """The field's text, or when it is longer than `left` bytes its entries that end before
    the cut (the entry the cut falls in is dropped, never read short)."""
    if len(value) > left:
        value = value[: max(value.rfind(b",", 0, left), 0)]
    return bytes(value).decode("latin-1")


def format_entry(entry: TimingEntry) -> str:
    """The entry as a Server-Timing list member (the inverse of `parse` for one entry)."""
    out = entry.name
    if entry.dur is not None:
        out += f";dur={entry.dur!r}"
    if entry.desc is not None:
        escaped = entry.desc.replace("\\", "\\\\").replace('"', '\\"')
        out += f';desc="{escaped}"'
    return out


class _Scanner:
    """A cursor over the joined field text."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def done(self) -> bool:
        self._skip(_OWS + ",")
        return self.pos >= len(self.text)

    def _skip(self, chars: str) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in chars:
            pos += 1
        self.pos = pos

    def _token(self) -> str:
        text, start = self.text, self.pos
        pos = start
        while pos < len(text) and text[pos] in _TCHAR:
            pos += 1
        self.pos = pos
        return text[start:pos]

    def _quoted(self) -> str | None:
        """A quoted-string at the cursor (which is on its opening quote), unescaped; None
        when it does not end."""
        text, pos = self.text, self.pos + 1
        out: list[str] = []
        while pos < len(text):
            char = text[pos]
            if char == '"':
                self.pos = pos + 1
                return "".join(out)
            if char == "\\":
                pos += 1
                if pos >= len(text):
                    break
                char = text[pos]
            out.append(char)
            pos += 1
        self.pos = len(text)
        return None

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def entry(self) -> TimingEntry | None:
        """One metric with its parameters; None when malformed (the cursor is then inside it)."""
        name = self._token()
        if not name:
            return None
        dur: float | None = None
        desc: str | None = None
        while True:
            self._skip(_OWS)
            if self._peek() != ";":
                return TimingEntry(name, dur, desc)
            self.pos += 1
            self._skip(_OWS)
            param = self._token().lower()
            self._skip(_OWS)
            if not param or self._peek() != "=":
                return None
            self.pos += 1
            self._skip(_OWS)
            if self._peek() == '"':
                value = self._quoted()
                if value is None:
                    return None
            else:
                value = self._token()
                if not value:
                    return None
            if param == "dur" and dur is None:
                dur = _number(value)
            elif param == "desc" and desc is None:
                desc = value

    def end_of_entry(self) -> bool:
        """Is the cursor at a comma or the end (the entry was well-formed up to there)?"""
        self._skip(_OWS)
        return self._peek() in ("", ",")

    def skip_entry(self) -> None:
        """Skip to just past the next comma outside a quoted string."""
        text, pos = self.text, self.pos
        quoted = False
        while pos < len(text):
            char = text[pos]
            if quoted and char == "\\":
                pos += 2
                continue
            if char == '"':
                quoted = not quoted
            elif char == "," and not quoted:
                self.pos = pos + 1
                return
            pos += 1
        self.pos = len(text)


def _number(value: str) -> float:
    """A `dur` value in milliseconds: 0 when it is no finite number >= 0 (the spec's 0)."""
    try:
        number = float(value)
    except ValueError:
        return 0.0
    return number if isfinite(number) and number >= 0.0 else 0.0
