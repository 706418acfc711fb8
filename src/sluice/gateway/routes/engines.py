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
- ``POST /admin/engines/models`` ``{name, model, backend, replicas, max_model_len, tensor_parallel, ...}``: 202 at
  once; a NEW model's engines are launched, then its pool is built and served under ``name`` by this gateway
  process (gateway/_started_models.py). Refused (409 ``workers_have_no_launcher``) with ``server.workers`` > 1.
- ``POST /admin/engines/stop`` ``{model, drain_timeout_s}``: 202 at once; a model started that way leaves the
  route table, its requests in flight finish, its engines stop and its pool closes (then it leaves the list).

Models whose engines run elsewhere are listed with ``launched: false``; their writes answer 409 ``not_launched``.
Models started at run time are listed with ``started_at_runtime: true`` and their ``state`` (starting, serving,
stopping, failed: with ``error``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from sluice.errors import InvalidRequestError, NotFoundError
from sluice.gateway._asgi import RouteSpec
from sluice.gateway._launched import LaunchedFleet
from sluice.gateway._started_models import ModelLaunch, StartedModels
from sluice.gateway.routes.admin import admin_body, admin_service, json_response
from sluice.gateway.routes.replicas import ReplicaRef
from sluice.protocol import parse_request

MAX_REPLICAS = 64
MAX_LOG_LINES = 1000


class StopModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    drain_timeout_s: float = Field(60.0, ge=0, le=3600)


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    replicas: int = Field(ge=0, le=MAX_REPLICAS)


async def list_engines(request: Request) -> Response:
    """Every model: launched or not, its launched processes, the fleet's progress, its replica set."""
    service = admin_service(request)
    started = _started(request)
    rows = []
    for name, route in service.routes.items():
        replicas = route.pool.replicas.snapshot()
        fleet = _fleet_of(request, name)
        details = replicas.get("details", {})
        rows.append({"model": name, "dialect": route.pool.replicas.dialect, "launched": fleet is not None,
                     "autoscaled": _autoscaled(request, name), "started_at_runtime": name in started.names(),
                     **(started.describe(name) or {}),
                     "engines": details.get("launcher", []) if fleet is not None else [],
                     "fleet": fleet.snapshot() if fleet is not None else None,
                     "replicas": replicas["replicas"]})
    for name in started.names():  # started at run time, not (or no longer) serving: starting, stopping, failed
        if name not in service.routes:
            rows.append({"model": name, "dialect": None, "launched": True, "autoscaled": False,
                         "started_at_runtime": True, **(started.describe(name) or {}), "engines": [],
                         "fleet": None, "replicas": []})
    return json_response({"object": "list", "data": rows})


async def start_model(request: Request) -> Response:
    """Launch the engines of a new model and serve it under its name, once they are healthy."""
    admin_service(request)
    launch = parse_request(ModelLaunch, await admin_body(request))
    workers = request.app.state.live.settings.server.workers
    if workers > 1:
        raise _conflict(f"This gateway runs {workers} worker processes: engines are launched by the process that "
                        "serves them, so a model is started at run time only with one (--workers 1). Add the model "
                        "to the configuration instead.", "workers_have_no_launcher")
    return json_response(_started(request).start(launch), status=202)


async def stop_model(request: Request) -> Response:
    """Drain a model started at run time, stop its engines, remove its pool."""
    admin_service(request)
    stop = parse_request(StopModel, await admin_body(request))
    return json_response(_started(request).stop(stop.model, stop.drain_timeout_s), status=202)


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
    fleet = _fleet_of(request, model)
    if fleet is None:
        raise _conflict(f"Sluice did not launch the engines of model {model!r}: start, stop and scale them where "
                        "they run.", "not_launched", param="model")
    return fleet


def _fleet_of(request: Request, model: str) -> LaunchedFleet | None:
    """The replicas Sluice launched for ``model``: at start (``--model``) or at run time."""
    fleet: LaunchedFleet | None = dict(getattr(request.app.state, "fleets", {})).get(model)
    return fleet if fleet is not None else _started(request).fleet(model)


def _started(request: Request) -> StartedModels:
    started: StartedModels = request.app.state.started_models
    return started


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
    RouteSpec("POST", "/admin/engines/models", start_model, "admin", request_model=ModelLaunch),
    RouteSpec("POST", "/admin/engines/stop", stop_model, "admin", request_model=StopModel),
]
