"""The rollout API on the admin listener: see and steer rollouts.

    GET  /api/v1/services                     every rollout's status
    GET  /api/v1/services/{name}              one rollout's status
    GET  /api/v1/services/{name}/decisions    its decision journal, newest first
    POST /api/v1/services/{name}/{action}     promote | pause | resume | abort | restart

Mutations need `Authorization: Bearer <token>`, the token read from the environment variable
named by `admin.token_env` and compared in constant time. Without a configured token every
mutation is refused, with a message saying how to enable them. Errors are JSON bodies with
401 (no or malformed credentials), 403 (wrong token or mutations disabled), 404 (unknown
service or action), 409 (the action does not apply to the rollout now, or the state changed
concurrently) and 503 (the state store cannot be trusted or written).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from proxy.controller import Controller, Rollout, assessment_json
from proxy.core.machine import Event
from proxy.errors import StateError, StateUnavailable

CONTROLLER = web.AppKey("controller", Controller)
TOKEN = web.AppKey("token", str)
TOKEN_ENV = web.AppKey("token_env", str)

ACTIONS: Mapping[str, Event] = {
    "promote": Event.PROMOTE,
    "pause": Event.PAUSE,
    "resume": Event.RESUME,
    "abort": Event.ABORT,
    "restart": Event.RESTART,
}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def rollout_status(rollout: Rollout, now: float, state_error: str | None) -> dict[str, Any]:
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
    }


def _step_definition(rollout: Rollout) -> dict[str, Any]:
    if rollout.in_baseline:
        return {
            "baseline": True,
            "percent": 0.0,
            "tiers": [],
            "tenants": [],
            "observe_s": rollout.config.rollout.baseline_s,
        }
    step = rollout.config.rollout.steps[rollout.step_index]
    return {
        "baseline": False,
        "percent": step.percent,
        "tiers": sorted(step.tiers),
        "tenants": sorted(step.tenants),
        "observe_s": step.observe_s,
    }


async def list_services(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    now = controller.clock.monotonic()
    body = [rollout_status(r, now, controller.state_error) for r in controller.rollouts.values()]
    return web.json_response({"services": body})


def _rollout(request: web.Request) -> Rollout | None:
    return request.app[CONTROLLER].rollouts.get(request.match_info["name"])


async def get_service(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    rollout = _rollout(request)
    if rollout is None:
        return _error(404, f"no service named {request.match_info['name']!r}")
    return web.json_response(
        rollout_status(rollout, controller.clock.monotonic(), controller.state_error)
    )


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
    try:
        transition = await controller.apply(rollout.config.name, event, actor)
    except StateUnavailable as exc:
        return _error(503, f"{exc}; nothing changed, try again later")
    except StateError as exc:
        status = 503 if controller.state_error else 409
        return _error(status, str(exc))
    if not transition.applied:
        return _error(409, f"cannot {event.value}: {transition.reason}")
    now = controller.clock.monotonic()
    return web.json_response(rollout_status(rollout, now, controller.state_error))


def rollout_routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/services", list_services),
        web.get("/api/v1/services/{name}", get_service),
        web.get("/api/v1/services/{name}/decisions", decisions),
        web.post("/api/v1/services/{name}/{action}", act),
    ]


def install(app: web.Application, controller: Controller, token: str, token_env: str) -> None:
    """Add the rollout API to the admin application (before it starts)."""
    app[CONTROLLER] = controller
    app[TOKEN] = token
    app[TOKEN_ENV] = token_env
    app.add_routes(rollout_routes())
