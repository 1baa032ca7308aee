"""`rollout-proxy release start|list|show|wait`: releases from CI, over the admin API.

`release wait` follows a release until it ends and exits 0 when it completed, 1 when it was
rolled back, aborted or superseded, 3 when `--timeout` passed first, 2 on an error (the admin
API unreachable, no such release); it prints the verdict in words. This is what a CI job calls
after `release start`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.adminclient import AdminUnreachable, Reply, call

EXIT_COMPLETED, EXIT_FAILED, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3
FAILED = frozenset({"rolled_back", "aborted", "superseded"})
ACTOR_ENVS = ("ROLLOUT_ACTOR", "GITHUB_ACTOR", "CI_JOB_NAME", "USER")


def post_json(admin: str, path: str, body: Mapping[str, Any], token: str | None) -> Reply:
    request = urllib.request.Request(admin.rstrip("/") + path, method="POST")
    request.data = json.dumps(body).encode()
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    actor = next((os.environ[n] for n in ACTOR_ENVS if os.environ.get(n)), "")
    if actor:
        request.add_header("X-Rollout-Actor", actor)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, json.loads(response.read() or b"null"))
    except urllib.error.HTTPError as exc:
        try:
            return Reply(exc.code, json.loads(exc.read()))
        except ValueError:
            return Reply(exc.code, {"error": f"HTTP {exc.code}"})
    except (urllib.error.URLError, OSError) as exc:
        raise AdminUnreachable(f"cannot reach the admin listener at {admin} ({exc})") from exc


def _error(command: str, reply: Reply) -> int:
    body = reply.body if isinstance(reply.body, dict) else {"error": reply.body}
    print(f"rollout-proxy release {command}: {reply.status}: {body.get('error')}", file=sys.stderr)
    return EXIT_ERROR


def _line(release: Mapping[str, Any]) -> str:
    change = release.get("change") or {}
    summary = change.get("summary") or change.get("commit") or ""
    duration = release.get("duration_s")
    took = f"{duration:.0f}s" if isinstance(duration, int | float) else "-"
    return "  ".join(
        [
            release["version"],
            release["status"],
            took,
            release.get("actor", ""),
            summary + (f" <{change['url']}>" if change.get("url") else ""),
        ]
    )


def start(
    admin: str,
    service: str,
    version: str,
    canary: Sequence[str],
    steps: str | None,
    change: Mapping[str, Any],
    supersede: bool,
    token: str | None,
    as_json: bool,
    *,
    checks: str | None = None,
) -> int:
    body: dict[str, Any] = {"version": version, "change": dict(change)}
    if canary:
        body["canary"] = list(canary)
    if steps:
        with open(steps, encoding="utf-8") as handle:
            body["steps"] = _listed(handle.read(), steps, "steps")
    if checks:
        with open(checks, encoding="utf-8") as handle:
            body["checks"] = _listed(handle.read(), checks, "checks")
    if supersede:
        body["supersede"] = True
    reply = post_json(admin, f"/api/v1/services/{service}/releases", body, token)
    if reply.status >= 400:
        return _error("start", reply)
    if as_json:
        print(json.dumps(reply.body, indent=2))
    else:
        what = "started" if reply.status == 201 else "already there"
        print(f"release {reply.body['version']} of {service}: {what} ({reply.body['status']})")
    return 0


def _listed(text: str, path: str, what: str) -> list[Any]:
    """A steps or checks file: a YAML (or JSON) list, or a mapping holding it under `what`."""
    import yaml

    data = yaml.safe_load(text)
    if isinstance(data, dict) and what in data:
        data = data[what]
    if not isinstance(data, list):
        raise SystemExit(f"rollout-proxy release start: {path}: must hold a list of {what}")
    return data


def list_releases(admin: str, service: str, as_json: bool) -> int:
    reply = call(admin, "GET", f"/api/v1/services/{service}/releases")
    if reply.status >= 400:
        return _error("list", reply)
    if as_json:
        print(json.dumps(reply.body, indent=2))
        return 0
    print(f"stable: {', '.join(reply.body['stable'])}")
    if reply.body.get("stable_drift"):
        print(f"note: {reply.body['stable_drift']}")
    for release in reply.body["releases"]:
        print(_line(release))
    return 0


def _find(admin: str, service: str, version: str | None) -> Reply:
    if version:
        return call(admin, "GET", f"/api/v1/services/{service}/releases/{version}")
    reply = call(admin, "GET", f"/api/v1/services/{service}/releases")
    if reply.status >= 400:
        return reply
    releases = reply.body["releases"]
    if not releases:
        return Reply(404, {"error": f"{service} has no release yet"})
    return Reply(200, releases[0])


def show(admin: str, service: str, version: str | None, as_json: bool) -> int:
    reply = _find(admin, service, version)
    if reply.status >= 400:
        return _error("show", reply)
    release = reply.body
    if as_json:
        print(json.dumps(release, indent=2))
        return 0
    print(_line(release))
    print(
        f"  canary {', '.join(release['canary'])}; "
        f"stable before {', '.join(release['stable_before'])}"
    )
    if release.get("released"):
        print(f"  released (free to tear down): {', '.join(release['released'])}")
    for verdict in release.get("verdicts", []):
        print(f"  {verdict['action']}: {verdict['reason']}")
    print(f"  {verdict_words(release)}")
    return 0


def verdict_words(release: Mapping[str, Any]) -> str:
    status = release["status"]
    if release.get("outcome"):
        return f"{release['version']} {release['outcome']}"
    live = release.get("rollout") or {}
    verdict = live.get("verdict") or {}
    step = live.get("step", 0) + 1
    said = verdict.get("summary") or "gathering evidence"
    return f"{release['version']} {status} at step {step}/{live.get('steps', '?')}: {said}"


def wait(admin: str, service: str, version: str | None, timeout_s: float, poll_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    said = ""
    while True:
        reply = _find(admin, service, version)
        if reply.status >= 400:
            return _error("wait", reply)
        release = reply.body
        words = verdict_words(release)
        if words != said:
            print(words, flush=True)
            said = words
        if release["status"] == "completed":
            return EXIT_COMPLETED
        if release["status"] in FAILED:
            return EXIT_FAILED
        if time.monotonic() >= deadline:
            print(f"timed out after {timeout_s:g}s; the release goes on", flush=True)
            return EXIT_TIMEOUT
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.01)))
