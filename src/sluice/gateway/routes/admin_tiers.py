"""Tiers through the admin API: read every tier in force (and where each setting comes from), change one field by
field (PATCH) or whole (PUT), create one, delete one created here. Changes reach every replica within a second;
quota state is kept. File or live: see gateway/_live_tiers.py (a live change holds until the file's entry for
that tier changes)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from sluice.gateway._asgi import RouteSpec
from sluice.gateway.routes.admin import admin_body, admin_service, json_response
from sluice.protocol import parse_request


class TierChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    settings: dict[str, Any]


class NewTier(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")
    settings: dict[str, Any] = {}


class TierName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)


async def list_tiers(request: Request) -> Response:
    """Every tier in force, its effective settings, and for each setting whether it comes from the file, a live
    change, or the default."""
    admin_service(request)
    return json_response({"object": "list", "data": request.app.state.live.describe_tiers()})


async def patch_tier(request: Request) -> Response:
    """Change the given settings of a tier, keeping the others (``null`` clears one)."""
    return await _change(request, replace=False)


async def replace_tier(request: Request) -> Response:
    """Replace a tier's settings whole: a setting not given takes its default (not the file's value)."""
    return await _change(request, replace=True)


async def create_tier(request: Request) -> Response:
    admin_service(request)
    new = parse_request(NewTier, await admin_body(request))
    tier = await request.app.state.live.create_tier(new.name, new.settings)
    return json_response({"name": new.name, "settings": tier.model_dump(mode="json")}, status=201)


async def delete_tier(request: Request) -> Response:
    """Delete a tier created through this API (409 while keys use it, or when the file defines it)."""
    admin_service(request)
    target = parse_request(TierName, await admin_body(request))
    await request.app.state.live.delete_tier(target.name)
    return json_response({"name": target.name, "deleted": True})


async def _change(request: Request, *, replace: bool) -> Response:
    admin_service(request)
    change = parse_request(TierChange, await admin_body(request))
    tier = await request.app.state.live.change_tier(change.name, change.settings, replace=replace)
    return json_response({"name": change.name, "settings": tier.model_dump(mode="json")})


ROUTES = [
    RouteSpec("GET", "/admin/tiers", list_tiers, "admin"),
    RouteSpec("POST", "/admin/tiers", create_tier, "admin", request_model=NewTier),
    RouteSpec("PATCH", "/admin/tiers", patch_tier, "admin", request_model=TierChange),
    RouteSpec("PUT", "/admin/tiers", replace_tier, "admin", request_model=TierChange),
    RouteSpec("POST", "/admin/tiers/delete", delete_tier, "admin", request_model=TierName),
]
