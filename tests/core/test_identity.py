"""Identity extraction: every source, trust rules, ambiguity, JWT verification, tiers."""

from __future__ import annotations

import hmac
import re
import time
from base64 import urlsafe_b64encode
from collections.abc import Mapping
from hashlib import sha256
from pathlib import Path
from types import MappingProxyType

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.config import (
    Config,
    IdentityRule,
    IdKind,
    IdSource,
    Match,
    RolloutConfig,
    ServiceConfig,
    Step,
    TierConfig,
    Unidentified,
    Upstream,
    UpstreamsConfig,
    load_config,
)
from proxy.core.identity import (
    Identity,
    RequestView,
    cookie_value,
    header_rule_names,
    identify,
    relevant_headers,
    subject_for,
    subject_headers,
)
from proxy.core.routing import Subject

ROOT = Path(__file__).resolve().parents[2]
KEY = "k" * 32
HEADER = IdentityRule(IdSource.HEADER, "x-tenant-id", IdKind.TENANT)
COOKIE = IdentityRule(IdSource.COOKIE, "uid", IdKind.USER)
QUERY = IdentityRule(IdSource.QUERY, "user", IdKind.USER)
PATTERN = re.compile(r"^/t/(?P<id>[^/]+)/")
PATH = IdentityRule(IdSource.PATH, PATTERN.pattern, IdKind.TENANT, pattern=PATTERN)
JWT_HS = IdentityRule(IdSource.JWT_CLAIM, "sub", IdKind.USER, algorithms=("HS256",), key=KEY)
JWT_UID = IdentityRule(IdSource.JWT_CLAIM, "uid", IdKind.USER, algorithms=("HS256",), key=KEY)


def view(
    path: str = "/",
    query: str = "",
    headers: Mapping[str, str] | None = None,
    trusted: bool = True,
    peer: str = "10.0.0.7",
) -> RequestView:
    return RequestView(path, query, headers or {}, peer, trusted)


def one(rule: IdentityRule, request: RequestView) -> str | None:
    found = identify([rule], request)
    return None if found is None else found.value


def test_header_only_from_trusted_peers() -> None:
    headers = {"x-tenant-id": "acme"}
    assert identify([HEADER], view(headers=headers)) == Identity(
        "acme", IdKind.TENANT, IdSource.HEADER
    )
    assert identify([HEADER], view(headers=headers, trusted=False)) is None


def test_first_rule_that_yields_wins() -> None:
    request = view("/t/globex/x", "user=bob", {"cookie": "uid=alice"}, trusted=False)
    found = identify([HEADER, COOKIE, QUERY, PATH], request)
    assert found == Identity("alice", IdKind.USER, IdSource.COOKIE)
    found = identify([HEADER, PATH, QUERY], request)
    assert found == Identity("globex", IdKind.TENANT, IdSource.PATH)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("uid=alice", "alice"),
        ("a=1; uid=alice; b=2", "alice"),
        ('uid="alice"', "alice"),
        ("uid = alice ;x=y", "alice"),
        ("xuid=alice; uidx=bob", None),
        ("uid=alice; uid=bob", None),  # present twice: ambiguous
        ("uid=alice; uid=alice", None),
        ("garbage; uid", None),
        ("", None),
    ],
)
def test_cookie(header: str, expected: str | None) -> None:
    assert cookie_value(header, "uid") == expected
    assert one(COOKIE, view(headers={"cookie": header}, trusted=False)) == expected


def test_duplicate_cookie_falls_through_to_next_rule() -> None:
    request = view(query="user=carol", headers={"cookie": "uid=a; uid=b"})
    assert identify([COOKIE, QUERY], request) == Identity("carol", IdKind.USER, IdSource.QUERY)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("user=bob", "bob"),
        ("a=1&user=b%C3%B6b&c", "böb"),
        ("user=a+b", "a b"),
        ("us%65r=eve", "eve"),
        ("user=bob&user=bob", None),  # present twice: ambiguous
        ("user=&user=bob", None),
        ("user=", None),
        ("", None),
        ("other=1", None),
    ],
)
def test_query(query: str, expected: str | None) -> None:
    assert one(QUERY, view(query=query, trusted=False)) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/t/acme/orders", "acme"),
        ("/t/ac%6De/x", "acme"),
        ("/t/%2541/x", "%41"),  # decoded once only
        ("/t/a%2Fb/x", None),  # encoded slash
        ("/t/a%2fb/x", None),
        ("/t/a%5Cb/x", None),  # encoded backslash
        ("/t/a%00b/x", None),  # NUL
        ("/t/a%0Ab/x", None),  # control character
        ("/t/%FF/x", None),  # not UTF-8
        ("/t/%2e%2e/x", None),
        ("/t/acme/../victim/x", None),  # dot segment anywhere: extraction unreliable
        ("/t/acme/%2E/x", None),
        ("/t/a.b/x", "a.b"),
        ("/u/acme/x", None),
        ("/t/acme", None),
    ],
)
def test_path(path: str, expected: str | None) -> None:
    assert one(PATH, view(path, trusted=False)) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  acme\t", "acme"),
        ("Zoe\u0308", "Zo\u00eb"),
        ("", None),
        ("   ", None),
        ("a" * 256, "a" * 256),
        ("a" * 257, None),
        ("a\x01b", None),
        ("a\x7fb", None),
    ],
)
def test_values_are_canonical_and_bounded(raw: str, expected: str | None) -> None:
    assert one(HEADER, view(headers={"x-tenant-id": raw})) == expected


def bearer(token: str) -> RequestView:
    return view(headers={"authorization": f"Bearer {token}"}, trusted=False)


def hs_token(claims: Mapping[str, object], key: str = KEY, alg: str = "HS256") -> str:
    return jwt.encode(dict(claims), key, algorithm=alg)


def test_jwt_valid_hs256() -> None:
    token = hs_token({"sub": "alice", "exp": int(time.time()) + 60})
    assert identify([JWT_HS], bearer(token)) == Identity("alice", IdKind.USER, IdSource.JWT_CLAIM)
    request = view(headers={"authorization": f"bearer  {token} "})
    assert one(JWT_HS, request) == "alice"


def test_jwt_integer_claim_becomes_text() -> None:
    assert one(JWT_UID, bearer(hs_token({"uid": 1234}))) == "1234"
    assert one(JWT_HS, bearer(hs_token({"sub": 1234}))) is None  # PyJWT: "sub" must be a string


@pytest.mark.parametrize("claim", [True, 1.5, ["a"], {"id": "a"}, None])
@pytest.mark.parametrize("rule", [JWT_HS, JWT_UID], ids=["sub", "uid"])
def test_jwt_non_string_claim_yields_nothing(rule: IdentityRule, claim: object) -> None:
    assert one(rule, bearer(hs_token({rule.name: claim}))) is None


def test_jwt_missing_claim_yields_nothing() -> None:
    assert one(JWT_UID, bearer(hs_token({"sub": "alice"}))) is None


def test_jwt_alg_none_is_refused() -> None:
    token = jwt.encode({"sub": "alice"}, "", algorithm="none")
    assert one(JWT_HS, bearer(token)) is None
    unsigned = hs_token({"sub": "alice"}).rsplit(".", 1)[0] + "."
    assert one(JWT_HS, bearer(unsigned)) is None


def test_jwt_wrong_key() -> None:
    assert one(JWT_HS, bearer(hs_token({"sub": "alice"}, key="x" * 32))) is None


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice", "exp": int(time.time()) - 10},
        {"sub": "alice", "nbf": int(time.time()) + 3600},
        {"sub": "alice", "iat": int(time.time()) + 3600},
        {"sub": "alice", "aud": "someone-else"},  # an audience we were not configured for
    ],
)
def test_jwt_time_claims_are_checked(claims: dict[str, object]) -> None:
    assert one(JWT_HS, bearer(hs_token(claims))) is None


def test_jwt_leeway() -> None:
    rule = IdentityRule(
        IdSource.JWT_CLAIM, "sub", IdKind.USER, algorithms=("HS256",), key=KEY, leeway_s=60
    )
    assert one(rule, bearer(hs_token({"sub": "a", "exp": int(time.time()) - 10}))) == "a"


def test_jwt_issuer_and_audience_when_configured() -> None:
    rule = IdentityRule(
        IdSource.JWT_CLAIM,
        "sub",
        IdKind.USER,
        algorithms=("HS256",),
        key=KEY,
        issuer="https://idp",
        audience="shop",
    )
    good = {"sub": "a", "iss": "https://idp", "aud": "shop"}
    assert one(rule, bearer(hs_token(good))) == "a"
    for bad in ({"sub": "a", "aud": "shop"}, {**good, "iss": "evil"}, {**good, "aud": "other"}):
        assert one(rule, bearer(hs_token(bad))) is None


def test_jwt_malformed_or_oversized() -> None:
    assert one(JWT_HS, bearer("not-a-token")) is None
    assert one(JWT_HS, view(headers={"authorization": "Basic YTpi"})) is None
    huge = hs_token({"sub": "alice", "pad": "x" * 9000})
    assert one(JWT_HS, bearer(huge)) is None


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public_pem.decode()


def test_jwt_rs256_token_when_hs256_pinned(rsa_keys: tuple[rsa.RSAPrivateKey, str]) -> None:
    private, _ = rsa_keys
    token = jwt.encode({"sub": "alice"}, private, algorithm="RS256")
    assert one(JWT_HS, bearer(token)) is None


def test_jwt_rs256_and_key_confusion(rsa_keys: tuple[rsa.RSAPrivateKey, str]) -> None:
    private, public_pem = rsa_keys
    rule = IdentityRule(
        IdSource.JWT_CLAIM,
        "sub",
        IdKind.USER,
        algorithms=("RS256",),
        key=public_pem,
        verify_key=private.public_key(),
    )
    assert one(rule, bearer(jwt.encode({"sub": "alice"}, private, algorithm="RS256"))) == "alice"

    # HS256 signed with the public key as HMAC secret (the classic confusion attack)
    def b64(data: bytes) -> str:
        return urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(b'{"sub":"mallory"}')
    signature = hmac.new(public_pem.encode(), signing_input.encode(), sha256).digest()
    assert one(rule, bearer(f"{signing_input}.{b64(signature)}")) is None


def service(
    rules: tuple[IdentityRule, ...], unidentified: Unidentified = Unidentified.STABLE
) -> ServiceConfig:
    endpoint = (Upstream("127.0.0.1", 9001),)
    return ServiceConfig(
        name="shop",
        match=Match(),
        identity=rules,
        unidentified=unidentified,
        tiers=TierConfig(
            tenants=MappingProxyType({"acme": "enterprise", "qa": "internal"}),
            header="x-tenant-tier",
            default="free",
            names=frozenset({"paid"}),
        ),
        upstreams=UpstreamsConfig(endpoint, endpoint),
        rollout=RolloutConfig("canary", "s", MappingProxyType({}), (Step(),)),
    )


def test_tier_from_tenant_map_wins_over_header() -> None:
    svc = service((HEADER,))
    headers = {"x-tenant-id": "acme", "x-tenant-tier": "paid"}
    assert subject_for(svc.identity_policy, view(headers=headers)) == Subject(
        "acme", "acme", "enterprise"
    )


def test_tier_header_needs_trust_and_a_known_tier() -> None:
    svc = service((COOKIE,))
    cookie = {"cookie": "uid=u1"}
    assert (
        subject_for(svc.identity_policy, view(headers={**cookie, "x-tenant-tier": "paid"})).tier
        == "paid"
    )
    untrusted = view(headers={**cookie, "x-tenant-tier": "paid"}, trusted=False)
    assert subject_for(svc.identity_policy, untrusted) == Subject("u1", None, "free")
    unknown = view(headers={**cookie, "x-tenant-tier": "platinum"})
    assert subject_for(svc.identity_policy, unknown).tier == "free"


def test_user_identity_is_not_looked_up_as_tenant() -> None:
    svc = service((COOKIE,))
    assert subject_for(svc.identity_policy, view(headers={"cookie": "uid=acme"})) == Subject(
        "acme", None, "free"
    )


def test_unidentified_policies() -> None:
    request = view(headers={"x-tenant-tier": "internal"}, peer="192.0.2.1")
    assert subject_for(service((HEADER,)).identity_policy, request) == Subject(
        None, None, "internal"
    )
    by_ip = service((HEADER,), Unidentified.CLIENT_IP)
    assert subject_for(by_ip.identity_policy, request) == Subject("192.0.2.1", None, "internal")
    untrusted = view(peer="192.0.2.1", trusted=False)
    assert subject_for(by_ip.identity_policy, untrusted) == Subject("192.0.2.1", None, "free")


def test_subject_headers_name_all_a_header_only_subject_reads() -> None:
    assert subject_headers(service((HEADER,)).identity_policy) == ("x-tenant-id", "x-tenant-tier")
    assert subject_headers(service((HEADER, COOKIE)).identity_policy) == (
        "x-tenant-id",
        "cookie",
        "x-tenant-tier",
    )
    for rules in [(HEADER, QUERY), (PATH,), (JWT_HS,)]:
        assert (
            subject_headers(service(rules).identity_policy) is None
        )  # path, query, a token: not headers only
    assert (
        subject_headers(service((HEADER,), Unidentified.CLIENT_IP).identity_policy) is None
    )  # the peer too


@pytest.mark.parametrize("trusted", [True, False])
def test_a_header_only_subject_depends_on_those_headers_and_trust_alone(trusted: bool) -> None:
    """What the router's cache relies on: same trust and header values, same subject."""
    svc = service((HEADER, COOKIE))
    for headers in [
        {"x-tenant-id": "acme"},
        {"x-tenant-id": "qa", "x-tenant-tier": "paid"},
        {"cookie": "uid=u1", "x-tenant-tier": "paid"},
        {"x-tenant-tier": "internal"},
        {},
    ]:
        first = view("/a", "x=1", headers, trusted, peer="192.0.2.1")
        second = view("/t/other/b", "user=u2", headers, trusted, peer="198.51.100.7")
        assert subject_for(svc.identity_policy, first) == subject_for(svc.identity_policy, second)


def example() -> Config:
    return load_config(ROOT / "config" / "example.yaml", {"JWT_KEY": KEY})


def test_header_sets_of_the_example() -> None:
    policies = [service.identity_policy for service in example().services]
    assert header_rule_names(policies) == {"x-tenant-id", "x-tenant-tier"}
    assert relevant_headers(policies) == {"x-tenant-id", "x-tenant-tier", "cookie", "authorization"}


def test_example_service_end_to_end() -> None:
    svc = example().services[0]
    token = hs_token({"sub": "u-9"})
    request = view("/t/qa-team/x", headers={"authorization": f"Bearer {token}"}, trusted=False)
    assert subject_for(svc.identity_policy, request) == Subject("qa-team", "qa-team", "internal")
    anonymous = view(headers={"x-tenant-id": "bigbank", "x-tenant-tier": "internal"}, trusted=False)
    assert subject_for(svc.identity_policy, anonymous) == Subject(None, None, "free")
