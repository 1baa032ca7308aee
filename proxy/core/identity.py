"""Identity: who a request belongs to (tenant or user), by ordered rules, and its tier.

Rules are tried in configured order; the first one that yields an acceptable value wins. A rule
yields nothing (and the next rule is tried) when its source is absent, ambiguous or untrusted:

- header: only from trusted peers (`RequestView.peer_trusted`); otherwise ignored.
- cookie: a tight `a=b; c=d` parser; a cookie name present twice is ambiguous -> nothing.
- query: `urllib.parse.parse_qs` semantics on the raw query; a parameter present twice -> nothing.
- path: regex `search` on the raw (forwarded) path, group `id`, percent-decoded once; a value
  containing '/', '\\', NUL or control characters, or a path with dot segments -> nothing.
- jwt_claim: `Authorization: Bearer <token>` verified by PyJWT with the pinned algorithms
  (signature, exp/nbf when present, iss/aud when configured); any failure -> nothing, never an
  unverified claim. The claim must be a string (an integer is turned into its decimal form).
  Tokens longer than 8 KiB are ignored.

Every value is canonicalised (bucketing.canonical_id); empty values, values longer than 256
characters and values with control characters or lone surrogates are refused.

Tier: tenants map (for tenant identities) > tier header (trusted peers only, and only a tier
known to the configuration) > default. Tier names therefore always come from the configuration.

Pure: no I/O, no clock beyond PyJWT's own exp/nbf checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, NamedTuple
from urllib.parse import parse_qs, unquote

import jwt

from proxy.core.bucketing import canonical_id
from proxy.core.routing import Subject

if TYPE_CHECKING:
    from jwt.algorithms import AllowedPublicKeys
    from jwt.types import Options

MAX_ID_CHARS: Final = 256
MAX_TOKEN_CHARS: Final = 8192
MAX_QUERY_FIELDS: Final = 1024


class IdSource(StrEnum):
    """Where an identity rule reads its value."""

    HEADER = "header"
    COOKIE = "cookie"
    QUERY = "query"
    PATH = "path"
    JWT_CLAIM = "jwt_claim"
    CLIENT_CERT = "client_cert"  # the verified client certificate (mTLS): cn, dns or uri


class IdKind(StrEnum):
    """What an identity names: tenants get tiers and pins, users only a bucket."""

    TENANT = "tenant"
    USER = "user"


class Unidentified(StrEnum):
    """Policy for requests no rule identifies."""

    STABLE = "stable"
    CLIENT_IP = "client_ip"


@dataclass(frozen=True, slots=True)
class IdentityRule:
    source: IdSource
    name: str  # header (lower-cased) | cookie | query param | path regex source | claim
    kind: IdKind
    pattern: re.Pattern[str] | None = None  # path rules only; has a group named `id`
    algorithms: tuple[str, ...] = ()  # jwt rules only
    key: str | None = field(default=None, repr=False)  # jwt only: the key read from `key_env`
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = 0.0
    # jwt rules only: `key` parsed once (public key object) for asymmetric algorithms
    verify_key: AllowedPublicKeys | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class TierConfig:
    tenants: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    header: str | None = None  # lower-cased
    default: str = "default"
    names: frozenset[str] = frozenset()  # every known tier: given names, default, tenant tiers

    def __post_init__(self) -> None:
        known = self.names | {self.default, *self.tenants.values()}
        object.__setattr__(self, "names", frozenset(known))


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    """A service's identity rules, tiers and unidentified policy: what `subject_for` reads."""

    rules: tuple[IdentityRule, ...] = ()
    tiers: TierConfig = field(default_factory=TierConfig)
    unidentified: Unidentified = Unidentified.STABLE


class RequestView(NamedTuple):
    """The parts of a request identity extraction may look at (one per request: a named
    tuple, immutable and cheaper to build than a frozen dataclass)."""

    path: str  # raw path (no query), exactly as forwarded
    query: str  # raw query string without '?', may be ""
    headers: Mapping[str, str]  # identity-relevant headers only, names lower-cased
    peer_ip: str
    peer_trusted: bool
    # The client certificate the TLS listener verified: {"cn", "dns", "uri"} -> its first value
    # of each (empty without mTLS).
    client_cert: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Identity:
    """An accepted, canonical identity value and where it came from."""

    value: str
    kind: IdKind
    source: IdSource


_REFUSED_CHARS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_DOT_SEGMENTS: Final = frozenset({".", "..", "%2e", "%2e%2e", ".%2e", "%2e."})
_JWT_OPTIONS: Final[Options] = {"enforce_minimum_key_length": True}


def _from_header(rule: IdentityRule, view: RequestView) -> str | None:
    return view.headers.get(rule.name) if view.peer_trusted else None


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header; None when absent or present twice."""
    found: str | None = None
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if not sep or key.strip(" \t") != name:
            continue
        if found is not None:
            return None
        found = value.strip(" \t")
    if found is not None and len(found) >= 2 and found[0] == found[-1] == '"':
        return found[1:-1]
    return found


def _from_cookie(rule: IdentityRule, view: RequestView) -> str | None:
    header = view.headers.get("cookie")
    return None if header is None else cookie_value(header, rule.name)


def _from_query(rule: IdentityRule, view: RequestView) -> str | None:
    if not view.query:
        return None
    try:
        values = parse_qs(view.query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        return None
    found = values.get(rule.name)
    return found[0] if found is not None and len(found) == 1 else None


def _has_dot_segment(path: str) -> bool:
    if "." not in path and "%" not in path:
        return False
    return any(seg.lower() in _DOT_SEGMENTS for seg in path.split("/"))


def _from_path(rule: IdentityRule, view: RequestView) -> str | None:
    match = rule.pattern.search(view.path) if rule.pattern is not None else None
    raw = match.group("id") if match is not None else None
    if raw is None or _has_dot_segment(view.path):
        return None
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return None
    if "/" in value or "\\" in value or value in (".", ".."):
        return None
    return value


def _from_jwt(rule: IdentityRule, view: RequestView) -> str | None:
    header = view.headers.get("authorization")
    key = rule.verify_key if rule.verify_key is not None else rule.key
    if header is None or key is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip(" \t")
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=rule.algorithms,
            options=_JWT_OPTIONS,
            audience=rule.audience,
            issuer=rule.issuer,
            leeway=rule.leeway_s,
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    claim = claims.get(rule.name)
    if isinstance(claim, str):
        return claim
    if isinstance(claim, int) and not isinstance(claim, bool):
        return str(claim)
    return None


def _from_client_cert(rule: IdentityRule, view: RequestView) -> str | None:
    return view.client_cert.get(rule.name)


_EXTRACTORS: Final[Mapping[IdSource, Callable[[IdentityRule, RequestView], str | None]]] = {
    IdSource.HEADER: _from_header,
    IdSource.COOKIE: _from_cookie,
    IdSource.QUERY: _from_query,
    IdSource.PATH: _from_path,
    IdSource.JWT_CLAIM: _from_jwt,
    IdSource.CLIENT_CERT: _from_client_cert,
}


def accept_id(raw: str) -> str | None:
    """The canonical form of `raw`, or None when it is not an acceptable identity."""
    value = canonical_id(raw)
    if not value or len(value) > MAX_ID_CHARS or _REFUSED_CHARS.search(value):
        return None
    return value


def _first(rules: Sequence[IdentityRule], view: RequestView) -> tuple[str, IdentityRule] | None:
    for rule in rules:
        raw = _EXTRACTORS[rule.source](rule, view)
        if raw is not None:
            value = accept_id(raw)
            if value is not None:
                return value, rule
    return None


def identify(rules: Sequence[IdentityRule], view: RequestView) -> Identity | None:
    """The identity of the first rule that yields an acceptable value, if any."""
    found = _first(rules, view)
    if found is None:
        return None
    value, rule = found
    return Identity(value, rule.kind, rule.source)


def _header_tier(tiers: TierConfig, view: RequestView) -> str | None:
    if tiers.header is None or not view.peer_trusted:
        return None
    value = view.headers.get(tiers.header)
    return value if value is not None and value in tiers.names else None


def subject_for(policy: IdentityPolicy, view: RequestView) -> Subject:
    """Identity, tenant and tier of a request, with the service's unidentified policy."""
    tiers = policy.tiers
    found = _first(policy.rules, view)
    if found is None:
        tier = _header_tier(tiers, view) or tiers.default
        if policy.unidentified is Unidentified.CLIENT_IP:
            return Subject(view.peer_ip, None, tier)
        return Subject(None, None, tier)
    value, rule = found
    if rule.kind is IdKind.TENANT:
        tier = tiers.tenants.get(value) or _header_tier(tiers, view) or tiers.default
        return Subject(value, value, tier)
    return Subject(value, None, _header_tier(tiers, view) or tiers.default)


def subject_headers(policy: IdentityPolicy) -> tuple[str, ...] | None:
    """The headers `subject_for` reads for `policy`, when those and the peer's trust are all
    it reads (header and cookie rules, a tier header), so that the subject is a pure function
    of them; None when it also reads the path, the query, a token (whose validity depends on
    the time) or the peer's address."""
    if policy.unidentified is Unidentified.CLIENT_IP:
        return None
    names: list[str] = []
    for rule in policy.rules:
        if rule.source is IdSource.HEADER:
            names.append(rule.name)
        elif rule.source is IdSource.COOKIE:
            names.append("cookie")
        else:
            return None
    if policy.tiers.header is not None:
        names.append(policy.tiers.header)
    return tuple(dict.fromkeys(names))


def header_rule_names(policies: Iterable[IdentityPolicy]) -> frozenset[str]:
    """Identity and tier headers (lower-cased) that must be stripped from untrusted peers."""
    names: set[str] = set()
    for policy in policies:
        names.update(r.name for r in policy.rules if r.source is IdSource.HEADER)
        if policy.tiers.header is not None:
            names.add(policy.tiers.header)
    return frozenset(names)


def relevant_headers(policies: Collection[IdentityPolicy]) -> frozenset[str]:
    """Lower-cased names of every header identity and tier extraction may read."""
    names = set(header_rule_names(policies))
    for policy in policies:
        sources = {rule.source for rule in policy.rules}
        if IdSource.COOKIE in sources:
            names.add("cookie")
        if IdSource.JWT_CLAIM in sources:
            names.add("authorization")
    return frozenset(names)
