"""The console's routes: its page (or the login form), login and logout, its static files, and the live
snapshot. Everything it changes goes through the admin API (``/admin/...``), called by the page's script with
the session's CSRF token; these routes change nothing but the session.

- ``GET /console``: the console for a logged-in browser; else the login form; without an admin key configured, a
  page saying the console is disabled (403).
- ``POST /console/login`` (form ``key=<admin key>``): a session cookie and a redirect to ``/console``; a wrong key
  is a 401 with the form again.
- ``POST /console/logout``: ends the session (needs the CSRF header).
- ``GET /console/api/snapshot``: the live view's JSON (``sluice.console._snapshot``); a session and its CSRF header.
- ``GET|POST /console/api/loadtests``, ``POST /console/api/loadtests/stop``: load tests (``_load_tests``);
  ``GET /console/api/loadtests/plot?id=N&name=latency_cdf.png``: a run's plot (a name from its own list);
  ``GET /console/api/loadtests/compare?ids=1,2``: runs' key figures side by side, with ratios to the first.
- ``/console/admin/...``: the admin API's own routes and handlers, where the session cookie reaches them.

Every route reads the request's session from the state store first (``ConsoleSessions.load``): with Redis, a
session opened by one gateway process or worker is good on all of them. The snapshot says which process answered
(``served_by``: pid, worker index); its traffic and pools are that process's own.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any
from urllib.parse import parse_qs

import orjson
from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from sluice.console._load_tests import LoadTestSpec
from sluice.console._sessions import COOKIE, ConsoleSessions, same_origin
from sluice.console._snapshot import compose_snapshot
from sluice.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from sluice.gateway._asgi import Handler, RouteSpec
from sluice.gateway.routes import ROUTES as GATEWAY_ROUTES
from sluice.gateway.routes._proxy import read_body
from sluice.gateway.routes.admin import is_admin_key
from sluice.protocol import parse_request

MAX_LOGIN_BYTES = 4096
MAX_LOAD_TEST_BYTES = 16384


class LoadTestRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int
PAGE_HEADERS = {"cache-control": "no-store", "x-frame-options": "DENY", "referrer-policy": "same-origin",
                "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}


async def console_page(request: Request) -> Response:
    """The console, the login form, or the page saying it is disabled."""
    console = request.app.state.console
    if request.app.state.admin_key_hash is None:
        return _page(console.assets.page("disabled.html"), 403)
    session = console.sessions.find(request)
    if session is None:
        return _page(console.assets.page("login.html", message=""))
    return _page(console.assets.page("console.html", csrf=session.csrf))


async def login(request: Request) -> Response:
    """Check the admin key posted by the form; on success a session cookie (the key itself is kept nowhere)."""
    console = request.app.state.console
    expected = request.app.state.admin_key_hash
    if expected is None:
        return _page(console.assets.page("disabled.html"), 403)
    if not same_origin(request):
        raise PermissionDeniedError("Cross-site login refused.")
    body = await read_body(request, MAX_LOGIN_BYTES, request.app.state.body_timeout_s)
    key = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0]
    if not is_admin_key(expected, key):
        request.state.record.reason = "auth"
        answer = _page(console.assets.page("login.html", message="Wrong admin key."), 401)
        answer.headers["x-sluice-reason"] = "auth"
        return answer
    sid, _ = await console.sessions.open()
    response = RedirectResponse("/console", status_code=303, headers=PAGE_HEADERS)
    response.set_cookie(COOKIE, sid, path="/console", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    sessions: ConsoleSessions = request.app.state.console.sessions
    if not sessions.admits(request):
        raise PermissionDeniedError("Log out from the console's own page.")
    await sessions.close(request)
    response = Response(b'{"logged_out":true}', media_type="application/json")
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
    return response


async def snapshot(request: Request) -> Response:
    """The live view: pools, replicas, traffic of the last minutes, the last refusals, tiers."""
    console = _console_for_api(request)
    doc = compose_snapshot(request.app.state.service, request.app.state.metrics, console.clock.now())
    return _json({**doc, "served_by": _served_by(request)})


async def load_tests(request: Request) -> Response:
    """The load tests started here: the running one's progress, the others' summaries (newest first)."""
    console = _console_for_api(request)
    return _json({"object": "list", "data": console.load_tests.list(), "served_by": _served_by(request)})


async def start_load_test(request: Request) -> Response:
    """Start a load test (``sluice bench``'s engine) against this gateway's inference port."""
    console = _console_for_api(request)
    spec = parse_request(LoadTestSpec, await read_body(request, MAX_LOAD_TEST_BYTES, request.app.state.body_timeout_s))
    return _json({**console.load_tests.start(spec, _inference_url(request, console.server)),
                  "served_by": _served_by(request)}, 201)


async def stop_load_test(request: Request) -> Response:
    console = _console_for_api(request)
    target = parse_request(LoadTestRef, await read_body(request, MAX_LOAD_TEST_BYTES,
                                                          request.app.state.body_timeout_s))
    return _json({**await console.load_tests.stop(target.id), "served_by": _served_by(request)})


async def load_test_plot(request: Request) -> Response:
    """A run's plot as PNG: ``?id=N&name=...``, the name one of the run's own plots. An ``<img>`` sends no CSRF
    header: a live session from this site is enough to read (the strict cookie; it changes nothing)."""
    console = request.app.state.console
    if request.app.state.admin_key_hash is None:
        raise PermissionDeniedError("The console is disabled: set auth.admin_key_hash to enable it.")
    if console.sessions.find(request) is None or not same_origin(request):
        raise AuthenticationError("Log in to the console first.")
    number = _run_number(request.query_params.get("id", ""), "id")
    body = console.load_tests.plot(number, request.query_params.get("name", ""))
    return Response(body, media_type="image/png", headers={"cache-control": "private, max-age=3600"})


async def compare_load_tests(request: Request) -> Response:
    """``?ids=1,2[,...]``: the runs' key figures side by side, each with its ratio to the first run's."""
    console = _console_for_api(request)
    ids = [_run_number(part.strip(), "ids") for part in request.query_params.get("ids", "").split(",") if part.strip()]
    return _json(console.load_tests.compare(ids))


def _run_number(text: str, param: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise InvalidRequestError(f"{param} wants load test numbers, like 1 or 1,2.", param=param)
    return int(text)


def _console_for_api(request: Request) -> Any:
    """The console, for a call of its page in a live session (CSRF token and origin checked)."""
    console = request.app.state.console
    if request.app.state.admin_key_hash is None:
        raise PermissionDeniedError("The console is disabled: set auth.admin_key_hash to enable it.")
    if not console.sessions.admits(request):
        raise AuthenticationError("Log in to the console first.")
    return console


def _served_by(request: Request) -> dict[str, Any]:
    """Which gateway process answered: its pid, and its worker index under ``--workers`` (else None)."""
    return {"pid": os.getpid(), "worker": getattr(request.app.state, "worker_index", None)}


def _inference_url(request: Request, server: Any) -> str:
    """Where the inference routes answer: this socket, or the public port when the console is on the ops port."""
    host, port = request.scope["server"]
    if server.ops_port is not None and port == server.ops_port:
        port = server.port
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


async def script(request: Request) -> Response:
    return _asset(request, "console.js", "text/javascript")


async def stylesheet(request: Request) -> Response:
    return _asset(request, "console.css", "text/css")


def _asset(request: Request, name: str, media_type: str) -> Response:
    body = request.app.state.console.assets.file(name)
    return Response(body, media_type=media_type, headers={"cache-control": "no-cache"})


def _page(body: str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def _with_session(handler: Handler | None) -> Handler:
    """``handler``, once the request's console session (if its cookie names one) is read from the state store."""
    assert handler is not None, "the console's routes are ASGI routes"

    @functools.wraps(handler)
    async def handle(request: Request) -> Response:
        console = request.app.state.console
        console.sessions.attach(getattr(request.app.state, "state_store", None))
        await console.sessions.load(request)
        response: Response = await handler(request)
        return response

    return handle


# The admin API under /console, where the session cookie (Path=/console) reaches it: the same handlers, the same
# check (``admin_service``: the admin key, or this console's session with its CSRF token), no second path.
ADMIN_ROUTES = [dataclasses.replace(r, path=f"/console{r.path}", documented=False)
                for r in GATEWAY_ROUTES if r.path.startswith("/admin/")]

_ROUTES = [*ADMIN_ROUTES,
    RouteSpec("GET", "/console", console_page, "admin", documented=False),
    RouteSpec("POST", "/console/login", login, "admin", documented=False),
    RouteSpec("POST", "/console/logout", logout, "admin", documented=False),
    RouteSpec("GET", "/console/api/snapshot", snapshot, "admin"),
    RouteSpec("GET", "/console/api/loadtests", load_tests, "admin", documented=False),
    RouteSpec("POST", "/console/api/loadtests", start_load_test, "admin", request_model=LoadTestSpec,
              documented=False),
    RouteSpec("POST", "/console/api/loadtests/stop", stop_load_test, "admin", request_model=LoadTestRef,
              documented=False),
    RouteSpec("GET", "/console/api/loadtests/plot", load_test_plot, "admin", documented=False),
    RouteSpec("GET", "/console/api/loadtests/compare", compare_load_tests, "admin", documented=False),
    RouteSpec("GET", "/console/console.js", script, "admin", documented=False),
    RouteSpec("GET", "/console/console.css", stylesheet, "admin", documented=False),
]
ROUTES = [dataclasses.replace(r, handler=_with_session(r.handler)) for r in _ROUTES]
