"""Configuration: YAML -> frozen, validated dataclasses; every error names its key path.

This module owns the top level of the file (`listen`, `admin`, `state`, `services`,
`trusted_peers`, `limits`, `access_log`) and loading YAML; services are read by
proxy/config/services.py, webhook receivers (`notifications`) by
proxy/config/notifications.py, identity rules and tiers by proxy/config/identity.py, scalar
values by proxy/config/reader.py, and the dataclasses live in proxy/config/model.py (all
re-exported here). Errors are `ConfigError(path, reason)` with paths like
`services[0].rollout.steps[2].percent`; unknown keys are errors that list the allowed keys.
docs/configuration.md is the reference of every key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from proxy.config import reader as read
from proxy.config.http2 import http2
from proxy.config.model import (
    AccessLogConfig,
    Address,
    AdminConfig,
    Config,
    ForceConfig,
    Http2Config,
    Limits,
    Match,
    ReceiverConfig,
    ReleasesConfig,
    RolloutConfig,
    ServiceConfig,
    ShadowConfig,
    StateConfig,
    TlsCertificate,
    TlsConfig,
    Upstream,
    UpstreamsConfig,
    UpstreamTls,
)
from proxy.config.notifications import notifications
from proxy.config.services import service
from proxy.config.tls import listener_tls
from proxy.core.identity import (
    IdentityPolicy,
    IdentityRule,
    IdKind,
    IdSource,
    TierConfig,
    Unidentified,
)
from proxy.core.routing import Step, Variant
from proxy.errors import ConfigError

__all__ = [
    "AccessLogConfig",
    "Address",
    "AdminConfig",
    "Config",
    "ConfigError",
    "ForceConfig",
    "Http2Config",
    "IdKind",
    "IdSource",
    "IdentityPolicy",
    "IdentityRule",
    "Limits",
    "Match",
    "ReceiverConfig",
    "ReleasesConfig",
    "RolloutConfig",
    "ServiceConfig",
    "ShadowConfig",
    "StateConfig",
    "Step",
    "TierConfig",
    "TlsCertificate",
    "TlsConfig",
    "Unidentified",
    "Upstream",
    "UpstreamTls",
    "UpstreamsConfig",
    "Variant",
    "load_config",
    "load_source",
    "parse_config",
    "parse_text",
]

_TOP_KEYS = (
    "listen",
    "admin",
    "state",
    "services",
    "trusted_peers",
    "limits",
    "access_log",
    "releases",
    "http2",
    "tls",
    "notifications",
)
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9090"
DEFAULT_STATE_PATH = "state/rollouts.json"
DEFAULT_REDIS_PREFIX = "rollout-proxy"
_TIMINGS = ("reconcile", "lease", "timeout")
_REDIS_KEYS = ("url_env", "prefix", *_TIMINGS)
# limits that may be 0 (the rest must be >= 1 or > 0 seconds)
_ZERO_ALLOWED = frozenset(
    {
        "max_body_bytes",
        "pool_queue",
        "pool_idle_per_endpoint",
        "drain_s",
        "drain_notice_s",
        "retry_budget_percent",
        "retry_burst",
    }
)


def _admin(value: object, path: str, env: Mapping[str, str]) -> AdminConfig:
    data = read.mapping(value, path, ("listen", "token_env", "tls"))
    token_env = data.get("token_env")
    listen_path = read.key(path, "listen")
    tls = data.get("tls")
    admin = AdminConfig(
        listen=read.address(data.get("listen", DEFAULT_ADMIN_LISTEN), listen_path),
        token_env=None
        if token_env is None
        else read.env_name(token_env, read.key(path, "token_env")),
        tls=None if tls is None else listener_tls(tls, read.key(path, "tls")),
    )
    if not _loopback(admin.listen.host) and not env.get(admin.token_env or ""):
        raise ConfigError(
            listen_path,
            f"{admin.listen.host} is not a loopback address, and the admin API has no token: "
            "set admin.token_env to an environment variable holding a bearer token (and set "
            "the variable), or listen on 127.0.0.1",
        )
    return admin


def _loopback(host: str) -> bool:
    """Only loopback addresses (and `localhost`) keep the admin API off the network."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _only_with(data: Mapping[str, object], path: str, names: tuple[str, ...], backend: str) -> None:
    for name in names:
        if name in data:
            raise ConfigError(read.key(path, name), f"only used with backend: {backend}")


def _state(value: object, path: str, env: Mapping[str, str]) -> StateConfig:
    data = read.mapping(value, path, ("backend", "path", *_REDIS_KEYS))
    backend = read.choice(data.get("backend", "file"), read.key(path, "backend"), ("file", "redis"))
    if backend == "file":
        _only_with(data, path, _REDIS_KEYS, "redis")
        file_path = read.string(data.get("path", DEFAULT_STATE_PATH), read.key(path, "path"))
        return StateConfig(backend=backend, path=file_path)
    _only_with(data, path, ("path",), "file")
    url_path = read.key(path, "url_env")
    if "url_env" not in data:
        raise ConfigError(url_path, "is required with backend: redis")
    url_env = read.env_name(data["url_env"], url_path)
    url = env.get(url_env)
    if not url:
        raise ConfigError(url_path, f"environment variable {url_env} is not set")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(url_path, f"{url_env} must hold a redis://, rediss:// or unix:// URL")
    prefix = read.string(data.get("prefix", DEFAULT_REDIS_PREFIX), read.key(path, "prefix"))
    timings = {
        name: read.duration(data[name], read.key(path, name)) for name in _TIMINGS if name in data
    }
    config = StateConfig(
        backend=backend,
        path=None,
        url_env=url_env,
        url=url,
        prefix=prefix,
        **{f"{name}_s": seconds for name, seconds in timings.items()},
    )
    if config.lease_s < 2 * config.timeout_s:
        raise ConfigError(read.key(path, "lease"), "must be at least twice state.timeout")
    return config


def _access_log(value: object, path: str) -> AccessLogConfig:
    data = read.mapping(value, path, ("enabled", "path"))
    enabled = read.boolean(data.get("enabled", False), read.key(path, "enabled"))
    file_path = read.string(data.get("path", "-"), read.key(path, "path"))
    if file_path != "-" and (file_path.endswith("/") or "\0" in file_path):
        raise ConfigError(read.key(path, "path"), 'must be "-" (standard output) or a file path')
    return AccessLogConfig(enabled=enabled, path=file_path)


def _releases(value: object, path: str) -> ReleasesConfig:
    data = read.mapping(value, path, ("keep",))
    return ReleasesConfig(keep=read.integer(data.get("keep", 50), read.key(path, "keep"), 1, 10000))


def limit_keys() -> dict[str, str]:
    """YAML key -> Limits field: durations drop the `_s` suffix (`header_timeout: 10s`)."""
    return {f.name.removesuffix("_s"): f.name for f in dataclasses.fields(Limits)}


def _limits(value: object, path: str) -> Limits:
    keys = limit_keys()
    data = read.mapping(value, path, keys)
    values: dict[str, float | int] = {}
    for name, raw in data.items():
        field, item_path = keys[name], read.key(path, name)
        zero = field in _ZERO_ALLOWED
        if field.endswith("_s"):
            values[field] = read.duration(raw, item_path, allow_zero=zero)
        else:
            values[field] = read.integer(raw, item_path, 0 if zero else 1)
    return Limits(**values)  # type: ignore[arg-type]


def _services(value: object, path: str, env: Mapping[str, str]) -> tuple[ServiceConfig, ...]:
    items = read.sequence(value, path, min_items=1)
    services = tuple(service(item, read.index(path, i), env) for i, item in enumerate(items))
    names: dict[str, int] = {}
    matches: dict[Match, int] = {}
    for i, svc in enumerate(services):
        here = read.index(path, i)
        if svc.name in names:
            other = read.index(path, names[svc.name])
            raise ConfigError(f"{here}.name", f"duplicate service name {svc.name!r} (see {other})")
        if svc.match in matches:
            other = read.index(path, matches[svc.match])
            raise ConfigError(f"{here}.match", f"same match as {other}, so it would never be used")
        names[svc.name] = matches[svc.match] = i
    return services


def parse_config(data: object, env: Mapping[str, str]) -> Config:
    """Validate YAML data (already parsed) into a Config; raises ConfigError(path, reason)."""
    if data is None:
        raise ConfigError("", "the configuration is empty")
    if not isinstance(data, dict):
        raise ConfigError("", "the configuration must be a mapping of keys to values")
    top = read.mapping(data, "", _TOP_KEYS, required=("listen", "services"))
    listen = read.address(top["listen"], "listen")
    admin = _admin(top.get("admin", {}), "admin", env)
    if admin.listen == listen and listen.port != 0:
        raise ConfigError("admin.listen", f"must differ from listen ({listen})")
    peers = read.sequence(top.get("trusted_peers", []), "trusted_peers")
    config = Config(
        listen=listen,
        admin=admin,
        state=_state(top.get("state", {}), "state", env),
        services=_services(top["services"], "services", env),
        trusted_peers=tuple(
            read.network(p, read.index("trusted_peers", i)) for i, p in enumerate(peers)
        ),
        limits=_limits(top.get("limits", {}), "limits"),
        access_log=_access_log(top.get("access_log", {}), "access_log"),
        releases=_releases(top.get("releases", {}), "releases"),
        tls=None if top.get("tls") is None else listener_tls(top["tls"], "tls"),
        http2=http2(top.get("http2", {}), "http2"),
        notifications=notifications(top.get("notifications", []), "notifications", env),
    )
    _check_client_cert_rules(config)
    return config


def _check_client_cert_rules(config: Config) -> None:
    """An identity read from client certificates needs a listener that verifies them."""
    if config.tls is not None and config.tls.client_ca is not None:
        return
    for i, svc in enumerate(config.services):
        for j, rule in enumerate(svc.identity):
            if rule.source is IdSource.CLIENT_CERT:
                raise ConfigError(
                    f"services[{i}].identity[{j}].client_cert",
                    "needs tls.client_ca: only a certificate the listener verified is believed",
                )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            name = self.construct_object(key_node, deep=True)
            if isinstance(name, list | dict):
                continue  # unhashable: construct_mapping reports it
            if name in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found duplicate key {name!r}",
                    key_node.start_mark,
                )
            seen.add(name)
        return super().construct_mapping(node, deep=deep)


def _yaml_error(source: str, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return ConfigError(source, f"invalid YAML: {problem}")
    return ConfigError(source, f"line {mark.line + 1}, column {mark.column + 1}: {problem}")


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML file; `env` defaults to the process environment."""
    return load_source(path, env)[0]


def load_source(path: str | Path, env: Mapping[str, str] | None = None) -> tuple[Config, str]:
    """`load_config`, and the text it was read from (what worker processes are given, so that
    they serve exactly the config this process validated, whatever the file holds later)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, f"cannot read the file: {exc}") from None
    return parse_text(text, source, env), text


def parse_text(text: str, source: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate the YAML text of a config (`source` names it in YAML syntax errors)."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None
    return parse_config(data, os.environ if env is None else env)
