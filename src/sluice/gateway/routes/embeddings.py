from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request

from sluice.gateway.routes._openapi import json_body
from sluice.gateway.routes._proxy import proxy
from sluice.gateway.service import EMBEDDINGS

router = APIRouter()


@router.post("/v1/embeddings", openapi_extra=json_body("EmbeddingRequest"), tags=["inference"])
async def embeddings(request: Request):  # type: ignore[no-untyped-def]
    """Embeddings, passed through to the model's engine."""
    return await proxy(request, EMBEDDINGS)
