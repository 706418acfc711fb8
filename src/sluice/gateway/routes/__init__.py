"""Thin HTTP routes: each reads the request, calls the pipeline, writes the reply."""

from sluice.gateway.routes import completions, embeddings, models, ops

ROUTERS = (completions.router, embeddings.router, models.router, ops.router)

__all__ = ["ROUTERS"]
