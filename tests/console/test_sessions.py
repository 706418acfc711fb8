"""Console sessions in isolation (in memory): expiry pushed back by use, a bound on their number, the origin
checks. Sessions in Redis, shared by gateway workers: tests/gateway/test_console_workers.py."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from sluice.clock import FakeClock
from sluice.console._sessions import COOKIE, CSRF_HEADER, ConsoleSessions, Session, same_origin


class Sessions:
    """``ConsoleSessions`` driven from plain test code: each call a loaded request, as the console's routes do."""

    def __init__(self, clock: Any, **options: Any) -> None:
        self.inner = ConsoleSessions(clock, **options)

    def open(self) -> tuple[str, Session]:
        return asyncio.run(self.inner.open())

    def find(self, req: Request) -> Session | None:
        asyncio.run(self.inner.load(req))
        return self.inner.find(req)

    def admits(self, req: Request) -> bool:
        asyncio.run(self.inner.load(req))
        return self.inner.admits(req)

    def close(self, req: Request) -> None:
        asyncio.run(self.inner.close(req))


def request(headers: dict[str, str], scheme: str = "http") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/console/admin/keys", "scheme": scheme,
                    "headers": raw, "server": ("127.0.0.1", 8000), "query_string": b""})


def cookie(sid: str, **more: str) -> dict[str, str]:
    return {"cookie": f"{COOKIE}={sid}", "host": "127.0.0.1:8000", **more}


def test_a_session_expires_unless_used():
    clock = FakeClock()
    sessions = Sessions(clock, ttl_s=60)
    sid, session = sessions.open()
    clock.advance(50)
    assert sessions.find(request(cookie(sid))) is session  # used: good for another 60 s
    clock.advance(50)
    assert sessions.find(request(cookie(sid))) is session
    clock.advance(61)
    assert sessions.find(request(cookie(sid))) is None
    assert sessions.find(request(cookie(sid))) is None


def test_sessions_are_bounded_oldest_first():
    sessions = Sessions(FakeClock(), max_sessions=3)
    first, _ = sessions.open()
    others = [sessions.open()[0] for _ in range(3)]
    assert sessions.find(request(cookie(first))) is None
    assert all(sessions.find(request(cookie(sid))) is not None for sid in others)


def test_admits_needs_the_cookie_the_token_and_the_same_origin():
    sessions = Sessions(FakeClock())
    sid, session = sessions.open()
    token = {CSRF_HEADER: session.csrf}
    assert sessions.admits(request(cookie(sid, **token)))
    browser = {"origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"}
    assert sessions.admits(request(cookie(sid, **token, **browser)))
    assert not sessions.admits(request(cookie(sid)))
    assert not sessions.admits(request(cookie(sid, **{CSRF_HEADER: session.csrf[:-1] + "x"})))
    assert not sessions.admits(request(cookie("another", **token)))
    assert not sessions.admits(request(cookie(sid, **token, origin="http://127.0.0.1:8001")))
    assert not sessions.admits(request(cookie(sid, **token, **{"sec-fetch-site": "same-site"})))
    other_sid, _ = sessions.open()
    assert not sessions.admits(request(cookie(other_sid, **token)))  # a token is its own session's only


def test_closing_a_session_ends_it():
    sessions = Sessions(FakeClock())
    sid, _ = sessions.open()
    sessions.close(request(cookie(sid)))
    assert sessions.find(request(cookie(sid))) is None


def test_same_origin_without_browser_headers_is_a_plain_client():
    assert same_origin(request({"host": "gw:8000"}))
    assert same_origin(request({"host": "gw:8000", "origin": "https://gw:8000"}, scheme="https"))
    assert not same_origin(request({"host": "gw:8000", "origin": "null"}))
    assert not same_origin(request({"origin": "http://gw:8000"}))  # no Host to compare with


def test_a_request_whose_session_was_not_loaded_is_not_admitted():
    sessions = ConsoleSessions(FakeClock())
    sid, session = asyncio.run(sessions.open())
    assert not sessions.admits(request(cookie(sid, **{CSRF_HEADER: session.csrf})))
