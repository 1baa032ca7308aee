"""Configuration of who a request belongs to: a service's `identity:` rules and `tiers:`.

JWT rules are checked hard at load time (RFC 8725): algorithms are pinned and required, "none"
is refused, HMAC and public-key algorithms are never mixed for one key, the key comes from the
environment variable `key_env` and must be usable (and long enough) for every pinned algorithm,
and an asymmetric key must be a public key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from jwt.algorithms import get_default_algorithms

from proxy.config import reader as read
from proxy.core.identity import IdentityRule, IdKind, IdSource, TierConfig, accept_id
from proxy.errors import ConfigError

if TYPE_CHECKING:
    from jwt.algorithms import AllowedPublicKeys

_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^`|~-]+")  # an RFC 9110 token without "_"
_COOKIE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_QUERY = re.compile(r"[^&=#\s]+")
_TIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te"}
    | {"proxy-connection", "upgrade", "trailer", "expect", "cookie", "authorization"}
    | {"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}
    | {"x-rollout-variant", "x-rollout-step", "x-rollout-force"}
)
_ALGORITHMS = {name: algo for name, algo in get_default_algorithms().items() if name != "none"}
# What a client_cert rule reads of the verified certificate: its subject's common name, or its
# first subjectAltName DNS name or URI (a SPIFFE id, in a mesh).
CLIENT_CERT_FIELDS = ("cn", "dns", "uri")
_SOURCE_KEYS = {source.value: source for source in IdSource}
_JWT_KEYS = ("algorithms", "key_env", "issuer", "audience", "leeway")
_ALL_RULE_KEYS = (*_SOURCE_KEYS, "kind", *_JWT_KEYS)


def header_name(value: object, path: str) -> str:
    """A header name usable for identity or tier, lower-cased."""
    name = read.string(value, path, _HEADER, "a header name (letters, digits, '-'; no '_')")
    if name.lower() in _RESERVED_HEADERS:
        raise ConfigError(path, f"{name!r} cannot carry an identity or tier")
    return name.lower()


def tenant_id(value: object, path: str) -> str:
    """A tenant id exactly as identity extraction produces it (canonical form)."""
    text = read.string(value, path)
    if accept_id(text) != text:
        reason = "must be a canonical id (NFC, no surrounding spaces or control characters, "
        raise ConfigError(path, reason + "at most 256 characters)")
    return text


def tier_name(value: object, path: str) -> str:
    return read.string(value, path, _TIER, "a tier name ([A-Za-z0-9_.-], at most 64)")


def identity_rules(value: object, path: str, env: Mapping[str, str]) -> tuple[IdentityRule, ...]:
    items = read.sequence(value, path)
    return tuple(_rule(item, read.index(path, i), env) for i, item in enumerate(items))


def _rule(value: object, path: str, env: Mapping[str, str]) -> IdentityRule:
    data = read.mapping(value, path, _ALL_RULE_KEYS, required=("kind",))
    sources = [name for name in _SOURCE_KEYS if name in data]
    if len(sources) != 1:
        raise ConfigError(path, f"must have exactly one of: {', '.join(_SOURCE_KEYS)}")
    source = _SOURCE_KEYS[sources[0]]
    allowed = (sources[0], "kind", *(_JWT_KEYS if source is IdSource.JWT_CLAIM else ()))
    read.mapping(data, path, allowed)
    name_path = read.key(path, sources[0])
    kind = IdKind(read.choice(data["kind"], read.key(path, "kind"), [k.value for k in IdKind]))
    raw = data[sources[0]]
    if source is IdSource.HEADER:
        return IdentityRule(source, header_name(raw, name_path), kind)
    if source is IdSource.COOKIE:
        return IdentityRule(source, read.string(raw, name_path, _COOKIE, "a cookie name"), kind)
    if source is IdSource.QUERY:
        return IdentityRule(source, read.string(raw, name_path, _QUERY, "a query name"), kind)
    if source is IdSource.PATH:
        pattern = _id_pattern(raw, name_path)
        return IdentityRule(source, pattern.pattern, kind, pattern=pattern)
    if source is IdSource.CLIENT_CERT:
        return IdentityRule(source, read.choice(raw, name_path, CLIENT_CERT_FIELDS), kind)
    return _jwt_rule(data, path, read.string(raw, name_path), kind, env)


def _id_pattern(value: object, path: str) -> re.Pattern[str]:
    text = read.string(value, path)
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise ConfigError(path, f"is not a valid regular expression: {exc}") from None
    if "id" not in pattern.groupindex:
        raise ConfigError(path, "must have a named group (?P<id>...) holding the id")
    return pattern


def _algorithms(value: object, path: str) -> tuple[str, ...]:
    names: list[str] = []
    for i, item in enumerate(read.sequence(value, path, min_items=1)):
        name = read.string(item, read.index(path, i))
        if name.lower() == "none":
            raise ConfigError(read.index(path, i), '"none" is never accepted (unsigned tokens)')
        if name not in _ALGORITHMS:
            raise ConfigError(read.index(path, i), f"must be one of: {', '.join(_ALGORITHMS)}")
        names.append(name)
    if len({name.startswith("HS") for name in names}) > 1:
        raise ConfigError(path, "must not mix HMAC (HS*) with public-key (RS*/ES*/PS*) algorithms")
    return tuple(dict.fromkeys(names))


def _jwt_key(
    algorithms: tuple[str, ...], variable: str, key: str, path: str
) -> AllowedPublicKeys | None:
    """The parsed public key (None for HMAC); ConfigError if the key does not fit."""
    prepared: Any = None
    for name in algorithms:
        algo = _ALGORITHMS[name]
        try:
            prepared = algo.prepare_key(key)
        except Exception as exc:  # PyJWT and cryptography raise several unrelated types
            raise ConfigError(
                path, f"the key in {variable} is not usable for {name}: {exc}"
            ) from None
        if hasattr(prepared, "private_bytes"):
            raise ConfigError(
                path, f"{variable} must hold a public key for {name}, not a private key"
            )
        problem = algo.check_key_length(prepared)
        if problem:
            raise ConfigError(path, f"the key in {variable} is too weak for {name}: {problem}")
    return None if algorithms[0].startswith("HS") else prepared


def _jwt_rule(
    data: Mapping[str, object], path: str, claim: str, kind: IdKind, env: Mapping[str, str]
) -> IdentityRule:
    for required in ("algorithms", "key_env"):
        if required not in data:
            raise ConfigError(read.key(path, required), "is required for jwt_claim rules")
    algorithms = _algorithms(data["algorithms"], read.key(path, "algorithms"))
    env_path = read.key(path, "key_env")
    variable = read.env_name(data["key_env"], env_path)
    key = env.get(variable)
    if not key:
        raise ConfigError(env_path, f"environment variable {variable} is not set")
    return IdentityRule(
        IdSource.JWT_CLAIM,
        claim,
        kind,
        algorithms=algorithms,
        key=key,
        issuer=_optional_string(data, path, "issuer"),
        audience=_optional_string(data, path, "audience"),
        leeway_s=read.duration(data.get("leeway", 0), read.key(path, "leeway"), allow_zero=True),
        verify_key=_jwt_key(algorithms, variable, key, env_path),
    )


def _optional_string(data: Mapping[str, object], path: str, name: str) -> str | None:
    value = data.get(name)
    return None if value is None else read.string(value, read.key(path, name))


def tiers(value: object, path: str) -> TierConfig:
    data = read.mapping(value, path, ("tenants", "header", "default", "names"))
    tenants_path = read.key(path, "tenants")
    raw_tenants = read.string_keys(data.get("tenants", {}), tenants_path)
    tenants = {
        tenant_id(name, read.key(tenants_path, name)): tier_name(tier, read.key(tenants_path, name))
        for name, tier in raw_tenants.items()
    }
    header = data.get("header")
    names_path = read.key(path, "names")
    names = read.sequence(data.get("names", []), names_path)
    return TierConfig(
        tenants=MappingProxyType(tenants),
        header=None if header is None else header_name(header, read.key(path, "header")),
        default=tier_name(data.get("default", "default"), read.key(path, "default")),
        names=frozenset(tier_name(n, read.index(names_path, i)) for i, n in enumerate(names)),
    )
