"""The admin API, behind its own credential (``auth.admin_key_hash``): keys issued, revoked, restored and rotated,
and each principal's usage and remaining budget (tiers: admin_tiers.py). Every change reaches every replica sharing
the state store within a second."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

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
    key_id = await _known_key(request)
    await admin_service(request).directory.revoke(key_id)
    return json_response({"id": key_id, "revoked": True})


async def restore_key(request: Request) -> Response:
    """Un-revoke a key: accepted again on every replica within a second."""
    key_id = await _known_key(request)
    await admin_service(request).directory.restore(key_id)
    return json_response({"id": key_id, "revoked": False})


async def _known_key(request: Request) -> str:
    """The key id the body names, once known here (configured, or issued on any gateway: read afresh)."""
    service = admin_service(request)
    target = parse_request(KeyId, await admin_body(request))
    await service.directory.refresh()  # a key issued on another gateway a moment ago is known here too
    if target.id not in _known_ids(request):
        raise NotFoundError(f"No key with id {target.id!r}.", param="id", code="key_not_found")
    return target.id


async def rotate_key(request: Request) -> Response:
    """A new secret for an issued key (same id, user, tenant, tier), shown once; the old secret stops working."""
    service = admin_service(request)
    target = parse_request(KeyId, await admin_body(request))
    await service.directory.refresh()
    issued = next((k for k in service.directory.snapshot.keys.values() if k.id == target.id), None)
    if issued is None:
        if target.id in _known_ids(request):
            raise InvalidRequestError(f"Key {target.id!r} is configured in the file: put a new hash there "
                                      "(sluice keys create prints one).", param="id", status=409,
                                      code="key_in_config")
        raise NotFoundError(f"No key with id {target.id!r}.", param="id", code="key_not_found")
    if service.directory.is_revoked(target.id):
        raise InvalidRequestError(f"Key {target.id!r} is revoked: restore it first.", param="id", status=409,
                                  code="key_revoked")
    key = generate_key()
    new = await service.directory.rotate(issued, hash_key(key))
    return json_response({"id": new.id, "key": key, "user": new.user, "tenant": new.tenant, "tier": new.tier})


async def usage(request: Request) -> Response:
    """Requests and tokens of a key, user or tenant on a day (UTC; today by default)."""
    service = admin_service(request)
    q = request.query_params
    scope, ident = q.get("scope", "key"), q.get("id")
    if scope not in ("key", "user", "tenant") or not ident:
        raise InvalidRequestError("Give scope=key|user|tenant and id=...", param="id")
    day = _kept_day(q.get("day"), service.usage)
    used = await service.usage.read(scope, ident, day)
    if not (used.requests or used.tokens_in or used.tokens_out) and ident not in _known(request, scope):
        raise NotFoundError(f"No {scope} {ident!r}: no key names it, and it has no usage on {day}.", param="id",
                            code=f"{scope}_not_found")
    return json_response({"scope": scope, "id": ident, "day": day, "requests": used.requests,
                  "tokens_in": used.tokens_in, "tokens_out": used.tokens_out})


async def budget(request: Request) -> Response:
    """What a key may still spend now on a model: every bucket that applies, as it stands."""
    service = admin_service(request)
    q = request.query_params
    if not q.get("key_id"):
        raise InvalidRequestError("Give key_id=... (and model=..., the first model by default).", param="key_id")
    principal = _principal(request, q["key_id"])
    model = q.get("model") or next(iter(service.routes))
    if model not in service.routes:
        raise NotFoundError(f"No model {model!r}; the models are {', '.join(service.routes)}.", param="model")
    plan = service.limiter.policy.plan(principal, model, Price(0, 0))
    peek = [dataclasses.replace(b, cost=0) for b in plan.buckets]  # a charge of nothing: the buckets as they stand
    decision = await service.limiter.store.acquire(peek, [], "admin-peek")
    rows = [{"scope": b.info.scope, "kind": b.info.kind, "limit": b.info.amount, "period_s": b.info.period_s,
             "remaining": s.remaining, "reset_s": round(s.reset_s, 3)}
            for b, s in zip(plan.buckets, decision.states, strict=True)]
    return json_response({"key_id": principal.key_id, "model": model, "limits": rows})


def admin_service(request: Request) -> Any:
    """The service, once the caller has shown the admin credential (compared in constant time), or is the console's
    page in a logged-in session (``app.state.console.admits``: its cookie, CSRF header and origin; sluice.console)."""
    expected = request.app.state.admin_key_hash
    if expected is None:
        raise PermissionDeniedError("The admin API is disabled: set auth.admin_key_hash to enable it.")
    console = getattr(request.app.state, "console", None)
    if console is not None and console.admits(request):
        return request.app.state.service
    key = presented_key(request.headers.get("authorization"), request.headers.get("api-key"))
    if not is_admin_key(expected, key):
        raise AuthenticationError("The admin API needs the admin key.")
    return request.app.state.service


def is_admin_key(expected_hash: str, key: str | None) -> bool:
    """``key`` is the admin key (its hash compared in constant time)."""
    return key is not None and hmac.compare_digest(hash_key(key), expected_hash)


def _known_ids(request: Request) -> set[str]:
    return _known(request, "key")


def _known(request: Request, scope: str) -> set[str]:
    """The key ids, users or tenants the keys (configured and issued) name."""
    snapshot = request.app.state.service.directory.snapshot
    configured = request.app.state.live.settings.keys
    if scope == "key":
        return {k.id for k in configured} | {k.id for k in snapshot.keys.values()}
    if scope == "user":
        return {k.user or k.id for k in configured} | {k.user for k in snapshot.keys.values()}
    return {k.tenant for k in configured} | {k.tenant for k in snapshot.keys.values()}


def _kept_day(text: str | None, ledger: Any) -> str:
    """A day (YYYY-MM-DD, UTC) within the usage kept: a malformed one is a 400, one outside the window a 404."""
    today = dt.date.fromisoformat(ledger.today())
    if not text:
        return today.isoformat()
    try:
        day = dt.date.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequestError(f"day {text!r} is not a date: give YYYY-MM-DD (UTC).", param="day",
                                  code="invalid_day") from exc
    oldest = today - dt.timedelta(days=ledger.kept_days - 1)
    if not oldest <= day <= today:
        raise NotFoundError(f"No usage is kept for {day}: days from {oldest} to {today} (UTC) are.", param="day",
                            code="day_not_found")
    return day.isoformat()


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
    RouteSpec("POST", "/admin/keys/restore", restore_key, "admin", request_model=KeyId),
    RouteSpec("POST", "/admin/keys/rotate", rotate_key, "admin", request_model=KeyId),
    RouteSpec("GET", "/admin/usage", usage, "admin"),
    RouteSpec("GET", "/admin/budget", budget, "admin"),
]

