from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request

from sluice.protocol import ModelList

router = APIRouter()


@router.get("/v1/models", tags=["inference"])
async def list_models(request: Request) -> ModelList:
    """The models this gateway serves."""
    service = request.app.state.service
    service.identify(request.state.record, request.headers.get("authorization"), request.headers.get("api-key"))
    return service.list_models()
