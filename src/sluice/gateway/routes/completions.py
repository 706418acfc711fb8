from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request

from sluice.gateway.routes._openapi import json_body
from sluice.gateway.routes._proxy import proxy
from sluice.gateway.service import CHAT, COMPLETIONS

router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=json_body("ChatCompletionRequest"), tags=["inference"])
async def chat_completions(request: Request):  # type: ignore[no-untyped-def]
    """Chat completions, streamed (SSE) or not, proxied to the model's engine."""
    return await proxy(request, CHAT)


@router.post("/v1/completions", openapi_extra=json_body("CompletionRequest"), tags=["inference"])
async def completions(request: Request):  # type: ignore[no-untyped-def]
    """Text completions, streamed (SSE) or not, proxied to the model's engine."""
    return await proxy(request, COMPLETIONS)
