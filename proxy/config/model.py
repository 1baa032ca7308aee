"""The configuration model: frozen dataclasses that proxy/config/__init__.py builds from YAML.

Values here are already validated and normalised (header names lower-cased, durations in
seconds, JWT keys resolved from the environment); nothing in this module parses or checks. The
enums and rules shared with the pure core (Variant, Step, IdSource, IdKind, Unidentified,
IdentityRule, TierConfig, IdentityPolicy) live in proxy/core, which imports nothing of config,
and are re-exported by proxy/config/__init__.py. docs/configuration.md documents the YAML shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from proxy.core.analysis import AnalysisConfig
from proxy.core.identity import (
    IdentityPolicy,
    IdentityRule,
    TierConfig,
    Unidentified,
)
from proxy.core.routing import RoutingPlan, Step, Variant


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True, slots=True)
class Address:
    """A listening address; `host` is kept without IPv6 brackets; port 0 picks a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{_bracketed(self.host)}:{self.port}"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: Address
    token_env: str | None = None  # env var holding the bearer token for mutating calls
    tls: TlsConfig | None = None  # set: the admin listener speaks TLS


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    enabled: bool = False
    path: str = "-"  # "-": standard output; otherwise a file, appended to


@dataclass(frozen=True, slots=True)
class StateConfig:
    backend: str = "file"  # "file" | "redis"
    path: str | None = "state/rollouts.json"  # file backend
    url_env: str | None = None  # redis backend: env var holding the redis URL
    url: str | None = field(default=None, repr=False)  # read from url_env; may hold a password
    prefix: str = "rollout-proxy"  # redis backend: key prefix
    reconcile_s: float = 1.0  # redis backend: full re-read period (push is the fast path)
    lease_s: float = 3.0  # redis backend: the decider's lease
    timeout_s: float = 0.5  # redis backend: the longest one Redis call may take


@dataclass(frozen=True, slots=True)
class Match:
    host: str | None = None  # lower-cased, without port
    path_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    """`rollout.shadow`: what a shadow step mirrors and compares, and its cost bounds."""

    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    headers: tuple[str, ...] = ()  # response headers compared, lower-cased
    max_body: int = 256 * 1024  # body bytes compared; a longer body is "too large", uncompared
    max_concurrency: int = 64  # mirrored requests in flight to the canary
    noise_sample: float = 10.0  # percent of mirrored requests also sent to stable again
    tolerance: float = 0.01  # mismatch rate (over the learned noise) tolerated per route
    queue: int = 1024  # captured answers waiting for the mirror


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    strategy: str  # "canary" | "blue-green"
    salt: str
    pins: Mapping[str, Variant]
    steps: tuple[Step, ...]
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    # Seconds of all-stable traffic measured before step 0 (0: none): the pre-exposure
    # baseline of tiers that a step sends wholly to the canary.
    baseline_s: float = 0.0
    shadow: ShadowConfig = field(default_factory=ShadowConfig)

    def plan(self, step_index: int, active: bool = True) -> RoutingPlan:
        """The routing plan exposing the union of `steps[0..step_index]`."""
        return RoutingPlan.build(self.salt, self.pins, self.steps, step_index, active)


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int
    scheme: str = "http"

    def __str__(self) -> str:
        return f"{self.scheme}://{_bracketed(self.host)}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamsConfig:
    stable: tuple[Upstream, ...]
    canary: tuple[Upstream, ...]
    # A blue/green pair (both set, or neither): `live` names the stable one, the other is
    # the canary; a release without upstreams of its own runs on the one not live.
    blue: tuple[Upstream, ...] = ()
    green: tuple[Upstream, ...] = ()
    live: str | None = None
    # How the proxy speaks to every pool of the service: "http1", "h2" (https:// upstreams,
    # ALPN) or "h2c" (http:// upstreams, HTTP/2 by prior knowledge).
    protocol: str = "http1"

    def pool(self, color: str) -> tuple[Upstream, ...]:
        """The pool of a blue/green pair by its color ("blue" or "green")."""
        return self.blue if color == "blue" else self.green


@dataclass(frozen=True, slots=True)
class ForceConfig:
    """A service's `force:` block: who may choose the variant with X-Rollout-Force."""

    enabled: bool = False
    trusted: bool = True  # a bare value from a trusted peer is honoured
    key_env: str | None = None  # env var holding the token key (None: no tokens)
    key: bytes | None = field(default=None, repr=False)  # read from key_env


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    """A certificate chain and its key, PEM files (read when the config is loaded)."""

    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS on a listener: the certificates (the first is the default; the others are chosen by
    SNI, by the names they hold) and, for mTLS, the CA that client certificates must chain to."""

    certificates: tuple[TlsCertificate, ...]
    client_ca: str | None = None
    client_auth: str = "none"  # "none" | "optional" | "required" (with client_ca)


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """TLS to a service's https:// upstreams: verified against `ca` (else the system's trust
    store), with an optional client certificate."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    server_name: str | None = None  # SNI and the name verified (default: the upstream's host)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    match: Match
    identity: tuple[IdentityRule, ...]
    unidentified: Unidentified
    tiers: TierConfig
    upstreams: UpstreamsConfig
    rollout: RolloutConfig
    force: ForceConfig = field(default_factory=ForceConfig)
    upstream_tls: UpstreamTls = field(default_factory=UpstreamTls)
    # Remove Server-Timing from responses to clients (default: when a check reads it).
    strip_server_timing: bool = False
    # identity, unidentified and tiers, as the one value the core's identity rules read
    identity_policy: IdentityPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        policy = IdentityPolicy(self.identity, self.tiers, self.unidentified)
        object.__setattr__(self, "identity_policy", policy)


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    body_timeout_s: float = 30.0
    body_total_timeout_s: float = 300.0  # a whole request body, from the end of its head
    send_timeout_s: float = 60.0  # response bytes the client does not take, at most this long
    connect_timeout_s: float = 3.0
    response_timeout_s: float = 30.0
    max_connections: int = 10000
    max_uri_bytes: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_body_bytes: int = 0  # 0 = unlimited
    pool_max_concurrency: int = 1024
    pool_queue: int = 256
    pool_idle_per_endpoint: int = 1024
    pool_h2_max_streams: int = 100  # streams at once on one HTTP/2 upstream connection
    eject_failures: int = 5
    eject_s: float = 10.0
    drain_s: float = 5.0
    drain_notice_s: float = 1.0  # readiness fails this long before the listener closes
    max_pipelined: int = 16
    # Failed canary attempts sent again to stable, % of requests, and at most this many at once.
    # Generous: a retry moves a request to stable, which a rollback would do for all of them.
    retry_budget_percent: int = 50
    retry_burst: int = 100


@dataclass(frozen=True, slots=True)
class Http2Config:
    """HTTP/2 on the data listener (`http2:`); off by default."""

    enabled: bool = False  # a TLS listener offers h2 (then http/1.1) by ALPN
    h2c: bool = False  # a plain listener takes HTTP/2 by prior knowledge too
    max_concurrent_streams: int = 100  # per connection; REFUSED_STREAM beyond
    max_header_list_size: int = 65536  # decoded header block (HPACK bombs stop here)
    initial_window_size: int = 65535  # per stream, for request bodies
    max_frame_size: int = 16384
    max_resets_per_s: int = 100  # streams a client may reset per second (rapid reset)
    max_control_frames_per_s: int = 200  # SETTINGS and PING (floods)
    # After either allowance is spent, the client's address may not connect for this long.
    penalty_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ReleasesConfig:
    keep: int = 50  # releases kept per service in the state store (newest first)


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """A webhook that is told about releases (proxy/notify/)."""

    name: str
    format: str  # slack | cloudevents | json
    url_env: str
    url: str = field(repr=False)  # read from url_env; may hold a secret token
    events: frozenset[str] = frozenset()  # proxy.core.notices.EVENTS
    timeout_s: float = 5.0  # per attempt
    queue: int = 100  # notices waiting; when full the oldest is dropped
    attempts: int = 4
    backoff_s: float = 0.5  # the first retry's delay ceiling, doubled each time


@dataclass(frozen=True, slots=True)
class Config:
    listen: Address
    admin: AdminConfig
    state: StateConfig
    services: tuple[ServiceConfig, ...]
    trusted_peers: tuple[IPv4Network | IPv6Network, ...] = ()
    limits: Limits = field(default_factory=Limits)
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)
    releases: ReleasesConfig = field(default_factory=ReleasesConfig)
    tls: TlsConfig | None = None  # set: the data listener speaks TLS
    http2: Http2Config = field(default_factory=Http2Config)
    notifications: tuple[ReceiverConfig, ...] = ()
