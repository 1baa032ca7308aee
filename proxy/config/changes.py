"""What a reload may change, and what it did change: pure comparisons of two configs.

A reload swaps in a new config without a restart. What a running process cannot take over
without one (the addresses it listens on, the admin token's variable, the state store, the
access log's file) is refused by `restart_only`, naming each key. `describe` lists the
changes in words, for the reload's answer and its log line.
"""

from __future__ import annotations

from proxy.config.model import Config, ServiceConfig

# Top-level keys a running process keeps until it restarts: (key, why it cannot change live).
_RESTART_ONLY = (
    ("listen", "the data plane's listening socket is bound at start"),
    ("admin", "the admin listener and its token are set up at start"),
    ("state", "the state store is opened at start"),
    ("access_log", "the access log's file is opened at start"),
)


def restart_only(old: Config, new: Config) -> list[str]:
    """One message per key that differs and needs a restart to change (empty: reloadable)."""
    keys = [(key, why) for key, why in _RESTART_ONLY if getattr(old, key) != getattr(new, key)]
    if _tls_listener(old) != _tls_listener(new):
        keys.append(("tls", "TLS on the listener, and client verification, are set at start"))
    return [
        f"{key}: changed, and needs a restart ({why}); put it back to reload the rest, or "
        "restart the proxy to apply it"
        for key, why in keys
    ]


def _tls_listener(config: Config) -> tuple[bool, str | None, str]:
    """What of `tls:` is fixed at start: whether it is on, and client verification (the
    certificates themselves are read again on every reload)."""
    tls = config.tls
    return (False, None, "none") if tls is None else (True, tls.client_ca, tls.client_auth)


def describe(old: Config, new: Config) -> list[str]:
    """The changes from `old` to `new`, one short line each (empty: nothing changed)."""
    before = {s.name: s for s in old.services}
    after = {s.name: s for s in new.services}
    lines = [f"service {name}: added" for name in after if name not in before]
    lines += [f"service {name}: removed" for name in before if name not in after]
    for name, service in after.items():
        if name in before and before[name] != service:
            lines.append(f"service {name}: {', '.join(_service_changes(before[name], service))}")
    if [s.name for s in old.services] != [s.name for s in new.services] and not lines:
        lines.append("services: reordered (matching order)")
    for key in ("trusted_peers", "limits", "releases", "notifications"):
        if getattr(old, key) != getattr(new, key):
            lines.append(f"{key}: changed")
    if new.tls is not None:
        # The files may have changed under the same names: a reload always reads them again.
        changed = old.tls != new.tls
        lines.append("tls: certificates changed" if changed else "tls: certificates read again")
    return lines


def _service_changes(old: ServiceConfig, new: ServiceConfig) -> list[str]:
    changed = [
        key
        for key in ("match", "identity", "unidentified", "tiers", "force", "strip_server_timing")
        if getattr(old, key) != getattr(new, key)
    ]
    if old.upstreams.stable != new.upstreams.stable:
        changed.append("stable upstreams")
    if old.upstreams.canary != new.upstreams.canary:
        changed.append("canary upstreams")
    if old.upstream_tls != new.upstream_tls:
        changed.append("upstream tls")
    if old.rollout.analysis != new.rollout.analysis:
        changed.append("analysis")
    if _without_analysis(old) != _without_analysis(new):
        changed.append("rollout")
    return changed or ["changed"]


def _without_analysis(service: ServiceConfig) -> tuple[object, ...]:
    rollout = service.rollout
    return (rollout.strategy, rollout.salt, rollout.pins, rollout.steps, rollout.baseline_s)
