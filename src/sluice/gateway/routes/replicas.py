"""The admin API's view of the fleet: each model's live replica set, and the replicas an operator adds, removes,
drains and brings back. Changes are recorded in the shared directory, so every gateway on the same state store
applies them within a second; none drops a stream (a replica leaving drains first).

- ``POST /admin/replicas`` ``{model, url, weight?}``: add a replica (the ``admin`` source); lifts a drain.
- ``POST /admin/replicas/remove`` ``{model, url}``: take back a replica the admin API added; it drains unless
  another source (config, DNS, launcher) still lists it (then 409: drain it instead).
- ``POST /admin/replicas/drain`` ``{model, url}``: no new request goes there; it leaves when its requests end and
  stays out whatever its sources say, until ``/undrain``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response

from sluice.errors import InvalidRequestError, NotFoundError
from sluice.gateway._asgi import RouteSpec
from sluice.gateway.routes.admin import admin_body, admin_service, json_response
from sluice.protocol import parse_request


class ReplicaRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    url: str = Field(min_length=1, max_length=2048)

    @field_validator("url")
    @classmethod
    def _origin(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
            raise ValueError("a replica is an origin such as http://10.0.0.7:8000 (no path)")
        return url.rstrip("/")


class NewReplica(ReplicaRef):
    weight: float = Field(1.0, gt=0, le=1000)


async def list_replicas(request: Request) -> Response:
    """Every model's replica set (or one model's, ``?model=``): replicas, their sources, state, load, circuit."""
    service = admin_service(request)
    only = request.query_params.get("model")
    if only is not None and only not in service.routes:
        raise NotFoundError(f"No model {only!r}.", param="model", code="model_not_found")
    return json_response({"object": "list", "data": [
        {"model": name, **route.pool.replicas.snapshot()} for name, route in service.routes.items()
        if only in (None, name)
    ]})


async def add_replica(request: Request) -> Response:
    new = parse_request(NewReplica, await admin_body(request))
    return await _record(request, new, added=True, weight=new.weight, cordoned=False)


async def remove_replica(request: Request) -> Response:
    ref = parse_request(ReplicaRef, await admin_body(request))
    service = admin_service(request)
    doc = service.directory.replica(ref.model, ref.url)
    if not doc["added"]:
        replica = _replicas(service, ref.model).get(ref.url)
        if replica is None:
            raise NotFoundError(f"Model {ref.model!r} has no replica {ref.url}.", param="url",
                                code="replica_not_found")
        raise InvalidRequestError(f"{ref.url} was not added through the admin API (its sources: "
                                  f"{', '.join(_sources(service, ref.model, ref.url))}); drain it instead.",
                                  param="url", status=409, code="replica_not_added_here")
    return await _record(request, ref, added=False)


async def drain_replica(request: Request) -> Response:
    ref = parse_request(ReplicaRef, await admin_body(request))
    if _replicas(admin_service(request), ref.model).get(ref.url) is None:
        raise NotFoundError(f"Model {ref.model!r} has no replica {ref.url}.", param="url", code="replica_not_found")
    return await _record(request, ref, cordoned=True)


async def undrain_replica(request: Request) -> Response:
    ref = parse_request(ReplicaRef, await admin_body(request))
    if not admin_service(request).directory.replica(ref.model, ref.url)["cordoned"]:
        raise NotFoundError(f"{ref.url} is not drained.", param="url", code="replica_not_drained")
    return await _record(request, ref, cordoned=False)


async def _record(request: Request, ref: ReplicaRef, **change: Any) -> Response:
    """Record the change in the shared directory (every gateway applies it), then answer the set as it is now."""
    service = admin_service(request)
    _replicas(service, ref.model)
    doc = {**service.directory.replica(ref.model, ref.url), **change}
    await service.directory.put_replica(ref.model, ref.url, doc)
    return json_response({"model": ref.model, "url": ref.url, **doc,
                          "replicas": service.routes[ref.model].pool.replicas.snapshot()["replicas"]})


def _replicas(service: Any, model: str) -> Any:
    route = service.routes.get(model)
    if route is None:
        raise NotFoundError(f"No model {model!r}.", param="model", code="model_not_found")
    return route.pool.replicas


def _sources(service: Any, model: str, url: str) -> list[str]:
    rows = _replicas(service, model).snapshot()["replicas"]
    return next((row["sources"] for row in rows if row["url"] == url), [])


ROUTES = [
    RouteSpec("GET", "/admin/replicas", list_replicas, "admin"),
    RouteSpec("POST", "/admin/replicas", add_replica, "admin", request_model=NewReplica),
    RouteSpec("POST", "/admin/replicas/remove", remove_replica, "admin", request_model=ReplicaRef),
    RouteSpec("POST", "/admin/replicas/drain", drain_replica, "admin", request_model=ReplicaRef),
    RouteSpec("POST", "/admin/replicas/undrain", undrain_replica, "admin", request_model=ReplicaRef),
]
