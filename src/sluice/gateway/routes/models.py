from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from sluice.gateway._asgi import RouteSpec
from sluice.protocol import ModelCard, ModelList


async def list_models(request: Request) -> Response:
    """The models this gateway serves."""
    service = request.app.state.service
    service.identify(request.state.record, request.headers.get("authorization"), request.headers.get("api-key"))
    return Response(service.list_models().model_dump_json(), media_type="application/json")


async def retrieve_model(request: Request) -> Response:
    """One model this gateway serves, by its id (404 ``model_not_found`` for an id it does not serve)."""
    service = request.app.state.service
    service.identify(request.state.record, request.headers.get("authorization"), request.headers.get("api-key"))
    return Response(service.model_card(request.path_params["model"]).model_dump_json(), media_type="application/json")


ROUTES = [
    RouteSpec("GET", "/v1/models", list_models, "inference", response_model=ModelList),
    RouteSpec("GET", "/v1/models/{model:path}", retrieve_model, "inference", response_model=ModelCard),
]
