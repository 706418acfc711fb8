"""The proxied endpoints. Each handler only names its endpoint: ``_proxy`` does the HTTP side of the pipeline.
They are hot routes: served straight from the HTTP protocol (``Exchange``), not over ASGI."""

from __future__ import annotations

from sluice.gateway._asgi import RouteSpec
from sluice.gateway._exchange import Exchange
from sluice.gateway.routes._proxy import proxy
from sluice.gateway.service import CHAT, COMPLETIONS, EMBEDDINGS


async def chat_completions(exchange: Exchange) -> None:
    """Chat completions, streamed (SSE) or not, proxied to the model's engine."""
    await proxy(exchange, CHAT)


async def completions(exchange: Exchange) -> None:
    """Text completions, streamed (SSE) or not, proxied to the model's engine."""
    await proxy(exchange, COMPLETIONS)


async def embeddings(exchange: Exchange) -> None:
    """Embeddings, passed through to the model's engine."""
    await proxy(exchange, EMBEDDINGS)


ROUTES = [
    RouteSpec("POST", CHAT.path, None, "inference", CHAT.request_model, exchange_handler=chat_completions),
    RouteSpec("POST", COMPLETIONS.path, None, "inference", COMPLETIONS.request_model, exchange_handler=completions),
    RouteSpec("POST", EMBEDDINGS.path, None, "inference", EMBEDDINGS.request_model, exchange_handler=embeddings),
]
