"""Console sessions: an opaque id in a cookie, kept server-side with an expiry, each with its own CSRF token.

A session stands in for the admin key on the admin API (``gateway.routes.admin.admin_service`` asks
``admits``): the cookie (HttpOnly, SameSite=Strict, Path=/console) proves the browser logged in; the CSRF token,
which only the console's own page knows and sends in the ``x-sluice-csrf`` header, and the Origin and
Sec-Fetch-Site headers a browser adds, prove the call comes from that page and not from another site.
Sessions live in the process that made them (one gateway process; see docs/console.md).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from starlette.requests import Request

from sluice.clock import Clock

COOKIE = "sluice_console"
CSRF_HEADER = "x-sluice-csrf"
SESSION_TTL_S = 8 * 3600.0  # a working day; each use pushes the expiry back
MAX_SESSIONS = 1000  # beyond, the oldest go first


@dataclass(slots=True)
class Session:
    csrf: str
    expires_s: float


class ConsoleSessions:
    def __init__(self, clock: Clock, *, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}

    def open(self) -> tuple[str, Session]:
        """A new session: its id (for the cookie) and its CSRF token."""
        now = self._clock.now()
        for sid in [sid for sid, s in self._sessions.items() if s.expires_s <= now]:
            del self._sessions[sid]
        while len(self._sessions) >= self._max_sessions:
            del self._sessions[next(iter(self._sessions))]
        sid = secrets.token_urlsafe(32)
        session = self._sessions[sid] = Session(secrets.token_urlsafe(32), now + self._ttl_s)
        return sid, session

    def find(self, request: Request) -> Session | None:
        """The live session the request's cookie names (its expiry pushed back), or None."""
        sid = request.cookies.get(COOKIE, "")
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self._clock.now()
        if session.expires_s <= now:
            del self._sessions[sid]
            return None
        session.expires_s = now + self._ttl_s
        return session

    def close(self, request: Request) -> None:
        sid = request.cookies.get(COOKIE)
        if sid:
            self._sessions.pop(sid, None)

    def admits(self, request: Request) -> bool:
        """A call of the console's page: a live session, its CSRF token in the header, and no sign of another
        site (the admin API's second way in, besides the admin key)."""
        session = self.find(request)
        token = request.headers.get(CSRF_HEADER, "")
        return (session is not None and hmac.compare_digest(token.encode(), session.csrf.encode())
                and same_origin(request))


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
