"""Thin HTTP routes: each reads the request, calls the pipeline, writes the reply."""

from sluice.gateway.routes import inference, models, ops

ROUTERS = (models.router, ops.router)
INFERENCE_ROUTES = inference.ROUTES

__all__ = ["INFERENCE_ROUTES", "ROUTERS"]
