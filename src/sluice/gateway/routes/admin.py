"""The admin API, behind its own credential (``auth.admin_key_hash``): keys issued and revoked, tiers changed
live, and each principal's usage and remaining budget. Every change reaches every replica sharing the state
store within a second."""

from __future__ import annotations

import dataclasses
import hmac
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from sluice.config import TierSettings
from sluice.errors import AuthenticationError, InvalidRequestError, NotFoundError, PermissionDeniedError
from sluice.gateway._asgi import RouteSpec
from sluice.gateway.routes._proxy import read_body
from sluice.identity import IssuedKey, Principal, generate_key, hash_key, presented_key
from sluice.protocol import parse_request
from sluice.quota import Price


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")
    user: str | None = None
    tenant: str = "default"
    tier: str = "default"


class KeyId(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)


class TierChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    settings: dict[str, Any]


async def list_keys(request: Request) -> Response:
    """Every key: configured and issued, with its state (never the key itself)."""
    service = admin_service(request)
    directory = service.directory
    rows = [{"id": k.id, "user": k.user or k.id, "tenant": k.tenant, "tier": k.tier, "source": "config"}
            for k in request.app.state.live.settings.keys]
    rows += [{"id": k.id, "user": k.user, "tenant": k.tenant, "tier": k.tier, "source": "issued"}
             for k in directory.snapshot.keys.values()]
    for row in rows:
        row["revoked"] = directory.is_revoked(row["id"])
    return json_response({"object": "list", "data": rows})


async def admin_body(request: Request) -> bytes:
    """The body, read as every route reads one: bounded in size and time, a client gone mid-body a 499."""
    state = request.app.state
    return await read_body(request, state.max_body_bytes, state.body_timeout_s)


async def create_key(request: Request) -> Response:
    """Issue a key: the answer holds it once; the store keeps only its hash."""
    service = admin_service(request)
    new = parse_request(NewKey, await admin_body(request))
    if new.tier not in service.limiter.policy.tiers:
        raise InvalidRequestError(f"Unknown tier {new.tier!r}.", param="tier")
    if _known_ids(request) & {new.id}:
        raise InvalidRequestError(f"A key with id {new.id!r} exists already.", param="id", status=409,
                                  code="key_exists")
    key = generate_key()
    await service.directory.put_key(IssuedKey(new.id, hash_key(key), new.user or new.id, new.tenant, new.tier))
    return json_response({"id": new.id, "key": key, "user": new.user or new.id, "tenant": new.tenant, "tier": new.tier},
                 status=201)


async def revoke_key(request: Request) -> Response:
    """Revoke a key, configured or issued: refused on every replica within a second."""
    service = admin_service(request)
    target = parse_request(KeyId, await admin_body(request))
    if target.id not in _known_ids(request):
        raise NotFoundError(f"No key with id {target.id!r}.", param="id", code="key_not_found")
    await service.directory.revoke(target.id)
    return json_response({"id": target.id, "revoked": True})


async def change_tier(request: Request) -> Response:
    """Replace a tier's settings (limits, priority, waits) live, on every replica, keeping quota state."""
    service = admin_service(request)
    change = parse_request(TierChange, await admin_body(request))
    if change.name not in service.limiter.policy.tiers:
        raise NotFoundError(f"No tier {change.name!r}.", param="name", code="tier_not_found")
    try:
        TierSettings.model_validate(change.settings)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidRequestError(f"Invalid tier setting {where}: {err['msg']}", param=f"settings.{where}") from exc
    await service.directory.put_tier(change.name, change.settings)
    return json_response({"name": change.name, "settings": change.settings})


async def usage(request: Request) -> Response:
    """Requests and tokens of a key, user or tenant on a day (UTC; today by default)."""
    service = admin_service(request)
    q = request.query_params
    scope, ident = q.get("scope", "key"), q.get("id")
    if scope not in ("key", "user", "tenant") or not ident:
        raise InvalidRequestError("Give scope=key|user|tenant and id=...", param="id")
    day = q.get("day") or service.usage.today()
    used = await service.usage.read(scope, ident, day)
    return json_response({"scope": scope, "id": ident, "day": day, "requests": used.requests,
                  "tokens_in": used.tokens_in, "tokens_out": used.tokens_out})


async def budget(request: Request) -> Response:
    """What a key may still spend now on a model: every bucket that applies, as it stands."""
    service = admin_service(request)
    q = request.query_params
    principal = _principal(request, q.get("key_id", ""))
    model = q.get("model") or next(iter(service.routes))
    plan = service.limiter.policy.plan(principal, model, Price(0, 0))
    peek = [dataclasses.replace(b, cost=0) for b in plan.buckets]  # a charge of nothing: the buckets as they stand
    decision = await service.limiter.store.acquire(peek, [], "admin-peek")
    rows = [{"scope": b.info.scope, "kind": b.info.kind, "limit": b.info.amount, "period_s": b.info.period_s,
             "remaining": s.remaining, "reset_s": round(s.reset_s, 3)}
            for b, s in zip(plan.buckets, decision.states, strict=True)]
    return json_response({"key_id": principal.key_id, "model": model, "limits": rows})


def admin_service(request: Request) -> Any:
    """The service, once the caller has shown the admin credential (compared in constant time)."""
    expected = request.app.state.admin_key_hash
    if expected is None:
        raise PermissionDeniedError("The admin API is disabled: set auth.admin_key_hash to enable it.")
    key = presented_key(request.headers.get("authorization"), request.headers.get("api-key"))
    if key is None or not hmac.compare_digest(hash_key(key), expected):
        raise AuthenticationError("The admin API needs the admin key.")
    return request.app.state.service


def _known_ids(request: Request) -> set[str]:
    snapshot = request.app.state.service.directory.snapshot
    return {k.id for k in request.app.state.live.settings.keys} | {k.id for k in snapshot.keys.values()}


def _principal(request: Request, key_id: str) -> Principal:
    service = request.app.state.service
    tiers = service.limiter.policy.tiers
    for k in request.app.state.live.settings.keys:
        if k.id == key_id:
            return Principal(k.id, k.user or k.id, k.tenant, k.tier, tiers[k.tier].priority)
    for issued in service.directory.snapshot.keys.values():
        if issued.id == key_id and issued.tier in tiers:
            return Principal(issued.id, issued.user, issued.tenant, issued.tier, tiers[issued.tier].priority)
    raise NotFoundError(f"No key with id {key_id!r}.", param="key_id", code="key_not_found")


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


ROUTES = [
    RouteSpec("GET", "/admin/keys", list_keys, "admin"),
    RouteSpec("POST", "/admin/keys", create_key, "admin", request_model=NewKey),
    RouteSpec("POST", "/admin/keys/revoke", revoke_key, "admin", request_model=KeyId),
    RouteSpec("PUT", "/admin/tiers", change_tier, "admin", request_model=TierChange),
    RouteSpec("GET", "/admin/usage", usage, "admin"),
    RouteSpec("GET", "/admin/budget", budget, "admin"),
]

