"""The admin API's view of the engines: per model, whether Sluice launched its replicas, and for those it did,
their processes (pid, port, GPUs, state, restarts), scaling, restarts and the tail of their logs.

- ``GET /admin/engines``: per model its dialect, ``launched``, the launcher's rows, the fleet's progress (target,
  scaling, restarting, last error) and the replica set's rows.
- ``POST /admin/engines/scale`` ``{model, replicas}``: 202 at once; replicas are started, or drained then stopped,
  one at a time in a task (progress in GET). 409 while the model's autoscaler (actuator ``launcher``) owns the
  count, or while a restart runs; a new target while scaling replaces the last.
- ``POST /admin/engines/restart`` ``{model, url}``: 202 at once; the replica drains, its process stops and a
  replacement starts (on the next free port: its URL may change).
- ``GET /admin/engines/logs?model=&url=&lines=200``: the last lines (at most 1000, 64 KiB) of that replica's log,
  found by URL among the launcher's own replicas.

Models whose engines run elsewhere are listed with ``launched: false``; their writes answer 409 ``not_launched``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from sluice.errors import InvalidRequestError, NotFoundError
from sluice.gateway._asgi import RouteSpec
from sluice.gateway._launched import LaunchedFleet
from sluice.gateway.routes.admin import admin_body, admin_service, json_response
from sluice.gateway.routes.replicas import ReplicaRef
from sluice.protocol import parse_request

MAX_REPLICAS = 64
MAX_LOG_LINES = 1000


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    replicas: int = Field(ge=0, le=MAX_REPLICAS)


async def list_engines(request: Request) -> Response:
    """Every model: launched or not, its launched processes, the fleet's progress, its replica set."""
    service = admin_service(request)
    fleets: dict[str, LaunchedFleet] = dict(getattr(request.app.state, "fleets", {}))
    rows = []
    for name, route in service.routes.items():
        replicas = route.pool.replicas.snapshot()
        fleet = fleets.get(name)
        details = replicas.get("details", {})
        rows.append({"model": name, "dialect": route.pool.replicas.dialect, "launched": fleet is not None,
                     "autoscaled": _autoscaled(request, name),
                     "engines": details.get("launcher", []) if fleet is not None else [],
                     "fleet": fleet.snapshot() if fleet is not None else None,
                     "replicas": replicas["replicas"]})
    return json_response({"object": "list", "data": rows})


async def scale_engines(request: Request) -> Response:
    admin_service(request)
    scale = parse_request(ScaleRequest, await admin_body(request))
    fleet = _fleet(request, scale.model)
    if _autoscaled(request, scale.model):
        raise _conflict(f"Model {scale.model!r} is autoscaled (autoscale.actuator: launcher): its autoscaler sets "
                        "the replica count; change autoscale.min_replicas/max_replicas instead.",
                        "autoscaler_owns_count", param="replicas")
    if fleet.snapshot()["restarting"]:
        raise _conflict(f"Model {scale.model!r} has a replica restarting: scale once it is done.", "engines_busy")
    fleet.scale_to(scale.replicas)
    return json_response({"model": scale.model, "target": scale.replicas, "fleet": fleet.snapshot()}, status=202)


async def restart_engine(request: Request) -> Response:
    admin_service(request)
    ref = parse_request(ReplicaRef, await admin_body(request))
    fleet = _fleet(request, ref.model)
    if fleet.busy:
        raise _conflict(f"Model {ref.model!r} is scaling or restarting a replica: restart once it is done.",
                        "engines_busy")
    try:
        fleet.restart(ref.url)
    except KeyError as exc:
        raise _unknown_url(ref.model, ref.url) from exc
    except RuntimeError as exc:
        raise _conflict(str(exc), "engines_busy") from exc
    return json_response({"model": ref.model, "url": ref.url, "fleet": fleet.snapshot()}, status=202)


async def engine_logs(request: Request) -> Response:
    admin_service(request)
    q = request.query_params
    model, url = q.get("model"), q.get("url")
    if not model or not url:
        raise InvalidRequestError("Give model=... and url=... (a launched replica's URL).", param="url")
    lines = _lines(q.get("lines"))
    fleet = _fleet(request, model)
    try:
        tail = fleet.log_tail(url, lines)
    except KeyError as exc:
        raise _unknown_url(model, url) from exc
    return json_response({"model": model, "url": url.rstrip("/"), "lines": tail})


def _lines(text: str | None) -> int:
    if text is None:
        return 200
    if not text.isdigit() or not 1 <= int(text) <= MAX_LOG_LINES:
        raise InvalidRequestError(f"lines must be a whole number from 1 to {MAX_LOG_LINES}.", param="lines",
                                  code="invalid_lines")
    return int(text)


def _fleet(request: Request, model: str) -> LaunchedFleet:
    if model not in request.app.state.service.routes:
        raise NotFoundError(f"No model {model!r}.", param="model", code="model_not_found")
    fleet: LaunchedFleet | None = dict(getattr(request.app.state, "fleets", {})).get(model)
    if fleet is None:
        raise _conflict(f"Sluice did not launch the engines of model {model!r}: start, stop and scale them where "
                        "they run.", "not_launched", param="model")
    return fleet


def _autoscaled(request: Request, model: str) -> bool:
    settings: Any = request.app.state.live.settings
    return any(m.name == model and m.autoscale is not None and m.autoscale.actuator == "launcher"
               for m in settings.models)


def _conflict(message: str, code: str, param: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, status=409, code=code, reason=code)


def _unknown_url(model: str, url: str) -> NotFoundError:
    return NotFoundError(f"Model {model!r} has no launched replica at {url}.", param="url",
                         code="replica_not_found")


ROUTES = [
    RouteSpec("GET", "/admin/engines", list_engines, "admin"),
    RouteSpec("POST", "/admin/engines/scale", scale_engines, "admin", request_model=ScaleRequest),
    RouteSpec("POST", "/admin/engines/restart", restart_engine, "admin", request_model=ReplicaRef),
    RouteSpec("GET", "/admin/engines/logs", engine_logs, "admin"),
]
