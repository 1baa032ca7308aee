"""Configuration: the shipped files load, and every broken value names its exact key path."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.config import (
    Address,
    ConfigError,
    IdSource,
    Limits,
    StateConfig,
    Upstream,
    Variant,
    load_config,
    parse_config,
)
from proxy.config.reader import duration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.yaml"
ENV = {"JWT_KEY": "k" * 32}

Data = dict[str, Any]


def example_data() -> Data:
    data: Data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return copy.deepcopy(data)


def svc(data: Data) -> Data:
    service: Data = data["services"][0]
    return service


def rule(data: Data, i: int) -> Data:
    found: Data = svc(data)["identity"][i]
    return found


def step(data: Data, i: int) -> Data:
    found: Data = svc(data)["rollout"]["steps"][i]
    return found


def test_example_loads() -> None:
    config = load_config(EXAMPLE, ENV)
    assert config.listen == Address("127.0.0.1", 8080)
    assert config.admin.token_env == "ROLLOUT_ADMIN_TOKEN"
    assert config.state == StateConfig("file", "state/rollouts.json")
    assert config.trusted_peers == (ip_network("127.0.0.1/32"),)
    assert config.limits == Limits()
    service = config.services[0]
    # Every source but client certificates, which need a TLS listener (tests/test_tls.py).
    assert [r.source for r in service.identity] == [
        s for s in IdSource if s is not IdSource.CLIENT_CERT
    ]
    assert service.identity[0].name == "x-tenant-id"
    assert service.identity[4].key == ENV["JWT_KEY"]
    assert service.identity[4].algorithms == ("HS256",)
    assert service.tiers.names == {"enterprise", "internal", "free"}
    assert service.upstreams.stable == (Upstream("127.0.0.1", 9001), Upstream("127.0.0.1", 9011))
    assert str(service.upstreams.canary[0]) == "http://127.0.0.1:9002"
    assert dict(service.rollout.pins) == {"beta-corp": Variant.CANARY, "bigbank": Variant.STABLE}
    steps = service.rollout.steps
    assert [s.percent for s in steps] == [100, 100, 1, 10, 25, 100]
    assert steps[0].tiers == {"internal"}
    assert steps[0].observe_s == 120
    assert steps[1].tenants == {"acme", "globex"}
    assert steps[5].observe_s is None


def test_demo_loads_without_environment() -> None:
    config = load_config(ROOT / "config" / "demo.yaml", {})
    assert config.listen.port == 0
    assert config.admin.listen.port == 0
    service = config.services[0]
    assert service.name == "shop"
    assert service.tiers.names == {"internal", "free", "paid", "enterprise"}
    assert [u.port for u in service.upstreams.stable + service.upstreams.canary] == [18001, 18002]


def test_defaults() -> None:
    data = {"listen": "[::1]:0", "services": [example_data()["services"][0]]}
    svc(data)["identity"].pop()
    config = parse_config(data, {})
    assert config.listen == Address("::1", 0)
    assert str(config.listen) == "[::1]:0"
    assert str(config.admin.listen) == "127.0.0.1:9090"
    assert config.admin.token_env is None
    assert config.state == StateConfig()
    assert config.trusted_peers == ()
    assert (config.access_log.enabled, config.access_log.path) == (False, "-")


def test_access_log_to_a_file() -> None:
    data = example_data()
    data["access_log"] = {"enabled": True, "path": "/var/log/rollout-proxy/access.log"}
    access_log = load_config_data(data).access_log
    assert (access_log.enabled, access_log.path) == (True, "/var/log/rollout-proxy/access.log")


def test_limits_and_durations() -> None:
    data = example_data()
    data["limits"] = {"header_timeout": "250ms", "drain": 0, "max_body_bytes": 0, "eject": "2m"}
    limits = load_config_data(data).limits
    assert (limits.header_timeout_s, limits.drain_s, limits.eject_s) == (0.25, 0.0, 120.0)
    assert limits.max_connections == 10_000


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("250ms", 0.25), ("5s", 5), ("2m", 120), ("1h", 3600), (3, 3), (0.5, 0.5), ("7", 7)],
)
def test_duration_forms(raw: object, seconds: float) -> None:
    assert duration(raw, "x") == seconds


def test_redis_state() -> None:
    data = example_data()
    data["state"] = {"backend": "redis", "url_env": "REDIS_URL", "prefix": "ro", "lease": "4s"}
    url = "redis://:secret@127.0.0.1:6379/0"
    config = parse_config(data, {**ENV, "REDIS_URL": url})
    assert config.state == StateConfig(
        "redis", None, "REDIS_URL", url, "ro", reconcile_s=1.0, lease_s=4.0, timeout_s=0.5
    )
    assert "secret" not in repr(config.state)


@pytest.mark.parametrize(
    ("state", "env", "message"),
    [
        ({"url_env": "R"}, {}, "state.url_env: environment variable R is not set"),
        ({"url_env": "R"}, {"R": "http://x"}, "state.url_env: R must hold a redis://"),
        ({"url_env": "R", "lease": "1s", "timeout": "1s"}, {"R": "redis://x"}, "state.lease"),
        ({"url_env": "R", "reconcile": "soon"}, {"R": "redis://x"}, "state.reconcile: must be"),
        ({"url_env": "R", "path": "x.json"}, {"R": "redis://x"}, "state.path: only used with"),
    ],
)
def test_redis_state_errors_name_the_key(
    state: dict[str, object], env: dict[str, str], message: str
) -> None:
    data = example_data()
    data["state"] = {"backend": "redis", **state}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(data, {**ENV, **env})


def test_file_state_refuses_redis_keys() -> None:
    data = example_data()
    data["state"] = {"backend": "file", "lease": "3s"}
    with pytest.raises(ConfigError, match=r"state\.lease: only used with backend: redis"):
        parse_config(data, ENV)


def test_blue_green_and_canary_free_configs() -> None:
    data = example_data()
    svc(data)["rollout"] = {"strategy": "blue-green", "steps": [{"percent": 0}, {"percent": 100}]}
    assert load_config_data(data).services[0].rollout.salt == "checkout"  # defaults to the name
    svc(data)["rollout"]["steps"] = [{"percent": 0}]
    svc(data)["upstreams"]["canary"] = []
    assert load_config_data(data).services[0].upstreams.canary == ()


def load_config_data(data: Data) -> Any:
    return parse_config(data, ENV)


@pytest.fixture(scope="module")
def rsa_pems() -> tuple[str, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return public.decode(), private_pem.decode()


def test_rs256_public_key(rsa_pems: tuple[str, str]) -> None:
    data = example_data()
    rule(data, 4)["algorithms"] = ["RS256", "PS256"]
    config = parse_config(data, {"JWT_KEY": rsa_pems[0]})
    assert config.services[0].identity[4].verify_key is not None


@pytest.mark.parametrize(
    ("env_key", "reason"),
    [
        ("secret", "too weak for HS256"),
        ("public", "not usable for HS256"),
    ],
)
def test_hmac_key_checks(rsa_pems: tuple[str, str], env_key: str, reason: str) -> None:
    key = {"secret": "short", "public": rsa_pems[0]}[env_key]
    with pytest.raises(ConfigError) as err:
        parse_config(example_data(), {"JWT_KEY": key})
    assert err.value.path == "services[0].identity[4].key_env"
    assert reason in err.value.reason
    assert "JWT_KEY" in err.value.reason


@pytest.mark.parametrize(
    ("which", "reason"), [("private", "must hold a public key"), ("hmac", "not usable for RS256")]
)
def test_rs256_key_checks(rsa_pems: tuple[str, str], which: str, reason: str) -> None:
    data = example_data()
    rule(data, 4)["algorithms"] = ["RS256"]
    key = rsa_pems[1] if which == "private" else "k" * 64
    with pytest.raises(ConfigError) as err:
        parse_config(data, {"JWT_KEY": key})
    assert err.value.path == "services[0].identity[4].key_env"
    assert reason in err.value.reason


Mutation = Callable[[Data], object]
S0 = "services[0]"
BROKEN: list[tuple[str, Mutation, str, str]] = [
    ("no services", lambda d: d.pop("services"), "services", "is required"),
    ("empty services", lambda d: d.update(services=[]), "services", "at least 1"),
    (
        "unknown top key",
        lambda d: d.update(listner=1),
        "listner",
        "unknown key; expected one of: access_log, admin, http2, limits, listen, notifications, "
        "releases, services, state, tls, trusted_peers",
    ),
    (
        "access log enabled not a boolean",
        lambda d: d.update(access_log={"enabled": "yes"}),
        "access_log.enabled",
        "must be true or false",
    ),
    (
        "access log unknown key",
        lambda d: d.update(access_log={"file": "a.log"}),
        "access_log.file",
        "expected one of: enabled, path",
    ),
    (
        "access log path a directory",
        lambda d: d.update(access_log={"enabled": True, "path": "/var/log/"}),
        "access_log.path",
        "a file path",
    ),
    (
        "access log path empty",
        lambda d: d.update(access_log={"path": ""}),
        "access_log.path",
        "empty",
    ),
    ("listen no port", lambda d: d.update(listen="8080"), "listen", '"host:port"'),
    ("listen bad port", lambda d: d.update(listen="[::1]:99999"), "listen", "not in 0..65535"),
    ("listen unbracketed v6", lambda d: d.update(listen="::1:80"), "listen", "IPv6 in brackets"),
    (
        "admin on data port",
        lambda d: d["admin"].update(listen="127.0.0.1:8080"),
        "admin.listen",
        "must differ",
    ),
    ("admin token env", lambda d: d["admin"].update(token_env="1X"), "admin.token_env", "variable"),
    ("state backend", lambda d: d["state"].update(backend="s3"), "state.backend", "file, redis"),
    (
        "redis without url",
        lambda d: d.update(state={"backend": "redis"}),
        "state.url_env",
        "is required with backend: redis",
    ),
    (
        "redis url unset",
        lambda d: d.update(state={"backend": "redis", "url_env": "REDIS_URL"}),
        "state.url_env",
        "environment variable REDIS_URL is not set",
    ),
    ("file with prefix", lambda d: d["state"].update(prefix="x"), "state.prefix", "redis"),
    ("service name", lambda d: svc(d).update(name="Checkout!"), f"{S0}.name", "[a-z0-9_-]"),
    (
        "duplicate name",
        lambda d: d["services"].append({**svc(d), "match": {}}),
        "services[1].name",
        "duplicate service name 'checkout' (see services[0])",
    ),
    (
        "duplicate match",
        lambda d: d["services"].append({**svc(d), "name": "other"}),
        "services[1].match",
        "never be used",
    ),
    (
        "path prefix",
        lambda d: svc(d)["match"].update(path_prefix="api"),
        f"{S0}.match.path_prefix",
        "/",
    ),
    ("match port", lambda d: svc(d)["match"].update(port=80), f"{S0}.match.port", "unknown key"),
    (
        "underscore header",
        lambda d: rule(d, 0).update(header="X_Tenant"),
        f"{S0}.identity[0].header",
        "no '_'",
    ),
    (
        "two sources",
        lambda d: rule(d, 0).update(cookie="t"),
        f"{S0}.identity[0]",
        "exactly one of: header, cookie, query, path, jwt_claim",
    ),
    ("no source", lambda d: rule(d, 0).pop("header"), f"{S0}.identity[0]", "exactly one of"),
    ("no kind", lambda d: rule(d, 1).pop("kind"), f"{S0}.identity[1].kind", "is required"),
    ("bad kind", lambda d: rule(d, 1).update(kind="org"), f"{S0}.identity[1].kind", "tenant, user"),
    (
        "jwt key on header rule",
        lambda d: rule(d, 0).update(algorithms=["HS256"]),
        f"{S0}.identity[0].algorithms",
        "unknown key; expected one of: header, kind",
    ),
    (
        "reserved header",
        lambda d: rule(d, 0).update(header="Authorization"),
        f"{S0}.identity[0].header",
        "cannot carry",
    ),
    ("regex", lambda d: rule(d, 3).update(path="^/t/(?P<id>"), f"{S0}.identity[3].path", "regular"),
    (
        "regex no id",
        lambda d: rule(d, 3).update(path="^/t/([^/]+)/"),
        f"{S0}.identity[3].path",
        "(?P<id>",
    ),
    (
        "jwt no algs",
        lambda d: rule(d, 4).pop("algorithms"),
        f"{S0}.identity[4].algorithms",
        "required",
    ),
    (
        "jwt empty algs",
        lambda d: rule(d, 4).update(algorithms=[]),
        f"{S0}.identity[4].algorithms",
        "at least 1",
    ),
    (
        "jwt alg none",
        lambda d: rule(d, 4).update(algorithms=["HS256", "none"]),
        f"{S0}.identity[4].algorithms[1]",
        '"none" is never accepted',
    ),
    (
        "jwt alg None",
        lambda d: rule(d, 4).update(algorithms=["None"]),
        f"{S0}.identity[4].algorithms[0]",
        '"none" is never accepted',
    ),
    (
        "jwt mixed",
        lambda d: rule(d, 4).update(algorithms=["HS256", "RS256"]),
        f"{S0}.identity[4].algorithms",
        "must not mix HMAC",
    ),
    (
        "jwt alg",
        lambda d: rule(d, 4).update(algorithms=["HS257"]),
        f"{S0}.identity[4].algorithms[0]",
        "one of",
    ),
    (
        "jwt key unset",
        lambda d: rule(d, 4).update(key_env="OTHER_KEY"),
        f"{S0}.identity[4].key_env",
        "environment variable OTHER_KEY is not set",
    ),
    (
        "jwt no key_env",
        lambda d: rule(d, 4).pop("key_env"),
        f"{S0}.identity[4].key_env",
        "required",
    ),
    (
        "jwt leeway",
        lambda d: rule(d, 4).update(leeway="soon"),
        f"{S0}.identity[4].leeway",
        "duration",
    ),
    ("jwt issuer", lambda d: rule(d, 4).update(issuer=5), f"{S0}.identity[4].issuer", "string"),
    (
        "unidentified",
        lambda d: svc(d).update(unidentified="random"),
        f"{S0}.unidentified",
        "client_ip",
    ),
    (
        "tier name",
        lambda d: svc(d)["tiers"]["tenants"].update(acme="gold tier"),
        f"{S0}.tiers.tenants.acme",
        "tier name",
    ),
    ("tier default", lambda d: svc(d)["tiers"].update(default=5), f"{S0}.tiers.default", "string"),
    (
        "tier header",
        lambda d: svc(d)["tiers"].update(header="Cookie"),
        f"{S0}.tiers.header",
        "cannot carry",
    ),
    (
        "tenant spaces",
        lambda d: svc(d)["tiers"]["tenants"].update({" acme": "free"}),
        f"{S0}.tiers.tenants. acme",
        "canonical",
    ),
    (
        "no stable",
        lambda d: svc(d)["upstreams"].update(stable=[]),
        f"{S0}.upstreams.stable",
        "at least 1",
    ),
    (
        "ftp upstream",
        lambda d: svc(d)["upstreams"]["stable"].append("ftp://10.0.0.1:21"),
        f"{S0}.upstreams.stable[2]",
        "scheme must be http or https",
    ),
    (
        "upstream path",
        lambda d: svc(d)["upstreams"].update(canary=["http://127.0.0.1:9002/api"]),
        f"{S0}.upstreams.canary[0]",
        "no path",
    ),
    (
        "upstream duplicate",
        lambda d: svc(d)["upstreams"]["stable"].append("http://127.0.0.1:9001/"),
        f"{S0}.upstreams.stable[2]",
        f"duplicate of {S0}.upstreams.stable[0]",
    ),
    (
        "canary needed",
        lambda d: svc(d)["upstreams"].update(canary=[]),
        f"{S0}.upstreams.canary",
        "rollout.steps[0] sends traffic to the canary",
    ),
    (
        "strategy",
        lambda d: svc(d)["rollout"].update(strategy="linear"),
        f"{S0}.rollout.strategy",
        "blue-green",
    ),
    (
        "blue-green percent",
        lambda d: svc(d)["rollout"].update(strategy="blue-green"),
        f"{S0}.rollout.steps[2].percent",
        "must be 0 or 100",
    ),
    (
        "percent high",
        lambda d: step(d, 2).update(percent=101),
        f"{S0}.rollout.steps[2].percent",
        "must be a number from 0 to 100",
    ),
    (
        "percent text",
        lambda d: step(d, 2).update(percent="10%"),
        f"{S0}.rollout.steps[2].percent",
        "0 to 100",
    ),
    (
        "percent bool",
        lambda d: step(d, 2).update(percent=True),
        f"{S0}.rollout.steps[2].percent",
        "0 to 100",
    ),
    (
        "percent fine",
        lambda d: step(d, 2).update(percent=0.001),
        f"{S0}.rollout.steps[2].percent",
        "0.01",
    ),
    (
        "tier typo",
        lambda d: step(d, 0).update(tiers=["interal"]),
        f"{S0}.rollout.steps[0].tiers[0]",
        "unknown tier 'interal'; known tiers: enterprise, free, internal",
    ),
    (
        "empty tiers",
        lambda d: step(d, 0).update(tiers=[]),
        f"{S0}.rollout.steps[0].tiers",
        "at least 1",
    ),
    (
        "observe",
        lambda d: step(d, 3).update(observe="10 minutes"),
        f"{S0}.rollout.steps[3].observe",
        "duration",
    ),
    ("no steps", lambda d: svc(d)["rollout"].update(steps=[]), f"{S0}.rollout.steps", "at least 1"),
    (
        "step key",
        lambda d: step(d, 1).update(weight=5),
        f"{S0}.rollout.steps[1].weight",
        "expected one of: observe, percent, shadow, tenants, tiers",
    ),
    (
        "pin variant",
        lambda d: svc(d)["rollout"]["pins"].update({"beta-corp": "beta"}),
        f"{S0}.rollout.pins.beta-corp",
        "stable, canary",
    ),
    (
        "pin key",
        lambda d: svc(d)["rollout"]["pins"].update({123: "canary"}),
        f"{S0}.rollout.pins.123",
        "strings",
    ),
    (
        "empty salt",
        lambda d: svc(d)["rollout"].update(salt=""),
        f"{S0}.rollout.salt",
        "must not be empty",
    ),
    (
        "tenants without tenant rules",
        lambda d: [r.update(kind="user") for r in svc(d)["identity"]],
        f"{S0}.tiers.tenants",
        "no identity rule has kind: tenant",
    ),
    (
        "peer host bits",
        lambda d: d.update(trusted_peers=["10.0.0.1/8"]),
        "trusted_peers[0]",
        "host bits",
    ),
    (
        "peers not list",
        lambda d: d.update(trusted_peers="127.0.0.1"),
        "trusted_peers",
        "must be a list",
    ),
    (
        "zero timeout",
        lambda d: d.update(limits={"header_timeout": "0s"}),
        "limits.header_timeout",
        "> 0",
    ),
    (
        "limit int",
        lambda d: d.update(limits={"max_connections": 0}),
        "limits.max_connections",
        "from 1",
    ),
    (
        "limit float",
        lambda d: d.update(limits={"max_headers": 1.5}),
        "limits.max_headers",
        "integer",
    ),
    (
        "limit negative",
        lambda d: d.update(limits={"max_body_bytes": -1}),
        "limits.max_body_bytes",
        "from 0",
    ),
    (
        "limit name",
        lambda d: d.update(limits={"header_timeout_s": 1}),
        "limits.header_timeout_s",
        "header_timeout",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "reason"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_broken_config_names_the_key(mutate: Mutation, path: str, reason: str) -> None:
    data = example_data()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_config(data, ENV)
    assert err.value.path == path
    assert reason in err.value.reason
    assert str(err.value) == f"{path}: {err.value.reason}"


@pytest.mark.parametrize("data", [None, [], "listen: x"])
def test_document_must_be_a_mapping(data: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, ENV)
    assert err.value.path == ""


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.0.1:1\nservices: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(bad, ENV)
    assert err.value.path == str(bad)
    assert err.value.reason.startswith("line ")


def test_yaml_duplicate_keys_are_errors(tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\nservices: []\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(dup, ENV)
    assert "line 2" in err.value.reason
    assert "duplicate key 'listen'" in err.value.reason


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", ENV)


def test_the_error_floor_of_the_analysis() -> None:
    data = example_data()
    assert load_config_data(data).services[0].rollout.analysis.error_min_rate == 0.001
    svc(data)["rollout"]["analysis"] = {"errors": {"max_increase": 0.2, "min_rate": 0}}
    analysis = load_config_data(data).services[0].rollout.analysis
    assert (analysis.error_max_increase, analysis.error_min_rate) == (0.2, 0.0)
    svc(data)["rollout"]["analysis"] = {"errors": {"min_rate": 0.9}}
    with pytest.raises(ConfigError) as err:
        load_config_data(data)
    assert err.value.path == "services[0].rollout.analysis.errors.min_rate"
    assert "from 0 to 0.5" in err.value.reason


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "10.1.2.3", "admin.internal"])
def test_a_non_loopback_admin_listener_needs_a_token(host: str) -> None:
    data = example_data()
    data["admin"] = {"listen": f"{host}:9090"}
    with pytest.raises(ConfigError) as err:
        parse_config(data, ENV)
    assert err.value.path == "admin.listen"
    assert "admin.token_env" in err.value.reason
    assert "127.0.0.1" in err.value.reason
    # A configured token variable that is not set is no token either.
    data["admin"]["token_env"] = "ADMIN_TOKEN"
    with pytest.raises(ConfigError, match=r"admin\.listen"):
        parse_config(data, ENV)
    config = parse_config(data, {**ENV, "ADMIN_TOKEN": "secret"})
    assert config.admin.token_env == "ADMIN_TOKEN"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "[::1]", "localhost"])
def test_a_loopback_admin_listener_needs_no_token(host: str) -> None:
    data = example_data()
    data["admin"] = {"listen": f"{host}:9090"}
    assert parse_config(data, ENV).admin.token_env is None
