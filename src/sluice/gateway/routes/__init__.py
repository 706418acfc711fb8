"""Thin HTTP routes: each reads the request, calls the pipeline, writes the reply."""

from sluice.gateway.routes import admin, inference, models, ops, replicas

ROUTES = (*inference.ROUTES, *models.ROUTES, *ops.ROUTES, *admin.ROUTES, *replicas.ROUTES)

__all__ = ["ROUTES"]
