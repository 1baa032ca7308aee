"""The CLI side of the rollout API: `rollout-proxy status|promote|pause|resume|abort|restart`
and `rollout-proxy reload`.

Talks to a running proxy's admin listener over HTTP (stdlib only: the CLI must start fast and
needs no event loop) and prints a readable table, or the API's JSON with `--json`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.errors import ProxyError

DEFAULT_ADMIN = "http://127.0.0.1:9090"
DEFAULT_TOKEN_ENV = "ROLLOUT_ADMIN_TOKEN"
ADMIN_URL_ENV = "ROLLOUT_ADMIN_URL"  # the admin listener's URL when --admin is not given


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any


class AdminUnreachable(ProxyError):
    """The admin listener did not answer (wrong URL, proxy not running)."""


# Moving forward is conditional on the version seen: two people promoting at once move the
# rollout one step, not two. Abort and pause apply whatever happened meanwhile.
CONDITIONAL = frozenset({"promote", "resume", "restart"})


def call(
    admin: str, method: str, path: str, token: str | None = None, if_match: int | None = None
) -> Reply:
    """One request to the admin API; HTTP errors are replies, not exceptions."""
    request = urllib.request.Request(admin.rstrip("/") + path, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if if_match is not None:
        request.add_header("If-Match", f'"{if_match}"')
    if method == "POST":
        request.data = b""
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, json.loads(response.read() or b"null"))
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return Reply(exc.code, json.loads(body))
        except ValueError:
            return Reply(exc.code, {"error": body.decode("utf-8", "replace")})
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminUnreachable(
            f"cannot reach the admin listener at {admin} ({reason}).\n"
            "Is the proxy running? Point at its admin listener (the config's admin.listen; "
            "`rollout-proxy run` prints it when it starts) with --admin http://HOST:PORT or "
            f"{ADMIN_URL_ENV}=http://HOST:PORT."
        ) from exc


def _percent(value: float) -> str:
    return f"{value:g}%"


def _verdict(status: Mapping[str, Any]) -> str:
    verdict = status.get("verdict")
    if not verdict:
        return "-"
    text = f"{verdict['verdict']}: {verdict['summary']}"
    needed = status.get("requests_needed")
    if verdict["verdict"] == "inconclusive" and needed and needed > 0:
        text += f" ({needed} more canary requests needed)"
    return text


def _row(status: Mapping[str, Any]) -> list[str]:
    step = status["step_definition"]
    cohort = ", ".join(step["tiers"] + step["tenants"]) or "everyone"
    baseline = step.get("baseline", False)
    return [
        status["service"],
        status["status"],
        "baseline" if baseline else f"{status['step'] + 1}/{status['steps']}",
        "nothing (measuring)" if baseline else f"{_percent(step['percent'])} of {cohort}",
        _percent(status["canary_percent"]),
        f"{status['time_in_step_s']:.0f}s",
        _verdict(status),
    ]


def render(
    statuses: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any] | None = None,
    notifications: Sequence[Mapping[str, Any]] = (),
) -> str:
    """A plain-text table of rollout statuses (and, given the config's status, a warning
    when its last reload was refused; given the webhook receivers', a line for each)."""
    header = ["service", "status", "step", "step exposes", "canary", "in step", "verdict"]
    rows = [header] + [_row(s) for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]))
    errors = {s["state_error"] for s in statuses if s.get("state_error")}
    lines.extend(f"warning: {e}" for e in sorted(errors))
    lines.extend(
        f"note: {s['service']}: {s['stable_drift']}" for s in statuses if s.get("stable_drift")
    )
    last = config.get("last_reload") if config else None
    if config and last and last["result"] not in ("applied", "unchanged"):
        lines.append(
            f"warning: the last reload of {config['path']} was {last['result']} "
            f"({last['trigger']}): {last['error']}; still serving the config loaded before"
        )
    lines.extend(_receiver_line(r) for r in notifications)
    return "\n".join(lines)


def _receiver_line(receiver: Mapping[str, Any]) -> str:
    """`notify team-chat (slack): queue 0/100, sent 3, retried 0, failed 0, dropped 0; ...`"""
    counts = ", ".join(f"{result} {n}" for result, n in receiver["counts"].items())
    line = (
        f"notify {receiver['name']} ({receiver['format']}): queue "
        f"{receiver['queue_depth']}/{receiver['queue_limit']}, {counts}"
    )
    sent, error = receiver.get("last_sent"), receiver.get("last_error")
    if sent:
        line += f"; last sent {_clock(sent['time'])} ({sent['event']})"
    if error:
        line += f"; last error {_clock(error['time'])} ({error['event']}): {error['error']}"
    return line


def _clock(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(wall))


def _act(admin: str, service: str, command: str, token: str | None) -> Reply:
    version = None
    if command in CONDITIONAL:
        seen = call(admin, "GET", f"/api/v1/services/{service}")
        if seen.status >= 400:
            return seen
        version = int(seen.body["version"])
    return call(admin, "POST", f"/api/v1/services/{service}/{command}", token, version)


def _next_step(status: int, admin: str, token_env: str) -> str:
    """What to do about a refusal, when the CLI can tell."""
    if status == 401 and not os.environ.get(token_env):
        return (
            f"{token_env} is not set: set it to the proxy's admin token (the value of the "
            "variable its admin.token_env names), or name another variable with --token-env"
        )
    if status == 403 and os.environ.get(token_env):
        return f"the token in {token_env} is not the one the proxy at {admin} was started with"
    if status == 404:
        return f"`rollout-proxy status --admin {admin}` lists the services"
    return ""


def run(command: str, service: str | None, admin: str, as_json: bool, token_env: str) -> int:
    """Execute one rollout command; the exit status (0 ok, 1 refused or failed)."""
    if command == "status":
        path = f"/api/v1/services/{service}" if service else "/api/v1/services"
        reply = call(admin, "GET", path)
    else:
        if not service:
            print(
                f"rollout-proxy {command}: name the service (rollout-proxy status lists them)",
                file=sys.stderr,
            )
            return 1
        token = os.environ.get(token_env)
        reply = _act(admin, service, command, token)
    if as_json:
        print(json.dumps(reply.body, indent=2))
    elif reply.status >= 400:
        error = reply.body.get("error", reply.body) if isinstance(reply.body, dict) else reply.body
        print(f"rollout-proxy {command}: {reply.status}: {error}", file=sys.stderr)
        hint = _next_step(reply.status, admin, token_env)
        if hint:
            print(f"rollout-proxy {command}: {hint}", file=sys.stderr)
    else:
        body = reply.body
        print(
            render(body.get("services", [body]), body.get("config"), body.get("notifications", ()))
        )
    return 0 if reply.status < 400 else 1


def reload(admin: str, as_json: bool, token_env: str) -> int:
    """`rollout-proxy reload`: 0 applied (or nothing to change), 1 refused or failed."""
    reply = call(admin, "POST", "/api/v1/reload", os.environ.get(token_env))
    body = reply.body if isinstance(reply.body, dict) else {"error": reply.body}
    if as_json:
        print(json.dumps(body, indent=2))
    elif reply.status >= 400 and "result" not in body:
        print(f"rollout-proxy reload: {reply.status}: {body.get('error')}", file=sys.stderr)
        hint = _next_step(reply.status, admin, token_env)
        if hint:
            print(f"rollout-proxy reload: {hint}", file=sys.stderr)
    elif reply.status >= 400:
        print(
            f"rollout-proxy reload: {body['result']}: {body['error']}\n"
            "rollout-proxy reload: nothing changed; the proxy serves the config it had",
            file=sys.stderr,
        )
    else:
        changes = body["changes"] or ["nothing changed"]
        print(f"reload {body['result']}:" + "".join(f"\n  {line}" for line in changes))
    return 0 if reply.status < 400 else 1
