"""TLS contexts: the data listener's (certificates chosen by SNI, optional client certificates,
certificates swapped on reload without dropping a connection) and the upstreams'.

Defaults are today's safe ones: TLS 1.2 and 1.3 only; for TLS 1.2, only forward-secret AEAD
suites (TLS 1.3's suites are all of that kind and fixed by OpenSSL); no compression; session
tickets on (OpenSSL's default), so returning clients resume. ALPN offers `http/1.1`, and `h2`
before it when the config turns HTTP/2 on (`http2.enabled`): offering `h2` to a listener that
did not speak it would break every client that takes it at its word.

Reload: the listener keeps one base context for its whole life; its SNI callback hands every
new handshake the context of the current certificates for the name the client asked for (the
first certificate when none matches, or the client sent no name). A reload builds the new
contexts first and swaps them in whole only when every file loaded, so a bad certificate
leaves the old ones serving. Connections already open keep the certificate they began with.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from proxy.errors import ConfigError

if TYPE_CHECKING:
    import asyncio

    from proxy.config.model import TlsCertificate, TlsConfig, UpstreamTls

# TLS 1.2 suites: ECDHE key exchange (forward secrecy) with AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN = ["http/1.1"]
ALPN_H2 = ["h2", "http/1.1"]
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


NO_CERT: Mapping[str, str] = MappingProxyType({})


def peer_names(peercert: Any) -> Mapping[str, str]:
    """What identity rules may read of a verified client certificate (`getpeercert()`'s
    form): its subject's common name (`cn`) and its first subjectAltName DNS name (`dns`) and
    URI (`uri`, a SPIFFE id in a mesh). Empty when there is none."""
    if not isinstance(peercert, dict) or not peercert:
        return NO_CERT
    names: dict[str, str] = {}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and "cn" not in names:
                names["cn"] = str(value)
    for kind, value in peercert.get("subjectAltName", ()):
        field = {"DNS": "dns", "URI": "uri"}.get(kind)
        if field is not None and field not in names:
            names[field] = str(value)
    return MappingProxyType(names)


def _hardened(context: ssl.SSLContext, alpn: list[str] = ALPN) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(alpn)
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str | None, path: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(path, f"cannot read {exc.filename or cert}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(path, f"not a usable PEM certificate chain and key: {exc}") from None


def _load_ca(context: ssl.SSLContext, ca: str, path: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise ConfigError(path, f"cannot read {ca}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(path, f"not a usable PEM CA bundle: {exc}") from None


def certificate_names(cert_file: str, path: str) -> tuple[str, ...]:
    """The DNS names a certificate serves (subjectAltName; its common name when it has
    none), lower-cased; `*.example.com` wildcards as they are."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        with open(cert_file, "rb") as handle:
            leaf = x509.load_pem_x509_certificate(handle.read())
    except (OSError, ValueError) as exc:
        raise ConfigError(path, f"cannot read a PEM certificate from {cert_file}: {exc}") from None
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(n.lower() for n in names)


def _server_context(
    certificate: TlsCertificate, config: TlsConfig, path: str, alpn: list[str] = ALPN
) -> ssl.SSLContext:
    context = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), alpn)
    _load_chain(context, certificate.cert, certificate.key, path)
    if config.client_ca is not None:
        _load_ca(context, config.client_ca, "tls.client_ca")
    context.verify_mode = _VERIFY[config.client_auth]
    return context


class Certificates:
    """One loaded set of listener certificates: a context per certificate, by name."""

    __slots__ = ("default", "exact", "wildcard")

    def __init__(self, config: TlsConfig, path: str = "tls", alpn: list[str] = ALPN) -> None:
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}  # "example.com" for "*.example.com"
        contexts = []
        for i, certificate in enumerate(config.certificates):
            item = f"{path}.certificates[{i}]" if len(config.certificates) > 1 else path
            context = _server_context(certificate, config, f"{item}.cert", alpn)
            contexts.append(context)
            for name in certificate_names(certificate.cert, f"{item}.cert"):
                table = self.wildcard if name.startswith("*.") else self.exact
                table.setdefault(name.removeprefix("*."), context)  # the first one listed wins
        self.default = contexts[0]

    def for_name(self, server_name: str | None) -> ssl.SSLContext:
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is None:
            found = self.wildcard.get(name.partition(".")[2])
        return found or self.default


class ListenerTls:
    """The data (or admin) listener's TLS: the context to listen with, certificates
    swappable while it listens. `h2`: ALPN offers h2 before http/1.1."""

    def __init__(self, config: TlsConfig, path: str = "tls", *, h2: bool = False) -> None:
        self.config = config
        self.path = path
        self.alpn = ALPN_H2 if h2 else ALPN
        self.certificates = Certificates(config, path, self.alpn)
        # The base context: its own certificate is only a fallback (every handshake is handed
        # the current set's context by the SNI callback), its verify mode and client CA stay.
        self.context = _server_context(config.certificates[0], config, f"{path}.cert", self.alpn)
        self.context.sni_callback = self._choose

    def _choose(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        conn.context = self.certificates.for_name(server_name)

    def reload(self, config: TlsConfig, *, h2: bool | None = None) -> None:
        """Read the certificates of `config` again and serve them to new connections; raises
        ConfigError (and keeps serving the old ones) when any does not load. Client
        verification (`client_ca`, `client_auth`) cannot change without a restart. `h2`: the
        ALPN offer of new connections (None: as before)."""
        old = self.config
        if (config.client_ca, config.client_auth) != (old.client_ca, old.client_auth):
            raise ConfigError(f"{self.path}.client_ca", "changes only with a restart")
        alpn = self.alpn if h2 is None else ALPN_H2 if h2 else ALPN
        fresh = Certificates(config, self.path, alpn)
        self.certificates, self.config, self.alpn = fresh, config, alpn


def upstream_context(tls: UpstreamTls, path: str) -> ssl.SSLContext:
    """The client context for a service's https:// upstreams."""
    context = _hardened(ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    if tls.ca is not None:
        _load_ca(context, tls.ca, f"{path}.ca")
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert is not None:
        _load_chain(context, tls.cert, tls.key, f"{path}.cert")
    return context


def h2_negotiated(transport: asyncio.BaseTransport) -> bool:
    """Did the TLS handshake of `transport` choose h2 by ALPN (either side of the proxy)?"""
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"


class UpstreamContexts:
    """The upstream client contexts of one config, one per distinct `upstream_tls` and
    protocol (an h2 pool's offers `h2` by ALPN; an HTTP/1.1 pool's offers nothing)."""

    def __init__(self) -> None:
        self._made: dict[tuple[UpstreamTls, str], ssl.SSLContext] = {}

    def get(self, tls: UpstreamTls, protocol: str = "http1") -> ssl.SSLContext:
        context = self._made.get((tls, protocol))
        if context is None:
            context = upstream_context(tls, "upstream_tls")
            if protocol == "h2":
                context.set_alpn_protocols(["h2"])
            self._made[tls, protocol] = context
        return context

    def keep(self, used: Mapping[UpstreamTls, object]) -> None:
        """Forget the contexts of settings no longer used (after a reload)."""
        for key in [k for k in self._made if k[0] not in used]:
            del self._made[key]
