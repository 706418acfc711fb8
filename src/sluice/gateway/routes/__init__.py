"""Thin HTTP routes: each reads the request, calls the pipeline, writes the reply."""

from sluice.gateway.routes import admin, admin_tiers, engines, inference, models, ops, replicas, responses

ROUTES = (*inference.ROUTES, *responses.ROUTES, *models.ROUTES, *ops.ROUTES, *admin.ROUTES, *admin_tiers.ROUTES,
          *replicas.ROUTES, *engines.ROUTES)

__all__ = ["ROUTES"]
