from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from sluice.gateway._asgi import RouteSpec
from sluice.protocol import ModelList


async def list_models(request: Request) -> Response:
    """The models this gateway serves."""
    service = request.app.state.service
    service.identify(request.state.record, request.headers.get("authorization"), request.headers.get("api-key"))
    return Response(service.list_models().model_dump_json(), media_type="application/json")


ROUTES = [RouteSpec("GET", "/v1/models", list_models, "inference", response_model=ModelList)]
