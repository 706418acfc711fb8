"""The proxied endpoints. Each handler only names its endpoint: ``_proxy`` does the HTTP side of the pipeline."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from sluice.gateway._asgi import RouteSpec
from sluice.gateway.routes._proxy import proxy
from sluice.gateway.service import CHAT, COMPLETIONS, EMBEDDINGS


async def chat_completions(request: Request) -> Response:
    """Chat completions, streamed (SSE) or not, proxied to the model's engine."""
    return await proxy(request, CHAT)


async def completions(request: Request) -> Response:
    """Text completions, streamed (SSE) or not, proxied to the model's engine."""
    return await proxy(request, COMPLETIONS)


async def embeddings(request: Request) -> Response:
    """Embeddings, passed through to the model's engine."""
    return await proxy(request, EMBEDDINGS)


ROUTES = [
    RouteSpec("POST", CHAT.path, chat_completions, "inference", CHAT.request_model),
    RouteSpec("POST", COMPLETIONS.path, completions, "inference", COMPLETIONS.request_model),
    RouteSpec("POST", EMBEDDINGS.path, embeddings, "inference", EMBEDDINGS.request_model),
]
