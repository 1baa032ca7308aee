"""The `tls:` blocks of the configuration (a listener's, and a service's `upstream_tls:`).

Each block is checked by loading it: every certificate, key and CA file is read and parsed
now, so a missing file, a key that does not match its certificate or a file that is not PEM is
a ConfigError naming the key, at load and on reload (when the running listener keeps its
certificates). Relative paths are relative to the working directory, as `state.path` is.
"""

from __future__ import annotations

from proxy.config import reader as read
from proxy.config.model import TlsCertificate, TlsConfig, UpstreamTls
from proxy.errors import ConfigError
from proxy.tls import Certificates, upstream_context

_LISTENER_KEYS = ("cert", "key", "certificates", "client_ca", "client_auth")
_UPSTREAM_KEYS = ("ca", "cert", "key", "verify", "server_name")


def _certificate(value: object, path: str) -> TlsCertificate:
    data = read.mapping(value, path, ("cert", "key"), required=("cert", "key"))
    return TlsCertificate(
        cert=read.string(data["cert"], read.key(path, "cert")),
        key=read.string(data["key"], read.key(path, "key")),
    )


def listener_tls(value: object, path: str) -> TlsConfig:
    """`tls: {cert, key}` or `tls: {certificates: [{cert, key}, ...]}`, with `client_ca` and
    `client_auth` (optional | required; required when only `client_ca` is given) for mTLS."""
    data = read.mapping(value, path, _LISTENER_KEYS)
    if "certificates" in data:
        for name in ("cert", "key"):
            if name in data:
                raise ConfigError(read.key(path, name), "give cert/key or certificates, not both")
        items_path = read.key(path, "certificates")
        items = read.sequence(data["certificates"], items_path, min_items=1)
        certificates = tuple(
            _certificate(item, read.index(items_path, i)) for i, item in enumerate(items)
        )
    else:
        certificates = (_certificate({k: data[k] for k in ("cert", "key") if k in data}, path),)
    client_ca = data.get("client_ca")
    ca = None if client_ca is None else read.string(client_ca, read.key(path, "client_ca"))
    auth_path = read.key(path, "client_auth")
    auth = read.choice(data.get("client_auth", "required" if ca else "none"), auth_path,
                       ("none", "optional", "required"))  # fmt: skip
    if auth != "none" and ca is None:
        raise ConfigError(auth_path, "needs client_ca: the CA client certificates chain to")
    config = TlsConfig(certificates=certificates, client_ca=ca, client_auth=auth)
    Certificates(config, path)  # loads every file now: a bad one names its key
    return config


def upstream_tls(value: object, path: str) -> UpstreamTls:
    """`upstream_tls: {ca, cert, key, verify, server_name}` of a service's https:// upstreams."""
    data = read.mapping(value, path, _UPSTREAM_KEYS)

    def text(name: str) -> str | None:
        item = data.get(name)
        return None if item is None else read.string(item, read.key(path, name))

    if ("cert" in data) != ("key" in data):
        missing = "key" if "cert" in data else "cert"
        raise ConfigError(read.key(path, missing), "a client certificate needs both cert and key")
    server_name = text("server_name")
    if server_name is not None:
        server_name = read.host(server_name, read.key(path, "server_name"))
    tls = UpstreamTls(
        ca=text("ca"),
        cert=text("cert"),
        key=text("key"),
        verify=read.boolean(data.get("verify", True), read.key(path, "verify")),
        server_name=server_name,
    )
    upstream_context(tls, path)  # loads every file now
    return tls
