"""Tiers through the admin API: read every tier in force (and where each setting comes from), change one field by
field (PATCH) or whole (PUT), create one, delete one created here. Changes reach every replica within a second;
quota state is kept. File or live: see gateway/_live_tiers.py (a live change holds until the file's entry for
that tier changes). A tier's shadow (candidate limits counted, never enforced) is set, dropped and promoted live
under /admin/tiers/{name}/shadow (quota/_shadow.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from sluice.config import ShadowTier
from sluice.errors import InvalidRequestError, NotFoundError
from sluice.gateway._asgi import RouteSpec
from sluice.gateway.routes.admin import admin_body, admin_service, json_response
from sluice.protocol import parse_request
from sluice.quota import promotion


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


async def put_shadow(request: Request) -> Response:
    """Run candidate limits for a tier in shadow (counted, never enforced), replacing its shadow if it has one."""
    admin_service(request)
    shadow = parse_request(ShadowTier, await admin_body(request))
    return await _shadow_change(request, {"shadow": shadow.model_dump(mode="json", exclude_unset=True)})


async def delete_shadow(request: Request) -> Response:
    """Stop running a tier's shadow (its ``mode: shadow`` rules, if any, stay)."""
    admin_service(request)
    return await _shadow_change(request, {"shadow": None})


async def promote_shadow(request: Request) -> Response:
    """Make what a tier runs in shadow its live limits, on every replica: its shadow's fields and its ``mode:
    shadow`` rules become enforced, and the shadow is dropped (409 when nothing runs in shadow)."""
    admin_service(request)
    live, name = request.app.state.live, request.path_params["name"]
    await live.directory.refresh()  # a shadow set on another gateway a moment ago counts
    tier = live.effective_tiers().get(name)
    if tier is None:
        raise NotFoundError(f"No tier {name!r}.", param="name", code="tier_not_found")
    change = promotion(tier)
    if not change:
        raise InvalidRequestError(f"Tier {name!r} runs nothing in shadow.", param="name", status=409,
                                  code="no_shadow")
    return await _shadow_change(request, change)


async def _shadow_change(request: Request, change: dict[str, Any]) -> Response:
    name = request.path_params["name"]
    tier = await request.app.state.live.change_tier(name, change, replace=False)
    return json_response({"name": name, "settings": tier.model_dump(mode="json")})


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
    RouteSpec("PUT", "/admin/tiers/{name}/shadow", put_shadow, "admin", request_model=ShadowTier),
    RouteSpec("DELETE", "/admin/tiers/{name}/shadow", delete_shadow, "admin"),
    RouteSpec("POST", "/admin/tiers/{name}/shadow/promote", promote_shadow, "admin"),
]
