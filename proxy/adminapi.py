"""The rollout API on the admin listener: see and steer rollouts.

    GET  /api/v1/services                     every rollout's status (and the receivers')
    GET  /api/v1/services/{name}              one rollout's status
    GET  /api/v1/services/{name}/decisions    its decision journal, newest first
    POST /api/v1/services/{name}/releases     start a release (proxy/releases.py)
    GET  /api/v1/services/{name}/releases     its releases, newest first
    GET  /api/v1/services/{name}/releases/{id}  one release, by id or version
    POST /api/v1/services/{name}/{action}     promote | pause | resume | abort | restart
    GET  /api/v1/reload                       the config file, when it was loaded, last reload
    POST /api/v1/reload                       re-read the config file (proxy/reload.py)

Mutations need `Authorization: Bearer <token>`, the token read from the environment variable
named by `admin.token_env` and compared in constant time. Without a configured token every
mutation is refused, with a message saying how to enable them.

A rollout's status carries its version as an entity tag (`ETag: "7"`). A mutation sent with
`If-Match: "7"` applies only if the rollout is still at version 7, so that people (or scripts)
acting at the same moment on what they saw move it once: the CLI sends it with promote, resume
and restart; abort and pause apply whatever happened meanwhile.

A reload answers 200 when it applied the file (or found nothing to change), 422 when the file
is invalid (`key` and `reason` name what), 409 when it changes what needs a restart, 503 when
the state store refused the swap; in each case but the first nothing changed.

Errors are JSON bodies with 400 (malformed If-Match), 401 (no or malformed credentials), 403
(wrong token or mutations disabled), 404 (unknown service or action), 409 (the action does not
apply to the rollout now, or the state changed concurrently), 412 (If-Match names another
version) and 503 (the state store cannot be trusted, written, or reached).
"""

from __future__ import annotations

import hmac
from collections.abc import Container, Mapping
from typing import Any

from aiohttp import web

from proxy.controller import Controller, ReleaseConflict, assessment_json
from proxy.core.machine import Event
from proxy.errors import ConfigError, StaleVersion, StateError, StoreUnavailable
from proxy.notify.delivery import Notifier
from proxy.releases import drift_of, release_json, stable_of, start_request
from proxy.reload import Reloader
from proxy.rollout import Rollout

CONTROLLER = web.AppKey("controller", Controller)
TOKEN = web.AppKey("token", str)
TOKEN_ENV = web.AppKey("token_env", str)
RELOADER = web.AppKey("reloader", Reloader)
NOTIFIER = web.AppKey("notifier", Notifier)
# The answer to a reload, by its result.
_RELOAD_STATUS = {"applied": 200, "unchanged": 200, "invalid": 422, "refused": 409, "failed": 503}

ACTIONS: Mapping[str, Event] = {
    "promote": Event.PROMOTE,
    "pause": Event.PAUSE,
    "resume": Event.RESUME,
    "abort": Event.ABORT,
    "restart": Event.RESTART,
}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def rollout_status(
    rollout: Rollout, now: float, state_error: str | None, pending: Container[str] = ()
) -> dict[str, Any]:
    """What the API (and the CLI and the page) show for one rollout."""
    state = rollout.state
    plan = rollout.plan()
    last = rollout.last
    return {
        "service": rollout.config.name,
        "status": state.status.value,
        "step": rollout.step_index,
        "steps": len(rollout.config.rollout.steps),
        "step_definition": _step_definition(rollout),
        "canary_percent": plan.canary_percent() if plan.active else 0.0,
        "time_in_step_s": round(max(0.0, now - rollout.step_started), 3),
        "version": state.version,
        "spec_hash": rollout.spec_hash,
        "verdict": assessment_json(last) if last is not None else None,
        "requests_needed": last.requests_needed if last is not None else None,
        "state_error": state_error,
        # Applied here while the shared state store was away; written back when it returns.
        "pending_write": rollout.config.name in pending,
        "foreign_spec": rollout.foreign_spec,
    }


def _status(controller: Controller, rollout: Rollout, now: float) -> dict[str, Any]:
    status = rollout_status(rollout, now, controller.state_error, controller.pending)
    status.update(release_status(controller, rollout))
    return status


def release_status(controller: Controller, rollout: Rollout) -> dict[str, Any]:
    """The release part of a service's status: which pool is stable (and whether that is
    the config file's), and the release in progress."""
    name = rollout.config.name
    service = controller.file_service(name)
    book = controller.books.get(name)
    current = book.current() if book else None
    extra: dict[str, Any] = {
        "stable": list(stable_of(service, book)) if service else [],
        "stable_drift": drift_of(service, book) if service else None,
        "release": None,
    }
    if rollout.idle:
        extra["status"] = "idle"
    if current is not None:
        extra["release"] = {
            "id": current.id,
            "version": current.version,
            "status": controller.release_status(name, current),
            "change": dict(current.change),
            "actor": current.actor,
            "started": current.started,
        }
    return extra


def _step_definition(rollout: Rollout) -> dict[str, Any]:
    if rollout.in_baseline:
        return {
            "baseline": True,
            "shadow": 0.0,
            "percent": 0.0,
            "tiers": [],
            "tenants": [],
            "observe_s": rollout.config.rollout.baseline_s,
        }
    step = rollout.config.rollout.steps[rollout.step_index]
    return {
        "baseline": False,
        "shadow": step.shadow,
        "percent": step.percent,
        "tiers": sorted(step.tiers),
        "tenants": sorted(step.tenants),
        "observe_s": step.observe_s,
    }


async def list_services(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    now = controller.clock.monotonic()
    body = [_status(controller, r, now) for r in controller.rollouts.values()]
    reloader = request.app.get(RELOADER)
    config = reloader.status() if reloader is not None else None
    notifier = request.app.get(NOTIFIER)
    notifications = notifier.status() if notifier is not None else []
    return web.json_response({"services": body, "config": config, "notifications": notifications})


def _rollout(request: web.Request) -> Rollout | None:
    return request.app[CONTROLLER].rollouts.get(request.match_info["name"])


async def get_service(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    rollout = _rollout(request)
    if rollout is None:
        return _error(404, f"no service named {request.match_info['name']!r}")
    return _tagged(_status(controller, rollout, controller.clock.monotonic()))


async def decisions(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    name = request.match_info["name"]
    if name not in controller.rollouts:
        return _error(404, f"no service named {name!r}")
    entries = await controller.history(name, _limit(request))
    return web.json_response({"decisions": [e.to_json() for e in entries]})


def _limit(request: web.Request) -> int:
    try:
        return max(1, min(1000, int(request.query.get("limit", "100"))))
    except ValueError:
        return 100


def _authorize(request: web.Request) -> web.Response | None:
    token = request.app[TOKEN]
    if not token:
        env = request.app[TOKEN_ENV] or "ROLLOUT_ADMIN_TOKEN"
        return _error(
            403,
            f"mutations are disabled: set admin.token_env in the config and put a token in "
            f"${env}, then send it as 'Authorization: Bearer <token>'",
        )
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return _error(401, "send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return _error(403, "wrong token")
    return None


async def act(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    denied = _authorize(request)
    if denied is not None:
        return denied
    rollout = _rollout(request)
    if rollout is None:
        return _error(404, f"no service named {request.match_info['name']!r}")
    event = ACTIONS.get(request.match_info["action"])
    if event is None:
        return _error(404, f"unknown action; expected one of: {', '.join(ACTIONS)}")
    actor = f"admin:{request.remote or 'unknown'}"
    expected = _if_match(request)
    if expected == -1:
        return _error(400, 'If-Match must be the version seen, as an entity tag: "7"')
    try:
        transition = await controller.apply(
            rollout.config.name, event, actor, expected_version=expected
        )
    except StaleVersion as exc:
        return _error(412, str(exc))
    except StateError as exc:
        unavailable = controller.state_error or isinstance(exc, StoreUnavailable)
        return _error(503 if unavailable else 409, str(exc))
    if not transition.applied:
        return _error(409, f"cannot {event.value}: {transition.reason}")
    return _tagged(_status(controller, rollout, controller.clock.monotonic()))


async def start_release(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    denied = _authorize(request)
    if denied is not None:
        return denied
    name = request.match_info["name"]
    service = controller.file_service(name)
    if service is None or name not in controller.rollouts:
        return _error(404, f"no service named {name!r}")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, 'the body must be JSON: {"version": ..., "canary": [...]}')
    try:
        start = start_request(body, service)
    except ConfigError as exc:
        return web.json_response(
            {"error": str(exc), "key": exc.path, "reason": exc.reason}, status=400
        )
    actor = _actor(request)
    try:
        release, started = await controller.start_release(name, start, actor)
    except ReleaseConflict as exc:
        return _error(409, str(exc))
    except StateError as exc:
        unavailable = controller.state_error or isinstance(exc, StoreUnavailable)
        return _error(503 if unavailable else 409, str(exc))
    body = _release(controller, name, release.id)
    return web.json_response(body, status=201 if started else 200)


def _actor(request: web.Request) -> str:
    """Who acts: the admin token's holder at its address, with what it says it is (a CI job
    names itself in X-Rollout-Actor)."""
    actor = f"admin:{request.remote or 'unknown'}"
    said = request.headers.get("X-Rollout-Actor", "").strip()
    if said and said.isprintable():
        actor = f"{said[:128]} ({actor})"
    return actor


def _release(controller: Controller, name: str, key: str) -> dict[str, Any] | None:
    book = controller.books.get(name)
    release = book.find(key) if book else None
    if release is None:
        return None
    rollout = controller.rollouts.get(name)
    live = None
    data = release_json(release)
    if rollout is not None and book is not None and book.active == release.id:
        now = controller.clock.monotonic()
        live = rollout_status(rollout, now, controller.state_error, controller.pending)
        data["rollout"] = live
    data["status"] = controller.release_status(name, release)
    return data


async def list_releases(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    name = request.match_info["name"]
    if name not in controller.rollouts:
        return _error(404, f"no service named {name!r}")
    book = controller.books.get(name)
    releases = [_release(controller, name, r.id) for r in (book.releases if book else ())]
    rollout = controller.rollouts[name]
    return web.json_response({"releases": releases, **release_status(controller, rollout)})


async def get_release(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    name = request.match_info["name"]
    if name not in controller.rollouts:
        return _error(404, f"no service named {name!r}")
    found = _release(controller, name, request.match_info["id"])
    if found is None:
        return _error(404, f"{name} has no release {request.match_info['id']!r}")
    return web.json_response(found)


async def reload_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[RELOADER].status())


async def reload(request: web.Request) -> web.Response:
    denied = _authorize(request)
    if denied is not None:
        return denied
    result = await request.app[RELOADER].reload("api")
    return web.json_response(result.to_json(), status=_RELOAD_STATUS[result.result])


def _if_match(request: web.Request) -> int | None:
    """The version an `If-Match` header makes the action conditional on (-1: malformed)."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    tag = header.strip().removeprefix("W/").strip('"')
    return int(tag) if tag.isdigit() and len(tag) < 19 else -1


def _tagged(status: dict[str, Any]) -> web.Response:
    """A rollout's status with its version as the entity tag (for If-Match)."""
    return web.json_response(status, headers={"ETag": f'"{status["version"]}"'})


def rollout_routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/services", list_services),
        web.get("/api/v1/services/{name}", get_service),
        web.get("/api/v1/services/{name}/decisions", decisions),
        web.get("/api/v1/services/{name}/releases", list_releases),
        web.get("/api/v1/services/{name}/releases/{id}", get_release),
        web.post("/api/v1/services/{name}/releases", start_release),
        web.post("/api/v1/services/{name}/{action}", act),
    ]


def install(
    app: web.Application,
    controller: Controller,
    token: str,
    token_env: str,
    reloader: Reloader | None = None,
    *,
    notifier: Notifier | None = None,
) -> None:
    """Add the rollout API (and the reload endpoint, given a reloader) to the admin
    application (before it starts)."""
    app[CONTROLLER] = controller
    app[TOKEN] = token
    app[TOKEN_ENV] = token_env
    app.add_routes(rollout_routes())
    if notifier is not None:
        app[NOTIFIER] = notifier
    if reloader is not None:
        app[RELOADER] = reloader
        app.add_routes(
            [web.get("/api/v1/reload", reload_status), web.post("/api/v1/reload", reload)]
        )
