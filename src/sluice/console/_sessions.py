"""Console sessions: an opaque id in a cookie, kept server-side with an expiry, each with its own CSRF token.

A session stands in for the admin key on the admin API (``gateway.routes.admin.admin_service`` asks
``admits``): the cookie (HttpOnly, SameSite=Strict, Path=/console) proves the browser logged in; the CSRF token,
which only the console's own page knows and sends in the ``x-sluice-csrf`` header, and the Origin and
Sec-Fetch-Site headers a browser adds, prove the call comes from that page and not from another site.

Sessions live in the state store: this process's memory with ``memory://`` (one gateway process), Redis with
``redis://`` (``SET``/``GETEX``/``DEL`` of ``{sluice}:console:session:<sha256 of the id>``, expiring with the
session), so any gateway process or worker sharing that Redis accepts a session another one opened. Redis holds
only the id's hash and the CSRF token: reading Redis does not give a cookie to log in with.

A request's session is read once (``await load(request)``, by the console's routes before their handler runs) and
kept on the request, so the checks (``find``, ``admits``) stay plain calls.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import Request

from sluice.clock import Clock
from sluice.state import Client, RedisState

COOKIE = "sluice_console"
CSRF_HEADER = "x-sluice-csrf"
SESSION_TTL_S = 8 * 3600.0  # a working day; each use pushes the expiry back
MAX_SESSIONS = 1000  # in memory; beyond, the oldest go first (in Redis, their expiry bounds them)
KEY_PREFIX = "{sluice}:console:session:"


@dataclass(slots=True)
class Session:
    csrf: str
    expires_s: float


class SessionStore(Protocol):
    async def put(self, sid: str, session: Session) -> None: ...

    async def get(self, sid: str) -> Session | None:
        """The live session ``sid`` names, its expiry pushed back; None if there is none or it expired."""

    async def delete(self, sid: str) -> None: ...


class MemorySessions:
    """This process's sessions (``memory://``): a dict, bounded, expired by the injected clock."""

    def __init__(self, clock: Clock, ttl_s: float, max_sessions: int) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}

    async def put(self, sid: str, session: Session) -> None:
        now = self._clock.now()
        for old in [old for old, s in self._sessions.items() if s.expires_s <= now]:
            del self._sessions[old]
        while len(self._sessions) >= self._max_sessions:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[sid] = session

    async def get(self, sid: str) -> Session | None:
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self._clock.now()
        if session.expires_s <= now:
            del self._sessions[sid]
            return None
        session.expires_s = now + self._ttl_s
        return session

    async def delete(self, sid: str) -> None:
        self._sessions.pop(sid, None)


class RedisSessions:
    """Sessions in Redis, shared by every gateway process on it; Redis expires them (``GETEX`` pushes back)."""

    def __init__(self, state: RedisState, clock: Clock, ttl_s: float) -> None:
        self._state = state
        self._clock = clock
        self._ttl_s = ttl_s

    async def put(self, sid: str, session: Session) -> None:
        async def call(client: Client) -> Any:
            return await client.set(_key(sid), session.csrf, ex=max(1, round(self._ttl_s)))

        await self._state.run(call, "console session", idempotent=True)

    async def get(self, sid: str) -> Session | None:
        async def call(client: Client) -> Any:
            return await client.getex(_key(sid), ex=max(1, round(self._ttl_s)))

        csrf = await self._state.run(call, "console session")
        if csrf is None:
            return None
        return Session(csrf.decode() if isinstance(csrf, bytes) else str(csrf), self._clock.now() + self._ttl_s)

    async def delete(self, sid: str) -> None:
        async def call(client: Client) -> Any:
            return await client.delete(_key(sid))

        await self._state.run(call, "console session")


class ConsoleSessions:
    def __init__(self, clock: Clock, *, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._store: SessionStore = MemorySessions(clock, ttl_s, max_sessions)
        self._attached = False

    def attach(self, state: object) -> None:
        """Keep sessions in ``state`` (the gateway's state store) when it is Redis; in memory otherwise. Once."""
        if self._attached:
            return
        self._attached = True
        if isinstance(state, RedisState):
            self._store = RedisSessions(state, self._clock, self._ttl_s)

    @property
    def shared(self) -> bool:
        return isinstance(self._store, RedisSessions)

    async def open(self) -> tuple[str, Session]:
        """A new session: its id (for the cookie) and its CSRF token."""
        sid = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), self._clock.now() + self._ttl_s)
        await self._store.put(sid, session)
        return sid, session

    async def load(self, request: Request) -> Session | None:
        """Read the session the request's cookie names (its expiry pushed back) and keep it on the request."""
        sid = request.cookies.get(COOKIE, "")
        session = await self._store.get(sid) if sid else None
        request.state.console_session = session
        return session

    def find(self, request: Request) -> Session | None:
        """The request's live session, as ``load`` found it (None if it was not loaded)."""
        session: Session | None = getattr(request.state, "console_session", None)
        return session

    async def close(self, request: Request) -> None:
        sid = request.cookies.get(COOKIE)
        if sid:
            await self._store.delete(sid)
        request.state.console_session = None

    def admits(self, request: Request) -> bool:
        """A call of the console's page: a live session, its CSRF token in the header, and no sign of another
        site (the admin API's second way in, besides the admin key)."""
        session = self.find(request)
        token = request.headers.get(CSRF_HEADER, "")
        return (session is not None and hmac.compare_digest(token.encode(), session.csrf.encode())
                and same_origin(request))


def _key(sid: str) -> str:
    return KEY_PREFIX + hashlib.sha256(sid.encode()).hexdigest()


def same_origin(request: Request) -> bool:
    """No browser sign of a cross-site request: ``Sec-Fetch-Site`` (when sent) same-origin, ``Origin`` (when
    sent) this server's own. Clients that are not browsers send neither."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return bool(host) and origin in (f"http://{host}", f"https://{host}")
