"""The proxied endpoints, as plain Starlette routes: the pipeline parses the body itself (once), so FastAPI's
per-request dependency handling would only cost time. Their request schemas are still in the OpenAPI document
(``_openapi.inference_paths``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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
    Route(CHAT.path, chat_completions, methods=["POST"]),
    Route(COMPLETIONS.path, completions, methods=["POST"]),
    Route(EMBEDDINGS.path, embeddings, methods=["POST"]),
]
