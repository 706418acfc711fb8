"""Thin HTTP routes: each reads the request, calls the pipeline, writes the reply."""

from sluice.gateway.routes import inference, models, ops

ROUTES = (*inference.ROUTES, *models.ROUTES, *ops.ROUTES)

__all__ = ["ROUTES"]
